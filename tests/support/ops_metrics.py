"""Metrics test helpers: the catalogue in ``gateway/METRICS.md``, a scrape parser, and a
small PromQL reader that finds the metric names a dashboard expression queries.

The PromQL reader is a lexer plus a bracket-aware walk, enough for dashboard expressions:
it rejects unbalanced brackets, unterminated strings and stray characters, and reports
every identifier that stands in a metric-name position (not a function or aggregation, not
a keyword, not a label name inside ``{...}`` or in ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right`` lists). Grafana variables (``$x``, ``${x}``, ``[[x]]``) are
replaced by harmless text first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = ROOT / "gateway" / "METRICS.md"
DASHBOARD = ROOT / "gateway" / "dashboards" / "edge-gateway.json"

_ROW = re.compile(r"^\|\s*`(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*(?P<type>\w+)\s*\|(?P<labels>[^|]*)\|")


@dataclass(frozen=True)
class Entry:
    name: str  # as queried: counters with _total, info as <name>_info, histograms bare
    type: str  # counter | gauge | histogram | info
    labels: tuple[str, ...]

    @property
    def family(self) -> str:
        """The family name the Prometheus text parser reports."""
        if self.type == "counter" and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    @property
    def text_type(self) -> str:
        """The TYPE line in the Prometheus text format (info is exposed as a gauge)."""
        return "gauge" if self.type == "info" else self.type

    @property
    def sample_names(self) -> set[str]:
        """Names a PromQL expression may use for this metric."""
        if self.type == "histogram":
            return {f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}
        return {self.name}


def parse_catalogue(text: str) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        raw = m.group("labels").strip()
        labels = () if raw in ("", "—", "-") else tuple(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", raw))
        name = m.group("name")
        if name in out:
            raise ValueError(f"{name} is listed twice")
        out[name] = Entry(name, m.group("type"), labels)
    return out


def catalogue() -> dict[str, Entry]:
    return parse_catalogue(CATALOGUE.read_text("utf-8"))


@dataclass
class Family:
    name: str
    type: str
    documentation: str
    label_sets: set[tuple[str, ...]] = field(default_factory=set)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


_SAMPLE_ONLY_LABELS = {"le", "quantile"}


def parse_scrape(text: str) -> dict[str, Family]:
    """Families of a Prometheus text exposition, with the label names of their samples."""
    out: dict[str, Family] = {}
    for fam in text_string_to_metric_families(text):
        f = Family(fam.name, fam.type, fam.documentation)
        for s in fam.samples:
            f.samples.append((s.name, dict(s.labels), float(s.value)))
            f.label_sets.add(tuple(sorted(k for k in s.labels if k not in _SAMPLE_ONLY_LABELS)))
        out[fam.name] = f
    return out


def sample_names(families: dict[str, Family]) -> set[str]:
    return {name for f in families.values() for name, _, _ in f.samples}


# ------------------------------------------------------------------ PromQL


class PromQLError(ValueError):
    pass


FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile",
    "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta",
    "increase", "irate", "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
    "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "label_values", "query_result",
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "atan2"}
_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+|[iI]nf|NaN)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,@:])
  | (?P<open>[(\[{])
  | (?P<close>[)\]}])
    """,
    re.VERBOSE,
)
_PAIRS = {")": "(", "]": "[", "}": "{"}


def substitute_grafana_variables(expr: str) -> str:
    """``$__rate_interval`` -> ``5m`` inside ranges; other ``$var``/``${var}`` -> ``x``."""
    expr = re.sub(r"\$__(rate_)?interval|\$\{__(rate_)?interval\}|\$__range", "5m", expr)
    expr = re.sub(r"\$\{[a-zA-Z_][a-zA-Z0-9_]*(?::[a-z]+)?\}|\$[a-zA-Z_][a-zA-Z0-9_]*|\[\[[a-zA-Z_]\w*\]\]", "x", expr)
    return expr


def tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise PromQLError(f"unexpected character {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names queried by one PromQL expression (Grafana variables allowed)."""
    toks = tokens(substitute_grafana_variables(expr))
    if not toks:
        raise PromQLError("empty expression")
    names: set[str] = set()
    stack: list[tuple[str, str]] = []  # (bracket, context) context: label|list|call|group|range
    pending_list = False
    for i, (kind, text) in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        ctx = stack[-1][1] if stack else "expr"
        if kind == "open":
            if text == "{":
                stack.append((text, "label"))
            elif text == "[":
                if ctx == "label":
                    raise PromQLError(f"'[' inside label matchers in {expr!r}")
                stack.append((text, "range"))
            else:
                prev = toks[i - 1] if i else ("", "")
                if pending_list:
                    stack.append((text, "list"))
                    pending_list = False
                elif prev[0] == "ident" and (prev[1] in FUNCTIONS or prev[1] in AGGREGATIONS):
                    stack.append((text, "call"))
                else:
                    stack.append((text, "group"))
            continue
        if kind == "close":
            if not stack or stack[-1][0] != _PAIRS[text]:
                raise PromQLError(f"unbalanced {text!r} in {expr!r}")
            stack.pop()
            continue
        if pending_list:
            raise PromQLError(f"expected '(' after a grouping keyword in {expr!r}")
        if kind != "ident":
            if ctx == "range" and kind not in ("duration", "op", "number"):
                raise PromQLError(f"bad range/subquery selector in {expr!r}")
            continue
        if ctx in ("label", "list"):
            continue  # label names
        if ctx == "range":
            raise PromQLError(f"identifier {text!r} inside a range selector in {expr!r}")
        low = text.lower()
        if low in _LIST_KEYWORDS:
            pending_list = True
            continue
        if low in KEYWORDS:
            continue
        if nxt == ("open", "(") and (text in FUNCTIONS or text in AGGREGATIONS):
            continue
        if text in AGGREGATIONS and nxt[1] in ("by", "without"):
            continue
        if nxt == ("open", "("):
            raise PromQLError(f"unknown function {text!r} in {expr!r}")
        if text in ("inf", "Inf", "NaN"):
            continue
        names.add(text)
    if stack:
        raise PromQLError(f"unclosed {stack[-1][0]!r} in {expr!r}")
    if pending_list:
        raise PromQLError(f"dangling grouping keyword in {expr!r}")
    return names


def dashboard_expressions(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(where, expression) of every query in a dashboard: panel targets (also inside
    collapsed rows) and template-variable queries."""
    out: list[tuple[str, str]] = []

    def walk_panels(panels: Iterable[object]) -> None:
        for p in panels:
            assert isinstance(p, dict)
            for t in p.get("targets", []) or []:
                if isinstance(t, dict) and t.get("expr"):
                    out.append((f"panel {p.get('title')!r} {t.get('refId')}", str(t["expr"])))
            walk_panels(p.get("panels", []) or [])

    walk_panels(dashboard.get("panels", []) or [])  # type: ignore[arg-type]
    templating = dashboard.get("templating", {})
    assert isinstance(templating, dict)
    for v in templating.get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        expr = variable_query_expr(str(q or ""))
        if expr:
            out.append((f"variable {v.get('name')!r}", expr))
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<args>.*)\)\s*$", re.S)


def variable_query_expr(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query: ``label_values(expr, label)``
    -> ``expr``; ``label_values(label)`` -> ``None``; ``query_result(expr)`` -> ``expr``;
    ``metrics(regex)`` -> ``None``."""
    m = _LABEL_VALUES.match(query)
    if m is not None:
        args = m.group("args")
        depth = 0
        for i in range(len(args) - 1, -1, -1):
            c = args[i]
            if c in ")}]":
                depth += 1
            elif c in "({[":
                depth -= 1
            elif c == "," and depth == 0:
                return args[:i].strip()
        return None
    m = re.match(r"^\s*query_result\((?P<expr>.*)\)\s*$", query, re.S)
    if m is not None:
        return m.group("expr")
    if query.strip().startswith("metrics("):
        return None
    return query or None
