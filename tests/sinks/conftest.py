"""Fixtures of the sinks tests: registries, alarms, real webhook receivers, webhook
sinks over real outboxes and a real Prometheus (the Kafka-protocol broker and topic
names come from tests/conftest.py).

Every fixture that starts something stops it at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import TriggerPolicySettings, WebhookSettings, WebhookTarget
from driftline.sinks.prometheus import PrometheusTelemetry
from driftline.sinks.webhook import WebhookSink
from tests.support import PrometheusServer, WebhookReceiver, prometheus_binary

SECRET = "whsec-5f1c9e-driftline-test-signing-secret"
TOKEN = "glptt-0a9b8c7d6e5f-driftline-test-token"


@pytest.fixture
def secret() -> str:
    """The signing secret make_sink's targets find in DRIFTLINE_TEST_SECRET."""
    return SECRET


@pytest.fixture
def token() -> str:
    """The token make_sink's targets find in DRIFTLINE_TEST_TOKEN."""
    return TOKEN


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def telemetry(registry: CollectorRegistry) -> PrometheusTelemetry:
    return PrometheusTelemetry(registry)


@pytest.fixture
def make_alarm() -> Callable[..., Alarm]:
    """Build alarms; ``index`` places the evidence window at [index*100, index*100+99]."""

    def make(
        ts: float = 1000.0,
        *,
        model: str = "fraud",
        version: str = "v7",
        kind: str = "feature_drift",
        detector: str = "ks",
        feature: str | None = "amount",
        action: str = "retrain",
        index: int = 0,
        statistic: float = 0.31,
    ) -> Alarm:
        return Alarm(
            model, version, kind, detector, feature, statistic, 0.0001, 1e-7, index * 100, index * 100 + 99, ts, action
        )

    return make


@pytest.fixture
def receivers() -> Iterator[Callable[..., WebhookReceiver]]:
    """Make receivers (started unless ``start=False``); all are stopped at teardown."""
    made: list[WebhookReceiver] = []

    def make(**kwargs: Any) -> WebhookReceiver:
        receiver = WebhookReceiver(**kwargs)
        made.append(receiver)
        return receiver.__enter__()

    yield make
    for receiver in made:
        receiver.stop()


FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05}


@pytest.fixture
def make_sink(tmp_path: Path, telemetry: PrometheusTelemetry) -> Iterator[Callable[..., WebhookSink]]:
    """Make webhook sinks over ``tmp_path/outbox.sqlite3`` with tiny backoffs.

    ``targets`` are WebhookTargets or dicts; ``policy`` a dict of TriggerPolicySettings
    fields; ``environ`` defaults to SECRET in DRIFTLINE_TEST_SECRET and TOKEN in
    DRIFTLINE_TEST_TOKEN. Every sink is closed at teardown.
    """
    made: list[WebhookSink] = []

    def make(
        targets: list[WebhookTarget | dict[str, Any]],
        *,
        policy: dict[str, Any] | None = None,
        retries: dict[str, float] | None = None,
        environ: dict[str, str] | None = None,
        outbox: Any = None,
        **kwargs: Any,
    ) -> WebhookSink:
        settings = WebhookSettings(
            targets=[t if isinstance(t, WebhookTarget) else WebhookTarget(**t) for t in targets],
            policy=TriggerPolicySettings(**(policy or {"cooldown_seconds": 0})),
            **(retries or FAST_RETRIES),
        )
        sink = WebhookSink(
            settings,
            outbox=outbox if outbox is not None else tmp_path / "outbox.sqlite3",
            telemetry=telemetry,
            environ=environ
            if environ is not None
            else {"DRIFTLINE_TEST_SECRET": SECRET, "DRIFTLINE_TEST_TOKEN": TOKEN},
            **kwargs,
        )
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


@pytest.fixture
def prometheus_server() -> Iterator[Callable[..., PrometheusServer]]:
    """Start Debian's prometheus (skipped where it is not installed); stopped at teardown."""
    if prometheus_binary() is None:
        pytest.skip("prometheus is not installed (make system-deps installs it)")
    started: list[PrometheusServer] = []

    def start(targets: list[str], **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(targets, **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def metric(registry: CollectorRegistry) -> Callable[..., float]:
    """``metric(name, **labels)``: a sample's value in ``registry`` (0.0 when absent)."""

    def value(name: str, **labels: str) -> float:
        found = registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    return value
