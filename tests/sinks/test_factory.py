"""driftline.sinks.factory: what build_sinks and start_metrics_server make from the settings."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from driftline.monitor.config import PrometheusSettings, Settings
from driftline.monitor.exceptions import ConfigError
from driftline.monitor.snapshot import VersionSnapshot
from driftline.monitor.telemetry import NullTelemetry
from driftline.sinks.factory import OUTBOX_FILE, build_sinks, start_metrics_server
from driftline.sinks.jsonl import JsonlSink
from driftline.sinks.kafka import KafkaAlarmSink
from driftline.sinks.webhook import WebhookSink


def close_all(sinks: list) -> None:
    for sink in sinks:
        sink.close()


def test_nothing_configured_builds_nothing(tmp_path: Path) -> None:
    assert build_sinks(Settings(state_dir=tmp_path)) == []


def test_each_configured_sink_is_built(tmp_path: Path, telemetry) -> None:
    settings = Settings(
        state_dir=tmp_path / "state",
        alarms_jsonl=tmp_path / "alarms.jsonl",
        kafka={"alarms_topic": "driftline-alarms"},
        webhooks={"targets": [{"name": "ci", "url": "http://127.0.0.1:1/hook", "secret_env": "HOOK_SECRET"}]},
    )
    sinks = build_sinks(settings, telemetry, environ={"HOOK_SECRET": "x"})
    try:
        assert [type(s) for s in sinks] == [JsonlSink, KafkaAlarmSink, WebhookSink]
        assert [s.name for s in sinks] == ["jsonl", "kafka", "webhook"]
        assert sinks[2].outbox.path == tmp_path / "state" / OUTBOX_FILE
        assert (tmp_path / "state" / OUTBOX_FILE).is_file()
    finally:
        close_all(sinks)


def test_a_missing_secret_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        state_dir=tmp_path,
        webhooks={"targets": [{"name": "ci", "url": "http://127.0.0.1:1/hook", "secret_env": "HOOK_SECRET"}]},
    )
    with pytest.raises(ConfigError, match="'HOOK_SECRET'"):
        build_sinks(settings, environ={})


def test_service_telemetry_without_webhook_methods_still_delivers(tmp_path: Path, receivers, make_alarm) -> None:
    receiver = receivers()
    settings = Settings(state_dir=tmp_path, webhooks={"targets": [{"name": "ci", "url": receiver.url}]})
    (sink,) = build_sinks(settings, NullTelemetry(), environ={})
    try:
        sink.write([make_alarm()])
        sink.flush()
        receiver.wait_accepted(1)
    finally:
        sink.close()


def test_start_metrics_server_serves_the_engine_snapshot(registry, telemetry) -> None:
    snapshot = VersionSnapshot("fraud", "v7", events=7, labelled=0, reference_ready=True)
    server = start_metrics_server(
        PrometheusSettings(host="127.0.0.1", port=0),
        registry,
        lambda: [snapshot],
        telemetry.readiness,
        on_overflow=telemetry.record_feature_overflow,
    )
    assert server is not None
    try:
        text = httpx.get(f"{server.url}/metrics", trust_env=False).text
        assert 'driftline_model_events_total{model="fraud",version="v7"} 7.0' in text
        assert httpx.get(f"{server.url}/readyz", trust_env=False).status_code == 503
    finally:
        server.stop()


def test_disabled_metrics_serve_nothing(registry) -> None:
    assert start_metrics_server(PrometheusSettings(enabled=False), registry, list, dict) is None
    assert list(registry.collect()) == []
