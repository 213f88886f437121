"""Memory cost of cameras: each camera must cost well under 1 MB (issue 9: 1,000 mixed
devices, 20+ of them cameras, under 150 MB), and a gateway without cameras must not load
the ONVIF/SOAP stack at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.onvif_memory import measure

ROOT = Path(__file__).resolve().parents[3]
MIB = 2**20


def test_per_camera_memory_cost_of_the_daemon() -> None:
    # Real daemon, real simulator process; cameras connect at the same time at start-up.
    # Before the WSDL documents were parsed once and serialised, 2 -> 12 cameras cost
    # 4-12 MB per camera; now about 0.2 MB. The bound is generous against RSS noise.
    few = measure(2, settle=2.0)
    many = measure(12, settle=2.0)
    assert few["online"] == 2 and many["online"] == 12
    per_camera = (many["rss_bytes"] - few["rss_bytes"]) / 10
    assert per_camera < 2 * MIB, f"{per_camera / MIB:.2f} MiB per camera ({few} -> {many})"
    # the whole daemon with 12 cameras: core + ONVIF stack (~30 MB) + cameras
    assert many["rss_bytes"] < 140 * MIB, many


def test_driver_import_does_not_load_the_soap_stack() -> None:
    # Every gateway imports every driver (entry points), so the driver module itself must
    # stay light: lxml, zeep, onvif, httpx and requests are imported on the first camera.
    code = (
        "import json, sys\n"
        "import gateway.plugin, gateway.config\n"
        "before = set(sys.modules)\n"
        "import drivers.onvif.driver\n"
        "from gateway.registry import load_drivers\n"
        "reg = load_drivers({'onvif'})\n"
        "assert 'onvif' in reg.drivers, reg.infos\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    new = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "drivers" in new
    heavy = new & {"lxml", "zeep", "onvif", "httpx", "requests", "aiohttp"}
    assert not heavy, f"importing the ONVIF driver loads {sorted(heavy)}"
