"""The chaos soak's end-of-run checks over the platform simulator's ledger (pure functions
plus read-only SQLite queries; no processes).

``judge()`` combines:

* the demo's verdict (``hwsim.scenario.demo.verdict``): every seq the gateway committed is
  received by the platform, still held in the stopped gateway's buffer, or inside a gap
  record the gateway sent;
* duplicates: every repeated row of the platform's ``rx`` table carries an id the platform
  had already seen, with the same seq and content (a resend, never a new record under an
  old id or a new id under an old seq);
* events never evicted: no gap record names the ``event`` lane;
* the gateway's memory bound: the largest VmRSS sampled during the run.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsim.scenario.demo import verdict


@dataclass
class RssSamples:
    """VmRSS samples of the gateway process(es), in bytes."""

    bound_bytes: int
    samples: int = 0
    peak_bytes: int = 0
    peak_pid: int | None = None
    over: list[tuple[float, int, int]] = field(default_factory=list)  # (t, pid, bytes) above the bound
    # per gateway process: [first t, first bytes, peak bytes, last t, last bytes]
    per_pid: dict[int, list[float]] = field(default_factory=dict)

    def add(self, t: float, pid: int, rss: int) -> None:
        self.samples += 1
        life = self.per_pid.setdefault(pid, [t, rss, rss, t, rss])
        life[2] = max(life[2], rss)
        life[3], life[4] = t, rss
        if rss > self.peak_bytes:
            self.peak_bytes, self.peak_pid = rss, pid
        if rss > self.bound_bytes and len(self.over) < 100:
            self.over.append((t, pid, rss))


def read_vmrss(pid: int) -> int | None:
    """VmRSS of a process in bytes (None when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return None


def duplicate_problems(db: Path, gw: str, limit: int = 20) -> tuple[int, list[str]]:
    """(duplicate rows, problems): a duplicate must repeat the first row with that id exactly
    (seq, device, point, value, acquisition time); one seq must never carry two ids."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        dups = con.execute(
            "SELECT count(*) - count(DISTINCT rid) FROM rx WHERE gw = ?", (gw,)).fetchone()[0]
        changed = con.execute(
            "SELECT rid, count(DISTINCT seq), count(DISTINCT dev || '|' || pt || '|' || v || '|' || ts) "
            "FROM rx WHERE gw = ? GROUP BY rid HAVING count(*) > 1 AND "
            "(count(DISTINCT seq) > 1 OR count(DISTINCT dev || '|' || pt || '|' || v || '|' || ts) > 1) "
            "LIMIT ?", (gw, limit)).fetchall()
        conflicts = con.execute(
            "SELECT seq, count(DISTINCT rid) FROM rx WHERE gw = ? GROUP BY seq "
            "HAVING count(DISTINCT rid) > 1 LIMIT ?", (gw, limit)).fetchall()
    finally:
        con.close()
    problems = [f"id {rid} arrived with {ns} different seqs / {nc} different contents"
                for rid, ns, nc in changed]
    problems += [f"seq {seq} arrived under {n} different ids" for seq, n in conflicts]
    return int(dups or 0), problems


def event_gaps(gaps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Gap records that say events were evicted."""
    return [g for g in gaps if g.get("lane") == "event"]


def lane_counts(db: Path, gw: str) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT lane, count(DISTINCT rid) FROM rx WHERE gw = ? GROUP BY lane", (gw,)).fetchall()
    finally:
        con.close()
    return {str(lane): int(n) for lane, n in rows}


def judge(
    platform: dict[str, Any],
    *,
    platform_db: Path,
    gw: str,
    last_seq: int,
    held: list[int],
    rss: RssSamples,
    malformed: int,
) -> dict[str, Any]:
    """Every end-of-run check; ``ok`` is true only when all of them pass."""
    v = verdict(platform, last_seq, held)
    dup_rows, dup_problems = duplicate_problems(platform_db, gw)
    bad_gaps = event_gaps(list(platform.get("gaps", [])))
    failures: list[str] = []
    if v["missing"]:
        failures.append(f"{v['missing']} accepted records missing outside gap records: {v['missing_ranges']}")
    if v["seq_conflicts"]:
        failures.append(f"{v['seq_conflicts']} seqs carry more than one id")
    failures += dup_problems
    if bad_gaps:
        failures.append(f"events were evicted: {json.dumps(bad_gaps)[:500]}")
    evicted = sum(int(g["v"]) for g in platform.get("gaps", []) if isinstance(g.get("v"), int | float))
    if v["explained_by_gap_records"] > evicted:
        # a gap record's seq range spans other lanes' seqs too: a missing seq inside it is only
        # explained when the gap records' counts account for every one of them
        failures.append(f"{v['explained_by_gap_records']} missing seqs lie inside gap ranges, but the gap "
                        f"records account for only {evicted} evicted records")
    if rss.over:
        t, pid, b = rss.over[0]
        failures.append(f"gateway RSS {b / 2**20:.1f} MiB above the bound {rss.bound_bytes / 2**20:.0f} MiB "
                        f"(pid {pid} at t={t:.0f}s; {len(rss.over)} samples over)")
    if rss.samples == 0:
        failures.append("no RSS sample of the gateway was taken")
    if malformed:
        failures.append(f"the platform received {malformed} malformed messages")
    if last_seq <= 0:
        failures.append("the gateway committed nothing")
    v.update({
        "duplicate_rows": dup_rows,
        "event_gaps": len(bad_gaps),
        "gap_lanes": sorted({str(g.get("lane")) for g in platform.get("gaps", [])}),
        "evicted_by_gaps": evicted,
        "lanes_received": lane_counts(platform_db, gw),
        "rss_peak_mib": round(rss.peak_bytes / 2**20, 1),
        "rss_bound_mib": round(rss.bound_bytes / 2**20, 1),
        "rss_samples": rss.samples,
        "rss_per_process_mib": [
            {"pid": pid, "from_s": round(a[0]), "to_s": round(a[3]), "first": round(a[1] / 2**20, 1),
             "peak": round(a[2] / 2**20, 1), "last": round(a[4] / 2**20, 1)}
            for pid, a in rss.per_pid.items()],
        "malformed": malformed,
        "failures": failures,
        "ok": not failures,
    })
    return v
