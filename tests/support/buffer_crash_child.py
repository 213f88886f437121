"""Child side of the buffer crash test: the real writer under load, reporting to a pipe.

Messages (little-endian, each written with ONE os.write of < PIPE_BUF bytes, so atomic):
``b"A" + first:int64 + last:int64``  an append returned: seqs first..last are accepted;
``b"K" + n:int16 + n*int64``         about to acknowledge these seqs (they may vanish).
"""

from __future__ import annotations

import asyncio
import os
import random
import struct

from buffer import Buffer
from gateway.record import Record, now

GW = "crash-gw"


def _rec(rng: random.Random, i: int) -> Record:
    roll = rng.random()
    if roll < 0.1:
        return Record(gw=GW, dev=f"s{i % 7}", cls="smoke_detector", pt="alarm", kind="event",
                      v=bool(i % 2), ts=now(), sev="critical")
    if roll < 0.2:
        return Record(gw=GW, dev=f"e{i % 5}", cls="elevator", pt="door", kind="state",
                      v="open", ts=now())
    return Record(gw=GW, dev=f"m{i % 50}", cls="meter", pt="power", kind="telemetry",
                  v=rng.uniform(0, 100), u="W", ts=now())


async def run(path: str, fd: int, seed: int) -> None:
    rng = random.Random(seed)
    async with Buffer(path, gw=GW, commit_max_records=200, maintenance_interval=0.05) as buf:

        async def producer(k: int) -> None:
            i = 0
            while True:
                recs = [_rec(rng, i + j) for j in range(rng.randint(1, 40))]
                i += len(recs)
                await buf.append(recs)
                os.write(fd, b"A" + struct.pack("<qq", recs[0].seq, recs[-1].seq))

        async def drainer() -> None:
            while True:
                b = await buf.claim("default", max_records=rng.randint(1, 300))
                if b is None:
                    await buf.wait_for_records("default", 0.05)
                    continue
                seqs = [r.seq for r in b.records]
                for i in range(0, len(seqs), 500):
                    part = seqs[i : i + 500]
                    os.write(fd, b"K" + struct.pack(f"<h{len(part)}q", len(part), *part))
                if rng.random() < 0.2:
                    await buf.release(b)
                else:
                    await buf.ack(b)

        tasks = [asyncio.create_task(producer(k)) for k in range(8)]
        tasks.append(asyncio.create_task(drainer()))
        await asyncio.gather(*tasks)


def child_main(path: str, fd: int, seed: int) -> None:
    asyncio.run(run(path, fd, seed))
