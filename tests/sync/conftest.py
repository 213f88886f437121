"""Fixtures of the sync tests: a real mosquitto, the platform simulator, a test PKI."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so that `tests.support` imports without a root conftest
    sys.path.insert(0, str(ROOT))

from hwsim.platform import PlatformSim  # noqa: E402

from tests.support.sync_certs import Pki, make_pki  # noqa: E402
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto  # noqa: E402


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    m = Mosquitto(tmp_path, persistence=True)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
async def platform(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[PlatformSim]:
    sim = PlatformSim(tmp_path / "platform.db", mqtt_host=broker.host, mqtt_port=broker.port, prefix="city")
    await sim.start()
    await sim.wait_mqtt()
    try:
        yield sim
    finally:
        await sim.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
