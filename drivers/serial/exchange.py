"""Request/reply plumbing shared by the protocol handlers: a reply matcher around a
resynchronising scanner, and retries that turn link failures into plugin errors."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from drivers.serial import metrics
from drivers.serial.link import Link, LinkError
from gateway.plugin import DeviceSpec, DeviceUnavailable, PointSpec, RawValue, Reading

F = TypeVar("F")


class Matcher(Generic[F]):
    """Feeds reply chunks to a fresh scanner; returns the first frame ``accept`` takes.
    Other complete frames go to ``on_stray`` (or are counted as discarded)."""

    def __init__(self, scanner: Any, accept: Callable[[F], bool], *, bus: str, protocol: str,
                 on_stray: Callable[[F], None] | None = None) -> None:
        self.scanner = scanner
        self.accept = accept
        self.bus = bus
        self.protocol = protocol
        self.on_stray = on_stray
        self.strays = 0
        self.echoes = 0

    def __call__(self, chunk: bytes) -> F | None:
        for frame in self.scanner.feed(chunk):
            if self.accept(frame):
                return frame  # type: ignore[no-any-return]
            self.strays += 1
            if getattr(frame, "is_reply", True) is False:
                self.echoes += 1  # our own request heard back (adapter echo)
            if self.on_stray is not None:
                self.on_stray(frame)
        return None

    def heard_nothing(self) -> bool:
        """Nothing but echoes of requests arrived: the device itself was silent."""
        st = self.scanner.stats
        return not self.scanner.pending and not st.discarded and self.strays == self.echoes

    def mid_frame(self) -> bool:
        """Whether a frame candidate is partly received (the inter-byte limit applies)."""
        return bool(self.scanner.pending)

    def record(self) -> None:
        st = self.scanner.stats
        if st.discarded:
            metrics.DISCARDED_BYTES.labels(self.bus).inc(st.discarded)
        for reason in ("bad_checksum", "bad_end", "bad_length"):
            n = getattr(st, reason, 0)
            if n:
                metrics.BAD_FRAMES.labels(self.bus, self.protocol, reason.removeprefix("bad_")).inc(n)


class Exchanger:
    """Runs exchanges on a link with the bus's retry policy."""

    def __init__(self, link: Link, bus: str, *, retries: int, silent_retries: int, preamble: int) -> None:
        self.link = link
        self.bus = bus
        self.retries = retries
        self.silent_retries = silent_retries
        self.preamble = preamble

    async def request(self, request: bytes, make_matcher: Callable[[], Matcher[F]], *,
                      first_byte_timeout: float | None = None) -> F:
        corrupt = silent = 0
        while True:
            matcher = make_matcher()
            try:
                return await self.link.transact(request, matcher, first_byte_timeout=first_byte_timeout)
            except LinkError as exc:
                if exc.reason == "port":
                    raise DeviceUnavailable("port", exc.detail) from None
                if exc.reason == "timeout":
                    silent += 1
                    if silent > self.silent_retries:
                        raise DeviceUnavailable("timeout", "no reply") from None
                else:
                    corrupt += 1
                    if corrupt > self.retries:
                        reason = "bad_frame" if matcher.strays == 0 else "wrong_reply"
                        raise DeviceUnavailable(reason, exc.detail) from None
                metrics.RETRIES.labels(self.bus).inc()
            finally:
                matcher.record()

    async def broadcast(self, request: bytes) -> None:
        try:
            await self.link.send_only(request)
        except LinkError as exc:
            raise DeviceUnavailable("port", exc.detail) from None


class DeviceHandler(abc.ABC):
    """Protocol logic for one device on a bus."""

    protocol: str = ""

    def __init__(self, device: DeviceSpec, ex: Exchanger) -> None:
        self.device = device
        self.ex = ex

    def requests_per_poll(self) -> int:
        return 1

    @abc.abstractmethod
    async def read(self, points: Sequence[PointSpec]) -> Reading: ...

    @abc.abstractmethod
    async def write(self, point: PointSpec, value: RawValue) -> RawValue: ...
