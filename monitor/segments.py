"""Segments: drift, data quality and performance per value of a categorical feature.

A drift confined to one segment (``country=DE``) is diluted in the whole model's window;
with ``segments.features: [country]`` each version's events are also checked per
segment, against the segment's own part of the reference.

How the segments are chosen (fixed, deterministic, replay-equal)
    When the model's reference is fitted (:meth:`ModelSegments.fit`, from the reference
    file or the stream's first ``reference.size`` events), the ``top_k`` values of each
    segment feature with the most reference events become its segments (ties by value,
    in string order); every other value, an unseen value and a missing value go to
    ``__other__``. The choice never changes afterwards (until the reference does), so a
    segment's series and alarm states never churn and a replay finds the same segments
    as the live run: at most ``top_k + 1`` ``segment`` label values per segment feature.

What is checked per segment (see :class:`VersionSegments`)
    * drift and data quality: the segment's events fill their own count windows
      (``window.size``/``window.step``), each window is compared with the segment's part
      of the reference with :func:`~driftline.monitor.drift.feature_drift`,
      :func:`~driftline.monitor.drift.prediction_drift` and
      :func:`~driftline.monitor.quality.quality_alarms`, exactly as the whole model's
      window is. A segment with fewer than ``segments.min_reference_events`` reference
      events is **not tested** (its events are counted; ``driftline_segment_tested``
      says 0): a few dozen reference events make every test either blind or noisy.
    * performance: the labelled events of the segment fill tumbling windows of
      ``performance.window``; each window's metrics
      (:func:`~driftline.monitor.performance.window_performance`) are compared with the
      segment's own baseline (its first ``baseline_windows`` windows) by
      :func:`~driftline.monitor.performance.performance_alarm`. A label finds its
      prediction's segment in a ring of the last ``segments.label_memory`` prediction
      events per model; a label of an older prediction (or of a reference event) counts
      for the whole model only.
    * not per segment: concept-drift detectors, label drift, latency, canary tests and
      label-free estimation (they stay whole-model checks).

Alarms carry ``segment`` (``"country=DE"``); each segment has its own alarm states, so
the edge trigger works per segment. The work is vectorized: a version's batch is
grouped by segment once per segment feature (one ``argsort`` and one ``bincount``),
then each segment's rows go through the same window and drift machinery.

Off by default (``segments.features: []``): the engine then holds no segment state and
does no segment work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from driftline.detectors.windows import SlidingWindow, TumblingWindow
from driftline.monitor.alarms import Alarm, AlarmFactory, AlarmKind, Detector
from driftline.monitor.config import ModelSettings, SegmentSettings
from driftline.monitor.decode import Schema
from driftline.monitor.drift import WINDOW_CHUNK_VALUES, window_checks
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import FIXED, IDX, L_IDX, L_TS, Encoder
from driftline.monitor.performance import performance_alarm, window_performance
from driftline.monitor.reference import FittedReference, fit_reference
from driftline.monitor.snapshot import FeatureStatistic, SegmentSnapshot
from driftline.monitor.versions import fitted_from_state, fitted_state

__all__ = ["OTHER", "UNKNOWN", "SegmentPlan", "ModelSegments", "VersionSegments", "segment_slots"]

log = logging.getLogger(__name__)

OTHER = "__other__"
"""The segment of every value outside the top K, of unseen values and of missing values."""
UNKNOWN = 255
"""Ring entry of an event whose segment is not known (a reference event, or not yet seen)."""


def segment_slots(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Each row's segment slot from its category codes (float or int; -1 missing,
    ``len(vocabulary)`` unseen): ``table[code + 1]``, as ``intp``."""
    return table[codes.astype(np.intp) + 1]


@dataclass
class SegmentPlan:
    """The segments of one segment feature, fixed when the reference was fitted.

    Attributes
    ----------
    feature, column
        The feature and its column among the schema's categorical features.
    values
        The top-K values, in slot order; slot ``len(values)`` is :data:`OTHER`.
    table
        Category code + 1 -> slot (missing at 0, unseen at the end: both ``OTHER``).
    reference_events
        Reference events per slot.
    references
        Per slot, the segment's part of the reference fitted; None when it has fewer
        than ``min_reference_events`` events (the segment is not tested).
    """

    feature: str
    column: int
    values: tuple[str, ...]
    table: np.ndarray
    reference_events: np.ndarray
    references: list[FittedReference | None]

    @property
    def names(self) -> tuple[str, ...]:
        """The slots' ``segment`` label values."""
        return (*self.values, OTHER)

    def state_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "column": self.column,
            "values": list(self.values),
            "table": self.table,
            "reference_events": self.reference_events,
            "references": [None if r is None else fitted_state(r) for r in self.references],
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> SegmentPlan:
        return cls(
            s["feature"],
            int(s["column"]),
            tuple(s["values"]),
            np.asarray(s["table"], dtype=np.intp),
            np.asarray(s["reference_events"], dtype=np.int64),
            [None if r is None else fitted_from_state(r) for r in s["references"]],
        )


