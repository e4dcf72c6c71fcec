"""Every PromQL expression of the Grafana dashboards and the alert rules queries metrics
that a running driftline really exports.

Static checks (no service): the dashboards are valid JSON in the shape Grafana
provisions, use the provisioned datasource by uid, and name only metrics of the contract.

Live check (``demo_run`` in conftest.py: a demo scraped by a real Prometheus): each
expression is evaluated and must return data:

- dashboards: template variables are resolved the way Grafana does, from their own
  ``label_values(...)`` queries against the same Prometheus (each must return values; a
  multi-value variable becomes the regex ``a|b``, a single one its current value or the
  first value); ``$__rate_interval``/``$__interval``/``$__range`` become ``1m``. Panel
  targets are evaluated as Grafana runs them: a range query over the last 10 minutes
  (the whole demo: a canary's traffic share exists only while it is a canary), or an
  instant query for ``"instant": true`` targets; annotation expressions as range
  queries without their final comparison (``... > 0`` only selects the moments to mark);
- alert rules (the "metric part" rule): an alert fires on a condition that a healthy
  demo need not meet, so the test evaluates, for each top-level ``or`` branch of the
  expression, its left operand of the first top-level comparison, with every label
  matcher relaxed to ``label=~".+"``. That returns data if and only if the metrics exist
  and carry the labels the rule filters on, whatever their values: it holds whether or
  not the alert condition does, and still fails for a misspelt metric or label name.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.sinks.test_prometheus import CONTRACT as METRIC_TYPES

# one demo serves the tests of both modules: under pytest-xdist they go to one worker
pytestmark = pytest.mark.xdist_group("deploy")

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
RULES = ROOT / "sinks" / "rules" / "driftline-alerts.yml"
DATASOURCE_UID = "driftline-prometheus"

# the metrics of the README's contract, as tests/sinks/test_prometheus.py holds them
CONTRACT = set(METRIC_TYPES)
HISTOGRAMS = {"driftline_batch_duration_seconds"}
BUILTIN_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


# ---- reading the expressions -----------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, kind, expr) with kind ``panel`` (a range query, as Grafana runs a
    time series), ``instant`` (a target with ``"instant": true``) or ``annotation``."""
    for p in _panels(dashboard["panels"]):
        for t in p.get("targets", []):
            kind = "instant" if t.get("instant") and not t.get("range") else "panel"
            yield f"panel {p['title']!r} {t['refId']}", kind, t["expr"]
    for a in dashboard["annotations"]["list"]:
        if a.get("expr"):
            yield f"annotation {a['name']!r}", "annotation", a["expr"]


def variable_query(var: dict[str, Any]) -> str:
    q = var["query"]
    return q["query"] if isinstance(q, dict) else q


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bdriftline_[a-z0-9_]+", expr))


# ---- PromQL surgery: comparisons and label matchers ------------------------------------

_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def _top_level(expr: str) -> Iterator[tuple[int, str]]:
    """(position, character) of the characters outside brackets and strings."""
    depth, quote, i = 0, None, 0
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def _split_set_operator(expr: str, op: str) -> list[str]:
    """The operands of a top-level ``a <op> b <op> c`` (``or``, ``and``, ``unless``)."""
    cuts = [
        i
        for i, _ in _top_level(expr)
        if re.match(rf"{op}\b", expr[i : i + len(op) + 1])
        and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] == "_"))
    ]
    parts, start = [], 0
    for i in cuts:
        parts.append(expr[start:i])
        start = i + len(op)
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def split_top_level_or(expr: str) -> list[str]:
    return _split_set_operator(expr, "or")


def _unwrap(expr: str) -> str:
    """``expr`` without parentheses that enclose all of it."""
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, c in enumerate(expr):
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr
        expr = expr[1:-1].strip()
    return expr


def left_of_comparison(expr: str) -> str:
    """The left operand of the first top-level comparison (the whole expression if none)."""
    for i, c in _top_level(expr):
        if c in "<>=!" and expr[i : i + 2] != "=~" and expr[i : i + 2] != "!~":
            if any(expr.startswith(op, i) for op in _COMPARISONS):
                return expr[:i].strip()
    return expr.strip()


