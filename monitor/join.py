"""The label join: feedback events find their prediction by (model, id).

One :class:`LabelJoin` per model holds two bounded buffers:

* predictions still waiting for their label, and
* labels that arrived before their prediction (Kafka fetches the two topics
  independently, so while a consumer catches up on a backlog, feedback can be read
  ahead of the predictions it refers to).

Both are bounded two ways: a time-to-live in *event time* (so that a replay and a live
run expire the same entries) and a maximum count (the oldest are evicted beyond).

Several versions of a model may score the same request id (a shadow or a canary
beside the stable version): a label goes to the prediction of every version with its
id, whenever each arrives. Predictions wait per (id, version); a label that arrives
after them completes all of them at once. A label that arrives before them waits, and
goes on waiting after its first match, so that each version's prediction with its id
arriving within the TTL gets it, once (a repeated prediction of the same version does
not). While more than one version is active (has had a prediction within the TTL), a
label that completed predictions is kept in the same way, for a version whose
prediction of that id comes later; with one version it is not needed, and not kept.

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

from driftline.monitor.decode import Feedback

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


def _bound(buffer: dict[Any, tuple], max_size: int, horizon: float, ts_at: int, keep_dropped: bool = False) -> Any:
    """Drop the oldest entries beyond ``max_size`` and those older than ``horizon``
    (entries are in arrival order, close to event-time order); returns (evicted,
    expired), or with ``keep_dropped`` the dropped entries."""
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
    dropped = []
    if drop:
        keys = iter(buffer)
        for key in [next(keys) for _ in range(drop)]:
            entry = buffer.pop(key)
            if keep_dropped:
                dropped.append(entry)
    return dropped if keep_dropped else (evicted, expired)


class LabelJoin:
    """Predictions waiting for their labels, and labels waiting for their predictions.

    Parameters
    ----------
    ttl_seconds
        An entry older (in event time) than the newest event seen minus this is dropped.
    max_pending
        At most this many predictions wait, and at most this many early labels.
    """

    MAX_VERSIONS = 64
    """Versions whose predictions a label looks for; the least recently seen is
    forgotten beyond (its waiting predictions then expire)."""

    def __init__(self, ttl_seconds: float, max_pending: int) -> None:
        self.ttl_seconds = float(ttl_seconds)
        self.max_pending = int(max_pending)
        # (id, version) -> (version, index, prediction, scores, ts); dict order = arrival order
        self._pending: dict[tuple[str, str], tuple[str, int, Any, Any, float]] = {}
        # version -> event time of its last prediction, least recently seen first
        self._versions: dict[str, float] = {}
        # id -> (ts, label, versions it was given to); labels that came before their prediction
        self._early: dict[str, tuple[float, Any, tuple[str, ...]]] = {}
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
        entries = zip(versions, index.tolist(), prediction, scores, ts, strict=False)
        keys = zip(ids, versions, strict=False)
        if self._early:  # rare: labels read ahead of their predictions
            early = self._early
            rest = []
            for key, entry in zip(keys, entries, strict=False):
                label = early.get(key[0])
                if label is None:
                    rest.append((key, entry))
                elif entry[0] not in label[2]:  # each version gets the label once
                    early[key[0]] = (label[0], label[1], label[2] + (entry[0],))
                    out.append(entry[0], entry[1], entry[4], label[1], entry[2], entry[3])
            if len(out):
                counts["matched"] += len(out)
            self._pending.update(rest)
        else:
            self._pending.update(zip(keys, entries, strict=False))
        if ts:
            self._clock = max(self._clock, max(ts))
        seen = self._versions
        for version in dict.fromkeys(versions):
            seen.pop(version, None)
            seen[version] = self._clock
        while len(seen) > self.MAX_VERSIONS:
            del seen[next(iter(seen))]
        counts.update(self._prune())
        return out, counts

    def match(self, feedback: Feedback) -> tuple[Labelled, Counter[str]]:
        """Join a batch of feedback; returns the labelled pairs and outcome counts.
        Feedback whose prediction has not arrived (and that carries no prediction of its
        own) waits for it."""
        got: list[tuple[str, int, float, Any, Any, Any]] = []  # the pairs as rows: one append per pair
        add = got.append
        pop = self._pending.pop
        early = self._early
        versions = list(self._versions)
        horizon = self._clock - self.ttl_seconds
        keep_given = sum(1 for t in self._versions.values() if t >= horizon) > 1
        matched = contained = 0
        contained_first = False  # which outcome came first (the counts' key order)
        rows = zip(
            feedback.ids,
            feedback.ts,
            feedback.labels,
            feedback.prediction,
            feedback.versions,
            feedback.scores,
            strict=False,
        )
        if len(versions) == 1 and not keep_given:  # the common case: one version, nothing kept
            only = versions[0]
            for pid, ts, label, pred, version, scores in rows:
                hit = pop((pid, only), None)
                if hit is not None:
                    add((hit[0], hit[1], hit[4], label, hit[2], hit[3]))
                    matched += 1
                elif pred is not None:
                    add((version or "default", -1, ts, label, pred, scores))
                    contained_first = contained_first or not matched
                    contained += 1
                else:
                    early[pid] = (ts, label, ())
        else:
            for pid, ts, label, pred, version, scores in rows:
                hits = 0
                for v in versions:
                    hit = pop((pid, v), None)
                    if hit is not None:
                        add((hit[0], hit[1], hit[4], label, hit[2], hit[3]))
                        hits += 1
                if hits:
                    matched += hits
                    if keep_given:  # for a version whose prediction of this id is still to come
                        early[pid] = (ts, label, tuple(r[0] for r in got[-hits:]))
                elif pred is not None:
                    add((version or "default", -1, ts, label, pred, scores))
                    contained_first = contained_first or not matched
                    contained += 1
                else:
                    early[pid] = (ts, label, ())
        out = Labelled(*map(list, zip(*got, strict=True))) if got else Labelled()
        counts: Counter[str] = Counter()
        for kind, n in (("self_contained", contained), ("matched", matched))[:: 1 if contained_first else -1]:
            if n:
                counts[kind] = n
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
            dropped = _bound(self._early, self.max_pending, horizon, ts_at=0, keep_dropped=True)
            lost = sum(1 for entry in dropped if not entry[2])  # never given to a prediction
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
            "pending": orjson.dumps([[k[0] for k in self._pending], list(self._pending.values())]),
            "versions": [list(self._versions), list(self._versions.values())],
            "early": orjson.dumps([list(self._early), list(self._early.values())]),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LabelJoin:
        join = cls(state["ttl_seconds"], state["max_pending"])
        join._clock = -math.inf if state["clock"] is None else float(state["clock"])
        ids, entries = orjson.loads(state["pending"])
        join._pending = {(k, v[0]): tuple(v) for k, v in zip(ids, entries, strict=False)}
        names, last_seen = state["versions"]
        join._versions = dict(zip(names, last_seen, strict=False))
        ids, entries = orjson.loads(state["early"])
        join._early = {k: (v[0], v[1], tuple(v[2])) for k, v in zip(ids, entries, strict=False)}
        return join