class ModelSegments:
    """A model's segment plans and the ring that gives labels their prediction's segment.

    Parameters
    ----------
    settings
        ``segments`` of the model's settings (enabled when ``features`` is not empty).
    """

    def __init__(self, settings: SegmentSettings) -> None:
        self.settings = settings
        self.plans: list[SegmentPlan] = []
        self.fitted = False
        memory = settings.label_memory
        self.rings = {f: np.full(memory, UNKNOWN, dtype=np.uint8) for f in settings.features}
        self.last_index = -1  # the highest event index written to the rings

    def fit(
        self,
        num: np.ndarray,
        codes: np.ndarray,
        prediction: list[Any],
        schema: Schema,
        pred_encoder: Encoder,
        psi_bins: int,
        model: str,
    ) -> None:
        """Choose each segment feature's top K values from the reference's events and
        fit each segment's part of the reference (see the module docstring)."""
        cfg = self.settings
        self.plans = []
        self.fitted = True
        preds = np.empty(len(prediction), dtype=object)  # 1-D whatever the values (never split into columns)
        preds[:] = prediction
        for feature in cfg.features:
            if feature not in schema.categorical:
                log.warning(
                    "model %r: segment feature %r is not a categorical feature of the model's schema, so "
                    "it has no segments; list it under categorical_features, or remove it from "
                    "segments.features",
                    model,
                    feature,
                )
                continue
            j = schema.categorical.index(feature)
            vocab = schema.vocabularies[j]
            n_known = len(vocab)
            col = codes[:, j]
            counts = np.bincount(col[(col >= 0) & (col < n_known)], minlength=n_known)
            names = sorted(vocab, key=lambda v: vocab[v])  # code order
            ranked = sorted((v for v in names if counts[vocab[v]] > 0), key=lambda v: (-int(counts[vocab[v]]), v))
            values = tuple(ranked[: cfg.top_k])
            other = len(values)
            table = np.full(n_known + 2, other, dtype=np.intp)
            for slot, v in enumerate(values):
                table[vocab[v] + 1] = slot
            slots = segment_slots(col, table)
            ref_events = np.bincount(slots, minlength=other + 1).astype(np.int64)
            references: list[FittedReference | None] = []
            for slot in range(other + 1):
                if ref_events[slot] < cfg.min_reference_events:
                    references.append(None)
                    continue
                rows = slots == slot
                encoder = Encoder(dict(pred_encoder.vocab))  # the model's prediction codes, never new ones
                references.append(
                    fit_reference(num[rows], codes[rows], preds[rows].tolist(), schema, encoder, psi_bins)
                )
            self.plans.append(SegmentPlan(feature, j, values, table, ref_events, references))

    def record(self, index: np.ndarray, codes: np.ndarray) -> None:
        """Remember the segment of monitored events (``index`` ascending, ``codes``
        their (n, d_cat) category codes) for their labels; indices skipped since the
        last call (reference events, another version's events still to come) are
        marked unknown first, so a later call may still fill them."""
        if not self.plans or not len(index):
            return
        top = int(index[-1])
        memory = self.settings.label_memory
        gap = np.arange(max(self.last_index + 1, top - memory + 1), top + 1, dtype=np.int64) % memory
        pos = index % memory
        for plan in self.plans:
            ring = self.rings[plan.feature]
            ring[gap] = UNKNOWN
            ring[pos] = segment_slots(codes[:, plan.column], plan.table)
        self.last_index = max(self.last_index, top)

    def lookup(self, feature: str, index: np.ndarray) -> np.ndarray:
        """The segment slots of events ``index`` (:data:`UNKNOWN` where not remembered)."""
        memory = self.settings.label_memory
        idx = index.astype(np.int64)
        known = (idx > self.last_index - memory) & (idx <= self.last_index) & (idx >= 0)
        out = np.full(len(idx), UNKNOWN, dtype=np.intp)
        out[known] = self.rings[feature][idx[known] % memory]
        return out

    def reset(self) -> None:
        """The reference changed: the plans go (fitted again with the new reference)."""
        self.plans, self.fitted = [], False

    def state_dict(self) -> dict[str, Any]:
        return {
            "plans": [p.state_dict() for p in self.plans],
            "fitted": self.fitted,
            "rings": dict(self.rings),
            "last_index": self.last_index,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        # a segment feature no longer configured is dropped; a newly configured one waits for the next fit
        self.plans = [plan for plan in map(SegmentPlan.from_state, s["plans"]) if plan.feature in self.rings]
        self.fitted = bool(s["fitted"])
        self.last_index = int(s["last_index"])
        for f, ring in s["rings"].items():
            if f in self.rings and len(ring) == len(self.rings[f]):  # a changed label_memory starts afresh
                self.rings[f] = np.asarray(ring, dtype=np.uint8).copy()


@dataclass
class _Slot:
    """One segment of one version: windows, alarm states, latest statistics."""

    events: int = 0
    labelled: int = 0
    window: SlidingWindow | TumblingWindow | None = None
    perf_window: SlidingWindow | None = None  # tumbling (``TumblingWindow.from_state`` is typed as its base)
    states: AlarmStates = field(default_factory=AlarmStates)
    drift: tuple[FeatureStatistic, ...] = ()
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    performance: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, list[float]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "labelled": self.labelled,
            "window": None if self.window is None else self.window.state_dict(),
            "window_type": type(self.window).__name__,
            "perf_window": None if self.perf_window is None else self.perf_window.state_dict(),
            "states": self.states.state_dict(),
            "drift": [[s.feature, s.detector, s.statistic, s.p_value, s.threshold, s.kind] for s in self.drift],
            "quality": self.quality,
            "performance": self.performance,
            "baseline": self.baseline,
        }

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> _Slot:
        window: SlidingWindow | TumblingWindow | None = None
        if s["window"] is not None:
            window = (
                TumblingWindow.from_state(s["window"])
                if s["window_type"] == "TumblingWindow"
                else SlidingWindow.from_state(s["window"])
            )
        perf = None if s["perf_window"] is None else TumblingWindow.from_state(s["perf_window"])
        return cls(
            int(s["events"]),
            int(s["labelled"]),
            window,
            perf,
            AlarmStates(s["states"]),
            tuple(FeatureStatistic(*d) for d in s["drift"]),
            s["quality"],
            s["performance"],
            {k: list(v) for k, v in s["baseline"].items()},
        )


