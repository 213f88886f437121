"""The metrics catalogue (gateway/METRICS.md) matches the code, follows the naming rules and
has bounded labels; the dashboard's PromQL parses and queries only catalogued metrics.

The scrape of a running daemon is checked in test_scrape.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.support.ops_metrics import (
    DASHBOARD,
    Entry,
    PromQLError,
    catalogue,
    dashboard_expressions,
    metric_names,
    parse_catalogue,
    variable_query_expr,
)

# what the operations issue asks the catalogue to cover
REQUIRED: dict[str, tuple[str, tuple[str, ...]]] = {
    "edge_gw_device_up": ("gauge", ("device",)),
    "edge_gw_poll_duration_seconds": ("histogram", ("device",)),
    "edge_gw_read_errors_total": ("counter", ("reason",)),
    "edge_gw_records_total": ("counter", ("cls", "kind")),
    "edge_gw_pipeline_drops_total": ("counter", ("reason",)),
    "edge_gw_buffer_records": ("gauge", ("lane",)),
    "edge_gw_buffer_bytes": ("gauge", ("lane",)),
    "edge_gw_buffer_uplink_records": ("gauge", ("lane", "state")),
    "edge_gw_buffer_uplink_bytes": ("gauge", ("lane", "state")),
    "edge_gw_buffer_oldest_pending_age_seconds": ("gauge", ("uplink",)),
    "edge_gw_buffer_evicted_records_total": ("counter", ("lane",)),
    "edge_gw_buffer_disk_full_events_total": ("counter", ()),
    "edge_gw_uplink_connected": ("gauge", ("uplink",)),
    "edge_gw_uplink_batches_total": ("counter", ("uplink", "outcome")),
    "edge_gw_uplink_records_total": ("counter", ("uplink", "outcome")),
    "edge_gw_uplink_lag_seconds": ("gauge", ("uplink",)),
    "edge_gw_uplink_reconnects_total": ("counter", ("uplink",)),
    "edge_gw_commands_total": ("counter", ("outcome",)),
    "edge_gw_privacy_actions_total": ("counter", ("field", "action")),
    "edge_gw_event_loop_lag_seconds": ("histogram", ()),
    "edge_gw_build_info": ("info", ()),
}

# label names that would carry unbounded or personal values
FORBIDDEN_LABELS = {
    "id", "record", "record_id", "seq", "batch", "batch_id", "value", "v", "ts", "card", "card_no",
    "person", "person_id", "name", "plate", "phone", "mobile", "ip", "host", "url", "topic",
    "command_id", "message", "error", "detail", "path", "file",
}
ALLOWED_LABELS = {
    "device", "cls", "driver", "kind", "reason", "outcome", "bus", "profile", "point", "state",
    "route", "status", "lane", "uplink", "field", "action", "result", "transport", "fc", "code",
    "protocol", "version", "python", "implementation", "machine",
}


def _registered() -> dict[str, Entry]:
    """Every edge_gw_ collector of the default registry, as a catalogue entry."""
    import buffer.metrics  # noqa: F401
    import gateway.metrics  # noqa: F401
    import sync.metrics  # noqa: F401
    from gateway.registry import load_drivers

    reg = load_drivers()
    assert {"modbus", "onvif", "serial", "virtual"} <= set(reg.drivers), reg.infos
    out: dict[str, Entry] = {}
    for collector in list(REGISTRY._collector_to_names):
        describe = getattr(collector, "describe", None)
        if describe is None or not hasattr(collector, "_labelnames"):
            continue
        for fam in describe():
            if not fam.name.startswith("edge_gw_"):
                continue
            shown = {"counter": f"{fam.name}_total", "info": f"{fam.name}_info"}.get(fam.type, fam.name)
            assert fam.documentation.strip(), f"{fam.name} has no help text"
            labels = tuple(collector._labelnames)
            if fam.type == "info":  # an info's labels are its keys
                labels = tuple(k for s in collector.collect()[0].samples for k in s.labels)
            out[shown] = Entry(shown, fam.type, labels)
    return out


def test_catalogue_lists_exactly_the_registered_metrics() -> None:
    documented = catalogue()
    registered = _registered()
    assert sorted(set(registered) - set(documented)) == [], "registered but not in METRICS.md"
    assert sorted(set(documented) - set(registered)) == [], "in METRICS.md but not registered"
    wrong = {
        n: (documented[n], registered[n])
        for n in documented
        if (documented[n].type, documented[n].labels) != (registered[n].type, registered[n].labels)
    }
    assert wrong == {}


def test_catalogue_covers_the_issue_list() -> None:
    documented = catalogue()
    for name, (mtype, must_have) in REQUIRED.items():
        assert name in documented, name
        assert documented[name].type == mtype, name
        assert set(must_have) <= set(documented[name].labels), (name, documented[name].labels)


def test_naming_conventions_and_bounded_labels() -> None:
    for name, e in catalogue().items():
        assert re.fullmatch(r"edge_gw_[a-z0-9_]+", name), name
        assert name.endswith("_total") == (e.type == "counter"), name
        if re.search(r"duration|latency|lag|age|skew|_ack", name):
            assert name.endswith("_seconds"), f"{name} measures time: unit suffix _seconds"
        if "bytes" in name:
            assert re.search(r"_bytes(_total)?$", name), name
        assert not set(e.labels) & FORBIDDEN_LABELS, (name, e.labels)
        assert set(e.labels) <= ALLOWED_LABELS, (name, set(e.labels) - ALLOWED_LABELS)
        assert len(e.labels) <= (4 if e.type == "info" else 3), name


def test_catalogue_parser() -> None:
    text = (
        "| name | type | labels | meaning |\n|---|---|---|---|\n"
        "| `edge_gw_a_total` | counter | `x`, `y` | a \\| b |\n"
        "| `edge_gw_b` | gauge | — | b |\n"
        "not a row `edge_gw_c` | gauge |\n"
    )
    cat = parse_catalogue(text)
    assert cat == {
        "edge_gw_a_total": Entry("edge_gw_a_total", "counter", ("x", "y")),
        "edge_gw_b": Entry("edge_gw_b", "gauge", ()),
    }
    assert cat["edge_gw_a_total"].family == "edge_gw_a"
    with pytest.raises(ValueError, match="twice"):
        parse_catalogue(text + "| `edge_gw_b` | gauge | — | again |\n")


# ------------------------------------------------------------------ PromQL reader


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('edge_gw_device_up{device=~"$device"}', {"edge_gw_device_up"}),
        (
            'histogram_quantile(0.95, sum by (device, le) (rate(edge_gw_poll_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))',
            {"edge_gw_poll_duration_seconds_bucket"},
        ),
        ("sum without (instance) (a_total) / on (uplink) group_left (lane) b", {"a_total", "b"}),
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
        ("sum(rate(x[5m] offset 1h)) > bool 0 unless y", {"x", "y"}),
        ("max_over_time(z[1h:5m])", {"z"}),
        ("topk(3, count by (reason) (q))", {"q"}),
        ('a{job="sum(b)", le="+Inf"} * 2e3', {"a"}),
        ("sum(x) by (le)", {"x"}),
        ("-(a + b) ^ 2 % c", {"a", "b", "c"}),
        ("vector(1) and on() d", {"d"}),
        ("edge_gw_budget_bytes > 0", {"edge_gw_budget_bytes"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "rate(x[5m]",
        "sum(x))",
        "x{a='b'",
        'x{a="unterminated}',
        "rate(x[foo])",
        "x]",
        "sum by x",
        "nosuchfunction(x)",
        "x # comment",
        "a ; b",
        "x{a=b[5m]}",
    ],
)
def test_malformed_promql_is_rejected(expr: str) -> None:
    with pytest.raises(PromQLError):
        metric_names(expr)


@pytest.mark.parametrize(
    ("query", "expr"),
    [
        ('label_values(edge_gw_device_up{instance=~"$instance"}, device)', 'edge_gw_device_up{instance=~"$instance"}'),
        ("label_values(instance)", None),
        ("label_values(sum by (a, b) (x), b)", "sum by (a, b) (x)"),
        ("query_result(topk(5, y))", "topk(5, y)"),
        ("metrics(edge_gw_.*)", None),
        ("up", "up"),
    ],
)
def test_variable_queries(query: str, expr: str | None) -> None:
    assert variable_query_expr(query) == expr


_names = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda s: s not in {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                        "and", "or", "unless", "offset", "atan2", "inf", "nan"}
)
_labels = st.lists(
    st.tuples(_names, st.sampled_from(["=", "!=", "=~", "!~"]), st.text(alphabet="abc$_.*{}()[], ", max_size=8)),
    max_size=3,
)


@st.composite
def _selectors(draw: st.DrawFn) -> tuple[str, str]:
    name = draw(_names)
    labels = draw(_labels)
    inner = ", ".join(f'{k}{op}"{v}"' for k, op, v in labels)
    sel = f"{name}{{{inner}}}" if labels or draw(st.booleans()) else name
    wrap = draw(st.sampled_from(["{}", "rate({}[5m])", "sum by (le, {lbl}) ({})", "histogram_quantile(0.9, {})", "{} offset 5m", "-{}"]))
    lbl = labels[0][0] if labels else "x"
    return wrap.replace("{lbl}", lbl).replace("{}", sel), name


@given(st.lists(_selectors(), min_size=1, max_size=4), st.sampled_from([" + ", " / on (x) ", " or ", " > bool "]))
def test_prop_selectors_are_found(parts: list[tuple[str, str]], op: str) -> None:
    expr = op.join(f"({e})" for e, _ in parts)
    assert metric_names(expr) == {n for _, n in parts}


# ------------------------------------------------------------------ dashboard


def _dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def test_dashboard_structure() -> None:
    d = _dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
    for name in ("instance", "device", "uplink"):
        assert variables[name]["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_parse_and_use_catalogued_metrics() -> None:
    cat = catalogue()
    known = set().union(*(e.sample_names for e in cat.values()))
    exprs = dashboard_expressions(_dashboard())
    assert len(exprs) > 40
    used: set[str] = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: queries no metric"
        unknown = {n for n in names if n not in known and not n.startswith(("process_", "python_"))}
        assert not unknown, f"{where}: {unknown} not in METRICS.md"
        used |= names
    # every area of the catalogue has a panel
    for required in REQUIRED:
        entry = cat[required]
        assert entry.sample_names & used, f"the dashboard shows nothing of {required}"
