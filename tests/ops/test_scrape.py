"""Scrape test: the real daemon with a device of every driver kind (virtual, ONVIF via
``hwsim onvif``, Modbus via ``hwsim modbus``, DL/T 645 via ``hwsim dlt645``, and the test
``ops_push`` driver for the privacy counters) and an MQTT uplink to a real mosquitto with
the platform simulator behind it. ``/metrics`` is parsed with prometheus_client's parser and
compared with the catalogue (gateway/METRICS.md); the dashboard's queries are checked
against the same scrape."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_metrics import (
    DASHBOARD,
    Family,
    catalogue,
    dashboard_expressions,
    metric_names,
    parse_scrape,
    sample_names,
)
from tests.support.ops_stack import (
    SECRET_CAMERA_PASSWORD,
    MqttCapture,
    Stack,
    daemon_env,
    driver_available,
    gateway_config,
    http_json,
    mqtt_uplink,
)
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed"),
]

PREFIX = "city/ops"
TOKEN = "api-token-for-the-scrape-test"

# families that carry samples only after their event happened (a reason reported by a
# driver, a fault, a reload); the scrape checks their TYPE but cannot see their labels
EVENT_ONLY = {
    "edge_gw_mapping_errors", "edge_gw_point_errors", "edge_gw_ingest_refused", "edge_gw_bus_open_failures", "edge_gw_loop_errors",
    "edge_gw_buffer_refused_records",
    "edge_gw_modbus_request_failures", "edge_gw_modbus_exceptions", "edge_gw_modbus_retries", "edge_gw_modbus_discarded_bytes",
    "edge_gw_modbus_stale_answers", "edge_gw_modbus_writes", "edge_gw_modbus_holes_learnt",
    "edge_gw_onvif_renewals", "edge_gw_onvif_pull_errors", "edge_gw_onvif_snapshots", "edge_gw_onvif_auth_failures",
    "edge_gw_onvif_snapshot_evictions",
    "edge_gw_serial_discarded_bytes", "edge_gw_serial_bad_frames", "edge_gw_serial_error_replies",
    "edge_gw_serial_timeouts", "edge_gw_serial_retries", "edge_gw_serial_echo_bytes",
    "edge_gw_serial_unsolicited_frames", "edge_gw_serial_time_syncs",
}


@dataclass
class Run:
    text: str
    families: dict[str, Family]
    daemon: Daemon
    devices: dict[str, str]
    platform: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("scrape")
    broker = Mosquitto(tmp)
    broker.start()
    stack = Stack(tmp)
    capture: MqttCapture | None = None
    daemon: Daemon | None = None
    try:
        platform = stack.platform(broker.port, PREFIX)
        body = stack.device_config() + "\n" + stack.push_config()
        cfg = gateway_config(
            tmp, api_port=free_port(), body=body, uplink=mqtt_uplink(broker.port, PREFIX),
            privacy='hmac_key = { env = "OPS_PRIVACY_KEY" }',
        )
        env = daemon_env(tmp, {
            "EDGE_GW_API_TOKEN": TOKEN,
            "OPS_CAM_PASSWORD": SECRET_CAMERA_PASSWORD,
            "OPS_PRIVACY_KEY": "community-key-jifu-0123456789abcdef",
        })
        capture = MqttCapture(broker.port, PREFIX)
        daemon = Daemon(cfg, env=env).start(wait_ready=60)
        d = daemon
        # every polled device answered once (the missing Modbus unit is expected offline)
        polled = [k for k, v in stack.devices.items() if v != "ops_push" and k != "mb-dead"]

        def all_up() -> bool:
            fams = parse_scrape(d.raw("/metrics")[1].decode())
            ups = {s[1]["device"]: s[2] for s in fams["edge_gw_device_up"].samples}
            return all(ups.get(k) == 1.0 for k in polled)

        d.wait_for(all_up, 40, "every simulated device up")
        stack.camera_event()
        # a command of each kind of outcome through the local API
        status, result = d.post("/api/v1/devices/virt-access/commands", {"id": "ops-c1", "point": "unlock", "value": True}, TOKEN)
        assert status == 200, result
        status, result = d.post("/api/v1/devices/virt-smoke/commands", {"id": "ops-c2", "point": "nope", "value": 1}, TOKEN)
        assert status == 422, result

        def settled() -> bool:
            fams = parse_scrape(d.raw("/metrics")[1].decode())
            acked = sum(v for n, lb, v in fams["edge_gw_uplink_records"].samples
                        if n.endswith("_total") and lb.get("outcome") == "acked")
            privacy = sum(v for n, _, v in fams["edge_gw_privacy_actions"].samples if n.endswith("_total"))
            notif = sum(v for n, _, v in fams["edge_gw_onvif_notifications"].samples if n.endswith("_total"))
            errors = sum(v for n, _, v in fams["edge_gw_read_errors"].samples if n.endswith("_total"))
            lag = sum(v for n, _, v in fams["edge_gw_event_loop_lag_seconds"].samples if n.endswith("_count"))
            return acked > 20 and privacy > 0 and errors > 0 and lag > 0 and (notif > 0 or not driver_available("onvif"))

        d.wait_for(settled, 40, "records acked, privacy actions, read errors, camera event, loop lag")
        _, data, ctype = d.raw("/metrics")
        assert ctype.startswith("text/plain")
        text = data.decode()
        (tmp / "metrics.txt").write_text(text)
        yield Run(text, parse_scrape(text), d, dict(stack.devices), platform)
    finally:
        if daemon is not None:
            daemon.stop()
        if capture is not None:
            capture.close()
        stack.close()
        broker.stop()


def test_every_driver_kind_ran(run: Run) -> None:
    drivers = {s[1]["driver"] for s in run.families["edge_gw_device_up"].samples}
    expected = {"virtual", "ops_push"} | {k for k in ("onvif", "modbus", "serial") if driver_available(k)}
    assert expected <= drivers
    # tell the reader which product drivers this run covered
    assert {"onvif", "modbus", "serial"} <= drivers, "a product driver is missing from this tree"


def test_whole_catalogue_present_with_documented_types_and_labels(run: Run) -> None:
    cat = catalogue()
    missing, wrong_type, wrong_labels, empty = [], [], [], []
    for name, entry in cat.items():
        fam = run.families.get(entry.family)
        if fam is None:
            missing.append(name)
            continue
        if fam.type != entry.text_type:
            wrong_type.append((name, fam.type, entry.text_type))
        if not fam.samples:
            if entry.family not in EVENT_ONLY:
                empty.append(name)
            continue
        expected = tuple(sorted(entry.labels))
        got = fam.label_sets - {expected}
        if got:
            wrong_labels.append((name, sorted(got), expected))
    assert missing == [], "catalogued but not exposed"
    assert wrong_type == []
    assert wrong_labels == []
    assert empty == [], "no samples although the run exercised them"


def test_no_undocumented_edge_gw_family(run: Run) -> None:
    documented = {e.family for e in catalogue().values()}
    exposed = {n for n in run.families if n.startswith("edge_gw_")}
    assert sorted(exposed - documented) == []


def test_samples_show_the_run(run: Run) -> None:
    f = run.families

    def value(fam: str, sample: str, **labels: str) -> float:
        vals = [v for n, lb, v in f[fam].samples if n == sample and all(lb.get(k) == x for k, x in labels.items())]
        assert vals, (fam, sample, labels)
        return sum(vals)

    assert value("edge_gw_device_up", "edge_gw_device_up", device="virt-smoke") == 1
    if driver_available("modbus"):
        # a unit the Modbus server has no device for answers with exceptions: point errors
        assert value("edge_gw_read_errors", "edge_gw_read_errors_total", device="mb-missing") >= 1
        # a device behind a port nobody listens on is offline
        assert value("edge_gw_device_up", "edge_gw_device_up", device="mb-dead") == 0
        assert value("edge_gw_modbus_requests", "edge_gw_modbus_requests_total") >= 1
    if driver_available("serial"):
        assert value("edge_gw_serial_exchange_seconds", "edge_gw_serial_exchange_seconds_count", bus="meters") >= 1
    if driver_available("onvif"):
        assert value("edge_gw_onvif_notifications", "edge_gw_onvif_notifications_total", bus="cam-gate") >= 1
    assert value("edge_gw_poll_duration_seconds", "edge_gw_poll_duration_seconds_count", device="virt-smoke") >= 1
    assert value("edge_gw_records", "edge_gw_records_total", cls="access_control", kind="event") >= 8
    assert value("edge_gw_privacy_actions", "edge_gw_privacy_actions_total", action="hmac") >= 1
    assert value("edge_gw_privacy_actions", "edge_gw_privacy_actions_total", action="drop") >= 1
    assert value("edge_gw_uplink_connected", "edge_gw_uplink_connected", uplink="city") == 1
    assert value("edge_gw_uplink_records", "edge_gw_uplink_records_total", uplink="city", outcome="acked") > 20
    assert value("edge_gw_uplink_batches", "edge_gw_uplink_batches_total", uplink="city", outcome="sent") >= 1
    assert value("edge_gw_commands", "edge_gw_commands_total", outcome="ok") == 1
    assert value("edge_gw_commands", "edge_gw_commands_total", outcome="rejected") == 1
    assert value("edge_gw_event_loop_lag_seconds", "edge_gw_event_loop_lag_seconds_count") >= 1
    assert value("edge_gw_buffer_appended_records", "edge_gw_buffer_appended_records_total", lane="event") >= 20
    value("edge_gw_buffer_records", "edge_gw_buffer_records", lane="event")  # acked records leave
    for lane in ("event", "state", "telemetry"):
        assert value("edge_gw_buffer_evicted_records", "edge_gw_buffer_evicted_records_total", lane=lane, reason="budget") == 0
        for state in ("pending", "in_flight"):
            value("edge_gw_buffer_uplink_records", "edge_gw_buffer_uplink_records", uplink="city", lane=lane, state=state)
    assert value("edge_gw_buffer_disk_full_events", "edge_gw_buffer_disk_full_events_total", reason="disk_full") == 0
    build = [lb for n, lb, _ in f["edge_gw_build_info"].samples]
    assert build and build[0]["version"]
    # the platform simulator agrees that it received records
    summary = http_json(run.platform + "/api/summary")
    assert json.dumps(summary).count("cd-wh-jifu-gw01") >= 1


def test_label_values_are_bounded(run: Run) -> None:
    """No label value is a record id, a number-like value, or longer than a config name."""
    uuid_like = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}")
    series = 0
    for name, fam in run.families.items():
        if not name.startswith("edge_gw_"):
            continue
        for _, labels, _ in fam.samples:
            series += 1
            for k, v in labels.items():
                if k in ("le", "quantile"):
                    continue
                assert not uuid_like.search(v), (name, k, v)
                assert len(v) <= 64, (name, k, v)
                if k == "field":
                    assert v.startswith(("attrs.", "detected:", "v", "record")), v
    assert series < 5000, f"{series} edge_gw series for {len(run.devices)} devices"


def test_dashboard_metrics_exist_in_the_scrape(run: Run) -> None:
    """Each queried name is exposed; a counter that only exists after its event (a driver's
    failure reason) must at least be declared (HELP/TYPE) in the scrape."""
    exposed = sample_names(run.families)
    declared = {
        n for e in catalogue().values() if e.family in EVENT_ONLY and e.family in run.families
        for n in e.sample_names
    }
    dash = json.loads(Path(DASHBOARD).read_text())
    absent = {}
    for where, expr in dashboard_expressions(dash):
        gone = sorted(n for n in metric_names(expr) if n not in exposed and n not in declared)
        if gone:
            absent[where] = gone
    assert absent == {}


def test_scrape_is_fast(run: Run) -> None:
    t0 = time.perf_counter()
    for _ in range(5):
        run.daemon.raw("/metrics")
    per = (time.perf_counter() - t0) / 5
    assert per < 0.5, f"/metrics took {per * 1000:.0f} ms"
