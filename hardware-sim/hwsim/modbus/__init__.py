"""Modbus device simulator (independent of the gateway's codec and profiles)."""
