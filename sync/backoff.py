"""Pure timing helpers of the uplinks: Retry-After and a token bucket (backoff is
``gateway.backoff.Backoff``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, *, now: float, maximum: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), clamped to
    ``[0, maximum]``; ``None`` when absent or unparseable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(min(int(text), maximum))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, min(maximum, when.timestamp() - now))


class TokenBucket:
    """Rate limiter in records per second with a burst of ``burst`` records.
    ``rate = 0`` means unlimited."""

    def __init__(
        self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def available(self) -> int:
        if self.unlimited:
            return 1 << 30
        self._refill()
        return int(self._tokens)

    def take(self, n: int) -> None:
        if self.unlimited:
            return
        self._refill()
        self._tokens -= n

    def wait_time(self, n: int) -> float:
        """Seconds until ``n`` tokens are available (0 when they already are)."""
        if self.unlimited:
            return 0.0
        self._refill()
        n = min(n, int(self.burst))
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate
