"""City-platform simulator: receives record batches over MQTT and/or HTTP(S), stores them
in SQLite and reports what arrived (duplicates, missing seq ranges, latency)."""

from hwsim.platform.server import Faults, PlatformSim
from hwsim.platform.store import PlatformStore

__all__ = ["Faults", "PlatformSim", "PlatformStore"]
