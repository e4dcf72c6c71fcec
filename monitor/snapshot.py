"""A read-only view of the engine's current state, for scrape-time metrics.

``Engine.snapshot()`` builds these from its state; the Prometheus collector turns them
into gauge families. They are plain values, cheap to build, and never shared with the
engine's mutable state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from driftline.monitor.alarms import AlarmKind, DriftStatistic

__all__ = ["FeatureStatistic", "VersionSnapshot"]


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
