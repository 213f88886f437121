"""An in-memory stand-in with the ``buffer.Buffer`` API, for fast unit tests of the uplinks.
Integration tests use the real ``buffer.Buffer``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.record import LANES, Record, uuid7


@dataclass
class FakeBatch:
    batch_id: str
    uplink: str
    records: list[Record]
    first_seq: int
    last_seq: int


@dataclass
class FakeBuffer:
    gw: str = "gw-test"
    uplinks: Sequence[str] = ("default",)
    records: dict[int, Record] = field(default_factory=dict)
    claimed: dict[str, dict[int, str]] = field(default_factory=dict)
    acked: dict[str, set[int]] = field(default_factory=dict)
    dead: list[tuple[str, list[int], str]] = field(default_factory=list)
    batches: dict[str, FakeBatch] = field(default_factory=dict)
    last_seq: int = 0
    claims: int = 0

    def __post_init__(self) -> None:
        self._cond = asyncio.Condition()

    def _u(self, uplink: str) -> None:
        self.claimed.setdefault(uplink, {})
        self.acked.setdefault(uplink, set())

    async def append(self, records: Sequence[Record]) -> None:
        async with self._cond:
            for r in records:
                self.last_seq += 1
                r.seq = self.last_seq
                self.records[r.seq] = r
            self._cond.notify_all()

    def _pending(self, uplink: str) -> list[int]:
        self._u(uplink)
        done = self.acked[uplink] | {s for _, seqs, _ in self.dead for s in seqs}
        return [s for s in sorted(self.records) if s not in done]

    async def claim(
        self,
        uplink: str,
        *,
        max_records: int,
        lanes: Sequence[str] | None = None,
        min_seq: int | None = None,
        max_seq: int | None = None,
    ) -> FakeBatch | None:
        self.claims += 1
        self._u(uplink)
        out: list[Record] = []
        for lane in lanes or LANES:
            for s in self._pending(uplink):
                if len(out) >= max_records:
                    break
                r = self.records[s]
                if r.lane != lane or s in self.claimed[uplink]:
                    continue
                if (min_seq is not None and s < min_seq) or (max_seq is not None and s > max_seq):
                    continue
                out.append(r)
        if not out:
            return None
        b = FakeBatch(uuid7(), uplink, out, min(r.seq for r in out), max(r.seq for r in out))
        for r in out:
            self.claimed[uplink][r.seq] = b.batch_id
        self.batches[b.batch_id] = b
        return b

    async def ack(self, batch: FakeBatch) -> None:
        for r in batch.records:
            self.acked[batch.uplink].add(r.seq)
            self.claimed[batch.uplink].pop(r.seq, None)

    async def release(self, batch: FakeBatch) -> None:
        for r in batch.records:
            if self.claimed[batch.uplink].get(r.seq) == batch.batch_id:
                del self.claimed[batch.uplink][r.seq]

    async def reject(self, batch: FakeBatch, reason: str) -> None:
        self.dead.append((batch.uplink, [r.seq for r in batch.records], reason))
        await self.release(batch)

    async def wait_for_records(self, uplink: str, timeout: float) -> bool:
        def ready() -> bool:
            return any(s not in self.claimed.get(uplink, {}) for s in self._pending(uplink))

        async with self._cond:
            if ready():
                return True
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(ready)
                return True
            except TimeoutError:
                return False

    def pending_count(self, uplink: str) -> int:
        return len(self._pending(uplink))

    def oldest_pending_age(self, uplink: str) -> float | None:
        p = self._pending(uplink)
        return None if not p else max(0.0, time.time() - self.records[p[0]].ts)

    async def command_seen(self, command_id: str) -> dict[str, Any] | None:
        return None

    async def audit_command(self, command_id: str, entry: dict[str, Any]) -> None:
        return None
