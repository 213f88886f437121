"""The driver against simulated cameras over real HTTP: auth, clock skew, fallbacks,
timeouts, expired subscriptions, reboots, snapshots and unknown topics."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from pathlib import Path

import pytest
from hwsim.onvif import CameraConfig, CameraGroup, SimCamera
from prometheus_client import REGISTRY

from drivers.onvif.driver import OnvifBus, OnvifProfileOptions
from gateway.plugin import DeviceSpec, DeviceUnavailable, DriverError
from tests.support.onvif_helpers import EventCollector, bundled_profiles, device, open_bus

PROFILES = bundled_profiles()
THROW = ("tns1:RuleEngine/HighAltitudeThrow/ObjectThrown", "IsThrown")


def acme(cam: SimCamera, tmp: Path, dev_id: str = "cam-a", **extra: object) -> tuple[DeviceSpec, OnvifBus]:
    address = {
        "host": "127.0.0.1", "port": cam.port, "username": "admin", "password": "pw",
        "timeout": "1s", "pull_timeout": "300ms", "snapshots": {"dir": str(tmp / "snaps")},
    } | extra
    dev = device(dev_id, PROFILES["acme-ht200-throw"], address)
    return dev, open_bus(dev)


def throw(cam: SimCamera, n: int, state: bool = True) -> None:
    cam.push_event(THROW[0], {THROW[1]: str(state).lower()}, {"Rule": f"r{n}", "VideoSourceConfigurationToken": "vsc"})


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_wrong_password_is_auth_error_and_others_keep_working(tmp_path: Path) -> None:
    cams = [CameraConfig(name="good", password="pw"), CameraConfig(name="locked", password="other")]
    async with CameraGroup(cams, discovery_port=None, control_port=None) as g:
        dev_ok, bus_ok = acme(g["good"], tmp_path, "cam-good")
        dev_bad, bus_bad = acme(g["locked"], tmp_path, "cam-locked")
        async with EventCollector(bus_ok) as ok, EventCollector(bus_bad):
            with pytest.raises(DeviceUnavailable) as e:
                await bus_bad.read(dev_bad, dev_bad.points)
            assert e.value.reason == "auth"
            assert "credentials" in e.value.detail
            reading = await bus_ok.read(dev_ok, dev_ok.points)
            assert reading.values["model"] == "SV-100"
            async with asyncio.timeout(5):
                await g["good"].wait_subscribed()
            throw(g["good"], 1)
            (ev,) = await ok.take(1, 5)
            assert (ev.device_id, ev.point, ev.value) == ("cam-good", "object_throw", True)
            # the locked camera saw only failed attempts, bounded by the driver's backoff
            assert g["locked"].auth_failures <= 4


async def test_password_fixed_on_camera_recovers(tmp_path: Path) -> None:
    async with CameraGroup([CameraConfig(name="c", password="old")], discovery_port=None, control_port=None) as g:
        dev, bus = acme(g["c"], tmp_path, auth_backoff="300ms")
        with pytest.raises(DeviceUnavailable):
            await bus.read(dev, dev.points)
        g["c"].set_password("pw")
        with pytest.raises(DeviceUnavailable) as e:  # logins are paused: nothing is sent
            await bus.read(dev, dev.points)
        assert e.value.reason == "auth" and "next login attempt" in e.value.detail
        assert g["c"].refused_logins == 1
        await asyncio.sleep(0.35)
        reading = await bus.read(dev, dev.points)
        assert reading.values["firmware"] == "1.0.0"
        await bus.close()


async def test_clock_skew_is_compensated(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", password="pw", clock_offset=-7200, max_skew=30)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        dev, bus = acme(g["c"], tmp_path)
        reading = await bus.read(dev, dev.points)
        assert reading.values["model"] == "SV-100"
        assert abs(bus.skew + 7200) < 3
        assert reading.tsd is not None and abs(reading.tsd - (time.time() - 7200)) < 3
        assert metric("edge_gw_onvif_clock_skew_seconds", bus="cam-a") == pytest.approx(bus.skew)
        assert g["c"].auth_failures == 0
        await bus.close()


async def test_getcapabilities_fallback_and_uri_credentials_stripped(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", password="pw", get_services=False, uri_credentials=True)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        dev, bus = acme(g["c"], tmp_path)
        reading = await bus.read(dev, dev.points)
        assert g["c"].requests.get("GetCapabilities") == 1
        assert reading.values["stream_uri"] == f"rtsp://127.0.0.1:{g['c'].port}/Streaming/Channels/101"
        assert reading.values["snapshot_uri"] == f"http://127.0.0.1:{g['c'].port}/onvif/snapshot.jpg"
        await bus.close()


async def test_unreachable_camera(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dev = device("cam-gone", PROFILES["acme-ht200-throw"], {"host": "127.0.0.1", "port": port, "timeout": "1s"})
    bus = open_bus(dev)
    with pytest.raises(DeviceUnavailable) as e:
        await bus.read(dev, dev.points)
    assert e.value.reason == "refused" and f"127.0.0.1:{port}" in e.value.detail
    await bus.close()


async def test_slow_camera_times_out_within_budget(tmp_path: Path) -> None:
    async with CameraGroup([CameraConfig(name="c", password="pw")], discovery_port=None, control_port=None) as g:
        dev, bus = acme(g["c"], tmp_path)
        await bus.read(dev, dev.points)
        g["c"].set_delay(5.0, ["GetDeviceInformation"])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(DeviceUnavailable) as e:
            await bus.read(dev, dev.points)
        assert e.value.reason == "timeout"
        assert loop.time() - t0 < 2.5  # timeout = 1 s, not the library's 90 s
        g["c"].clear_faults()
        await bus.close()


async def test_soap_fault_is_a_driver_error(tmp_path: Path) -> None:
    async with CameraGroup([CameraConfig(name="c", password="pw")], discovery_port=None, control_port=None) as g:
        dev, bus = acme(g["c"], tmp_path)
        g["c"].inject_fault("GetDeviceInformation", 1)
        with pytest.raises(DriverError) as e:
            await bus.read(dev, dev.points)
        assert e.value.reason == "soap_fault" and not isinstance(e.value, DeviceUnavailable)
        assert (await bus.read(dev, dev.points)).values["model"] == "SV-100"
        await bus.close()


async def test_expired_subscription_recovers_without_losing_later_events(tmp_path: Path) -> None:
    async with CameraGroup([CameraConfig(name="c", password="pw")], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        _, bus = acme(cam, tmp_path)
        async with EventCollector(bus) as col:
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            throw(cam, 0)
            await col.take(1, 5)
            before = metric("edge_gw_onvif_subscriptions_total", bus="cam-a", reason="expired")
            assert cam.expire_subscriptions() == 1
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            for i in range(1, 21):
                throw(cam, i, state=i % 2 == 1)
            got = await col.take(20, 10)
            assert [e.attrs["rule"] for e in got if e.attrs] == [f"r{i}" for i in range(1, 21)]
            assert [e.value for e in got] == [i % 2 == 1 for i in range(1, 21)]
            assert metric("edge_gw_onvif_subscriptions_total", bus="cam-a", reason="expired") == before + 1


async def test_subscription_is_renewed_before_it_ends(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", password="pw")
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        _, bus = acme(cam, tmp_path, subscription="10s")
        async with EventCollector(bus) as col:
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            await asyncio.sleep(8.5)  # 80 % of 10 s
            assert cam.requests.get("Renew", 0) >= 1
            assert cam.requests.get("CreatePullPointSubscription") == 1
            throw(cam, 1)
            assert (await col.take(1, 5))[0].value is True


async def test_camera_reboot_recovers(tmp_path: Path) -> None:
    async with CameraGroup([CameraConfig(name="c", password="pw")], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path)
        async with EventCollector(bus) as col:
            await bus.read(dev, dev.points)
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            reboot = asyncio.create_task(cam.reboot(1.5))
            await asyncio.sleep(0.3)
            with pytest.raises(DeviceUnavailable) as e:
                await bus.read(dev, dev.points)
            assert e.value.reason == "refused"
            await reboot
            assert cam.boots == 2
            async with asyncio.timeout(15):
                await cam.wait_subscribed()
            for i in range(10):
                throw(cam, i)
            got = await col.take(10, 10)
            assert [e.attrs["rule"] for e in got if e.attrs] == [f"r{i}" for i in range(10)]
            assert (await bus.read(dev, dev.points)).values["model"] == "SV-100"


async def test_unknown_topic_logged_once_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with CameraGroup([CameraConfig(name="c", password="pw")], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        _, bus = acme(cam, tmp_path, "cam-unknown")
        before = metric("edge_gw_onvif_notifications_total", bus="cam-unknown", result="unknown_topic")
        with caplog.at_level(logging.WARNING, logger="drivers.onvif"):
            async with EventCollector(bus) as col:
                async with asyncio.timeout(5):
                    await cam.wait_subscribed()
                for _ in range(3):
                    cam.push_event("tns1:Monitoring/ProcessorUsage", {"Value": "12"}, {"Token": "cpu"})
                throw(cam, 1)
                await col.take(1, 5)
        logged = [r for r in caplog.records if "Monitoring/ProcessorUsage" in r.getMessage()]
        assert len(logged) == 1 and "SimpleItem" in logged[0].getMessage()  # raw payload in the log
        assert metric("edge_gw_onvif_notifications_total", bus="cam-unknown", result="unknown_topic") == before + 3


async def test_snapshot_retention_and_auth(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", password="pw", snapshot_auth="digest")
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path, "cam-snap", snapshots={"dir": str(tmp_path / "store"), "keep": 2})
        async with EventCollector(bus) as col:
            await bus.read(dev, dev.points)
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            for i in range(3):
                throw(cam, i)
            throw(cam, 9, state=False)  # a cleared event takes no snapshot
            got = await col.take(4, 10)
        refs = [e.attrs["snapshot"] for e in got if e.attrs and "snapshot" in e.attrs]
        assert len(refs) == 3 and got[3].attrs is not None and "snapshot" not in got[3].attrs
        files = sorted((tmp_path / "store" / "cam-snap").glob("*.jpg"))
        assert [f.name for f in files] == [r.rsplit("/", 1)[1] for r in refs[1:]]  # oldest evicted
        assert cam.snapshots == 3


async def test_snapshot_scheme_the_profile_forbids_is_marked_with_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = CameraConfig(name="c", password="pw", snapshot_auth="basic")
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, _ = acme(cam, tmp_path, "cam-snap-auth")
        strict = OnvifProfileOptions(snapshot_on=["object_throw"], snapshot_auth="digest")
        dev = dataclasses.replace(dev, options=strict)
        bus = open_bus(dev)
        with caplog.at_level(logging.INFO, logger="drivers.onvif"):
            async with EventCollector(bus) as col:
                await bus.read(dev, dev.points)
                async with asyncio.timeout(5):
                    await cam.wait_subscribed()
                throw(cam, 1)
                (ev,) = await col.take(1, 10)
        assert ev.value is True and ev.attrs is not None
        assert ev.attrs["snapshot_error"] == "auth"
        assert "snapshot" not in ev.attrs
        assert any("asks for basic" in r.getMessage() and "snapshot_auth" in r.getMessage() for r in caplog.records)
        assert cam.refused_logins == 0  # nothing was sent that the camera could count


@pytest.mark.parametrize("scheme", ["digest", "basic", "none"])
async def test_snapshot_answers_the_challenge_the_camera_sends(tmp_path: Path, scheme: str) -> None:
    cfg = CameraConfig(name="c", password="pw", snapshot_auth=scheme)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path, f"cam-snap-{scheme}")
        async with EventCollector(bus) as col:
            await bus.read(dev, dev.points)
            async with asyncio.timeout(5):
                await cam.wait_subscribed()
            throw(cam, 1)
            throw(cam, 2)
            got = await col.take(2, 10)
        assert all(e.attrs is not None and e.attrs.get("snapshot", "").startswith("local:") for e in got), got
        assert cam.snapshots == 2 and cam.refused_logins == 0


async def test_camera_demanding_credentials_for_its_clock(tmp_path: Path) -> None:
    cfg = CameraConfig(name="c", password="pw", auth_everything=True)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path)
        reading = await bus.read(dev, dev.points)
        assert reading.values["model"] == "SV-100"
        # the unauthenticated try was refused, but carried no credentials: no failed login
        assert cam.auth_failures == 1 and cam.refused_logins == 0
        await bus.close()


async def test_one_refused_login_per_pause_with_events_and_polls(tmp_path: Path) -> None:
    """Polls and the event loop share the camera's login gate: one refusal, not one each."""
    cfg = CameraConfig(name="c", password="right", lockout_after=3)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path, password="wrong")
        async with EventCollector(bus):
            for _ in range(5):
                with pytest.raises(DeviceUnavailable) as e:
                    await bus.read(dev, dev.points)
                assert e.value.reason == "auth"
                await asyncio.sleep(0.2)
        assert cam.refused_logins == 1 and not cam.locked
        assert "login" in bus.notes(dev.id) and "NotAuthorized" in bus.notes(dev.id)["error"]


