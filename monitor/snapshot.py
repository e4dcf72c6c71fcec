"""A read-only view of the engine's current state, for scrape-time metrics.

``Engine.snapshot()`` builds these from its state; the Prometheus collector turns them
into gauge families. They are plain values, cheap to build, and never shared with the
engine's mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftline.monitor.alarms import AlarmKind, DriftStatistic

__all__ = ["EstimationSnapshot", "FeatureStatistic", "SegmentSnapshot", "VersionSnapshot"]


@dataclass(frozen=True)
class FeatureStatistic:
    """The latest value of one drift statistic for one feature.

    ``feature`` is a feature name, or ``prediction`` / ``label`` for prediction and
    label drift. ``p_value`` is None for statistics without one (psi, js, wasserstein).
    """

    feature: str
    detector: DriftStatistic
    statistic: float
    p_value: float | None
    threshold: float | None
    kind: AlarmKind = "feature_drift"


@dataclass(frozen=True)
class EstimationSnapshot:
    """Label-free performance estimation of one (model, version)
    (:mod:`driftline.monitor.estimation`).

    Attributes
    ----------
    active
        True once the version is calibrated (estimates run); False while it waits for
        labelled reference events, or when its reference cannot be calibrated.
    estimated
        ``{metric: (value, low, high)}`` of the last completed prediction window.
    realized
        ``{metric: value}`` of the last labelled window, by the estimator's definitions.
    error
        ``{metric: estimate - realized}`` on that same labelled window.
    """

    active: bool
    estimated: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    realized: dict[str, float] = field(default_factory=dict)
    error: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentSnapshot:
    """Current state of one segment of one (model, version)
    (:mod:`driftline.monitor.segments`).

    Attributes
    ----------
    feature, value
        The segment feature and the segment's value (``__other__``: the rest).
    events, labelled
        The segment's prediction events and labelled events seen.
    reference_events, tested
        The segment's events in the reference, and whether they are enough for its drift
        and data-quality tests (``segments.min_reference_events``).
    drift, quality, performance
        As in :class:`VersionSnapshot`, over the segment's last windows.
    """

    feature: str
    value: str
    events: int
    labelled: int
    reference_events: int
    tested: bool
    drift: tuple[FeatureStatistic, ...] = ()
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    performance: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionSnapshot:
    """Current state of one (model, version).

    Attributes
    ----------
    events, labelled
        Prediction events seen, and of them those joined with a label.
    reference_ready
        Whether the model's reference is complete (drift statistics run from then on).
    drift
        The last completed window's statistics, one per (feature, detector).
    quality
        ``{feature: {"missing_rate": x, "out_of_range_rate": y, "unseen_rate": z}}`` over
        the last completed window (a rate is absent where it does not apply).
    performance
        ``{metric: value}`` over the last completed labelled window (accuracy, f1,
        roc_auc, mae, rmse, ...).
    latency_ms
        Mean model latency over the last window, when events carry ``latency_ms``.
    last_event_ts
        Event time of the last prediction event.
    mixed_features
        The model's features (or ``prediction``) whose reference values hold both
        numbers and strings, which are therefore not monitored.
    class_recall
        ``{class: recall}`` over the last labelled window, for the most frequent classes
        of a multi-class model (bounded).
    role
        The version's role from lifecycle events (``stable``, ``canary``, ``shadow``;
        ``retiring`` during the grace period after it was replaced or rolled back), or
        None when no lifecycle event named it.
    traffic_share
        The canary's observed share of the labelled comparison with the stable version
        (else the announced ``traffic_share``), or None.
    labels_needed
        For a canary: labelled events (both versions together) still needed before its
        tests decide (rollback or, when enabled, promote) at the current estimates and
        traffic share; ``inf`` when no decision is coming at the current difference;
        None before both versions have labels. See :func:`~driftline.monitor.versions.
        labels_needed` for the approximation.
    canary_stalled, rollback_pending, rollback_unconfirmed
        Flags: too little canary traffic after ``canary.stall_after_seconds``; a
        rollback alarm waiting for its confirmation; a rollback not confirmed in time.
    reference
        The fingerprint of the reference the version's drift is measured against.
    estimation
        Label-free performance estimation, None where it does not apply (off, no scores,
        no labelled reference yet).
    segments
        Per segment (``segments.features``; empty when off).
    """

    model: str
    version: str
    events: int
    labelled: int
    reference_ready: bool
    drift: tuple[FeatureStatistic, ...] = ()
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    performance: dict[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    last_event_ts: float | None = None
    mixed_features: tuple[str, ...] = ()
    class_recall: dict[str, float] = field(default_factory=dict)
    role: str | None = None
    traffic_share: float | None = None
    labels_needed: float | None = None
    canary_stalled: bool = False
    rollback_pending: bool = False
    rollback_unconfirmed: bool = False
    reference: str | None = None
    estimation: EstimationSnapshot | None = None
    segments: tuple[SegmentSnapshot, ...] = ()
