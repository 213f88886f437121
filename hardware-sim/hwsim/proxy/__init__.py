"""Fault-injecting loopback TCP proxy (cut, black-hole, latency, bandwidth)."""

from hwsim.proxy.proxy import FaultProxy, ProxyState

__all__ = ["FaultProxy", "ProxyState"]
