"""The real daemon with uplinks, for the sync integration tests.

* :func:`community_config` -- the shipped example community (27 virtual devices) plus,
  optionally, fast "load" sensors and "siren" event sources from a site profile folder,
  and ``[[uplinks]]`` entries.
* :class:`AsyncDaemon` -- :class:`tests.support.core_daemon.Daemon` driven from async tests
  without blocking the event loop (the platform simulator and the fault proxy run in it).
* :func:`buffer_unacked` -- read-only look into the daemon's buffer file after it stopped:
  ``last_seq`` and the seqs an uplink has not acknowledged (documented file layout, see
  ``buffer/README.md``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.core_daemon import Daemon, example_config
from tests.support.waiting import wait_until  # noqa: F401  (re-exported for the sync tests)

GW = "cd-wh-jifu-gw01"  # the example config's gateway id
API_TOKEN = "sync-tests-api-token"
LANE_TABLES = ("lane_event", "lane_state", "lane_telemetry")

# Site profiles for load: every poll of a "load" sensor yields 4 changed telemetry values;
# a "siren" pillar's button toggles every half period (one event per change).
_LOAD_PROFILE = """\
[profile]
id = "test-load-env"
class = "environment_sensor"
driver = "virtual"
vendor = "Test"
model = "Fast environment sensor"

[points.humidity]
address = { generator = "random_walk", min = 30, max = 90, step = 1, value = 55 }

[points.pm25]
address = { generator = "random_walk", min = 5, max = 150, step = 3, value = 35 }

[points.noise]
address = { generator = "random_walk", min = 35, max = 75, step = 2, value = 48 }

[points.pressure]
address = { generator = "random_walk", min = 990, max = 1030, step = 0.2, value = 1012 }
unit = "hPa"
"""

_SIREN_PROFILE = """\
[profile]
id = "test-siren"
class = "alarm_pillar"
driver = "virtual"
vendor = "Test"
model = "Pillar whose button toggles"

[points.button]
address = {{ generator = "toggle", period = "{period}" }}

[points.tamper]
address = {{ generator = "constant", value = false }}
"""


def community_config(
    tmp: Path,
    *,
    uplinks: str,
    load_devices: int = 0,
    load_poll: str = "100ms",
    sirens: int = 0,
    siren_period: str = "600ms",
    siren_poll: str = "50ms",
    streetlight_poll: str | None = None,
) -> Path:
    """The example community with ``uplinks`` (TOML ``[[uplinks]]`` text) appended.

    ``load_devices`` sensors polled every ``load_poll`` add about 4/poll records/s each;
    ``sirens`` add about 2/period events/s each.
    """
    profiles = tmp / "site-profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "test-load-env.toml").write_text(_LOAD_PROFILE)
    (profiles / "test-siren.toml").write_text(_SIREN_PROFILE.format(period=siren_period))
    extra = [""]
    for i in range(load_devices):
        extra += ["[[devices]]", f'id = "load-{i:02d}"', 'class = "environment_sensor"',
                  'profile = "test-load-env"', f'poll = "{load_poll}"', ""]
    for i in range(sirens):
        extra += ["[[devices]]", f'id = "siren-{i:02d}"', 'class = "alarm_pillar"',
                  'profile = "test-siren"', f'poll = "{siren_poll}"', f"address = {{ seed = {17 * i + 3} }}", ""]
    cfg = example_config(tmp, extra="\n".join(extra) + "\n" + uplinks)
    text = cfg.read_text()
    text = text.replace("profile_dirs = []", f'profile_dirs = ["{profiles}"]', 1)
    if streetlight_poll is not None:
        old = 'profile = "virtual-streetlight"\npoll = "10s"'
        assert old in text
        text = text.replace(old, f'profile = "virtual-streetlight"\npoll = "{streetlight_poll}"')
    cfg.write_text(text)
    return cfg


def mqtt_uplink(name: str, url: str, **keys: Any) -> str:
    base: dict[str, Any] = {"name": name, "kind": "mqtt", "url": url, "topic_prefix": "city",
                            "reconnect_min": "50ms", "reconnect_max": "1s", "timeout": "5s",
                            "keepalive": "5s"}
    base.update(keys)
    return _table(base)


def https_uplink(name: str, url: str, **keys: Any) -> str:
    base: dict[str, Any] = {"name": name, "kind": "https", "url": url,
                            "reconnect_min": "50ms", "reconnect_max": "1s", "timeout": "5s"}
    base.update(keys)
    return _table(base)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _table(keys: dict[str, Any]) -> str:
    return "[[uplinks]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items()) + "\n"


class AsyncDaemon:
    """The daemon child process, driven with awaitables (blocking work runs in threads)."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.d = Daemon(config, env={"EDGE_GW_API_TOKEN": API_TOKEN, **(env or {})})
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return None if self.d.proc is None else self.d.proc.pid

    async def start(self, wait_ready: float = 30.0) -> None:
        await asyncio.to_thread(self.d.start, wait_ready)
        self.starts += 1

    async def stop(self) -> int:
        return await asyncio.to_thread(self.d.stop)

    async def kill(self) -> None:
        await asyncio.to_thread(self.d.kill)

    async def get(self, path: str) -> Any:
        return await asyncio.to_thread(self.d.get, path)

    async def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        return await asyncio.to_thread(self.d.post, path, body, token)

    async def uplink(self, name: str) -> dict[str, Any]:
        ups = (await self.get("/api/v1/uplinks"))["uplinks"]
        for up in ups:
            if up["name"] == name:
                return dict(up)
        raise AssertionError(f"no uplink {name!r} in {ups}")

    async def last_seq(self) -> int:
        return int((await self.get("/api/v1/records?after_seq=0&limit=1"))["last_seq"])

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics as ``{(name, sorted labels): value}``."""
        _, body, _ = await asyncio.to_thread(self.d.raw, "/metrics")
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def log_text(self) -> str:
        return self.d.log_text()


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    if key not in metrics:
        raise AssertionError(f"metric {name}{labels} not exported")
    return metrics[key]


def buffer_unacked(db: Path, uplink: str) -> tuple[int, set[int], dict[int, str]]:
    """``(last_seq, seqs not acknowledged by uplink, {seq: id hex} of every stored record)``
    of a buffer file whose daemon has stopped (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        last = int(dict(con.execute("SELECT key, value FROM meta"))["last_seq"])
        bit = con.execute("SELECT bit FROM uplinks WHERE name = ?", (uplink,)).fetchone()
        assert bit is not None, f"uplink {uplink} unknown to the buffer"
        mask = 1 << int(bit[0])
        pending: set[int] = set()
        ids: dict[int, str] = {}
        for table in LANE_TABLES:
            for seq, todo, rid in con.execute(f"SELECT seq, todo, id FROM {table}"):
                ids[seq] = _uuid_text(rid)
                if todo & mask:
                    pending.add(seq)
        return last, pending, ids
    finally:
        con.close()


def _uuid_text(blob: bytes) -> str:
    h = bytes(blob).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
