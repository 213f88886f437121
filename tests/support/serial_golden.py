"""Golden cases of the serial drivers (``drivers/serial/tests/cases/<name>/``):

* ``sim.toml`` -- the simulated line for ``hwsim dlt645|cjt188|framed --config`` (values frozen
  so records are exact); optional top-level ``[[emit]]`` entries are device-initiated frames
  the test makes the simulator push after the first poll (``address``, ``event`` and the
  event's fields);
* ``config.toml`` -- a gateway config whose bus line ``port = "/dev/ttySIM"`` the test points
  at the simulator (its pseudo-terminal or ``tcp://127.0.0.1:PORT``);
* ``expected.jsonl`` -- the canonical records of the first poll followed by the pushed events,
  compared on ``dev, cls, pt, kind, v, u, q, sev`` (and ``attrs`` where the expected line has
  it); ``id``, ``seq`` and ``ts`` vary from run to run and are not compared.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

CASES_DIR = Path(__file__).resolve().parents[2] / "drivers" / "serial" / "tests" / "cases"
FIELDS = ("dev", "cls", "pt", "kind", "v", "u", "q", "sev")
PORT_LINE = 'port = "/dev/ttySIM"'


def case_names() -> list[str]:
    return sorted(p.name for p in CASES_DIR.iterdir() if (p / "config.toml").is_file())


def load_expected(name: str) -> list[dict[str, Any]]:
    text = (CASES_DIR / name / "expected.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_sim_file(name: str) -> dict[str, Any]:
    return tomllib.loads((CASES_DIR / name / "sim.toml").read_text("utf-8"))


def sim_protocol(sim: dict[str, Any]) -> str:
    """The ``hwsim`` sub-command for a case (the protocol of its first device)."""
    return str(sim["devices"][0]["protocol"])


def config_for(name: str, port: str) -> str:
    text = (CASES_DIR / name / "config.toml").read_text("utf-8")
    assert text.count(PORT_LINE) == 1, f"case {name}: config.toml must have the line {PORT_LINE}"
    return text.replace(PORT_LINE, f'port = "{port}"')


def profiles_used(name: str) -> set[str]:
    cfg = tomllib.loads((CASES_DIR / name / "config.toml").read_text("utf-8"))
    return {str(d["profile"]) for d in cfg.get("devices", [])}


def comparable(records: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[str]:
    """Records as sorted JSON lines of the compared fields; ``attrs`` joins the comparison
    when any expected record carries it."""
    fields = FIELDS + (("attrs",) if any("attrs" in e for e in expected) else ())
    return sorted(json.dumps({f: r.get(f) for f in fields}, sort_keys=True) for r in records)
