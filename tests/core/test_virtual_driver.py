from __future__ import annotations

from pathlib import Path

from gateway.harness import DeviceHarness

CONFIG = """
[gateway]
id = "g"
district = "510107"
community = "c"

[[devices]]
id = "lift"
class = "elevator"
profile = "virtual-elevator"
poll = "1s"

[[devices]]
id = "meter"
class = "electricity_meter"
profile = "virtual-electricity"

[[devices]]
id = "light"
class = "streetlight"
profile = "virtual-streetlight"
"""


async def test_generators_produce_class_typed_values(tmp_path: Path) -> None:
    async with DeviceHarness.from_text(CONFIG, tmp_path) as h:
        recs = await h.poll()
        by = {(r.dev, r.pt): r for r in recs}
        assert by[("lift", "direction")].v in ("idle", "up", "down")
        assert isinstance(by[("lift", "floor")].v, int)
        v = by[("meter", "voltage")].v
        assert isinstance(v, float) and 210 <= v <= 240
        assert by[("meter", "power")].u == "W" and by[("meter", "power")].v >= 0
        e1 = by[("meter", "energy_import")].v
        recs2 = await h.poll("meter")
        e2 = [r for r in recs2 if r.pt == "energy_import"][0].v
        assert isinstance(e1, float) and isinstance(e2, float) and e2 >= e1  # counters never go back
        res = await h.write("light", "on", False)
        assert res["outcome"] == "ok"
        after = await h.poll("light")
        assert [r for r in after if r.pt == "on"] == []  # already reported by the command
        assert h.trackers["light"].latest["on"][0] is False
        assert [(r.pt, r.v) for r in h.records if r.pt == "on"][-1] == ("on", False)
        assert (await h.write("light", "power", 5))["outcome"] == "rejected"
