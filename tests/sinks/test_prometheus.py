"""driftline.sinks.prometheus and driftline.sinks.http: the metric contract, the collector, the server, and a
real Prometheus scraping it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from driftline.monitor.config import PrometheusSettings
from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot
from driftline.monitor.telemetry import Telemetry
from driftline.sinks.http import MetricsServer
from driftline.sinks.prometheus import OVERFLOW_FEATURE, EngineCollector, PrometheusTelemetry

RULES = Path(__file__).resolve().parents[2] / "sinks" / "rules" / "driftline-alerts.yml"

# The contract with the alert rules and the Grafana dashboards (README.md, "Metrics").
CONTRACT = {
    "driftline_events_consumed_total": "counter",
    "driftline_invalid_events_total": "counter",
    "driftline_label_join_total": "counter",
    "driftline_alarms_total": "counter",
    "driftline_batch_duration_seconds": "histogram",
    "driftline_batch_size_events": "histogram",
    "driftline_consumer_lag": "gauge",
    "driftline_last_success_timestamp_seconds": "gauge",
    "driftline_ready": "gauge",
    "driftline_broker_errors_total": "counter",
    "driftline_assigned_partitions": "gauge",
    "driftline_webhook_deliveries_total": "counter",
    "driftline_webhook_outbox_pending": "gauge",
    "driftline_webhook_outbox_failed": "gauge",
    "driftline_triggers_total": "counter",
    "driftline_feature_overflow_total": "counter",
    "driftline_drift_statistic": "gauge",
    "driftline_drift_p_value": "gauge",
    "driftline_drift_threshold": "gauge",
    "driftline_data_quality_ratio": "gauge",
    "driftline_performance": "gauge",
    "driftline_model_events_total": "counter",
    "driftline_model_labelled_events_total": "counter",
    "driftline_model_latency_seconds": "gauge",
    "driftline_reference_ready": "gauge",
    "driftline_last_event_timestamp_seconds": "gauge",
    "driftline_mixed_features": "gauge",
    "driftline_class_recall": "gauge",
    "driftline_performance_estimation_active": "gauge",
    "driftline_performance_estimated": "gauge",
    "driftline_performance_estimated_low": "gauge",
    "driftline_performance_estimated_high": "gauge",
    "driftline_performance_realized": "gauge",
    "driftline_performance_estimation_error": "gauge",
    "driftline_version_role": "gauge",
    "driftline_canary_traffic_share": "gauge",
    "driftline_canary_labels_needed": "gauge",
    "driftline_canary_stalled": "gauge",
    "driftline_rollback_pending": "gauge",
    "driftline_rollback_unconfirmed": "gauge",
    "driftline_segment_events_total": "counter",
    "driftline_segment_labelled_events_total": "counter",
    "driftline_segment_reference_events": "gauge",
    "driftline_segment_tested": "gauge",
    "driftline_segment_drift_statistic": "gauge",
    "driftline_segment_drift_p_value": "gauge",
    "driftline_segment_data_quality_ratio": "gauge",
    "driftline_segment_performance": "gauge",
}

FRAUD = VersionSnapshot(
    model="fraud",
    version="v7",
    events=120_000,
    labelled=3_000,
    reference_ready=True,
    drift=(
        FeatureStatistic("amount", "ks", 0.31, 1.5e-7, 1e-4),
        FeatureStatistic("amount", "psi", 0.42, None, 0.2),
        FeatureStatistic("country", "chi2", 12.5, 0.25, 1e-4),
        FeatureStatistic("prediction", "js", 0.05, None, None, kind="prediction_drift"),
    ),
    quality={
        "amount": {"missing_rate": 0.02, "out_of_range_rate": 0.125},
        "country": {"missing_rate": 0.0, "unseen_rate": 0.25},
    },
    performance={"accuracy": 0.875, "roc_auc": 0.9375},
    latency_ms=11.5,
    last_event_ts=1_763_900_400.0,
)
CANARY = VersionSnapshot("fraud", "v8", events=500, labelled=0, reference_ready=False)


def exposition_types(registry: CollectorRegistry) -> dict[str, str]:
    text = generate_latest(registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def exercise(telemetry: PrometheusTelemetry) -> None:
    telemetry.record_events("predictions", 10)
    telemetry.record_invalid("invalid_json")
    telemetry.record_join("matched", 3)
    telemetry.record_alarm("fraud", "feature_drift")
    telemetry.observe_batch(0.02, 500)
    telemetry.set_lag("predictions", 0, 42)
    telemetry.mark_success("batch")
    telemetry.record_webhook("ci", "retrain", "delivered")
    telemetry.set_outbox_pending(1)
    telemetry.record_trigger("fraud", "retrain")
    telemetry.record_feature_overflow("fraud", 2)


def counter_names(types: dict[str, str]) -> dict[str, str]:
    # The text format names a counter family without _total in some client versions, and
    # adds *_created gauges (prometheus_client.disable_created_metrics() turns them off).
    return {
        (n if t != "counter" or n.endswith("_total") else n + "_total"): t
        for n, t in types.items()
        if not n.endswith("_created")
    }


def test_every_contract_metric_is_exposed_with_its_type(registry, telemetry) -> None:
    exercise(telemetry)
    registry.register(EngineCollector(lambda: [FRAUD]))
    assert counter_names(exposition_types(registry)) == CONTRACT


def test_the_alert_rules_use_only_contract_metrics() -> None:
    used = set(re.findall(r"\b(driftline_[a-z_]+)\b", RULES.read_text()))
    histogram_series = {f"{n}_{s}" for n, t in CONTRACT.items() if t == "histogram" for s in ("bucket", "sum", "count")}
    assert used and used <= set(CONTRACT) | histogram_series, used - set(CONTRACT)


def test_prometheus_telemetry_implements_the_service_protocol(telemetry) -> None:
    service_side: Telemetry = telemetry  # a type checker holds this; the names must exist
    for name in (
        "record_events",
        "record_invalid",
        "record_join",
        "record_alarm",
        "observe_batch",
        "set_lag",
        "mark_success",
        "set_ready",
    ):
        assert callable(getattr(service_side, name))


def test_telemetry_records_what_it_is_told(registry, metric) -> None:
    clock = iter([1_763_900_000.0, 1_763_900_005.0])
    telemetry = PrometheusTelemetry(registry, clock=lambda: next(clock))
    exercise(telemetry)
    telemetry.record_events("predictions", 5)
    telemetry.mark_success("batch")
    assert metric("driftline_events_consumed_total", stream="predictions") == 15
    assert metric("driftline_invalid_events_total", reason="invalid_json") == 1
    assert metric("driftline_label_join_total", outcome="matched") == 3
    assert metric("driftline_alarms_total", model="fraud", kind="feature_drift") == 1
    assert metric("driftline_batch_duration_seconds_count") == 1
    assert metric("driftline_batch_duration_seconds_sum") == pytest.approx(0.02)
    assert metric("driftline_batch_size_events_bucket", le="500.0") == 1
    assert metric("driftline_consumer_lag", topic="predictions", partition="0") == 42
    assert metric("driftline_last_success_timestamp_seconds", what="batch") == 1_763_900_005.0
    assert metric("driftline_webhook_deliveries_total", target="ci", action="retrain", outcome="delivered") == 1
    assert metric("driftline_webhook_outbox_pending") == 1
    assert metric("driftline_triggers_total", model="fraud", action="retrain") == 1
    assert metric("driftline_feature_overflow_total", model="fraud") == 2


def test_readiness_starts_false_and_follows_set_ready(telemetry, metric) -> None:
    assert telemetry.readiness() == {"kafka": False, "partitions": False, "consuming": False, "reference": False}
    assert metric("driftline_ready", component="kafka") == 0
    telemetry.set_ready("kafka", True)
    assert telemetry.readiness()["kafka"] is True
    assert metric("driftline_ready", component="kafka") == 1


def test_no_global_registry_is_touched() -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)  # noqa: SLF001 - inspecting, not using
    PrometheusTelemetry(CollectorRegistry())
    assert set(REGISTRY._names_to_collectors) == before  # noqa: SLF001


# ---- the collector ---------------------------------------------------------------------


def test_collector_exposes_the_snapshots_at_scrape_time(registry, metric) -> None:
    snapshots = [FRAUD]
    registry.register(EngineCollector(lambda: snapshots))
    v7 = {"model": "fraud", "version": "v7"}
    assert metric("driftline_drift_statistic", **v7, feature="amount", detector="ks") == 0.31
    assert metric("driftline_drift_p_value", **v7, feature="amount", detector="ks") == 1.5e-7
    assert metric("driftline_drift_threshold", **v7, feature="amount", detector="psi") == 0.2
    assert registry.get_sample_value("driftline_drift_p_value", {**v7, "feature": "amount", "detector": "psi"}) is None
    assert (
        registry.get_sample_value("driftline_drift_threshold", {**v7, "feature": "prediction", "detector": "js"})
        is None
    )
    assert metric("driftline_data_quality_ratio", **v7, feature="country", check="unseen_rate") == 0.25
    assert metric("driftline_performance", **v7, metric="roc_auc") == 0.9375
    assert metric("driftline_model_events_total", **v7) == 120_000
    assert metric("driftline_model_labelled_events_total", **v7) == 3_000
    assert metric("driftline_model_latency_seconds", **v7) == pytest.approx(0.0115)
    assert metric("driftline_reference_ready", **v7) == 1
    assert metric("driftline_last_event_timestamp_seconds", **v7) == 1_763_900_400.0
    # read at scrape time: a new snapshot shows at the next scrape, nothing is pushed
    snapshots.append(CANARY)
    v8 = {"model": "fraud", "version": "v8"}
    assert metric("driftline_model_events_total", **v8) == 500
    assert metric("driftline_reference_ready", **v8) == 0
    assert registry.get_sample_value("driftline_model_latency_seconds", v8) is None
    assert registry.get_sample_value("driftline_last_event_timestamp_seconds", v8) is None


def wide_snapshot(n_features: int, version: str = "v1", offset: float = 0.0) -> VersionSnapshot:
    drift = [FeatureStatistic(f"f{i:03d}", "psi", offset + i / 1000, None, 0.2) for i in range(n_features)]
    drift.append(FeatureStatistic("prediction", "psi", 0.01, None, 0.2, kind="prediction_drift"))
    quality = {f"f{i:03d}": {"missing_rate": i / 1000} for i in range(n_features)}
    return VersionSnapshot(
        "wide", version, events=1, labelled=0, reference_ready=True, drift=tuple(drift), quality=quality
    )


def feature_values(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["feature"]: s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and s.labels.get("model") == "wide"
    }


def test_the_cardinality_cap_folds_extra_features_into_overflow(registry, telemetry, metric) -> None:
    snapshots = [wide_snapshot(250)]  # 251 features with the prediction
    registry.register(
        EngineCollector(lambda: snapshots, max_features_per_model=200, on_overflow=telemetry.record_feature_overflow)
    )
    stats = feature_values(registry, "driftline_drift_statistic")
    assert len(stats) == 201  # the cap and __overflow__
    assert "prediction" in stats  # the model-wide series is kept first
    assert set(stats) == {"prediction", *(f"f{i:03d}" for i in range(199)), OVERFLOW_FEATURE}
    assert stats[OVERFLOW_FEATURE] == pytest.approx(0.249)  # the largest folded statistic
    quality = feature_values(registry, "driftline_data_quality_ratio")
    assert len(quality) == 200 and quality[OVERFLOW_FEATURE] == pytest.approx(0.249)
    assert metric("driftline_feature_overflow_total", model="wide") == 51

    # scraping again counts nothing new; new features beyond the cap are counted once
    feature_values(registry, "driftline_drift_statistic")
    assert metric("driftline_feature_overflow_total", model="wide") == 51
    snapshots[0] = wide_snapshot(260)
    assert len(feature_values(registry, "driftline_drift_statistic")) == 201
    assert metric("driftline_feature_overflow_total", model="wide") == 61


def test_kept_features_are_sticky_across_scrapes(registry) -> None:
    snapshots = [
        VersionSnapshot(
            "wide",
            "v1",
            1,
            0,
            True,
            drift=(FeatureStatistic("zeta", "ks", 0.1, 0.5, 0.01), FeatureStatistic("eta", "ks", 0.2, 0.5, 0.01)),
        )
    ]
    registry.register(EngineCollector(lambda: snapshots, max_features_per_model=2))
    assert set(feature_values(registry, "driftline_drift_statistic")) == {"zeta", "eta"}
    # "alpha" sorts first but arrives later: it does not push a kept series out
    snapshots[0] = VersionSnapshot(
        "wide", "v1", 1, 0, True, drift=(FeatureStatistic("alpha", "ks", 0.9, 1e-9, 0.01), *snapshots[0].drift)
    )
    stats = feature_values(registry, "driftline_drift_statistic")
    assert stats == {"zeta": 0.1, "eta": 0.2, OVERFLOW_FEATURE: 0.9}
    p_values = feature_values(registry, "driftline_drift_p_value")
    assert p_values[OVERFLOW_FEATURE] == 1e-9  # the folded row's own p-value


def test_nan_statistics_are_exposed_and_never_win_the_overflow(registry) -> None:
    snapshots = [
        VersionSnapshot(
            "wide",
            "v1",
            1,
            0,
            True,
            drift=(
                FeatureStatistic("a", "ks", math.nan, None, 0.1),
                FeatureStatistic("b", "ks", math.nan, None, 0.1),
                FeatureStatistic("c", "ks", 0.3, None, 0.1),
            ),
        )
    ]
    registry.register(EngineCollector(lambda: snapshots, max_features_per_model=1))
    stats = feature_values(registry, "driftline_drift_statistic")
    assert math.isnan(stats["a"]) and stats[OVERFLOW_FEATURE] == 0.3


def test_the_cap_is_validated() -> None:
    with pytest.raises(ValueError, match="max_features_per_model"):
        EngineCollector(lambda: [], max_features_per_model=0)


def test_registering_does_not_call_the_engine(registry) -> None:
    def provider() -> list[VersionSnapshot]:
        raise AssertionError("called at registration")

    registry.register(EngineCollector(provider))


# ---- the HTTP server ---------------------------------------------------------------------


@pytest.fixture
def serve(registry) -> Callable[..., MetricsServer]:
    servers: list[MetricsServer] = []

    def start(readiness: Callable[[], dict[str, bool]] = dict) -> MetricsServer:
        server = MetricsServer(PrometheusSettings(host="127.0.0.1", port=0), registry, readiness)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


def test_metrics_healthz_and_readyz(registry, telemetry, serve) -> None:
    registry.register(EngineCollector(lambda: [FRAUD]))
    server = serve(telemetry.readiness)
    assert server.port > 0
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert (
            'driftline_drift_statistic{detector="ks",feature="amount",model="fraud",version="v7"} 0.31'
        ) in metrics.text
        openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.rstrip().endswith("# EOF")

        assert client.get("/healthz").status_code == 200

        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {
            "ready": False,
            "not_ready": ["consuming", "kafka", "partitions", "reference"],
            "components": {"kafka": False, "partitions": False, "consuming": False, "reference": False},
        }
        telemetry.set_ready("kafka", True)
        telemetry.set_ready("partitions", True)
        telemetry.set_ready("reference", True)
        assert client.get("/readyz").json()["not_ready"] == ["consuming"]
        telemetry.set_ready("consuming", True)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True

        assert client.get("/nope").status_code == 404


def test_a_failing_provider_fails_the_scrape_visibly(registry, serve, caplog) -> None:
    def broken() -> list[VersionSnapshot]:
        raise RuntimeError("engine state unavailable")

    registry.register(EngineCollector(broken))
    server = serve()
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        assert client.get("/metrics").status_code == 500
        assert client.get("/healthz").status_code == 200
    assert "collecting metrics failed" in caplog.text


def test_a_failing_readiness_check_is_not_ready(serve) -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = serve(broken)
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["ready"] is False


def test_stop_releases_the_port(registry) -> None:
    server = MetricsServer(PrometheusSettings(host="127.0.0.1", port=0), registry, dict).start()
    port = server.port
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", trust_env=False)
    again = MetricsServer(PrometheusSettings(host="127.0.0.1", port=port), registry, dict)
    again.start()
    again.stop()


def test_a_busy_port_is_an_error_that_names_the_setting(registry, serve) -> None:
    busy = serve()
    clash = MetricsServer(PrometheusSettings(host="127.0.0.1", port=busy.port), registry, dict)
    with pytest.raises(OSError, match="prometheus.port"):
        clash.start()


# ---- a real Prometheus -----------------------------------------------------------------


@pytest.mark.prometheus
def test_a_real_prometheus_scrapes_the_exact_values(registry, telemetry, serve, prometheus_server) -> None:
    registry.register(EngineCollector(lambda: [FRAUD, CANARY], on_overflow=telemetry.record_feature_overflow))
    telemetry.record_invalid("missing_field", 3)
    server = serve(telemetry.readiness)
    prom = prometheus_server([f"127.0.0.1:{server.port}"], rule_files=[RULES])

    def values(result: list[dict]) -> dict[tuple[str, str], float]:
        return {(r["metric"]["feature"], r["metric"]["detector"]): float(r["value"][1]) for r in result}

    stats = prom.wait_for('driftline_drift_statistic{model="fraud",version="v7"}', lambda r: len(r) == 4)
    assert values(stats) == {
        ("amount", "ks"): 0.31,
        ("amount", "psi"): 0.42,
        ("country", "chi2"): 12.5,
        ("prediction", "js"): 0.05,
    }
    p_values = prom.query('driftline_drift_p_value{model="fraud"}')
    assert values(p_values) == {("amount", "ks"): 1.5e-7, ("country", "chi2"): 0.25}
    (up,) = prom.query('up{job="driftline"}')
    assert up["value"][1] == "1"
    (events,) = prom.query('driftline_model_events_total{version="v8"}')
    assert float(events["value"][1]) == 500
    (invalid,) = prom.query("driftline_invalid_events_total")
    assert (invalid["metric"]["reason"], float(invalid["value"][1])) == ("missing_field", 3)

    # the alert rules load and evaluate against the real series: amount's ks p-value and
    # psi statistic are past their thresholds, so DriftlineFeatureDrift is pending for them
    def pending(alerts: list[dict]) -> set[tuple[str, str]]:
        return {
            (a["labels"]["feature"], a["labels"]["detector"])
            for a in alerts
            if a["labels"]["alertname"] == "DriftlineFeatureDrift"
        }

    result = prom.wait_for('ALERTS{alertname="DriftlineFeatureDrift"}', lambda r: len(r) >= 2)
    assert pending([{"labels": r["metric"]} for r in result]) == {("amount", "ks"), ("amount", "psi")}
    assert {r["metric"]["alertstate"] for r in result} == {"pending"}
