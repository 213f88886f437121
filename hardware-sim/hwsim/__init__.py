"""Hardware simulators for the community edge gateway (Modbus, serial meters, ONVIF, city platform)."""
