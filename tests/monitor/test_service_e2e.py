"""End to end: a running monitor (real broker) scraped by a real Prometheus, calling a
real webhook receiver; and `driftline run` as a process stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.monitor.streams import feedback_for, prediction_events
from tests.monitor.test_kafka import Running, produce, settings_for, wait_for
from tests.support.prometheus import PrometheusServer
from tests.support.receiver import WebhookReceiver
from tests.support.runs import QUICK_SESSION_MS

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

SECRET = "e2e-webhook-secret-value"


@pytest.mark.prometheus
def test_prometheus_sees_what_the_monitor_computed_and_ci_gets_a_signed_trigger(
    broker, topics, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("E2E_SECRET", SECRET)
    events = prediction_events(6_000, model="fraud", seed=21, shift_at=4_000, shift=1.0)
    produce(broker, topics["predictions"], events)
    with WebhookReceiver(secret=SECRET) as receiver:
        settings = settings_for(
            broker,
            topics,
            tmp_path,
            prometheus={"enabled": True, "host": "127.0.0.1", "port": 0},
            webhooks={
                "targets": [{"name": "ci", "url": receiver.url, "secret_env": "E2E_SECRET", "actions": ["retrain"]}],
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.5,
            },
        )
        running = Running(settings)
        svc = running.service
        try:
            wait_for(lambda: svc.stats.predictions >= len(events), 90, "events consumed")
            wait_for(lambda: svc.metrics_port is not None, 10, "metrics server")
            port = svc.metrics_port
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200, 20, "ready")

            triggers = receiver.wait_accepted(1, timeout=30)
            body = triggers[0].json()
            assert triggers[0].signature_valid and triggers[0].headers["x-driftline-event"] == "retrain"
            assert body["model"] == "fraud" and body["action"] == "retrain"
            assert any(a["feature"] == "x0" and a["kind"] == "feature_drift" for a in body["evidence"])

            expected = {(s.feature, s.detector): s for v in svc.engine.snapshot() for s in v.drift}
            with PrometheusServer([f"127.0.0.1:{port}"], scrape_interval=0.5) as prom:
                for detector in ("ks", "psi", "wasserstein"):
                    result = prom.wait_for(
                        f'driftline_drift_statistic{{model="fraud",version="v1",feature="x0",detector="{detector}"}}',
                        timeout=30,
                    )
                    assert float(result[0]["value"][1]) == pytest.approx(expected[("x0", detector)].statistic, rel=1e-9)
                p = prom.wait_for('driftline_drift_p_value{model="fraud",feature="x0",detector="ks"}')
                assert float(p[0]["value"][1]) == pytest.approx(expected[("x0", "ks")].p_value, rel=1e-6)
                consumed = prom.wait_for('driftline_events_consumed_total{stream="predictions"}')
                assert float(consumed[0]["value"][1]) == len(events)
                alarms = prom.wait_for('driftline_alarms_total{model="fraud",kind="feature_drift"}')
                assert float(alarms[0]["value"][1]) >= 1
            metrics_text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            assert running.stop() == 0
    assert SECRET not in metrics_text
    assert SECRET not in caplog.text


def test_sigterm_finishes_the_batch_commits_and_exits_zero(broker, topics, tmp_path):
    # Half the stream is produced before the start; the other half just before the
    # signal, so that records are usually still in flight (fetched, not processed) when
    # it comes. Whatever the machine's speed, the commit must equal what the process
    # says it processed, no more (a prefetched record counted as done) and no less.
    events = prediction_events(40_000, model="fraud", seed=22)
    produced = events[:20_000]
    feedback = feedback_for(events[:10_000], seed=23)
    produce(broker, topics["predictions"], produced)
    produce(broker, topics["feedback"], feedback)
    group = f"sigterm-{topics['predictions']}"
    env = {
        **os.environ,
        "DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "DRIFTLINE_KAFKA__GROUP_ID": group,
        "DRIFTLINE_KAFKA__PREDICTIONS_TOPIC": topics["predictions"],
        "DRIFTLINE_KAFKA__FEEDBACK_TOPIC": topics["feedback"],
        "DRIFTLINE_KAFKA__DEAD_LETTER_TOPIC": topics["dead_letter"],
        "DRIFTLINE_KAFKA__SESSION_TIMEOUT_MS": str(QUICK_SESSION_MS),
        "DRIFTLINE_KAFKA__MAX_POLL_RECORDS": "500",
        "DRIFTLINE_PROMETHEUS__HOST": "127.0.0.1",
        "DRIFTLINE_PROMETHEUS__PORT": "0",  # bound by the process, read from its log
        "DRIFTLINE_CHECKPOINT_INTERVAL_SECONDS": "3600",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "run",
            "--state-dir",
            str(tmp_path / "state"),
            "--alarms-jsonl",
            str(tmp_path / "alarms.jsonl"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    err_lines: list[bytes] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(proc.stderr.readline, b"")), daemon=True)
    reader.start()
    try:

        def metrics_port() -> int | None:
            m = re.search(rb"serving /metrics, /healthz and /readyz on 127\.0\.0\.1:(\d+)", b"".join(list(err_lines)))
            return int(m.group(1)) if m else None

        wait_for(lambda: metrics_port() is not None, 60, "the metrics endpoint")
        port = metrics_port()
        wait_for(lambda: consumed(port) > 0, 60, "the monitor to consume")
        probe = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
        try:
            # the checkpoint interval is an hour: nothing is committed before the signal
            assert all(probe.committed(TopicPartition(topics["predictions"], p)) is None for p in (0, 1))
            produce(broker, topics["predictions"], events[len(produced) :])
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, b"".join(err_lines).decode()[-2000:]
            parts = [TopicPartition(topics["predictions"], p) for p in (0, 1)]
            committed = {p.partition: probe.committed(p) for p in parts}
        finally:
            probe.close()
        reader.join(timeout=10)
        err = b"".join(err_lines)
        assert any(c for c in committed.values()), f"nothing committed at shutdown: {committed}"
        total = sum(c or 0 for c in committed.values())
        stopped = re.search(rb"stopping after (\d+) predictions", err)
        assert stopped, err.decode()[-2000:]
        assert 0 < total == int(stopped.group(1)) <= len(events)  # committed what it processed
        assert b"finishing the current batch" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        proc.stderr.close()


def consumed(port: int) -> float:
    """Prediction events the process reports on /metrics (0 while it is not serving)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return 0.0
    m = re.search(r'^driftline_events_consumed_total\{stream="predictions"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0
