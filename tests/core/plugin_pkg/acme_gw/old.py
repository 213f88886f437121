"""A driver built for a plugin API this gateway does not provide."""

from __future__ import annotations

from gateway.plugin import Bus, BusSpec, Driver


class OldDriver(Driver):
    name = "acme_old"
    version = "0.9.0"
    api_version = (2, 0)

    def open_bus(self, spec: BusSpec) -> Bus:
        raise NotImplementedError