def _split(slots: np.ndarray, n_slots: int) -> list[tuple[int, np.ndarray]]:
    """The rows of each slot present, in stream order: one stable argsort, one bincount."""
    order = np.argsort(slots, kind="stable")
    ends = np.cumsum(np.bincount(slots, minlength=n_slots))
    starts = ends - np.bincount(slots, minlength=n_slots)
    return [(s, order[starts[s] : ends[s]]) for s in np.flatnonzero(ends - starts).tolist()]


class VersionSegments:
    """The segments of one (model, version) (see the module docstring).

    Parameters
    ----------
    model
        The model's :class:`ModelSegments` (its plans and label ring).
    """

    def __init__(self, model: ModelSegments) -> None:
        self.model = model
        self.slots: dict[str, list[_Slot]] = {}

    def _slots(self, plan: SegmentPlan) -> list[_Slot]:
        slots = self.slots.get(plan.feature)
        if slots is None or len(slots) != len(plan.names):  # new, or its plan was fitted again
            slots = self.slots[plan.feature] = [_Slot() for _ in plan.names]
        return slots

    def reset_drift(self) -> None:
        """The reference changed: the segments start afresh (their slots may change)."""
        self.slots = {}

    # -- predictions -------------------------------------------------------------------
    def predictions(
        self, rows: np.ndarray, schema: Schema, settings: ModelSettings, pred_kind: str | None, alarm: AlarmFactory
    ) -> list[Alarm]:
        """Run a version's monitored rows (the engine's prediction row layout) through
        each segment's windows; returns the segment alarms."""
        m = self.model
        if not m.plans:
            return []
        d_num = len(schema.numeric)
        m.record(rows[:, IDX].astype(np.int64), rows[:, FIXED + d_num :])
        alarms: list[Alarm] = []
        cfg = settings.window
        for plan in m.plans:
            slots = self._slots(plan)
            for s, part in _split(segment_slots(rows[:, FIXED + d_num + plan.column], plan.table), len(slots)):
                slot, ref = slots[s], plan.references[s]
                n = len(part)
                if ref is None:  # not tested: counted only
                    slot.events += n
                    continue
                if slot.window is None:
                    slot.window = (
                        TumblingWindow(cfg.size, rows.shape[1])
                        if cfg.step is None
                        else SlidingWindow(cfg.size, cfg.step, rows.shape[1])
                    )
                done = [w for w, _, _ in slot.window.extend(rows[part], slot.events)]
                slot.events += n
                if not done:
                    continue
                seg_alarm = _named(alarm, f"{plan.feature}={plan.names[s]}")
                chunk = max(1, WINDOW_CHUNK_VALUES // done[0].size)
                for k in range(0, len(done), chunk):
                    alarms += _on_windows(
                        np.stack(done[k : k + chunk]), slot, ref, schema, settings, pred_kind, seg_alarm
                    )
        return alarms

    # -- labelled ------------------------------------------------------------------------
    def labelled(
        self,
        rows: np.ndarray,
        settings: ModelSettings,
        task: str | None,
        positive_code: float,
        classes: dict[str, int],
        alarm: AlarmFactory,
    ) -> list[Alarm]:
        """Run a version's labelled rows through each segment's performance windows."""
        m = self.model
        if not m.plans or not len(rows):
            return []
        perf = settings.performance
        alarms: list[Alarm] = []
        index = rows[:, L_IDX]
        for plan in m.plans:
            slots = self._slots(plan)
            found = m.lookup(plan.feature, index)
            known = np.flatnonzero(found != UNKNOWN)
            if not known.size:
                continue
            for s, part in _split(found[known], len(slots)):
                slot, take = slots[s], rows[known[part]]
                if slot.perf_window is None:
                    slot.perf_window = TumblingWindow(perf.window, rows.shape[1])
                done = slot.perf_window.extend(take, slot.labelled)
                slot.labelled += len(take)
                if not done:
                    continue
                seg_alarm = _named(alarm, f"{plan.feature}={plan.names[s]}")
                for w, _, _ in done:
                    first, last, ts = int(w[:, L_IDX].min()), int(w[:, L_IDX].max()), float(w[-1, L_TS])
                    slot.performance, _ = window_performance(w, task, positive_code, classes)
                    alarms += performance_alarm(
                        slot.performance, task, slot.baseline, perf, slot.states, seg_alarm, first, last, ts
                    )
        return alarms

    # -- views and state -------------------------------------------------------------------
    def snapshot(self) -> tuple[SegmentSnapshot, ...]:
        out = []
        for plan in self.model.plans:
            slots = self.slots.get(plan.feature)
            if slots is None:
                continue
            for s, name in enumerate(plan.names):
                slot = slots[s]
                out.append(
                    SegmentSnapshot(
                        plan.feature,
                        name,
                        slot.events,
                        slot.labelled,
                        int(plan.reference_events[s]),
                        plan.references[s] is not None,
                        slot.drift,
                        {k: dict(v) for k, v in slot.quality.items()},
                        dict(slot.performance),
                    )
                )
        return tuple(out)

    def state_dict(self) -> dict[str, Any]:
        return {f: [s.state_dict() for s in slots] for f, slots in self.slots.items()}

    def load_state(self, s: dict[str, Any]) -> None:
        self.slots = {f: [_Slot.from_state(x) for x in slots] for f, slots in s.items()}


def _named(alarm: AlarmFactory, segment: str) -> AlarmFactory:
    """An alarm factory whose alarms name ``segment``."""

    def make(
        kind: AlarmKind,
        detector: Detector,
        feature: str | None,
        statistic: float,
        threshold: float | None,
        p_value: float | None,
        first: int,
        last: int,
        ts: float,
    ) -> Alarm:
        return replace(alarm(kind, detector, feature, statistic, threshold, p_value, first, last, ts), segment=segment)

    return make


def _on_windows(
    ws: np.ndarray,
    slot: _Slot,
    ref: FittedReference,
    schema: Schema,
    settings: ModelSettings,
    pred_kind: str | None,
    alarm: Callable[..., Alarm],
) -> list[Alarm]:
    """A segment's consecutive windows against its part of the reference: the whole
    model's drift and quality checks (see ``VersionMonitor._on_windows`` in the engine),
    on the segment's alarm states; the snapshot keeps the last window's statistics."""
    found = window_checks(ws, schema, ref, settings, pred_kind, slot.states, alarm)
    slot.drift, slot.quality = found.drift, found.quality
    return found.alarms
