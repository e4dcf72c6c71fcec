"""The alarm record: what the engine says and every sink receives.

The JSON form is the contract of ``../shared/ARCHITECTURE.md`` (and of the README):

    {"model": "fraud", "version": "v7", "kind": "feature_drift", "detector": "psi",
     "feature": "amount", "statistic": 0.31, "threshold": 0.2, "p_value": null,
     "first_index": 120000, "last_index": 121000, "ts": 1763900400.0, "action": "retrain"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, get_args

__all__ = [
    "Alarm",
    "AlarmKind",
    "ALARM_KINDS",
    "Action",
    "ACTIONS",
    "TriggerAction",
    "TRIGGER_ACTIONS",
    "DriftStatistic",
    "DRIFT_STATISTICS",
    "QualityCheck",
    "QUALITY_CHECKS",
    "ConceptDetector",
    "CONCEPT_DETECTOR_NAMES",
    "RegressionDetector",
    "LifecycleDetector",
    "EstimationMethod",
    "PerformanceMetric",
    "Detector",
    "AlarmFactory",
]

# The vocabularies below are written once; everything else imports them (the engine,
# the configuration's types, the trigger policy, the metrics). They are Literal aliases,
# so a value on the wire (alarm JSON, metric labels) is the plain string itself and a
# misspelling is a type error.

AlarmKind = Literal[
    "data_quality",
    "feature_drift",
    "prediction_drift",
    "performance",
    "concept_drift",
    "regression",
    "promote_ready",
    "canary_stalled",
    "rollback_unconfirmed",
    "performance_estimated",
]
"""What an alarm is about (``regression``: a newer version worse than the stable one;
``promote_ready``: a canary found not worse than the stable one by more than the
margin, action ``promote``; ``canary_stalled``: a canary with too little traffic after
its deployment; ``rollback_unconfirmed``: a rollback alarm neither answered by a
``rolled_back`` event nor followed by the version's predictions stopping in time;
``performance_estimated``: performance estimated from scores alone, before the labels,
fell below the reference's by the margin)."""
ALARM_KINDS: tuple[AlarmKind, ...] = get_args(AlarmKind)

Action = Literal["retrain", "rollback", "promote", "none"]
"""What the engine suggests for an alarm."""
ACTIONS: tuple[Action, ...] = get_args(Action)
TriggerAction = Literal["retrain", "rollback", "promote"]
"""The actions a trigger can request (an alarm's action, ``none`` excepted)."""
TRIGGER_ACTIONS: tuple[TriggerAction, ...] = get_args(TriggerAction)

DriftStatistic = Literal["ks", "psi", "js", "wasserstein", "chi2"]
"""Window-against-reference drift statistics (``drift.statistics``)."""
DRIFT_STATISTICS: tuple[DriftStatistic, ...] = get_args(DriftStatistic)
QualityCheck = Literal["missing_rate", "out_of_range_rate", "unseen_rate"]
"""Data-quality rates of a window (detectors of ``data_quality`` alarms)."""
QUALITY_CHECKS: tuple[QualityCheck, ...] = get_args(QualityCheck)
ConceptDetector = Literal["ddm", "eddm", "fhddm", "hddm_a", "hddm_w", "adwin", "page_hinkley", "kswin"]
"""Change detectors on the error stream (``performance.concept_detectors``)."""
CONCEPT_DETECTOR_NAMES: tuple[ConceptDetector, ...] = get_args(ConceptDetector)
RegressionDetector = Literal["msprt", "latency"]
"""Canary-against-stable comparisons (detectors of ``regression`` alarms)."""
LifecycleDetector = Literal["noninferiority", "traffic", "confirmation"]
"""Checks of the delivery loop: the non-inferiority mSPRT of a canary (``promote_ready``),
its traffic (``canary_stalled``), the confirmation of a rollback (``rollback_unconfirmed``)."""
EstimationMethod = Literal["cbpe", "error_bins"]
"""Label-free estimators (detectors of ``performance_estimated`` alarms): confidence-based
performance estimation for classifiers, expected error per prediction bin for regression."""
PerformanceMetric = Literal["accuracy", "mae"]
"""The metric a performance alarm compares with the version's baseline."""
Detector = Literal[
    DriftStatistic,
    QualityCheck,
    ConceptDetector,
    RegressionDetector,
    LifecycleDetector,
    PerformanceMetric,
    EstimationMethod,
]
"""Every detector name an alarm can carry."""


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Alarm:
    """One alarm.

    Attributes
    ----------
    model, version
        The model and version whose stream raised it.
    kind
        One of :data:`ALARM_KINDS`.
    detector
        The method that fired (``ks``, ``psi``, ``adwin``, ``missing_rate``, ``msprt`` ...).
    feature
        The feature concerned, or None (``prediction``/``label`` for prediction drift,
        the metric name for performance alarms).
    statistic, threshold, p_value
        The value that crossed the threshold, the threshold, and the p-value where
        the method has one (None otherwise).
    first_index, last_index
        The evidence window, in the model's prediction events counted from the start
        of the stream (0-based, inclusive).
    ts
        Event time (epoch seconds) of the last event of the evidence window.
    action
        What the engine suggests: ``retrain``, ``rollback``, ``promote`` or ``none``; the trigger
        policy of the webhook sink decides what is actually sent.
    origin
        Where the indices start: the source position (``topic/partition/offset``, or the
        line for a replay) of the first prediction record the model's state counted. With it the
        indices name source positions, so trigger keys never collide across restarts,
        wiped checkpoints and instances. Not part of the alarm's JSON contract (a replay
        and a Kafka run of the same events give equal alarms), nor of equality.
    segment
        The segment whose own windows raised it, as ``feature=value`` (``country=DE``,
        ``country=__other__``), or None for the whole model's; in the JSON form only
        when set (see :mod:`~driftline.monitor.segments`).
    """

    model: str
    version: str
    kind: AlarmKind
    detector: Detector
    feature: str | None
    statistic: float
    threshold: float | None
    p_value: float | None
    first_index: int
    last_index: int
    ts: float
    action: Action = "none"
    origin: str | None = field(default=None, compare=False)
    segment: str | None = None

    def to_dict(self, origin: bool = False) -> dict[str, Any]:
        """The alarm's JSON form (the contract); ``origin`` adds the origin (for
        checkpoints of the trigger policy)."""
        d = {f.name: getattr(self, f.name) for f in _CONTRACT}
        d["statistic"] = _num(self.statistic)
        d["threshold"] = _num(self.threshold)
        d["p_value"] = _num(self.p_value)
        if self.segment is not None:
            d["segment"] = self.segment
        if origin:
            d["origin"] = self.origin
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alarm:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_CONTRACT = tuple(f for f in fields(Alarm) if f.name not in ("origin", "segment"))


class AlarmFactory(Protocol):
    """Makes an alarm of one (model, version) from what a check found; the caller knows
    the rest (the model, its origin, the suggested action). The engine's checks take one."""

    def __call__(
        self,
        kind: AlarmKind,
        detector: Detector,
        feature: str | None,
        statistic: float,
        threshold: float | None,
        p_value: float | None,
        first: int,
        last: int,
        ts: float,
    ) -> Alarm: ...