def relax_matchers(expr: str) -> str:
    """Every label matcher ``l="v"``, ``l!="v"``, ``l=~"v"``, ``l!~"v"`` becomes ``l=~".+"``."""
    return re.sub(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"', r'\1=~".+"', expr)


def alert_metric_parts(expr: str) -> list[str]:
    """Every ``or`` branch; of ``a and b`` / ``a unless b`` the left operand (the right one
    only filters); then the left operand of the comparison; recursively, through
    enclosing parentheses; label matchers relaxed."""
    out = []
    for branch in split_top_level_or(_unwrap(expr)):
        part = _unwrap(branch)
        for op in ("and", "unless"):
            part = _unwrap(_split_set_operator(part, op)[0])
        left = _unwrap(left_of_comparison(part))
        if left != part or len(split_top_level_or(left)) > 1:
            out += alert_metric_parts(left)
        else:
            out.append(relax_matchers(left))
    return out


def test_promql_surgery():
    assert left_of_comparison('time() - x{what="batch"} > 300') == 'time() - x{what="batch"}'
    assert left_of_comparison('sum(rate(x{a=~"b|c"}[5m])) > 0') == 'sum(rate(x{a=~"b|c"}[5m]))'
    assert left_of_comparison('up{job=~"d.*"} == 0') == 'up{job=~"d.*"}'
    assert left_of_comparison("(a < b) or (c > d)") == "(a < b) or (c > d)"
    assert split_top_level_or("(a < b)\n or\n ((c > d) unless e)") == ["(a < b)", "((c > d) unless e)"]
    assert split_top_level_or('x{outcome=~"failed|or"} or y') == ['x{outcome=~"failed|or"}', "y"]
    assert relax_matchers('x{outcome=~"failed|rejected", job="d"}') == 'x{outcome=~".+", job=~".+"}'
    assert alert_metric_parts('sum by (t) (increase(d{outcome=~"failed"}[15m])) > 0') == [
        'sum by (t) (increase(d{outcome=~".+"}[15m]))'
    ]
    assert alert_metric_parts("(p < t)\n or\n ((s > t) unless p)") == ["p", "s"]
    assert alert_metric_parts('(x{m=~"a"} < 0.9 * max_over_time(x[6h])) or (y > 1)') == ['x{m=~".+"}', "y"]
    assert alert_metric_parts("sum(a) / sum(b) > 0.01") == ["sum(a) / sum(b)"]


# ---- static checks ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=[p.name for p in DASHBOARDS])
def dashboard(request) -> dict[str, Any]:
    return json.loads((ROOT / "grafana" / "dashboards" / request.param).read_text())


def test_there_are_three_dashboards():
    assert {p.stem for p in DASHBOARDS} == {"driftline-overview", "driftline-drift", "driftline-performance"}
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


def test_dashboard_shape(dashboard):
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["title"].startswith("driftline / ")
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for p in _panels(dashboard["panels"]):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID
            assert t["expr"].strip()
    for v in dashboard["templating"]["list"]:
        assert v["datasource"]["uid"] == DATASOURCE_UID
        assert variable_query(v).startswith("label_values(")


def test_dashboards_use_only_contract_metrics(dashboard):
    exprs = [e for _, _, e in dashboard_expressions(dashboard)]
    exprs += [variable_query(v) for v in dashboard["templating"]["list"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used, "no driftline metric queried"
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in CONTRACT else name
        assert name in CONTRACT or base in HISTOGRAMS, f"{name} is not a driftline metric"


def test_dashboard_variables_are_all_used(dashboard):
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["annotations"])
    text += json.dumps([variable_query(v) for v in dashboard["templating"]["list"]])
    for v in dashboard["templating"]["list"]:
        assert f"${v['name']}" in text, f"variable {v['name']} is never used"


def test_alert_rules_use_only_contract_metrics():
    for name, expr in rule_expressions():
        for metric in metric_names(expr):
            assert metric in CONTRACT, f"rule {name}: {metric} is not a driftline metric"


# ---- live: against a running demo -------------------------------------------------------


def live(test):
    """Marks of the tests that need the running demo (conftest's ``demo_run``)."""
    for mark in (
        pytest.mark.slow,
        pytest.mark.kafka,
        pytest.mark.prometheus,
        # kafka-python 3.0.12 loads its schemas with deprecated importlib calls
        pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
    ):
        test = mark(test)
    return test


_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _substitute(expr: str, values: dict[str, str]) -> str:
    for builtin in BUILTIN_INTERVALS:
        expr = expr.replace(builtin, "1m")

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in values, f"unknown variable ${name} in {expr!r}"
        return values[name]

    return _VAR.sub(value, expr)


def _label_values(prometheus: Any, query: str) -> list[str]:
    m = re.fullmatch(r"label_values\((?:(.*),\s*)?([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
    assert m, f"not a label_values() query: {query}"
    selector, label = m.group(1), m.group(2)
    if selector is None:
        r = httpx.get(f"{prometheus.url}/api/v1/label/{label}/values", timeout=10)
        return sorted(r.json()["data"])
    r = httpx.get(f"{prometheus.url}/api/v1/series", params={"match[]": selector}, timeout=10)
    body = r.json()
    assert body["status"] == "success", f"{selector}: {body}"
    return sorted({s[label] for s in body["data"] if label in s})


def resolve_variables(prometheus: Any, dashboard: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for v in dashboard["templating"]["list"]:
        query = _substitute(variable_query(v), values)
        found = _label_values(prometheus, query)
        assert found, f"{dashboard['uid']}: variable {v['name']} ({query}) has no values"
        if v.get("multi") or v.get("includeAll"):
            # As Grafana formats a multi-value variable for Prometheus: a regex whose
            # backslashes are escaped again inside the PromQL string.
            values[v["name"]] = "|".join(re.escape(x) for x in found).replace("\\", "\\\\")
        else:
            current = (v.get("current") or {}).get("value")
            values[v["name"]] = current if current in found else found[0]
    return values


def _range_query(prometheus: Any, query: str, seconds: float) -> list[Any]:
    """The series ``query`` returns over the last ``seconds``, one point a second."""
    now = time.time()
    r = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        timeout=30,
        params={"query": query, "start": now - seconds, "end": now, "step": "1s"},
    )
    body = r.json()
    assert body["status"] == "success", f"{query}: {body}"
    return [s for s in body["data"]["result"] if s["values"]]


def test_the_overview_shows_versions_roles_and_lifecycle_annotations():
    overview = json.loads((ROOT / "grafana" / "dashboards" / "driftline-overview.json").read_text())
    panels = {p["title"]: p for p in _panels(overview["panels"])}
    roles = panels["Versions and their roles"]
    assert roles["type"] == "state-timeline"
    assert "driftline_version_role" in roles["targets"][0]["expr"]
    texts = {m["options"][k]["text"] for m in roles["fieldConfig"]["defaults"]["mappings"] for k in m["options"]}
    assert texts == {"stable", "canary", "shadow", "retiring"}
    assert "driftline_canary_traffic_share" in json.dumps(overview["panels"])
    lifecycle = [a for a in overview["annotations"]["list"] if a["name"] == "lifecycle events"]
    assert len(lifecycle) == 1 and "driftline_version_role" in lifecycle[0]["expr"]


SUBQUERY_STEP = 15.0
"""The coarsest subquery resolution in the dashboards (the lifecycle annotation's
``[10m:15s]``): a series that appeared less than this long ago may have no point yet."""


@live
def test_every_dashboard_query_returns_data(demo_run):
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        values = resolve_variables(demo_run.prometheus, dashboard)
        for where, kind, expr in dashboard_expressions(dashboard):
            query = _substitute(expr, values)
            if kind == "annotation":
                query = left_of_comparison(query)
            queries.append((f"{path.name}: {where}: {query}", kind, query))

    def without_data(pending):
        return [
            (name, kind, query)
            for name, kind, query in pending
            if not (
                demo_run.prometheus.query(query)
                if kind == "instant"
                else _range_query(demo_run.prometheus, query, seconds=600)
            )
        ]

    # asked again until one subquery step has passed, for series that began just now
    deadline = time.monotonic() + SUBQUERY_STEP + 5
    empty = without_data(queries)
    while empty and time.monotonic() < deadline:
        time.sleep(1.0)
        empty = without_data(empty)
    assert not empty, "queries without data:\n" + "\n".join(name for name, _, _ in empty)


@live
def test_every_alert_rule_queries_existing_metrics(demo_run):
    empty = []
    for name, expr in rule_expressions():
        for part in alert_metric_parts(expr):
            if not demo_run.prometheus.query(part):
                empty.append(f"{name}: {part}")
    assert not empty, "alert rule parts without data:\n" + "\n".join(empty)
    # The rule file loaded (Prometheus evaluates it): every alert is known.
    r = httpx.get(f"{demo_run.prometheus.url}/api/v1/rules", timeout=10).json()
    loaded = {rule["name"] for g in r["data"]["groups"] for rule in g["rules"]}
    assert {n for n, _ in rule_expressions()} <= loaded
