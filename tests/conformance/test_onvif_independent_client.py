"""The ONVIF camera simulator checked by a client this project did not write: plain zeep
(the SOAP library, with its own WS-Security UsernameToken PasswordDigest) on the WSDL
documents onvif-zeep-async ships, and requests' own HTTP Digest/Basic auth for the
snapshot URI -- not the gateway's driver and not onvif-zeep-async's camera wrapper.

Every personality of ``hwsim onvif`` answers GetSystemDateAndTime, GetDeviceInformation,
GetServices, GetCapabilities, GetProfiles, GetStreamUri, GetSnapshotUri and (where it has
events) CreatePullPointSubscription + PullMessages + Renew + Unsubscribe in a form zeep
accepts with strict parsing; what each personality does differently is checked too.

The client runs in a child process: importing onvif-zeep-async changes zeep's behaviour
process-wide, and other test modules of the same run import it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[2]
TOPIC = "tns1:RuleEngine/CellMotionDetector/Motion"
NS_DEVICE = "http://www.onvif.org/ver10/device/wsdl"
NS_MEDIA = "http://www.onvif.org/ver10/media/wsdl"
NS_EVENTS = "http://www.onvif.org/ver10/events/wsdl"
PERSONALITIES = ["standard", "no-events", "auth-everything", "basic-snapshots", "lockout", "slow-boot"]


def wsdl_dir() -> Path:
    spec = find_spec("onvif")  # locates the package without importing it
    assert spec is not None and spec.submodule_search_locations, "onvif-zeep-async is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "wsdl"


# --------------------------------------------------------------------------- the client (child process)


def client(port: int, user: str, password: str, control: str, expect_events: bool) -> dict[str, Any]:
    """Every call, as an ONVIF client would make them; returns what was answered."""
    import requests
    import zeep
    from requests.auth import HTTPBasicAuth, HTTPDigestAuth
    from zeep.transports import Transport
    from zeep.wsse.username import UsernameToken

    assert "onvif" not in sys.modules
    base = f"http://127.0.0.1:{port}"
    w = wsdl_dir()
    out: dict[str, Any] = {"zeep": zeep.__version__, "requests": requests.__version__}

    def make(wsdl: str, binding: str, address: str, auth: bool = True) -> Any:
        transport = Transport(timeout=10, operation_timeout=10)
        wsse = UsernameToken(user, password, use_digest=True) if auth else None
        c = zeep.Client(wsdl=str(w / wsdl), wsse=wsse, transport=transport)
        return c.create_service(binding, address)

    device_url = f"{base}/onvif/device_service"
    anon = make("devicemgmt.wsdl", f"{{{NS_DEVICE}}}DeviceBinding", device_url, auth=False)
    dev = make("devicemgmt.wsdl", f"{{{NS_DEVICE}}}DeviceBinding", device_url)

    try:
        clock = anon.GetSystemDateAndTime()
        out["clock_without_auth"] = True
    except zeep.exceptions.Fault as f:
        out["clock_without_auth"] = False
        out["clock_fault"] = [str(getattr(s, "text", s)) for s in (f.subcodes or [])]
        clock = dev.GetSystemDateAndTime()
    u = clock.UTCDateTime
    cam = dt.datetime(u.Date.Year, u.Date.Month, u.Date.Day, u.Time.Hour, u.Time.Minute, u.Time.Second, tzinfo=dt.UTC)
    out["clock_skew"] = (cam - dt.datetime.now(dt.UTC)).total_seconds()

    info = dev.GetDeviceInformation()
    out["info"] = {k: str(info[k]) for k in ("Manufacturer", "Model", "FirmwareVersion", "SerialNumber", "HardwareId")}
    services = dev.GetServices(IncludeCapability=False)
    out["services"] = {str(s.Namespace): str(s.XAddr) for s in services}
    caps = dev.GetCapabilities(Category="All")
    out["capabilities"] = {
        "device": str(caps.Device.XAddr),
        "media": str(caps.Media.XAddr) if caps.Media is not None else None,
        "events": str(caps.Events.XAddr) if caps.Events is not None else None,
        "pullpoint": bool(caps.Events.WSPullPointSupport) if caps.Events is not None else None,
    }

    media = make("media.wsdl", f"{{{NS_MEDIA}}}MediaBinding", out["services"][NS_MEDIA])
    profiles = media.GetProfiles()
    out["profiles"] = [str(p.token) for p in profiles]
    token = out["profiles"][0]
    stream = media.GetStreamUri(StreamSetup={"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}, ProfileToken=token)
    out["stream_uri"] = str(stream.Uri)
    snap = media.GetSnapshotUri(ProfileToken=token)
    out["snapshot_uri"] = str(snap.Uri)

    # the snapshot URI with requests' own auth, answering the challenge it sends
    r = requests.get(out["snapshot_uri"], timeout=10)
    challenge = r.headers.get("WWW-Authenticate", "")
    out["snapshot_challenge"] = challenge.split(" ", 1)[0]
    if r.status_code == 401:
        scheme = HTTPDigestAuth if challenge.lower().startswith("digest") else HTTPBasicAuth
        r = requests.get(out["snapshot_uri"], auth=scheme(user, password), timeout=10)
    out["snapshot_status"] = r.status_code
    out["snapshot_jpeg"] = r.content[:2] == b"\xff\xd8" and r.content[-2:] == b"\xff\xd9"

    events_url = out["services"].get(NS_EVENTS)
    if not expect_events:
        out["events_url"] = events_url
        return out
    assert events_url, out["services"]
    events = make("events.wsdl", f"{{{NS_EVENTS}}}EventBinding", events_url)
    sub = events.CreatePullPointSubscription(InitialTerminationTime="PT60S")
    address = str(sub.SubscriptionReference.Address._value_1).strip()
    out["subscription"] = {"address": address, "lifetime": (sub.TerminationTime - sub.CurrentTime).total_seconds()}
    body = json.dumps({"topic": TOPIC, "data": {"IsMotion": "true"}, "source": {"VideoSourceConfigurationToken": "vsc_1"}})
    req = urllib.request.Request(f"{control}/event", data=body.encode(), method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
    pull = make("events.wsdl", f"{{{NS_EVENTS}}}PullPointSubscriptionBinding", address)
    msgs = pull.PullMessages(Timeout=dt.timedelta(seconds=2), MessageLimit=10)
    notes = []
    for n in msgs.NotificationMessage or []:
        topic = n.Topic._value_1 if hasattr(n.Topic, "_value_1") else n.Topic
        message = n.Message._value_1
        if hasattr(message, "tag"):  # left as XML
            op, data = message.get("PropertyOperation"), None
        else:  # typed by zeep from the schema (tt:Message)
            op = message.PropertyOperation
            data = {i.Name: i.Value for i in (message.Data.SimpleItem if message.Data is not None else [])}
        notes.append({"topic": str(topic).strip(), "operation": op, "data": data})
    out["notifications"] = notes
    out["pull_times"] = [str(msgs.CurrentTime), str(msgs.TerminationTime)]
    manager = make("events.wsdl", f"{{{NS_EVENTS}}}SubscriptionManagerBinding", address)
    renewed = manager.Renew(TerminationTime="PT30S")
    out["renewed"] = (renewed.TerminationTime - renewed.CurrentTime).total_seconds()
    manager.Unsubscribe()
    try:
        pull.PullMessages(Timeout=dt.timedelta(seconds=1), MessageLimit=1)
        out["after_unsubscribe"] = "answered"
    except zeep.exceptions.Fault as f:
        out["after_unsubscribe"] = [str(getattr(s, "text", s)) for s in (f.subcodes or [])]
    return out


def _child() -> None:
    args = json.loads(sys.argv[1])
    print(json.dumps(client(**args)))


# --------------------------------------------------------------------------- the tests


def run_client(port: int, user: str, password: str, control: str, expect_events: bool) -> dict[str, Any]:
    args = json.dumps({"port": port, "user": user, "password": password, "control": control, "expect_events": expect_events})
    code = "import sys; sys.argv = ['client', sys.argv[1]]; from tests.conformance.test_onvif_independent_client import _child; _child()"
    p = subprocess.run(
        [sys.executable, "-c", code, args], capture_output=True, text=True, timeout=90, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    assert p.returncode == 0, f"zeep client failed:\n{p.stderr[-6000:]}"
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.support.onvif_helpers import SimCameras

    tmp = tmp_path_factory.mktemp("zeep-sim")
    cams = "".join(
        f'[[cameras]]\nname = "{p}"\npassword = "pw-{p}"\npersonality = "{p}"\nmanufacturer = "Sim {p}"\n'
        + ("boot_time = 2.0\n" if p == "slow-boot" else "")
        for p in PERSONALITIES
    )
    s = SimCameras(tmp, cams)
    yield s
    s.close()


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_zeep_accepts_every_answer(sim: Any, personality: str) -> None:
    port = sim.port(personality)
    if personality == "slow-boot":
        sim.post(personality, "power", {"on": False})
        sim.post(personality, "power", {"on": True})
        assert sim.status(personality)["booting"]
        with pytest.raises(urllib.error.HTTPError) as e:  # booting: HTTP 503
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/onvif/device_service", data=b"x"), timeout=5)
        assert e.value.code == 503
        deadline = time.monotonic() + 10
        while sim.status(personality)["booting"] and time.monotonic() < deadline:
            time.sleep(0.1)
    events = personality != "no-events"
    out = run_client(port, "admin", f"pw-{personality}", f"{sim.control}/{personality}", events)
    assert out["info"]["Manufacturer"] == f"Sim {personality}" and out["info"]["Model"] == "SV-100"
    assert abs(out["clock_skew"]) < 5
    assert NS_DEVICE in out["services"] and NS_MEDIA in out["services"]
    assert out["capabilities"]["media"] == out["services"][NS_MEDIA]
    assert out["profiles"] == ["profile_main", "profile_sub"]
    assert out["stream_uri"].startswith("rtsp://127.0.0.1:")
    assert out["snapshot_status"] == 200 and out["snapshot_jpeg"], out
    if personality == "auth-everything":
        assert out["clock_without_auth"] is False and any("NotAuthorized" in c for c in out["clock_fault"])
    else:
        assert out["clock_without_auth"] is True
    assert out["snapshot_challenge"] == ("Basic" if personality == "basic-snapshots" else "Digest")
    if not events:
        assert NS_EVENTS not in out["services"] and out["capabilities"]["events"] is None
        return
    assert out["capabilities"]["events"] == out["services"][NS_EVENTS] and out["capabilities"]["pullpoint"] is True
    assert out["subscription"]["lifetime"] == pytest.approx(60, abs=2)
    assert [n["topic"] for n in out["notifications"]] == [TOPIC]
    assert out["notifications"][0]["operation"] == "Changed"
    assert out["notifications"][0]["data"] in (None, {"IsMotion": "true"})
    assert out["renewed"] == pytest.approx(30, abs=2)
    assert any("ResourceUnknown" in c for c in out["after_unsubscribe"]), out["after_unsubscribe"]
    assert sim.status(personality)["refused_logins"] == 0


def test_lockout_counts_refused_zeep_logins(sim: Any) -> None:
    """Three wrong passwords from zeep lock the account; then even the right one is refused."""
    import zeep
    from zeep.wsse.username import UsernameToken

    name = "lockout"
    before = sim.status(name)["refused_logins"]
    w = wsdl_dir()
    url = f"http://127.0.0.1:{sim.port(name)}/onvif/device_service"

    def login(password: str) -> str:
        code = (
            "import sys, zeep\n"
            "from zeep.wsse.username import UsernameToken\n"
            f"c = zeep.Client(wsdl={str(w / 'devicemgmt.wsdl')!r}, wsse=UsernameToken('admin', {password!r}, use_digest=True))\n"
            f"s = c.create_service('{{{NS_DEVICE}}}DeviceBinding', {url!r})\n"
            "try:\n    s.GetDeviceInformation(); print('ok')\n"
            "except zeep.exceptions.Fault as f:\n    print('fault', f.message)\n"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-3000:]
        return p.stdout.strip()

    del zeep, UsernameToken  # only the child uses them
    try:
        assert [login("wrong")[:5] for _ in range(3)] == ["fault"] * 3
        st = sim.status(name)
        assert st["refused_logins"] == before + 3 and st["locked"]
        assert "locked" in login(f"pw-{name}")
        assert sim.status(name)["refused_logins"] == before + 4
    finally:
        sim.post(name, "unlock")
    assert login(f"pw-{name}") == "ok"
