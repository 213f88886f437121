"""Public value types of the buffer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.record import Record


class BufferRefused(Exception):
    """Records the buffer did not accept.

    ``reason`` is a short label (``disk_full``, ``read_only``, ``io_error``,
    ``reserve_full``, ``invalid``, ``queue_full``, ``closed``); ``records`` are the
    refused records (their ``seq`` stays 0).
    """

    def __init__(self, reason: str, records: Sequence[Record], detail: str = "") -> None:
        self.reason = reason
        self.records = list(records)
        self.detail = detail
        msg = f"{len(self.records)} record(s) refused: {reason}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class BufferUnavailable(RuntimeError):
    """The buffer cannot be used (not started, closed, or an unusable database)."""


@dataclass(slots=True)
class Span:
    """A run of claimed rows of one lane: every row of ``lane`` in ``[start, end]`` that the
    uplink had not acknowledged belongs to the batch."""

    lane: str
    start: int
    end: int
    count: int
    nbytes: int


@dataclass(eq=False)
class Batch:
    """Records claimed by one uplink; in flight until acknowledged, released or rejected."""

    batch_id: str
    uplink: str
    records: list[Record]
    first_seq: int
    last_seq: int
    spans: list[Span] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.records)
