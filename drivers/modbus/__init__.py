"""Modbus driver: Modbus TCP, RTU on RS-485 and RTU over TCP, with profile-driven register maps."""
