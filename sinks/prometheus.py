"""Prometheus metrics: service counters, and engine state read at scrape time.

Two parts, both registered on a registry the caller passes in (never the global one):

- :class:`PrometheusTelemetry` implements :class:`driftline.monitor.telemetry.Telemetry` (and the
  webhook sink's :class:`driftline.sinks.delivery.WebhookTelemetry`) with plain counters,
  histograms and a few gauges: what the service loop counts as it goes.
- :class:`EngineCollector` is a custom collector: at every scrape it calls a snapshot
  provider (``Engine.snapshot``) and turns the :class:`driftline.monitor.snapshot.VersionSnapshot`
  values into gauge and counter families. Nothing is pushed per batch, so thousands of
  per-feature statistics cost nothing between scrapes.

The metric names are a contract with the alert rules (``sinks/rules/driftline-alerts.yml``)
and the Grafana dashboards; the README ("Metrics") lists them.

Examples
--------
>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot
>>> registry = CollectorRegistry()
>>> telemetry = PrometheusTelemetry(registry)
>>> snapshot = VersionSnapshot("fraud", "v7", events=1200, labelled=300, reference_ready=True,
...     drift=(FeatureStatistic("amount", "ks", 0.31, 1e-6, 1e-4),))
>>> registry.register(EngineCollector(lambda: [snapshot],
...                                   on_overflow=telemetry.record_feature_overflow))
>>> registry.get_sample_value("driftline_drift_statistic",
...     {"model": "fraud", "version": "v7", "feature": "amount", "detector": "ks"})
0.31
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot
from driftline.monitor.telemetry import READINESS_COMPONENTS
from driftline.sinks.delivery import OUTCOMES

__all__ = [
    "PrometheusTelemetry",
    "EngineCollector",
    "OVERFLOW_FEATURE",
    "READINESS_COMPONENTS",
]

log = logging.getLogger(__name__)

OVERFLOW_FEATURE = "__overflow__"
"""The ``feature`` label value that features beyond the per-model cap are folded into."""

# READINESS_COMPONENTS: spelled once, in driftline.monitor.telemetry (re-exported here)

_BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10_000, 50_000, 100_000)

# Features that are always kept under the cap: they describe the model as a whole.
_PRIORITY_FEATURES = ("prediction", "label")


class PrometheusTelemetry:
    """The service's counters and gauges on ``registry``.

    Parameters
    ----------
    registry
        Where the metrics are registered (one registry per service; tests make their own).
    clock
        Wall-clock seconds for ``driftline_last_success_timestamp_seconds``.
    components
        Readiness components, all not ready until :meth:`set_ready` says otherwise.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
        components: Sequence[str] = READINESS_COMPONENTS,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.events = Counter(
            "driftline_events_consumed_total", "Events consumed, by stream.", ["stream"], registry=registry
        )
        self.invalid = Counter(
            "driftline_invalid_events_total",
            "Records dead-lettered because they break the event contract, by reason.",
            ["reason"],
            registry=registry,
        )
        self.join = Counter(
            "driftline_label_join_total",
            "Label-join outcomes of feedback and predictions.",
            ["outcome"],
            registry=registry,
        )
        self.alarms = Counter(
            "driftline_alarms_total", "Alarms raised, by model and kind.", ["model", "kind"], registry=registry
        )
        self.batch_seconds = Histogram(
            "driftline_batch_duration_seconds",
            "Time to process one batch end to end.",
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "driftline_batch_size_events",
            "Records per processed batch.",
            buckets=_BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.lag = Gauge(
            "driftline_consumer_lag",
            "Consumer lag in records, per owned partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.last_success = Gauge(
            "driftline_last_success_timestamp_seconds",
            "When batch, commit, checkpoint or webhook last succeeded (Unix seconds).",
            ["what"],
            registry=registry,
        )
        self.ready = Gauge("driftline_ready", "1 when the component is ready.", ["component"], registry=registry)
        self.broker_errors = Counter(
            "driftline_broker_errors_total",
            "Requests to the Kafka brokers that failed or went unanswered (polls, probes, "
            "commits); rising during an outage, flat once the brokers are back.",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "driftline_assigned_partitions", "Partitions assigned to this instance by the group.", registry=registry
        )
        self.webhook_deliveries = Counter(
            "driftline_webhook_deliveries_total",
            "Webhook delivery attempts by outcome (delivered, retried, failed, rejected, dry_run).",
            ["target", "action", "outcome"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "driftline_webhook_outbox_pending", "Webhook deliveries waiting in the outbox.", registry=registry
        )
        self.outbox_failed = Gauge(
            "driftline_webhook_outbox_failed",
            "Webhook deliveries that failed for good (`driftline webhooks resend` re-sends them).",
            registry=registry,
        )
        self.triggers = Counter(
            "driftline_triggers_total",
            "Retrain / rollback triggers recorded in the outbox.",
            ["model", "action"],
            registry=registry,
        )
        self.feature_overflow = Counter(
            "driftline_feature_overflow_total",
            'Features beyond the per-model cap (folded into feature="__overflow__").',
            ["model"],
            registry=registry,
        )
        self._readiness = {component: False for component in components}
        for component in components:
            self.ready.labels(component).set(0)

    # ---- driftline.monitor.telemetry.Telemetry ------------------------------------------------

    def record_events(self, stream: str, count: int) -> None:
        self.events.labels(stream).inc(count)

    def record_invalid(self, reason: str, count: int = 1) -> None:
        self.invalid.labels(reason).inc(count)

    def record_join(self, outcome: str, count: int) -> None:
        self.join.labels(outcome).inc(count)

    def record_alarm(self, model: str, kind: str) -> None:
        self.alarms.labels(model, kind).inc()

    def observe_batch(self, seconds: float, size: int) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_size.observe(size)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(lag)

    def mark_success(self, what: str) -> None:
        self.last_success.labels(what).set(self._clock())

    def set_ready(self, component: str, ready: bool) -> None:
        with self._lock:
            self._readiness[component] = bool(ready)
        self.ready.labels(component).set(1 if ready else 0)

    def record_broker_errors(self, count: int) -> None:
        self.broker_errors.inc(count)

    def set_assigned_partitions(self, count: int) -> None:
        self.assigned_partitions.set(count)

    # ---- sinks ------------------------------------------------------------------------

    def record_webhook(self, target: str, action: str, outcome: str) -> None:
        self.webhook_deliveries.labels(target, action, outcome).inc()

    def declare_webhook_target(self, target: str, actions: Sequence[str]) -> None:
        # Series that exist at 0 before the first failure let increase()/rate() see it.
        for action in actions:
            for outcome in OUTCOMES:
                self.webhook_deliveries.labels(target, action, outcome)

    def set_outbox_pending(self, count: int) -> None:
        self.outbox_pending.set(count)

    def set_outbox_failed(self, count: int) -> None:
        self.outbox_failed.set(count)

    def record_trigger(self, model: str, action: str) -> None:
        self.triggers.labels(model, action).inc()

    def record_feature_overflow(self, model: str, count: int) -> None:
        self.feature_overflow.labels(model).inc(count)

    # ---- readiness --------------------------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """Readiness of each component, for :class:`driftline.sinks.http.MetricsServer`'s /readyz."""
        with self._lock:
            return dict(self._readiness)


def _larger(value: float, than: float) -> bool:
    """``value > than`` where NaN is smaller than everything."""
    if math.isnan(value):
        return False
    return math.isnan(than) or value > than


def _feature_order(feature: str) -> tuple[int, str]:
    """``prediction``, ``label``, then the other features by name."""
    if feature in _PRIORITY_FEATURES:
        return (_PRIORITY_FEATURES.index(feature), "")
    return (len(_PRIORITY_FEATURES), feature)


class EngineCollector(Collector):
    """Per-model and per-feature state, read from the engine at scrape time.

    Parameters
    ----------
    snapshot_provider
        Returns the current :class:`driftline.monitor.snapshot.VersionSnapshot` of every (model,
        version); called once per scrape, from the HTTP server's thread.
    max_features_per_model
        Distinct ``feature`` label values per model at most; the rest are folded into
        ``feature="__overflow__"``.
    on_overflow
        Called as ``on_overflow(model, n)`` with the number of features newly folded
        into ``__overflow__`` (normally ``PrometheusTelemetry.record_feature_overflow``).

    Notes
    -----
    Which features are kept is sticky: a feature that had a series keeps it while it is
    present, free places go to new features in name order (``prediction`` and ``label``
    first), so series do not churn from scrape to scrape. The ``__overflow__`` series of a
    drift detector is the folded feature with the largest statistic (with that feature's
    p-value and threshold); of a quality check, the largest rate.
    """

    def __init__(
        self,
        snapshot_provider: Callable[[], Iterable[VersionSnapshot]],
        max_features_per_model: int = 200,
        on_overflow: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_features_per_model < 1:
            raise ValueError(f"max_features_per_model must be a positive integer, got {max_features_per_model!r}")
        self._provider = snapshot_provider
        self.max_features_per_model = max_features_per_model
        self._on_overflow = on_overflow
        self._lock = threading.Lock()
        self._kept: dict[str, set[str]] = {}
        self._overflowed: dict[str, set[str]] = {}

    def describe(self) -> list[Metric]:
        # Registering must not call the engine; the names are checked by the tests.
        return []

    def _choose(self, snapshots: Sequence[VersionSnapshot]) -> dict[str, set[str]]:
        """The kept features per model, updating the sticky choice and the overflow count."""
        present: dict[str, set[str]] = {}
        for snap in snapshots:
            names = present.setdefault(snap.model, set())
            names.update(s.feature for s in snap.drift)
            names.update(snap.quality)
        newly: list[tuple[str, int]] = []
        with self._lock:
            kept_by_model: dict[str, set[str]] = {}
            overflowed_by_model: dict[str, set[str]] = {}
            for model, names in present.items():
                kept = self._kept.get(model, set()) & names
                if len(names) > len(kept):
                    candidates = sorted(names - kept, key=_feature_order)
                    free = max(self.max_features_per_model - len(kept), 0)
                    kept |= set(candidates[:free])
                overflow = names - kept
                new = overflow - self._overflowed.get(model, set())
                if new:
                    newly.append((model, len(new)))
                kept_by_model[model] = kept
                overflowed_by_model[model] = overflow
            self._kept = kept_by_model
            self._overflowed = overflowed_by_model
        if self._on_overflow is not None:
            for model, count in newly:
                self._on_overflow(model, count)
        return kept_by_model

    def collect(self) -> Iterator[Metric]:
        snapshots = list(self._provider())
        kept = self._choose(snapshots)
        mv = ["model", "version"]
        statistic = GaugeMetricFamily(
            "driftline_drift_statistic",
            "Latest drift statistic of a feature against the reference.",
            labels=[*mv, "feature", "detector"],
        )
        p_value = GaugeMetricFamily(
            "driftline_drift_p_value",
            "Latest (corrected) p-value of a drift test.",
            labels=[*mv, "feature", "detector"],
        )
        threshold = GaugeMetricFamily(
            "driftline_drift_threshold",
            "Alarm threshold of the drift statistic or p-value.",
            labels=[*mv, "feature", "detector"],
        )
        quality = GaugeMetricFamily(
            "driftline_data_quality_ratio", "Data-quality rates of the last window.", labels=[*mv, "feature", "check"]
        )
        performance = GaugeMetricFamily(
            "driftline_performance", "Performance of the last labelled window.", labels=[*mv, "metric"]
        )
        events = CounterMetricFamily("driftline_model_events", "Prediction events seen per model version.", labels=mv)
        labelled = CounterMetricFamily(
            "driftline_model_labelled_events", "Prediction events joined with a label.", labels=mv
        )
        latency = GaugeMetricFamily(
            "driftline_model_latency_seconds", "Mean model latency over the last window.", labels=mv
        )
        reference_ready = GaugeMetricFamily(
            "driftline_reference_ready", "1 when the model's reference is complete.", labels=mv
        )
        last_event = GaugeMetricFamily(
            "driftline_last_event_timestamp_seconds", "Event time of the last prediction.", labels=mv
        )
        mixed = GaugeMetricFamily(
            "driftline_mixed_features",
            "Features whose reference values mix numbers and strings (not monitored until configured).",
            labels=["model"],
        )
        class_recall = GaugeMetricFamily(
            "driftline_class_recall",
            "Recall of each of the most frequent classes over the last labelled window (multi-class models).",
            labels=[*mv, "class"],
        )
        # label-free estimation: the metric label takes a fixed set of values (accuracy,
        # precision, recall, f1, roc_auc; mae, rmse), so the cardinality stays bounded
        estimation_active = GaugeMetricFamily(
            "driftline_performance_estimation_active",
            "1 when the version's performance is "
            "estimated from its scores (calibrated on its labelled reference); 0 while it waits "
            "for those labels or when they cannot calibrate it.",
            labels=mv,
        )
        estimated = GaugeMetricFamily(
            "driftline_performance_estimated",
            "Performance of the last prediction window, estimated without labels.",
            labels=[*mv, "metric"],
        )
        estimated_low = GaugeMetricFamily(
            "driftline_performance_estimated_low",
            "Lower end of the estimate's confidence band.",
            labels=[*mv, "metric"],
        )
        estimated_high = GaugeMetricFamily(
            "driftline_performance_estimated_high",
            "Upper end of the estimate's confidence band.",
            labels=[*mv, "metric"],
        )
        realized = GaugeMetricFamily(
            "driftline_performance_realized",
            "Performance of the last labelled window by the estimator's definitions (beside the estimate).",
            labels=[*mv, "metric"],
        )
        estimation_error = GaugeMetricFamily(
            "driftline_performance_estimation_error",
            "Estimate minus realized performance on the last labelled window.",
            labels=[*mv, "metric"],
        )
        # the delivery loop (issue 13): roles take a fixed set of values (stable, canary,
        # shadow, retiring); a freed version's series go with it, so its alerts resolve
        role = GaugeMetricFamily(
            "driftline_version_role", "1 for the version's role from lifecycle events.", labels=[*mv, "role"]
        )
        traffic_share = GaugeMetricFamily(
            "driftline_canary_traffic_share",
            "A canary's observed share of the labelled comparison with the stable version.",
            labels=mv,
        )
        labels_needed = GaugeMetricFamily(
            "driftline_canary_labels_needed",
            "Labelled events a canary's tests still need for a "
            "decision at the current estimates and traffic share (+Inf: none coming).",
            labels=mv,
        )
        canary_stalled = GaugeMetricFamily(
            "driftline_canary_stalled", "1 when a canary had too little traffic after its deployment.", labels=mv
        )
        rollback_pending = GaugeMetricFamily(
            "driftline_rollback_pending", "1 while a rollback alarm waits for its confirmation.", labels=mv
        )
        rollback_unconfirmed = GaugeMetricFamily(
            "driftline_rollback_unconfirmed",
            "1 when a rollback was neither answered by a rolled_back "
            "event nor followed by the version's predictions stopping in time.",
            labels=mv,
        )
        seg = [*mv, "segment_feature", "segment"]
        segment_events = CounterMetricFamily(
            "driftline_segment_events", "Prediction events per segment (segments.features).", labels=seg
        )
        segment_labelled = CounterMetricFamily(
            "driftline_segment_labelled_events", "Labelled events per segment whose segment was known.", labels=seg
        )
        segment_reference = GaugeMetricFamily(
            "driftline_segment_reference_events", "The segment's events in the reference.", labels=seg
        )
        segment_tested = GaugeMetricFamily(
            "driftline_segment_tested",
            "1 when the segment has enough reference events for its drift and "
            "data-quality tests (segments.min_reference_events).",
            labels=seg,
        )
        segment_statistic = GaugeMetricFamily(
            "driftline_segment_drift_statistic",
            "Latest drift statistic of a feature in a segment against the segment's part of the reference.",
            labels=[*seg, "feature", "detector"],
        )
        segment_p_value = GaugeMetricFamily(
            "driftline_segment_drift_p_value",
            "Latest (corrected) p-value of a drift test in a segment.",
            labels=[*seg, "feature", "detector"],
        )
        segment_quality = GaugeMetricFamily(
            "driftline_segment_data_quality_ratio",
            "Data-quality rates of a segment's last window.",
            labels=[*seg, "feature", "check"],
        )
        segment_performance = GaugeMetricFamily(
            "driftline_segment_performance", "Performance of a segment's last labelled window.", labels=[*seg, "metric"]
        )
        mixed_seen: set[str] = set()

        for snap in snapshots:
            keep = kept[snap.model]
            ids = [snap.model, snap.version]

            folded: dict[str, FeatureStatistic] = {}
            rows: list[tuple[str, FeatureStatistic]] = []
            for stat in snap.drift:
                best = folded.get(stat.detector)
                if stat.feature in keep:
                    rows.append((stat.feature, stat))
                elif best is None or _larger(stat.statistic, best.statistic):
                    folded[stat.detector] = stat
            rows.extend((OVERFLOW_FEATURE, stat) for stat in folded.values())
            for feature, stat in rows:
                labels = [*ids, feature, stat.detector]
                statistic.add_metric(labels, stat.statistic)
                if stat.p_value is not None:
                    p_value.add_metric(labels, stat.p_value)
                if stat.threshold is not None:
                    threshold.add_metric(labels, stat.threshold)

            folded_quality: dict[str, float] = {}
            for feature, checks in snap.quality.items():
                for check, value in checks.items():
                    worst = folded_quality.get(check)
                    if feature in keep:
                        quality.add_metric([*ids, feature, check], value)
                    elif worst is None or _larger(value, worst):
                        folded_quality[check] = value
            for check, value in folded_quality.items():
                quality.add_metric([*ids, OVERFLOW_FEATURE, check], value)

            for metric, value in snap.performance.items():
                performance.add_metric([*ids, metric], value)
            events.add_metric(ids, snap.events)
            labelled.add_metric(ids, snap.labelled)
            if snap.latency_ms is not None:
                latency.add_metric(ids, snap.latency_ms / 1000.0)
            reference_ready.add_metric(ids, 1.0 if snap.reference_ready else 0.0)
            if snap.last_event_ts is not None:
                last_event.add_metric(ids, snap.last_event_ts)
            for cls, value in snap.class_recall.items():
                class_recall.add_metric([*ids, cls], value)
            est = snap.estimation
            if est is not None:
                estimation_active.add_metric(ids, 1.0 if est.active else 0.0)
                for metric, (value, low, high) in est.estimated.items():
                    estimated.add_metric([*ids, metric], value)
                    if math.isfinite(low) and math.isfinite(high):
                        estimated_low.add_metric([*ids, metric], low)
                        estimated_high.add_metric([*ids, metric], high)
                for metric, value in est.realized.items():
                    realized.add_metric([*ids, metric], value)
                for metric, value in est.error.items():
                    estimation_error.add_metric([*ids, metric], value)
            if snap.role is not None:
                role.add_metric([*ids, snap.role], 1.0)
            if snap.traffic_share is not None:
                traffic_share.add_metric(ids, snap.traffic_share)
            if snap.labels_needed is not None:
                labels_needed.add_metric(ids, snap.labels_needed)
            canary_stalled.add_metric(ids, 1.0 if snap.canary_stalled else 0.0)
            rollback_pending.add_metric(ids, 1.0 if snap.rollback_pending else 0.0)
            rollback_unconfirmed.add_metric(ids, 1.0 if snap.rollback_unconfirmed else 0.0)
            for sg in snap.segments:  # at most top_k + 1 segments per segment feature (bounded upstream)
                sid = [*ids, sg.feature, sg.value]
                segment_events.add_metric(sid, sg.events)
                segment_labelled.add_metric(sid, sg.labelled)
                segment_reference.add_metric(sid, sg.reference_events)
                segment_tested.add_metric(sid, 1.0 if sg.tested else 0.0)
                for stat in sg.drift:  # features folded into __overflow__ get no segment series
                    if stat.feature in keep:
                        segment_statistic.add_metric([*sid, stat.feature, stat.detector], stat.statistic)
                        if stat.p_value is not None:
                            segment_p_value.add_metric([*sid, stat.feature, stat.detector], stat.p_value)
                for feature, checks in sg.quality.items():
                    if feature in keep:
                        for check, value in checks.items():
                            segment_quality.add_metric([*sid, feature, check], value)
                for metric, value in sg.performance.items():
                    segment_performance.add_metric([*sid, metric], value)
            if snap.model not in mixed_seen:
                mixed_seen.add(snap.model)
                mixed.add_metric([snap.model], len(snap.mixed_features))

        yield from (
            statistic,
            p_value,
            threshold,
            quality,
            performance,
            events,
            labelled,
            latency,
            reference_ready,
            last_event,
            mixed,
            class_recall,
            estimation_active,
            estimated,
            estimated_low,
            estimated_high,
            realized,
            estimation_error,
            role,
            traffic_share,
            labels_needed,
            canary_stalled,
            rollback_pending,
            rollback_unconfirmed,
            segment_events,
            segment_labelled,
            segment_reference,
            segment_tested,
            segment_statistic,
            segment_p_value,
            segment_quality,
            segment_performance,
        )
