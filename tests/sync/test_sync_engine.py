"""The uplink pump against a fake buffer and the HTTP platform simulator (no broker):
claim economy during a drain, and acknowledgements written in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwsim.platform import PlatformSim

from sync import create_uplink, uplink_schema
from tests.support.sync_community import make_records
from tests.support.sync_fake_buffer import FakeBatch, FakeBuffer
from tests.support.waiting import wait_until

GW = "gw-engine"


class CountingBuffer(FakeBuffer):
    """Counts live claims (``min_seq``) and backlog claims (``max_seq``) separately."""

    live_claims: int = 0
    backlog_claims: int = 0

    async def claim(
        self,
        uplink: str,
        *,
        max_records: int,
        lanes: Sequence[str] | None = None,
        min_seq: int | None = None,
        max_seq: int | None = None,
    ) -> FakeBatch | None:
        if min_seq is not None:
            self.live_claims += 1
        if max_seq is not None:
            self.backlog_claims += 1
        return await super().claim(uplink, max_records=max_records, lanes=lanes, min_seq=min_seq, max_seq=max_seq)


async def test_drain_does_not_ask_for_live_records_that_cannot_exist(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db") as sim:
        buf = CountingBuffer(gw=GW, uplinks=("d",))
        await buf.append(make_records(GW, 3000))
        cfg: Any = uplink_schema("https").model_validate(
            {"name": "d", "kind": "https", "url": sim.base_url, "allow_plaintext": True,
             "batch_max_records": 100, "window": 4, "backlog_rate": 0, "batch_linger": 0.005}
        )
        up = create_uplink(cfg, gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: len(buf.acked.get("d", ())) == 3000, 20)
            assert buf.backlog_claims in (30, 31)  # one per batch, one that found the end
            assert buf.live_claims == 0  # nothing was appended after the connection
            # live data after the drain: claimed at once, never mistaken for backlog
            await buf.append(make_records(GW, 150, start=3000))
            await wait_until(lambda: len(buf.acked.get("d", ())) == 3150, 10)
            assert 2 <= buf.live_claims <= 4
            s = sim.store.summary(GW)["gateways"][GW]
            assert s["unique"] == 3150 and s["missing"] == [] and s["duplicates"] == 0
            assert s["hist_records"] == 3000
            st = up.state()
            assert st["records_acked"] == 3150 and st["pending"] == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not buf.claimed.get("d")  # nothing left claimed: every ack was written before the stop


async def test_stop_waits_for_background_acks(tmp_path: Path) -> None:
    class SlowAck(FakeBuffer):
        async def ack(self, batch: FakeBatch) -> None:
            await asyncio.sleep(0.3)
            await super().ack(batch)

    async with PlatformSim(tmp_path / "p.db") as sim:
        buf = SlowAck(gw=GW, uplinks=("d",))
        await buf.append(make_records(GW, 20))
        cfg: Any = uplink_schema("https").model_validate(
            {"name": "d", "kind": "https", "url": sim.base_url, "allow_plaintext": True, "backlog_rate": 0}
        )
        up = create_uplink(cfg, gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        await wait_until(lambda: sim.store.summary(GW)["gateways"].get(GW, {}).get("unique") == 20, 10)
        task.cancel()  # while the acknowledgement is still being written
        await asyncio.gather(task, return_exceptions=True)
        assert len(buf.acked.get("d", ())) == 20 and up.state()["records_acked"] == 20
