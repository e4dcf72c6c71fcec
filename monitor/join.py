"""The label join: feedback events find their prediction by (model, id).

One :class:`LabelJoin` per model holds the predictions still waiting for a label,
bounded two ways: a time-to-live in *event time* (so that a replay and a live run
expire the same predictions) and a maximum count (the oldest are evicted beyond it).

Outcomes (the ``outcome`` label of ``driftline_label_join_total``):

``matched``
    the feedback found its prediction;
``self_contained``
    the feedback carried its own ``prediction`` (and no waiting prediction matched),
    so it needed no join;
``unmatched``
    no waiting prediction and no ``prediction`` of its own: counted and dropped (a label
    that arrives before its prediction, or after the prediction expired);
``expired`` / ``evicted``
    predictions that left the buffer without a label, by TTL or by the count bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.decode import Feedback

__all__ = ["LabelJoin", "Labelled"]


@dataclass
class Labelled:
    """Joined (prediction, label) pairs of one model, in feedback arrival order."""

    versions: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    """The prediction's position in the model's stream (-1 when unknown)."""
    ts: list[float] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


class LabelJoin:
    """Pending predictions of one model, waiting for their feedback.

    Parameters
    ----------
    ttl_seconds
        A prediction older (in event time) than the newest event seen minus this is
        expired.
    max_pending
        At most this many predictions wait; the oldest are evicted beyond.
    """

    def __init__(self, ttl_seconds: float, max_pending: int) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self.max_pending = int(max_pending)
        # id -> (version, index, prediction, scores, ts); dict order = arrival order
        self._pending: dict[str, tuple[str, int, Any, Any, float]] = {}
        self._clock = -math.inf

    def __len__(self) -> int:
        return len(self._pending)

    def add_predictions(
        self,
        ids: list[str],
        versions: list[str],
        index: np.ndarray,
        prediction: list[Any],
        scores: list[Any],
        ts: list[float],
    ) -> Counter[str]:
        """Hold predictions until their feedback arrives; returns expired/evicted counts."""
        pending = self._pending
        pending.update(
            zip(ids, zip(versions, index.tolist(), prediction, scores, ts))
        )
        if ts:
            self._clock = max(self._clock, max(ts))
        return self._prune()

    def match(self, feedback: Feedback) -> tuple[Labelled, Counter[str]]:
        """Join a batch of feedback; returns the labelled pairs and outcome counts."""
        out = Labelled()
        counts: Counter[str] = Counter()
        pop = self._pending.pop
        for pid, ts, label, pred, version, scores in zip(
            feedback.ids, feedback.ts, feedback.labels, feedback.prediction,
            feedback.versions, feedback.scores,
        ):
            hit = pop(pid, None)
            if hit is not None:
                out.versions.append(hit[0])
                out.index.append(hit[1])
                out.prediction.append(hit[2])
                out.scores.append(hit[3])
                out.ts.append(hit[4])
                out.labels.append(label)
                counts["matched"] += 1
            elif pred is not None:
                out.versions.append(version or "default")
                out.index.append(-1)
                out.prediction.append(pred)
                out.scores.append(scores)
                out.ts.append(ts)
                out.labels.append(label)
                counts["self_contained"] += 1
            else:
                counts["unmatched"] += 1
        if feedback.ts:
            self._clock = max(self._clock, max(feedback.ts))
        counts.update(self._prune())
        return out, counts

    def _prune(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        pending = self._pending
        excess = len(pending) - self.max_pending
        if excess > 0:
            for key in list(self._iter_keys(excess)):
                del pending[key]
            counts["evicted"] += excess
        horizon = self._clock - self.ttl_seconds
        expired = 0
        for key, entry in pending.items():  # arrival order ~ event-time order
            if entry[4] >= horizon:
                break
            expired += 1
        if expired:
            for key in list(self._iter_keys(expired)):
                del pending[key]
            counts["expired"] += expired
        return counts

    def _iter_keys(self, n: int):
        it = iter(self._pending)
        for _ in range(n):
            yield next(it)

    def state_dict(self) -> dict[str, Any]:
        entries = list(self._pending.items())
        return {
            "ttl_seconds": self.ttl_seconds,
            "max_pending": self.max_pending,
            "clock": self._clock if math.isfinite(self._clock) else None,
            "ids": [k for k, _ in entries],
            "entries": [list(v) for _, v in entries],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "LabelJoin":
        join = cls(state["ttl_seconds"], state["max_pending"])
        join._clock = -math.inf if state["clock"] is None else float(state["clock"])
        join._pending = {k: tuple(v) for k, v in zip(state["ids"], state["entries"])}  # type: ignore[misc]
        return join
