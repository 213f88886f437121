"""Chaos soak: the community scenario, the gateway daemon, MQTT through a fault proxy, a real
mosquitto and the city-platform simulator under random, logged, seed-reproducible faults
(broker SIGKILL, link cut / flapping / black hole, gateway SIGKILL, disk budget pressure,
dead and garbage-sending devices, camera reboots). See ``tests/support/soak_chaos.py``.

CI size (default): 3 buildings, 140 s of faults, about 3 minutes in all. Long run::

    EDGE_GW_SOAK_SECONDS=3600 .venv/bin/pytest tests/reliability/test_chaos_soak.py -s
    # optional: EDGE_GW_SOAK_SEED=N (replay a run), EDGE_GW_SOAK_BUILDINGS=12,
    #           EDGE_GW_SOAK_BUDGET=256KiB,
    #           EDGE_GW_SOAK_RSS_MB=384 (the memory bound: the unit's MemoryHigh)

On failure the fault log, the seed and the ledger's figures are printed; they are also in
``faults.log`` in the test's temporary folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hwsim.platform.store import PlatformStore

from gateway.record import uuid7
from tests.support.soak_chaos import SoakOptions, run_soak
from tests.support.soak_ledger import RssSamples, judge
from tests.support.sync_mosquitto import have_mosquitto

_SECONDS = float(os.environ.get("EDGE_GW_SOAK_SECONDS", "140"))
GW = "gw-ledger"


@pytest.mark.mosquitto
@pytest.mark.slow
@pytest.mark.skipif(not have_mosquitto(), reason="needs mosquitto")
@pytest.mark.timeout(int(_SECONDS) + 420)
async def test_chaos_soak(tmp_path: Path) -> None:
    opt = SoakOptions.from_env(tmp_path)
    result, text = await run_soak(opt)
    print(text)
    assert result["ok"], f"chaos soak failed (seed {opt.seed}):\n{text}"
    # the faults really happened and were survived
    counts = result["faults"]
    for kind in ("broker_kill", "link_cut", "gateway_kill", "disk_pressure"):
        assert counts.get(kind, 0) >= 1, f"fault {kind} never ran (seed {opt.seed}):\n{text}"
    assert result["gateway_starts"] >= 2, text
    assert result["unique"] > 0 and result["held_in_buffer"] == 0, text
    # the small budget really evicted, and the gateway told the platform so
    if result["evictions_seen"]:
        assert result["gap_records"] >= 1 and result["evicted_by_gaps"] > 0, text
        assert "event" not in result["gap_lanes"], text


# ---------------------------------------------------------------- the ledger checks themselves


def _rec(seq: int, kind: str = "telemetry", rid: str | None = None, v: Any = 1.0, **extra: Any) -> dict[str, Any]:
    return {"id": rid or str(uuid7()), "seq": seq, "gw": GW, "dev": "d1", "cls": "smoke_detector",
            "pt": "smoke_density", "kind": kind, "v": v, "q": "good", "ts": 1_700_000_000.0 + seq, **extra}


def _gap(seq: int, first: int, last: int, lane: str, n: int) -> dict[str, Any]:
    return {"id": str(uuid7()), "seq": seq, "gw": GW, "dev": GW, "cls": "gateway", "pt": "gap",
            "kind": "lifecycle", "v": n, "q": "good", "ts": 1_700_000_000.0 + seq,
            "attrs": {"first_seq": first, "last_seq": last, "lane": lane, "reason": "budget"}}


def _ledger(tmp_path: Path, batches: list[list[dict[str, Any]]], *, last_seq: int, held: list[int] = [],  # noqa: B006
            rss: int = 10 << 20) -> dict[str, Any]:
    db = tmp_path / "platform.db"
    store = PlatformStore(db)
    try:
        for i, recs in enumerate(batches):
            store.ingest({"gw": GW, "batch_id": f"b{i}", "hist": False, "records": recs}, via="test")
        summary = store.summary(GW)
    finally:
        store.close()
    samples = RssSamples(bound_bytes=100 << 20)
    samples.add(time.monotonic(), 1, rss)
    return judge(summary["gateways"][GW], platform_db=db, gw=GW, last_seq=last_seq, held=held,
                 rss=samples, malformed=summary["malformed"])


def test_ledger_clean_run_with_resend_and_held_records(tmp_path: Path) -> None:
    recs = [_rec(s) for s in range(1, 6)]
    v = _ledger(tmp_path, [recs, recs[2:4]], last_seq=7, held=[6, 7])
    assert v["ok"], v["failures"]
    assert v["duplicate_rows"] == 2 and v["held_in_buffer"] == 2 and v["missing"] == 0


def test_ledger_missing_record_fails(tmp_path: Path) -> None:
    v = _ledger(tmp_path, [[_rec(1), _rec(2), _rec(4)]], last_seq=4)
    assert not v["ok"] and v["missing"] == 1 and v["missing_ranges"] == [[3, 3]]


def test_ledger_gap_explains_evicted_telemetry_but_not_more(tmp_path: Path) -> None:
    ok = _ledger(tmp_path, [[_rec(1), _rec(4), _gap(5, 2, 3, "telemetry", 2)]], last_seq=5)
    assert ok["ok"], ok["failures"]
    assert ok["evicted_by_gaps"] == 2 and ok["explained_by_gap_records"] == 2
    # a gap range spans other lanes' seqs too: an event missing inside it is not explained
    (tmp_path / "platform.db").unlink()
    bad = _ledger(tmp_path, [[_rec(1), _rec(4), _gap(5, 2, 3, "telemetry", 1)]], last_seq=5)
    assert not bad["ok"] and "account for only 1" in " ".join(bad["failures"])


def test_ledger_evicted_events_fail(tmp_path: Path) -> None:
    v = _ledger(tmp_path, [[_rec(1), _gap(3, 2, 2, "event", 1)]], last_seq=3)
    assert not v["ok"] and v["event_gaps"] == 1


def test_ledger_changed_duplicate_and_seq_conflict_fail(tmp_path: Path) -> None:
    rid = str(uuid7())
    v = _ledger(tmp_path, [[_rec(1, rid=rid, v=1.0)], [_rec(1, rid=rid, v=2.0)], [_rec(2), _rec(2)]], last_seq=2)
    assert not v["ok"]
    text = " ".join(v["failures"])
    assert "different contents" in text and "seq 2 arrived under 2 different ids" in text


def test_ledger_memory_bound(tmp_path: Path) -> None:
    v = _ledger(tmp_path, [[_rec(1)]], last_seq=1, rss=101 << 20)
    assert not v["ok"] and "above the bound" in v["failures"][0]
