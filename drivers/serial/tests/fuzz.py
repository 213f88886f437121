"""Shared stream generators for the parser property tests."""

from __future__ import annotations

import random
from collections.abc import Callable

from hypothesis import strategies as st

from drivers.serial.errors import CodecError

STREAMS_PER_EXAMPLE = 20
EXAMPLES = 500  # 500 examples x 20 streams = 10,000 streams per parser per run


def mutate(rng: random.Random, frame: bytes) -> bytes:
    """A corrupted copy of ``frame``: flipped, dropped, inserted or truncated bytes."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            del data[rng.randrange(len(data))]
        elif op == 2:
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif data:
            del data[rng.randrange(len(data)) :]
    return bytes(data)


def junk(rng: random.Random, special: bytes) -> bytes:
    """Random junk biased towards the protocol's special bytes (start, end, FE)."""
    n = rng.randint(0, 40)
    return bytes(rng.choice(special) if rng.random() < 0.4 else rng.randrange(256) for _ in range(n))


def overlapping_frame(stream: bytes, boundary: int, decode: Callable[[bytes], object], min_len: int,
                      start: bytes = b"\x68") -> bool:
    """Whether the junk before ``boundary`` holds a frame that passes every check and runs
    into the real frame (a chance collision no scanning parser can tell from a real frame)."""
    for i in range(boundary):
        if not stream.startswith(start, i):
            continue
        for end in range(max(boundary + 1, i + min_len), len(stream) + 1):
            try:
                decode(stream[i:end])
            except CodecError:
                continue
            return True
    return False


seeds = st.integers(min_value=0, max_value=2**32 - 1)
