"""A stand-in gateway process for kill tests: owns a real ``buffer.Buffer`` and an MQTT
uplink, and appends community records at a fixed rate for a fixed time.

    python -m tests.support.sync_child DB BROKER_URL GW RATE SECONDS

Prints ``ready`` once running. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from buffer import Buffer
from sync import create_uplink, uplink_schema
from tests.support.sync_community import produce


async def main(db: str, url: str, gw: str, rate: float, seconds: float) -> None:
    cfg = uplink_schema("mqtt").model_validate(
        {"name": "city", "kind": "mqtt", "url": url, "topic_prefix": "city",
         "reconnect_min": 0.05, "reconnect_max": 0.5, "backlog_rate": 3000,
         "batch_max_records": 200, "window": 8, "batch_linger": 0.005}
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Buffer(db, gw=gw, uplinks=("city",)) as buf:
        up = create_uplink(cfg, gw_id=gw, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        prod = asyncio.create_task(produce(buf, gw, rate=rate, duration=seconds))
        print("ready", flush=True)
        await stop.wait()
        for t in (prod, task):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(prod, task, return_exceptions=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], float(a[3]), float(a[4])))
