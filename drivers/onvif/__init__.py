"""ONVIF camera driver (see README.md)."""
