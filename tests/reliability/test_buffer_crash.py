"""SIGKILL the real buffer writer under load, again and again; nothing accepted may be lost.

A forked child runs the buffer with concurrent producers and a claim/ack drainer and
reports through a pipe every seq whose append() returned (and every seq it is about to
acknowledge). The parent kills it at a random moment, then checks the file:
``PRAGMA integrity_check`` is ok; every accepted seq is stored or was being acknowledged;
seqs never repeat and never go backwards across restarts.

Kills: EDGE_GW_CRASH_KILLS (default 200), bounded by EDGE_GW_CRASH_SECONDS (default 100).
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from buffer._codec import LANE_TABLES

KILLS = int(os.environ.get("EDGE_GW_CRASH_KILLS", "200"))
SECONDS = float(os.environ.get("EDGE_GW_CRASH_SECONDS", "100"))


def parse(buf: bytes, accepted: list[tuple[int, int]], acking: set[int]) -> bytes:
    pos = 0
    while pos < len(buf):
        tag = buf[pos : pos + 1]
        if tag == b"A":
            if len(buf) - pos < 17:
                break
            first, last = struct.unpack_from("<qq", buf, pos + 1)
            accepted.append((first, last))
            pos += 17
        elif tag == b"K":
            if len(buf) - pos < 3:
                break
            (n,) = struct.unpack_from("<h", buf, pos + 1)
            if len(buf) - pos < 3 + 8 * n:
                break
            acking.update(struct.unpack_from(f"<{n}q", buf, pos + 3))
            pos += 3 + 8 * n
        else:
            raise AssertionError(f"garbage in the pipe at {pos}: {buf[pos:pos + 20]!r}")
    return buf[pos:]


def run_child(path: str, seed: int, life: float) -> bytes:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(r)
            from tests.support.buffer_crash_child import child_main

            child_main(path, w, seed)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    data = bytearray()
    deadline = time.monotonic() + life
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                data += chunk
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        while chunk := os.read(r, 1 << 16):
            data += chunk
        os.close(r)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"child ended on its own (status {status}): it crashed"
    )
    return bytes(data)


def inspect(path: str) -> tuple[set[int], int]:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        seqs: set[int] = set()
        for table in LANE_TABLES.values():
            seqs |= {r[0] for r in conn.execute(f"SELECT seq FROM {table}")}
        last = int(conn.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
        return seqs, last
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_never_loses_accepted_records(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.db")
    rng = random.Random(int(os.environ.get("EDGE_GW_CRASH_SEED", "12345")))
    accepted_all: set[int] = set()
    acked_all: set[int] = set()
    high = 0  # highest seq ever reported accepted
    kills = 0
    total_accepted = 0
    started = time.monotonic()
    while kills < KILLS and time.monotonic() - started < SECONDS:
        life = rng.uniform(0.02, 0.35) if kills else 0.6
        data = run_child(path, rng.randrange(1 << 30), life)
        kills += 1
        accepted: list[tuple[int, int]] = []
        acking: set[int] = set()
        rest = parse(data, accepted, acking)
        assert len(rest) < 17 + 8 * 500, "only a message cut by the kill may be incomplete"
        run_seqs: list[int] = []
        for first, last in accepted:
            assert first <= last
            run_seqs.extend(range(first, last + 1))
        # seqs never repeat and never go backwards, within and across restarts
        assert len(run_seqs) == len(set(run_seqs)), "a seq was handed out twice"
        if run_seqs:
            assert min(run_seqs) > high, f"seq went backwards: {min(run_seqs)} <= {high}"
            high = max(run_seqs)
        assert not accepted_all.intersection(run_seqs)
        accepted_all.update(run_seqs)
        total_accepted += len(run_seqs)
        acked_all |= acking
        stored, last_seq = inspect(path)
        assert last_seq >= high
        assert not stored or max(stored) <= last_seq
        lost = {s for s in accepted_all if s not in stored and s not in acked_all}
        assert not lost, f"after kill {kills}: {len(lost)} accepted record(s) lost, e.g. {sorted(lost)[:5]}"
        # keep the bookkeeping small: forget what is settled
        accepted_all &= stored
        acked_all &= stored
    assert total_accepted > 10 * kills, f"too little load: {total_accepted} records in {kills} runs"
    min_kills = int(os.environ.get("EDGE_GW_CRASH_MIN_KILLS", str(min(KILLS, 200))))
    assert kills >= min_kills, f"only {kills} kills in {SECONDS}s"
