"""``edge-gateway buffer`` sub-commands on a real file (through buffer.cli.main)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from buffer import Buffer, cli
from tests.support.buffer_helpers import GW, event, state, tel


@pytest.fixture
def dbfile(tmp_path: Path) -> str:
    path = str(tmp_path / "b.db")

    async def fill() -> None:
        async with Buffer(path, gw=GW, uplinks=("city", "district")) as buf:
            await buf.append([event(), state(), tel(1.0), tel(2.0)])
            b = await buf.claim("city", max_records=1)
            assert b is not None
            await buf.reject(b, "422 invalid")

    asyncio.run(fill())
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().out


def test_stats_json_and_table(dbfile: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["buffer", "stats", "--db", dbfile, "--json"], capsys)
    st = json.loads(out)
    assert code == 0 and st["records"] == 4 and st["last_seq"] == 4
    assert st["lanes"]["telemetry"]["records"] == 2
    assert st["uplinks"]["city"]["unacknowledged"] == {"event": 0, "state": 1, "telemetry": 2}
    assert st["uplinks"]["district"]["unacknowledged"]["event"] == 1
    assert st["dead_letters"] == [{"uplink": "city", "reason": "422 invalid", "records": 1}]
    code, out = run(["buffer", "--db", dbfile, "stats"], capsys)
    assert code == 0 and "telemetry" in out and "district" in out and "422 invalid" in out


def test_peek_and_export(dbfile: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["buffer", "peek", "--db", dbfile, "--lane", "telemetry", "--limit", "1", "--json"], capsys)
    assert code == 0 and [r["v"] for r in json.loads(out)] == [2.0]
    code, out = run(["buffer", "peek", "--db", dbfile, "--lane", "telemetry", "--oldest", "--limit", "1", "--json"],
                    capsys)
    assert code == 0 and [r["v"] for r in json.loads(out)] == [1.0]
    code, out = run(["buffer", "peek", "--db", dbfile, "--lane", "event"], capsys)
    assert code == 0 and "alarm" in out
    code, out = run(["buffer", "export", "--db", dbfile, "--after-seq", "1"], capsys)
    lines = [json.loads(x) for x in out.splitlines()]
    assert [r["seq"] for r in lines] == [2, 3, 4] and lines[0]["kind"] == "state"


def test_peek_defaults_to_every_lane_newest_first(dbfile: str, capsys: pytest.CaptureFixture[str]) -> None:
    # stored: 1 event, 2 state, 3 and 4 telemetry
    code, out = run(["buffer", "peek", "--db", dbfile, "--json"], capsys)
    assert code == 0 and [(r["seq"], r["kind"]) for r in json.loads(out)] == [
        (4, "telemetry"), (3, "telemetry"), (2, "state"), (1, "event")]
    code, out = run(["buffer", "peek", "--db", dbfile, "--limit", "2", "--json"], capsys)
    assert [r["seq"] for r in json.loads(out)] == [4, 3]
    code, out = run(["buffer", "peek", "--db", dbfile, "--oldest", "--limit", "3", "--json"], capsys)
    assert [r["seq"] for r in json.loads(out)] == [1, 2, 3]
    code, out = run(["buffer", "peek", "--db", dbfile, "--lane", "state", "--json"], capsys)
    assert [r["seq"] for r in json.loads(out)] == [2]
    code, out = run(["buffer", "peek", "--db", dbfile], capsys)
    assert code == 0 and "newest 4 record(s) of all lanes" in out
    for lane in ("event", "state", "telemetry"):
        assert lane in out


def test_export_many_in_chunks(tmp_path: Path) -> None:
    path = str(tmp_path / "c.db")

    async def fill() -> None:
        async with Buffer(path, gw=GW) as buf:
            await buf.append([event() if i % 3 == 0 else tel(float(i)) for i in range(120)])

    asyncio.run(fill())
    from buffer import inspect as ins

    conn = ins.open_ro(path)
    seqs = [r.seq for r in ins.export(conn, 10, chunk=7)]
    conn.close()
    assert seqs == list(range(11, 121))


def test_vacuum_and_errors(dbfile: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["buffer", "vacuum", "--db", dbfile, "--json"], capsys)
    assert code == 0 and json.loads(out)["after_bytes"] > 0
    assert cli.main(["buffer", "stats", "--db", str(tmp_path / "missing.db")]) == 1
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 100)
    assert cli.main(["buffer", "stats", "--db", str(bad)]) == 1
    assert cli.main(["buffer", "stats"]) == 2
    out = io.StringIO()
    assert out.getvalue() == ""
