"""Base of a simulated device: address, reply quirks and evolving values."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Quirks:
    fe: int = 0  # FE bytes before each reply (0-4)
    delay: float = 0.03  # response delay Td (s)
    slow_first_byte: float = 0.0  # extra pause after the first reply byte (s)
    echo: bool = False  # repeat the request on the line before replying (adapter echo)
    silent: bool = False  # never answer
    bad_checksum: bool = False
    wrong_length: bool = False
    junk: int = 0  # random junk bytes before the reply
    unsupported: list[str] = field(default_factory=list)  # identifiers answered with an error

    def update(self, values: dict[str, Any]) -> None:
        for key, val in values.items():
            if not hasattr(self, key):
                raise KeyError(f"unknown quirk {key!r}")
            setattr(self, key, val)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SimDevice:
    protocol = ""

    def __init__(self, address: str, quirks: dict[str, Any] | None = None, seed: int = 0) -> None:
        self.address = address
        self.quirks = Quirks()
        self.quirks.update(quirks or {})
        self.rng = random.Random(seed or hash(address) & 0xFFFF)
        self.requests = 0
        self.replies = 0
        self._t = time.monotonic()

    def tick(self) -> float:
        """Seconds since the last evolution step (values evolve lazily on each request)."""
        now = time.monotonic()
        dt, self._t = now - self._t, now
        return dt

    def handle(self, req: Any) -> bytes | None:
        """The reply frame to a request (``None``: stay silent)."""
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_values(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k not in self.values:  # type: ignore[attr-defined]
                raise KeyError(f"unknown value {k!r}")
            self.values[k] = v  # type: ignore[attr-defined]