@pytest.mark.parametrize("get_services", [True, False])
async def test_no_events_service_found_and_never_subscribed(
    tmp_path: Path, get_services: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = CameraConfig(name="c", password="pw", events_service=False, get_services=get_services)
    async with CameraGroup([cfg], discovery_port=None, control_port=None) as g:
        cam = g["c"]
        dev, bus = acme(cam, tmp_path, f"cam-noev-{get_services}")
        with caplog.at_level(logging.INFO, logger="drivers.onvif"):
            async with EventCollector(bus):
                reading = await bus.read(dev, dev.points)
                await asyncio.sleep(1.5)  # what used to be several subscription retries
                assert (await bus.read(dev, dev.points)).values["model"] == "SV-100"
        source = "GetServices" if get_services else "GetCapabilities"
        assert bus.notes(dev.id)["events"] == f"unsupported: the camera lists no events service ({source})"
        assert metric("edge_gw_onvif_events_supported", bus=dev.id) == 0
        assert str(reading.values["snapshot_uri"]).endswith("/onvif/snapshot.jpg")
        said = [r for r in caplog.records if "events are not supported" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.INFO
        assert not [op for op in cam.requests if "Subscription" in op or op == "GetEventProperties"]


async def test_tls_failure_is_named(tmp_path: Path) -> None:
    """A TLS endpoint whose certificate the client does not trust: reason tls, with detail."""
    import ssl

    import aiohttp

    from drivers.onvif.driver import classify
    from tests.support.sync_certs import make_pki

    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError) as e:
                async with asyncio.timeout(5):
                    await http.get(f"https://127.0.0.1:{port}/onvif/media_service")
        err = classify(e.value, "GetProfiles", 5)
        assert isinstance(err, DeviceUnavailable) and err.reason == "tls"
        assert err.detail.startswith("GetProfiles: TLS: ") and "certificate" in err.detail.lower()
    finally:
        server.close()
        await server.wait_closed()
