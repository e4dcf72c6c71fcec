"""The label join: feedback events find their prediction by (model, id).

One :class:`LabelJoin` per model holds two bounded buffers:

* predictions still waiting for their label, and
* labels that arrived before their prediction (Kafka fetches the two topics
  independently, so while a consumer catches up on a backlog, feedback can be read
  ahead of the predictions it refers to).

Both are bounded two ways: a time-to-live in *event time* (so that a replay and a live
run expire the same entries) and a maximum count (the oldest are evicted beyond).

Outcomes (the ``outcome`` label of ``driftline_label_join_total``):

``matched``
    the feedback met its prediction (whichever came first);
``self_contained``
    the feedback carried its own ``prediction`` and no waiting prediction matched, so it
    needed no join;
``unmatched``
    a label waited for its prediction until the TTL or the count bound dropped it;
``expired`` / ``evicted``
    predictions that left the buffer without a label, by TTL or by the count bound.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from monitor.decode import Feedback

__all__ = ["LabelJoin", "Labelled"]


@dataclass
class Labelled:
    """Joined (prediction, label) pairs of one model, in the order they were joined."""

    versions: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    """The prediction's position in the model's stream (-1 when unknown)."""
    ts: list[float] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def append(self, version: str, index: int, ts: float, label: Any, prediction: Any, scores: Any) -> None:
        self.versions.append(version)
        self.index.append(index)
        self.ts.append(ts)
        self.labels.append(label)
        self.prediction.append(prediction)
        self.scores.append(scores)


def _bound(buffer: dict[str, tuple], max_size: int, horizon: float, ts_at: int) -> tuple[int, int]:
    """Drop the oldest entries beyond ``max_size`` and those older than ``horizon``
    (entries are in arrival order, close to event-time order); returns (evicted, expired)."""
    evicted = max(0, len(buffer) - max_size)
    expired = 0
    it = iter(buffer.items())
    for _ in range(evicted):
        next(it)
    for _, entry in it:
        if entry[ts_at] >= horizon:
            break
        expired += 1
    drop = evicted + expired
    if drop:
        keys = iter(buffer)
        for key in [next(keys) for _ in range(drop)]:
            del buffer[key]
    return evicted, expired


class LabelJoin:
    """Predictions waiting for their labels, and labels waiting for their predictions.

    Parameters
    ----------
    ttl_seconds
        An entry older (in event time) than the newest event seen minus this is dropped.
    max_pending
        At most this many predictions wait, and at most this many early labels.
    """

    def __init__(self, ttl_seconds: float, max_pending: int) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self.max_pending = int(max_pending)
        # id -> (version, index, prediction, scores, ts); dict order = arrival order
        self._pending: dict[str, tuple[str, int, Any, Any, float]] = {}
        # id -> (ts, label); labels that came before their prediction
        self._early: dict[str, tuple[float, Any]] = {}
        self._clock = -math.inf

    def __len__(self) -> int:
        return len(self._pending) + len(self._early)

    def add_predictions(
        self,
        ids: list[str],
        versions: list[str],
        index: np.ndarray,
        prediction: list[Any],
        scores: list[Any],
        ts: list[float],
    ) -> tuple[Labelled, Counter[str]]:
        """Hold predictions until their feedback arrives. Returns the pairs completed by
        labels that were already waiting, and the outcome counts."""
        out = Labelled()
        counts: Counter[str] = Counter()
        entries = zip(versions, index.tolist(), prediction, scores, ts)
        if self._early:  # rare: labels read ahead of their predictions
            pop = self._early.pop
            rest = []
            for pid, entry in zip(ids, entries):
                label = pop(pid, None)
                if label is None:
                    rest.append((pid, entry))
                else:
                    out.append(entry[0], entry[1], entry[4], label[1], entry[2], entry[3])
            counts["matched"] += len(out)
            self._pending.update(rest)
        else:
            self._pending.update(zip(ids, entries))
        if ts:
            self._clock = max(self._clock, max(ts))
        counts.update(self._prune())
        return out, counts

    def match(self, feedback: Feedback) -> tuple[Labelled, Counter[str]]:
        """Join a batch of feedback; returns the labelled pairs and outcome counts.
        Feedback whose prediction has not arrived (and that carries no prediction of its
        own) waits for it."""
        out = Labelled()
        counts: Counter[str] = Counter()
        pop = self._pending.pop
        early = self._early
        for pid, ts, label, pred, version, scores in zip(
            feedback.ids, feedback.ts, feedback.labels, feedback.prediction,
            feedback.versions, feedback.scores,
        ):
            hit = pop(pid, None)
            if hit is not None:
                out.append(hit[0], hit[1], hit[4], label, hit[2], hit[3])
                counts["matched"] += 1
            elif pred is not None:
                out.append(version or "default", -1, ts, label, pred, scores)
                counts["self_contained"] += 1
            else:
                early[pid] = (ts, label)
        if feedback.ts:
            self._clock = max(self._clock, max(feedback.ts))
        counts.update(self._prune())
        return out, counts

    def _prune(self) -> Counter[str]:
        horizon = self._clock - self.ttl_seconds
        counts: Counter[str] = Counter()
        evicted, expired = _bound(self._pending, self.max_pending, horizon, ts_at=4)
        if evicted:
            counts["evicted"] += evicted
        if expired:
            counts["expired"] += expired
        if self._early:
            lost = sum(_bound(self._early, self.max_pending, horizon, ts_at=0))
            if lost:
                counts["unmatched"] += lost
        return counts

    def state_dict(self) -> dict[str, Any]:
        """The buffers as one JSON blob each: every value in them came out of the JSON
        decoder (strings, finite numbers, booleans, null, objects), so orjson writes
        them exactly, and at C speed (the buffers hold up to ``max_pending`` entries)."""
        return {
            "ttl_seconds": self.ttl_seconds,
            "max_pending": self.max_pending,
            "clock": self._clock if math.isfinite(self._clock) else None,
            "pending": orjson.dumps([list(self._pending), list(self._pending.values())]),
            "early": orjson.dumps([list(self._early), list(self._early.values())]),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "LabelJoin":
        join = cls(state["ttl_seconds"], state["max_pending"])
        join._clock = -math.inf if state["clock"] is None else float(state["clock"])
        ids, entries = orjson.loads(state["pending"])
        join._pending = {k: tuple(v) for k, v in zip(ids, entries)}  # type: ignore[misc]
        ids, entries = orjson.loads(state["early"])
        join._early = {k: tuple(v) for k, v in zip(ids, entries)}  # type: ignore[misc]
        return join
