"""The alarm record: what the engine says and every sink receives.

The JSON form is the contract of ``../shared/ARCHITECTURE.md`` (and of the README):

    {"model": "fraud", "version": "v7", "kind": "feature_drift", "detector": "psi",
     "feature": "amount", "statistic": 0.31, "threshold": 0.2, "p_value": null,
     "first_index": 120000, "last_index": 121000, "ts": 1763900400.0, "action": "retrain"}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = ["Alarm", "AlarmKind", "ALARM_KINDS"]

AlarmKind = Literal[
    "data_quality",
    "feature_drift",
    "prediction_drift",
    "performance",
    "concept_drift",
    "regression",
]
ALARM_KINDS: tuple[str, ...] = AlarmKind.__args__  # type: ignore[attr-defined]


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
        What the engine suggests: ``retrain``, ``rollback`` or ``none``; the trigger
        policy of the webhook sink decides what is actually sent.
    origin
        Where the indices start: the source position (``topic/partition/offset``, or the
        line for a replay) of the first prediction record the model's state counted. With it the
        indices name source positions, so trigger keys never collide across restarts,
        wiped checkpoints and instances. Not part of the alarm's JSON contract (a replay
        and a Kafka run of the same events give equal alarms), nor of equality.
    """

    model: str
    version: str
    kind: str
    detector: str
    feature: str | None
    statistic: float
    threshold: float | None
    p_value: float | None
    first_index: int
    last_index: int
    ts: float
    action: str = "none"
    origin: str | None = field(default=None, compare=False)

    def to_dict(self, origin: bool = False) -> dict[str, Any]:
        """The alarm's JSON form (the contract); ``origin`` adds the origin (for
        checkpoints of the trigger policy)."""
        d = {f.name: getattr(self, f.name) for f in _CONTRACT}
        d["statistic"] = _num(self.statistic)
        d["threshold"] = _num(self.threshold)
        d["p_value"] = _num(self.p_value)
        if origin:
            d["origin"] = self.origin
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Alarm":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


_CONTRACT = tuple(f for f in fields(Alarm) if f.name != "origin")
