"""Exponential backoff with jitter: the one implementation every retry loop uses (device
probes, bus and event-stream restarts, uplink reconnects, camera login pauses).

The n-th delay (n = 0, 1, 2, ...) is ``min(maximum, minimum * 2**n)`` times a random factor
in ``(1 - jitter, 1]``. ``jitter=1`` is "full jitter" (anything up to the cap: a fleet that
reconnects at once spreads out); ``jitter=0.5`` keeps at least half the cap; ``jitter=0``
is plain doubling.
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


class Backoff:
    def __init__(
        self, minimum: float, maximum: float, *, jitter: float = 1.0, rng: random.Random | None = None
    ) -> None:
        if minimum <= 0 or maximum <= 0:
            raise ValueError("need minimum > 0 and maximum > 0")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter is a fraction in [0, 1]")
        self.minimum = minimum
        self.maximum = maximum
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def cap(self, attempt: int | None = None) -> float:
        """The delay of attempt ``attempt`` (default: the next one) before jitter."""
        n = self.attempt if attempt is None else attempt
        return min(self.maximum, self.minimum * math.pow(2, min(max(0, n), 62)))

    def delay(self, attempt: int, u: float | None = None) -> float:
        """The delay of attempt ``attempt``; ``u`` in [0, 1) picks the jitter (random when
        not given), so schedules can be computed exactly."""
        if u is None:
            u = self._rng.random()
        return self.cap(attempt) * (1.0 - self.jitter * min(1.0, max(0.0, u)))

    def next_delay(self) -> float:
        d = self.delay(self.attempt)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0
