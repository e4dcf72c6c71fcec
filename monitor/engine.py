"""The engine: routes each model's columns to its versions' checks and turns their
findings into alarms; it holds every model's state.

Per model (one :class:`ModelMonitor`): the reference (a file, or the first
``reference.size`` events), the feature schema, the label join, and per version (one
:class:`VersionMonitor`) the count windows and detectors. The checks themselves live
in their own modules, and the engine calls them:

* :mod:`~driftline.monitor.drift` and :mod:`~driftline.monitor.quality`: feature and
  prediction drift and data quality per window, against the reference;
* :mod:`~driftline.monitor.performance`: performance, concept drift and label drift on
  the labelled stream;
* :mod:`~driftline.monitor.canary`: newer versions against the stable one (a mixture
  SPRT on the error rate, latency);
* :mod:`~driftline.monitor.edges`: alarms are edge-triggered (with hysteresis);
* :mod:`~driftline.monitor.encoding`: class labels as codes, the windows' row layouts;
* :mod:`~driftline.monitor.reference`: a reference's identity, schema and fitting.

``first_index``/``last_index`` count the model's prediction events from the start of
the stream, so replay and Kafka runs agree.

Nothing here does I/O: the service hands in decoded batches and takes out alarms.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from driftline.detectors.statistics import CategoricalReference, NumericReference
from driftline.detectors.windows import SlidingWindow, TumblingWindow
from driftline.monitor.alarms import Action, Alarm, AlarmKind, ConceptDetector, Detector
from driftline.monitor.canary import ErrorRegression, latency_regression
from driftline.monitor.config import ModelSettings, Settings
from driftline.monitor.decode import (
    TYPE_SHARE,
    DeadLetter,
    DecodedBatch,
    Predictions,
    Record,
    Schema,
    bad_numeric_predictions,
    columnarize_raw,
    dead_letter,
    decode_features,
)
from driftline.monitor.drift import drift_alarms, feature_drift, prediction_drift
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import (
    FIXED,
    IDX,
    L_ERR,
    L_IDX,
    L_PRED,
    L_SCORE,
    L_SCORES,
    L_TRUE,
    L_TS,
    LAT,
    PRED,
    SCORED_CLASSES,
    TS,
    Encoder,
    canonical_label,
)
from driftline.monitor.exceptions import CheckpointError
from driftline.monitor.join import LabelJoin, Labelled
from driftline.monitor.performance import (
    CONCEPT_DETECTORS,
    concept_alarms,
    concept_detector,
    concept_detectors,
    label_drift,
    performance_alarm,
    window_performance,
)
from driftline.monitor.quality import quality_alarms
from driftline.monitor.reference import (
    ReferenceData,
    describe_fingerprint,
    fit_reference,
    infer_schema,
    stream_fingerprint,
)
from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot

__all__ = ["Engine", "EngineResult", "ModelMonitor", "VersionMonitor", "ReferenceData", "CONCEPT_DETECTORS",
           "concept_detector", "stream_fingerprint", "STATE_FORMAT", "MAX_VERSIONS"]

log = logging.getLogger(__name__)

STATE_FORMAT = 2
"""Format of :meth:`Engine.state_dict` and :meth:`Engine.model_state` (2: event origins,
reference fingerprints, unindexed reference events, the label join per version)."""
MAX_VERSIONS = 32
"""Versions tracked per model; the least recently seen is dropped beyond (bounds state)."""

_WRONG_TYPE = "a value has the wrong type for the model's schema"

_REFERENCE_CHECKS = ("feature_drift:", "prediction_drift:", "quality:")
"""Alarm states measured against the reference (forgotten when it changes)."""


class _Pending(NamedTuple):
    """A prediction event of the reference window, held until the schema is known."""

    features: dict[str, Any]
    prediction: Any
    source: Any
    id: str
    version: str
    ts: float
    scores: Any
    latency: float


@dataclass
class EngineResult:
    alarms: list[Alarm] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    join: Counter[str] = field(default_factory=Counter)
    feature_overflow: Counter[str] = field(default_factory=Counter)


def suggested_action(kind: AlarmKind, stable: bool) -> Action:
    """What the engine suggests for an alarm: ``rollback`` for a regression, ``retrain``
    for any other alarm of the stable version except data quality, else ``none`` (the
    trigger policy decides what is sent)."""
    if kind == "regression":
        return "rollback"
    if kind == "data_quality" or not stable:
        return "none"
    return "retrain"


# ---- per version ---------------------------------------------------------------------------


class VersionMonitor:
    """Windows, detectors and latest statistics of one (model, version)."""

    def __init__(self, model: ModelMonitor, version: str) -> None:
        self.model = model
        self.version = version
        # made at the first monitored event (needs the schema)
        self.window: SlidingWindow | TumblingWindow | None = None
        self.perf_window: SlidingWindow | None = None  # tumbling; made at the first labels (its width needs the task)
        self.events = 0
        self.labelled = 0
        self.last_ts: float | None = None
        self.states = AlarmStates()
        self.drift: tuple[FeatureStatistic, ...] = ()
        self.quality: dict[str, dict[str, float]] = {}
        self.performance: dict[str, float] = {}
        self.class_recall: dict[str, float] = {}
        self.baseline: dict[str, list[float]] = {}
        self.label_baseline: np.ndarray | None = None
        self.latency_ms: float | None = None
        self.detectors: dict[ConceptDetector, Any] = {}
        self.recent = np.empty((0, 2))  # (index, error) of the last performance.window labelled events

    @property
    def alarming(self) -> dict[str, int]:
        """The alarming checks and their runs of normal windows since (see :mod:`edges`)."""
        return self.states.runs

    def reset_drift(self) -> None:
        """Forget the prediction windows and drift state (the reference changed)."""
        self.window = None
        self.drift = ()
        self.quality = {}
        self.states.forget(_REFERENCE_CHECKS)

    # -- predictions -------------------------------------------------------------------
    def add(self, rows: np.ndarray) -> list[Alarm]:
        self.events += len(rows)
        self.last_ts = float(rows[-1, TS])
        if self.window is None:
            cfg = self.model.settings.window
            if cfg.step is None:
                self.window = TumblingWindow(cfg.size, rows.shape[1])
            else:
                self.window = SlidingWindow(cfg.size, cfg.step, rows.shape[1])
        alarms: list[Alarm] = []
        for values, _, _ in self.window.extend(rows, self.events - len(rows)):
            alarms.extend(self._on_window(values))
        return alarms

    def _on_window(self, w: np.ndarray) -> list[Alarm]:
        m = self.model
        cfg = m.settings
        schema, num_ref, cat_ref, cat_counts = m.schema, m.num_ref, m.cat_ref, m.cat_counts
        assert schema is not None and num_ref is not None and cat_ref is not None and cat_counts is not None
        first, last = int(w[0, IDX]), int(w[-1, IDX])
        ts = float(w[-1, TS])
        lat = w[:, LAT]
        lat = lat[np.isfinite(lat)]
        self.latency_ms = float(lat.mean()) if lat.size else None
        m.latency_baseline, latency_alarms = latency_regression(
            self.latency_ms, self.version == m.stable_version(), m.latency_baseline, cfg.regression, self.states,
            self._alarm, first, last, ts)
        d_num = len(schema.numeric)
        stats, quality, candidates = feature_drift(
            w[:, FIXED:FIXED + d_num], w[:, FIXED + d_num:].astype(np.int64), schema.numeric, schema.categorical,
            num_ref, cat_ref, cat_counts, cfg.drift)
        alarms = drift_alarms(candidates, "feature_drift", cfg.drift, self.states, self._alarm, first, last, ts)
        alarms += quality_alarms(quality, m.ref_missing, cfg.quality, self.states, self._alarm, first, last, ts)
        if cfg.drift.prediction and m.pred_kind is not None:
            assert m.pred_ref is not None  # fitted with the features' references
            pstats, candidate = prediction_drift(w[:, PRED], m.pred_kind, m.pred_ref, m.pred_counts, cfg.drift)
            stats += pstats
            alarms += drift_alarms([candidate], "prediction_drift", cfg.drift, self.states, self._alarm,
                                   first, last, ts)
        self.drift = tuple(stats)
        self.quality = quality
        return alarms + latency_alarms

    # -- labelled -----------------------------------------------------------------------
    def add_labelled(self, rows: np.ndarray) -> list[Alarm]:
        """rows: (n, 6) float64 [index, ts, y_true, y_pred, score, error] (and, for
        classification, the class scores; see :mod:`~driftline.monitor.encoding`)."""
        self.labelled += len(rows)
        alarms = self._concept(rows)
        if self.perf_window is None:
            self.perf_window = TumblingWindow(self.model.settings.performance.window, rows.shape[1])
        for values, _, _ in self.perf_window.extend(rows, self.labelled - len(rows)):
            alarms.extend(self._on_perf_window(values))
        return alarms

    def _concept(self, rows: np.ndarray) -> list[Alarm]:
        m = self.model
        perf = m.settings.performance
        if not self.detectors:
            self.detectors = concept_detectors(perf, m.task)
        alarms, self.recent = concept_alarms(self.detectors, self.recent, rows, perf.window, m.task, self._alarm)
        return alarms

    def _on_perf_window(self, w: np.ndarray) -> list[Alarm]:
        m = self.model
        cfg = m.settings
        first, last, ts = int(w[:, L_IDX].min()), int(w[:, L_IDX].max()), float(w[-1, L_TS])
        self.performance, class_recall = window_performance(w, m.task, m.positive_code, m.label_encoder.vocab)
        if class_recall is not None:
            self.class_recall = class_recall
        self.label_baseline, alarms = label_drift(w, self.label_baseline, cfg.reference.size, m.task, cfg.drift,
                                                  self.states, self._alarm, first, last, ts)
        alarms += performance_alarm(self.performance, m.task, self.baseline, cfg.performance, self.states,
                                    self._alarm, first, last, ts)
        return alarms

    # -- shared -------------------------------------------------------------------------
    def _alarm(self, kind: AlarmKind, detector: Detector, feature: str | None, statistic: float,
               threshold: float | None, p_value: float | None, first: int, last: int, ts: float) -> Alarm:
        m = self.model
        action = suggested_action(kind, self.version == m.stable_version())
        return Alarm(m.name, self.version, kind, detector, feature, float(statistic),
                     None if threshold is None else float(threshold),
                     None if p_value is None else float(p_value), int(first), int(last), float(ts), action,
                     origin=m.origin)

    def snapshot(self) -> VersionSnapshot:
        m = self.model
        return VersionSnapshot(
            model=m.name, version=self.version, events=m.version_events.get(self.version, self.events),
            labelled=self.labelled,
            reference_ready=True, drift=self.drift, quality={k: dict(v) for k, v in self.quality.items()},
            performance=dict(self.performance), latency_ms=self.latency_ms, last_event_ts=self.last_ts,
            mixed_features=tuple(m.mixed_features), class_recall=dict(self.class_recall))

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": None if self.window is None else self.window.state_dict(),
            "window_type": type(self.window).__name__,
            "perf_window": None if self.perf_window is None else self.perf_window.state_dict(),
            "events": self.events, "labelled": self.labelled, "last_ts": self.last_ts,
            "alarming": self.states.state_dict(),
            "drift": [vars_of(s) for s in self.drift],
            "quality": self.quality, "performance": self.performance, "baseline": self.baseline,
            "label_baseline": self.label_baseline, "latency_ms": self.latency_ms,
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "recent": self.recent,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        if s["window"] is not None:
            tumbling = s["window_type"] == "TumblingWindow"
            self.window = (TumblingWindow.from_state(s["window"]) if tumbling
                           else SlidingWindow.from_state(s["window"]))
        if s["perf_window"] is not None:
            self.perf_window = TumblingWindow.from_state(s["perf_window"])
        self.events, self.labelled, self.last_ts = s["events"], s["labelled"], s["last_ts"]
        self.states = AlarmStates(s["alarming"])
        self.drift = tuple(FeatureStatistic(**d) for d in s["drift"])
        self.quality, self.performance, self.baseline = s["quality"], s["performance"], s["baseline"]
        lb = s["label_baseline"]
        self.label_baseline = None if lb is None else np.asarray(lb, dtype=np.float64)
        self.latency_ms = s["latency_ms"]
        self.recent = np.asarray(s["recent"], dtype=np.float64).reshape(-1, 2)
        self.detectors = {name: CONCEPT_DETECTORS[name].from_state(st) for name, st in s["detectors"].items()}


def vars_of(stat: FeatureStatistic) -> dict[str, Any]:
    return {"feature": stat.feature, "detector": stat.detector, "statistic": stat.statistic,
            "p_value": stat.p_value, "threshold": stat.threshold, "kind": stat.kind}


# ---- per model ---------------------------------------------------------------------------


class ModelMonitor:
    """Everything driftline keeps about one model.

    Parameters
    ----------
    name, settings
        The model and its settings.
    reference
        Reference events from a file; None: the first ``reference.size`` events.
    origin
        The source position (``topic/partition/offset``) of the first prediction record
        this state counted: event indices count the model's accepted prediction events
        from there, so (origin, index) names one event whatever instance or run counted
        it (None until the first prediction).
    """

    def __init__(self, name: str, settings: ModelSettings, reference: ReferenceData | None = None,
                 origin: str | None = None) -> None:
        self.name = name
        self.settings = settings
        self.origin = origin
        self.n_events = 0
        self.schema: Schema | None = None
        self.num_ref: NumericReference | None = None
        self.cat_ref: CategoricalReference | None = None
        self.cat_counts: np.ndarray | None = None
        self.pred_counts: np.ndarray | None = None
        self.pred_ref: NumericReference | CategoricalReference | None = None
        self.pred_encoder = Encoder()
        self.ref_missing: dict[str, float] = {}
        self.mixed_features: list[str] = []
        self.reference_fingerprint = reference.fingerprint if reference is not None else stream_fingerprint(settings)
        # reference-window events wait here, unindexed, until the schema is known: an
        # event found of the wrong type then is dead-lettered and leaves no trace
        self._buffer: list[_Pending] = []
        # a stream reference's accepted events (numeric, codes, predictions) until it is full
        self._ref_rows: list[tuple[np.ndarray, np.ndarray, list[Any]]] = []
        self._ref_count = 0
        self.versions: dict[str, VersionMonitor] = {}
        self.version_events: Counter[str] = Counter()
        self.join = LabelJoin(settings.join.ttl_seconds, settings.join.max_pending)
        self.task: str | None = None
        self.label_encoder = Encoder()
        self.positive_code = 1.0
        self.canary = ErrorRegression()  # newer versions' error rates against the stable one's
        self.version_first: dict[str, int] = {}  # each version's first prediction index
        self.latency_baseline: float | None = None
        self.dropped_features = 0
        if reference is not None:
            self._build_reference(reference.features, reference.prediction)

    @property
    def reference_ready(self) -> bool:
        return self.num_ref is not None

    @property
    def pred_kind(self) -> str | None:
        """The kind of the model's predictions (see :class:`~driftline.monitor.decode.Schema`)."""
        return None if self.schema is None else self.schema.prediction

    def stable_version(self) -> str | None:
        configured = self.settings.regression.stable_version
        if configured is not None:
            return configured
        if not self.version_events:
            return None
        return max(self.version_events.items(), key=lambda kv: (kv[1], kv[0]))[0]

    # -- reference ------------------------------------------------------------------------
    def _infer_schema(self, features: Sequence[dict[str, Any]],
                      prediction: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Infer the schema from reference events (see :func:`~driftline.monitor.
        reference.infer_schema`); returns their columns and the rows of the wrong
        type under it."""
        inferred = infer_schema(features, prediction, self.settings)
        self.schema, self.dropped_features = inferred.schema, inferred.dropped_features
        self.mixed_features = inferred.mixed_features
        if self.mixed_features:
            log.warning("model %r: %s hold both numbers and strings in the reference (neither reaches %d %%), "
                        "so they are not monitored; list them under numeric_features or categorical_features "
                        "(or ignore_features)", self.name, ", ".join(self.mixed_features), round(TYPE_SHARE * 100))
        return inferred.numeric, inferred.codes, inferred.bad

    def _fit_reference(self, num: np.ndarray, codes: np.ndarray, prediction: Sequence[Any]) -> None:
        """Fit the references on the reference events' columns (all of the right type)."""
        assert self.schema is not None, "the schema is inferred before the reference is fitted"
        fitted = fit_reference(num, codes, prediction, self.schema, self.pred_encoder, self.settings.drift.psi_bins)
        self.num_ref, self.cat_ref, self.cat_counts = fitted.num_ref, fitted.cat_ref, fitted.cat_counts
        self.ref_missing = fitted.ref_missing
        self.pred_ref, self.pred_counts = fitted.pred_ref, fitted.pred_counts
        if self.pred_kind == "categorical":
            self._pred_categories = len(self.pred_encoder.vocab)

    def _build_reference(self, features: Sequence[dict[str, Any]], prediction: Sequence[Any]) -> None:
        """A reference from a file: its events of the wrong type are left out."""
        num, codes, bad = self._infer_schema(features, prediction)
        good = ~bad
        self._fit_reference(num[good], codes[good], [p for p, g in zip(prediction, good.tolist(), strict=True) if g])

    def _extend_reference(self, num: np.ndarray, codes: np.ndarray, prediction: Sequence[Any]) -> None:
        """Add accepted events to a stream reference; fit it once it holds ``reference.size``."""
        self._ref_rows.append((num, codes, list(prediction)))
        self._ref_count += len(num)
        if self._ref_count >= self.settings.reference.size:
            rows, self._ref_rows, self._ref_count = self._ref_rows, [], 0
            self._fit_reference(np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]),
                                [v for r in rows for v in r[2]])

    def replace_reference(self, reference: ReferenceData | None) -> None:
        """Apply a changed reference (a restart found another file, size or source than
        the checkpoint's): the schema and references are rebuilt (a stream reference is
        collected again from the next events) and the drift windows start afresh;
        event indices, the label join and performance state go on."""
        self.reference_fingerprint = (reference.fingerprint if reference is not None
                                      else stream_fingerprint(self.settings))
        self.schema = self.num_ref = None
        self._buffer, self._ref_rows, self._ref_count = [], [], 0
        for vm in self.versions.values():
            vm.reset_drift()
        if reference is not None:
            self._build_reference(reference.features, reference.prediction)

    # -- predictions ----------------------------------------------------------------------
    def add_predictions(self, p: Predictions, result: EngineResult) -> None:
        if self.origin is None:  # the first prediction record (whatever the batch cuts) places it
            self.origin = p.first_position
        start = 0
        if self.schema is None:  # the reference's first events: they wait, unindexed, for the schema
            if p.columns is not None:
                raise RuntimeError(f"model {self.name!r}: a batch was decoded with a schema the engine does not have")
            size = self.settings.reference.size
            while self.schema is None and start < len(p):
                end = start + size - len(self._buffer)
                pending = map(_Pending, decode_features(p.features[start:end]), p.prediction[start:end],
                              p.sources[start:end], p.ids[start:end], p.versions[start:end], p.ts[start:end],
                              p.scores[start:end], p.latency_ms[start:end])
                for b in pending:
                    if b.features is None:  # no Python value can hold it: dead, and no trace
                        result.dead_letters.append(dead_letter(b.source, "wrong_type", _WRONG_TYPE))
                    else:
                        self._buffer.append(b)
                start = min(end, len(p))
                if len(self._buffer) >= size:
                    self._complete_schema(result)
            if start == len(p):
                return
        schema = self.schema
        assert schema is not None  # known, or every event of the batch went to the reference window
        cols = p.columns
        if cols is not None:  # decoded where the batch was decoded, with this schema
            if start or cols.fingerprint != schema.fingerprint():
                raise RuntimeError(f"model {self.name!r}: a batch's columns were decoded with another schema")
            num, codes, bad, bad_sources = cols.numeric, cols.codes, cols.bad, cols.bad_sources
        else:
            raws = p.features[start:] if start else p.features
            num, codes, bad = columnarize_raw(raws, schema)
            if self.pred_kind == "numeric":
                bad = bad | bad_numeric_predictions(p.prediction[start:])
            bad_sources = [p.sources[start + i] for i in np.flatnonzero(bad).tolist()]
        ids, versions, ts = p.ids[start:], p.versions[start:], p.ts[start:]
        prediction, scores, latency = p.prediction[start:], p.scores[start:], p.latency_ms[start:]
        if bad_sources:  # dead-lettered: no index, no join, no count
            for src in bad_sources:
                result.dead_letters.append(dead_letter(src, "wrong_type", _WRONG_TYPE))
            keep = np.flatnonzero(~bad).tolist()
            ids, versions, ts = [ids[i] for i in keep], [versions[i] for i in keep], [ts[i] for i in keep]
            prediction, scores = [prediction[i] for i in keep], [scores[i] for i in keep]
            latency = [latency[i] for i in keep]
            num, codes = num[~bad], codes[~bad]
            if not ids:
                return
        index, only, early = self._accept(ids, versions, ts, prediction, scores, result)
        head = 0
        if self.num_ref is None:  # the reference lost events of the wrong type: it takes the next ones
            head = min(len(ids), self.settings.reference.size - self._ref_count)
            self._extend_reference(num[:head], codes[:head], prediction[:head])
        if head < len(ids):
            self._monitor(index[head:], versions[head:] if only is None else None, only, ts[head:],
                          latency[head:], prediction[head:], num[head:], codes[head:], result)
        if len(early):  # labels that had arrived before these predictions
            self.add_labelled(early, result)

    def _monitor(self, index: np.ndarray, versions: list[str] | None, only: str | None, ts: list[float],
                 latency: list[float], prediction: list[Any], num: np.ndarray, codes: np.ndarray,
                 result: EngineResult) -> None:
        """Run accepted events through their versions' windows (``only``: the batch's
        one version, else ``versions`` per row)."""
        rows = np.empty((len(index), FIXED + num.shape[1] + codes.shape[1]), dtype=np.float64)
        rows[:, IDX] = index
        rows[:, TS] = ts
        rows[:, LAT] = latency
        rows[:, PRED] = self._prediction_column(prediction)
        rows[:, FIXED:FIXED + num.shape[1]] = num
        rows[:, FIXED + num.shape[1]:] = codes
        if only is not None:  # one version: no split
            result.alarms.extend(self._version(only).add(rows))
            return
        assert versions is not None
        names = np.asarray(versions, dtype=object)
        for version in dict.fromkeys(versions):
            result.alarms.extend(self._version(version).add(rows[names == version]))

    def _complete_schema(self, result: EngineResult) -> None:
        """The reference window's first ``reference.size`` events are in: infer the
        schema from them, dead-letter those of the wrong type, and count the others as
        the model's first events (indexed and joined, not monitored: they are the
        reference, which takes as many of the next events as were dead-lettered)."""
        buffered, self._buffer = self._buffer, []
        num, codes, bad = self._infer_schema([b.features for b in buffered], [b.prediction for b in buffered])
        kept = []
        for b, is_bad in zip(buffered, bad.tolist(), strict=True):
            if is_bad:
                result.dead_letters.append(dead_letter(b.source, "wrong_type", _WRONG_TYPE))
            else:
                kept.append(b)
        if self.dropped_features:
            result.feature_overflow[self.name] += self.dropped_features
        prediction = [b.prediction for b in kept]
        self._extend_reference(num[~bad], codes[~bad], prediction)
        if kept:
            _, _, early = self._accept([b.id for b in kept], [b.version for b in kept], [b.ts for b in kept],
                                       prediction, [b.scores for b in kept], result)
            if len(early):
                self.add_labelled(early, result)

    def _accept(self, ids: list[str], versions: list[str], ts: list[float], prediction: list[Any],
                scores: list[Any], result: EngineResult) -> tuple[np.ndarray, str | None, Labelled]:
        """Give accepted prediction events their indices, count them and hold them for
        their labels; returns the indices, the batch's one version (None when it has
        several) and the pairs completed by labels that were already waiting."""
        n = len(ids)
        index = np.arange(self.n_events, self.n_events + n, dtype=np.int64)
        self.n_events += n
        first = versions[0]
        only = first if versions.count(first) == n else None  # the common case: one version
        if only is not None:
            self.version_events[only] += n
            if only not in self.version_first:
                self.version_first[only] = int(index[0])
        else:
            self.version_events.update(versions)
            new = [v for v in dict.fromkeys(versions) if v not in self.version_first]
            if new:
                names = np.asarray(versions, dtype=object)
                for v in new:
                    self.version_first[v] = int(index[np.argmax(names == v)])
        early, counts = self.join.add_predictions(ids, versions, index, prediction, scores, ts)
        result.join.update(counts)
        return index, only, early

    def _prediction_column(self, values: list[Any]) -> np.ndarray:
        if self.pred_kind == "numeric":  # non-numbers were dead-lettered
            try:
                return np.array(values, dtype=np.float64)
            except (TypeError, ValueError):
                return np.array([v if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)
        if self.pred_kind == "categorical":
            k = self._pred_categories
            codes = np.array([self.pred_encoder.vocab.get(str(canonical_label(v)), k) if v is not None else -1
                              for v in values], dtype=np.float64)
            return codes
        return np.full(len(values), np.nan)

    def _version(self, version: str) -> VersionMonitor:
        vm = self.versions.get(version)
        if vm is None:
            if len(self.versions) >= MAX_VERSIONS:
                oldest = min(self.versions.values(), key=lambda v: v.last_ts or -math.inf)
                del self.versions[oldest.version]
                self.canary.forget(oldest.version)
                self.version_events.pop(oldest.version, None)
                self.version_first.pop(oldest.version, None)
            vm = self.versions[version] = VersionMonitor(self, version)
        return vm

    # -- labels ---------------------------------------------------------------------------
    def add_labelled(self, lab: Labelled, result: EngineResult) -> None:
        if not len(lab):
            return
        if self.task is None:
            self._infer_task(lab)
        n = len(lab)
        width = 6 + SCORED_CLASSES if self.task == "classification" else 6
        rows = np.empty((n, width), dtype=np.float64)
        index = np.asarray(lab.index, dtype=np.int64)
        index[index < 0] = max(self.n_events - 1, 0)
        rows[:, L_IDX] = index
        rows[:, L_TS] = lab.ts
        if self.task == "regression":
            rows[:, L_TRUE] = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.labels])
            rows[:, L_PRED] = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.prediction])
            rows[:, L_SCORE] = np.nan
            rows[:, L_ERR] = np.abs(rows[:, L_TRUE] - rows[:, L_PRED])
        elif self.task == "binary_score":
            rows[:, L_TRUE] = [float(canonical_label(v) == 1) for v in lab.labels]
            score = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.prediction])
            rows[:, L_SCORE] = score
            rows[:, L_PRED] = (score >= 0.5).astype(np.float64)
            rows[:, L_ERR] = rows[:, L_PRED] != rows[:, L_TRUE]
        else:
            rows[:, L_TRUE] = self.label_encoder.codes(lab.labels)
            rows[:, L_PRED] = self.label_encoder.codes(lab.prediction)
            pos = str(self._positive_key())
            rows[:, L_SCORE] = [s.get(pos, np.nan) if isinstance(s, dict) else np.nan for s in lab.scores]
            rows[:, L_ERR] = rows[:, L_PRED] != rows[:, L_TRUE]
            rows[:, L_SCORES:] = np.nan
            self._class_scores(lab.scores, rows[:, L_SCORES:])
            self.positive_code = self._positive_code()
        valid = np.isfinite(rows[:, L_ERR])
        rows = rows[valid]
        versions = np.asarray(lab.versions, dtype=object)[valid]
        for version in dict.fromkeys(versions.tolist()):
            result.alarms.extend(self._version(version).add_labelled(rows[versions == version]))
        self._error_regression(rows, versions, result)

    def _class_scores(self, scores: list[Any], out: np.ndarray) -> None:
        """Each row's ``scores`` object into ``out``, column c for class code c (classes
        beyond :data:`SCORED_CLASSES` are left out)."""
        vocab = self.label_encoder.vocab  # classes seen as labels or predictions; a score adds none
        for i, s in enumerate(scores):
            if isinstance(s, dict):
                for cls, p in s.items():
                    c = vocab.get(str(canonical_label(cls)))
                    if c is not None and c < SCORED_CLASSES:
                        out[i, c] = p

    def _positive_code(self) -> float:
        """The positive class's code; a default positive class (1) that no label or
        prediction has shown yet is not coded (a model with string classes has none)."""
        key = self._positive_key()
        if self.settings.performance.positive_label is not None:
            return float(self.label_encoder.code(key))
        return float(self.label_encoder.vocab.get(str(key), -1))

    def _positive_key(self) -> Any:
        pos = self.settings.performance.positive_label
        return 1 if pos is None else canonical_label(pos)

    def _infer_task(self, lab: Labelled) -> None:
        labels = [canonical_label(v) for v in lab.labels]
        preds = [p for p in lab.prediction if p is not None]
        if any(isinstance(v, str) for v in labels):
            self.task = "classification"
        elif set(labels) <= {0, 1}:
            numeric_preds = preds and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in preds)
            fractional = numeric_preds and any(0.0 <= p <= 1.0 and not float(p).is_integer() for p in preds)
            self.task = "binary_score" if fractional else "classification"
        else:
            self.task = "regression"
        self.positive_code = 1.0

    # -- canary against stable ----------------------------------------------------------
    def _error_regression(self, rows: np.ndarray, versions: np.ndarray, result: EngineResult) -> None:
        """Each newer version's labelled errors against the stable version's (see
        :class:`~driftline.monitor.canary.ErrorRegression`)."""
        result.alarms.extend(self.canary.update(rows, versions, self.stable_version(), self.version_first,
                                                self.settings.regression, lambda v: self._version(v)._alarm))

    # -- views and state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        canary = self.canary.state_dict()
        return {
            "origin": self.origin,
            "reference_fingerprint": self.reference_fingerprint,
            "mixed_features": list(self.mixed_features),
            "n_events": self.n_events,
            "schema": None if self.schema is None else self.schema.to_state(),
            "num_ref": None if self.num_ref is None else self.num_ref.to_state(),
            "cat_ref": None if self.cat_ref is None else self.cat_ref.to_state(),
            "cat_counts": self.cat_counts,
            "pred_counts": self.pred_counts,
            "pred_ref": None if self.pred_ref is None else self.pred_ref.to_state(),
            "pred_vocab": dict(self.pred_encoder.vocab),
            "ref_missing": dict(self.ref_missing),
            "buffer": [[b.features, b.prediction, list(b.source), b.id, b.version, b.ts, b.scores, b.latency]
                       for b in self._buffer],
            "ref_rows": [[num, codes, preds] for num, codes, preds in self._ref_rows],
            "versions": {name: vm.state_dict() for name, vm in self.versions.items()},
            "version_events": dict(self.version_events),
            "join": self.join.state_dict(),
            "task": self.task,
            "label_vocab": dict(self.label_encoder.vocab),
            "positive_code": self.positive_code,
            "regression": canary["regression"],
            "regression_start": canary["regression_start"],
            "version_first": dict(self.version_first),
            "latency_baseline": self.latency_baseline,
            "regressed": canary["regressed"],
            "dropped_features": self.dropped_features,
        }

    @classmethod
    def from_state(cls, name: str, settings: ModelSettings, s: dict[str, Any]) -> ModelMonitor:
        mm = cls(name, settings, origin=s["origin"])
        mm.reference_fingerprint = s["reference_fingerprint"]
        mm.mixed_features = list(s["mixed_features"])
        mm.n_events = int(s["n_events"])
        mm.schema = None if s["schema"] is None else Schema.from_state(s["schema"])
        mm.num_ref = None if s["num_ref"] is None else NumericReference.from_state(s["num_ref"])
        mm.cat_ref = None if s["cat_ref"] is None else CategoricalReference.from_state(s["cat_ref"])
        mm.cat_counts, mm.pred_counts = s["cat_counts"], s["pred_counts"]
        if s["pred_ref"] is not None:
            ref_cls = NumericReference if mm.pred_kind == "numeric" else CategoricalReference
            mm.pred_ref = ref_cls.from_state(s["pred_ref"])
        mm.pred_encoder = Encoder(s["pred_vocab"])
        mm._pred_categories = len(mm.pred_encoder.vocab)
        mm.ref_missing = dict(s["ref_missing"])
        mm._buffer = [_Pending(f, p, Record(*src), *rest) for f, p, src, *rest in s["buffer"]]
        d_num, d_cat = (0, 0) if mm.schema is None else (len(mm.schema.numeric), len(mm.schema.categorical))
        mm._ref_rows = [(np.asarray(num, dtype=np.float64).reshape(-1, d_num),
                         np.asarray(codes, dtype=np.int64).reshape(-1, d_cat), list(preds))
                        for num, codes, preds in s["ref_rows"]]
        mm._ref_count = sum(len(r[0]) for r in mm._ref_rows)
        mm.version_events = Counter(s["version_events"])
        mm.join = LabelJoin.from_state(s["join"])
        mm.task = s["task"]
        mm.label_encoder = Encoder(s["label_vocab"])
        mm.positive_code = float(s["positive_code"])
        mm.canary.load_state(s)
        mm.version_first = {k: int(v) for k, v in s["version_first"].items()}
        mm.latency_baseline = s["latency_baseline"]
        mm.dropped_features = int(s["dropped_features"])
        for vname, vs in s["versions"].items():
            vm = mm.versions[vname] = VersionMonitor(mm, vname)
            vm.load_state(vs)
        return mm

    def snapshot(self) -> list[VersionSnapshot]:
        if self.num_ref is None:  # collecting the reference (its first events are not counted yet)
            waiting = Counter(b.version for b in self._buffer)
            waiting.update(self.version_events)
            return [VersionSnapshot(self.name, v, c, 0, False, mixed_features=tuple(self.mixed_features))
                    for v, c in waiting.items()]
        return [vm.snapshot() for vm in self.versions.values()]


def _alarm_order(a: Alarm) -> tuple:
    """Within a batch, alarms go out in stream order, ties broken by name."""
    return (a.last_index, a.model, a.version, a.kind, a.detector, a.feature or "")


class Engine:
    """All models' monitors; the service's only entry into detection.

    Parameters
    ----------
    settings
        The service settings (per-model settings come from ``settings.for_model``).
    references
        Reference data per model, loaded by the service from files
        (``reference.source: file``); other models take the first events of the stream.
    """

    def __init__(
        self,
        settings: Settings,
        references: dict[str, ReferenceData] | None = None,
        reference_loader: Callable[[str], ReferenceData | None] | None = None,
    ) -> None:
        self.settings = settings
        self.references = dict(references or {})
        self.reference_loader = reference_loader
        self.models: dict[str, ModelMonitor] = {}
        self._refused: set[str] = set()

    def _reference(self, name: str) -> ReferenceData | None:
        ref = self.references.pop(name, None)
        if ref is None and self.reference_loader is not None:
            ref = self.reference_loader(name)
        return ref

    def _model(self, name: str) -> ModelMonitor | None:
        """The model's monitor, made at its first event; None when the model is beyond
        ``max_models`` (configured models are always admitted)."""
        mm = self.models.get(name)
        if mm is None:
            if len(self.models) >= self.settings.max_models and name not in self.settings.models:
                return None
            mm = self.models[name] = ModelMonitor(name, self.settings.for_model(name), self._reference(name))
        return mm

    def process(self, batch: DecodedBatch) -> EngineResult:
        """Run one decoded batch through every model's detectors.

        Predictions of a batch are processed before its feedback, so feedback can
        join predictions of the same batch. Events of models beyond ``max_models``
        become dead letters (``model_limit``).
        """
        result = EngineResult()
        for name, preds in batch.predictions.items():
            mm = self._model(name)
            if mm is None:
                self._refuse(name, preds.sources, result)
            else:
                mm.add_predictions(preds, result)
        for name, fb in batch.feedback.items():
            mm = self._model(name)
            if mm is None:
                self._refuse(name, fb.sources, result)
                continue
            labelled, counts = mm.join.match(fb)
            result.join.update(counts)
            mm.add_labelled(labelled, result)
        result.alarms.sort(key=_alarm_order)
        return result

    def _refuse(self, name: str, sources: Sequence[Any], result: EngineResult) -> None:
        detail = f"driftline tracks at most max_models={self.settings.max_models} models"
        result.dead_letters.extend(dead_letter(src, "model_limit", detail) for src in sources)
        if name not in self._refused:
            if len(self._refused) < 1000:  # bounded: a flood of names is logged once per name, then not
                self._refused.add(name)
            log.warning("model %r is beyond max_models=%d: its events are dead-lettered (reason model_limit)",
                        name[:100], self.settings.max_models)

    def snapshot(self) -> list[VersionSnapshot]:
        out: list[VersionSnapshot] = []
        for mm in list(self.models.values()):
            out.extend(mm.snapshot())
        return out

    @property
    def reference_ready(self) -> bool:
        return bool(self.models) and all(m.reference_ready for m in self.models.values())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (checkpointed with the offsets)."""
        return {"format": STATE_FORMAT, "models": {name: mm.state_dict() for name, mm in self.models.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint. A model whose reference changed since (another
        file, file content or size, or source) takes the new one, and says so.

        Raises
        ------
        CheckpointError
            When the state was written in another format (by another driftline version).
        """
        _check_format(state, "the checkpoint's engine state")
        self.models = {}
        for name, s in state["models"].items():
            self._restore(name, s)

    # -- one model at a time (state that follows its partition) ---------------------------
    def model_names(self) -> list[str]:
        """The models this engine holds state for, in the order they appeared."""
        return list(self.models)

    def model_state(self, name: str) -> dict[str, Any]:
        """Everything needed to continue one model exactly here, on this or another engine.

        The model's part of :meth:`state_dict` (plain values and arrays, as
        :func:`~driftline.monitor.checkpoint.encode_state` takes them) with ``format``
        (:data:`STATE_FORMAT`) and ``model`` (its name) added; its ``reference_fingerprint``
        says which reference the state was measured against.

        Raises
        ------
        KeyError
            When the engine holds no state for ``name`` (see :meth:`model_names`).
        """
        return {"format": STATE_FORMAT, "model": name, **self.models[name].state_dict()}

    def restore_model(self, name: str, state: dict[str, Any]) -> None:
        """Continue one model from :meth:`model_state` output, replacing whatever this
        engine held for it; the other models are left as they are. As with
        :meth:`load_state`, a model whose reference changed since takes the new one.
        A restored model is admitted even beyond ``max_models`` (its state exists).

        Raises
        ------
        CheckpointError
            When the state was written in another format, belongs to another model,
            or is incomplete.
        """
        _check_format(state, f"the state of model {name!r}")
        if state.get("model", name) != name:
            raise CheckpointError(
                f"the state given for model {name!r} belongs to model {state['model']!r}: restore each model "
                "from its own state")
        try:
            mm = ModelMonitor.from_state(name, self.settings.for_model(name), state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CheckpointError(
                f"the state of model {name!r} is incomplete or malformed ({type(exc).__name__}: {exc}): drop it "
                "to rebuild the model from the stream") from None
        self._restore(name, state, mm)

    def drop_model(self, name: str) -> None:
        """Forget one model (its partition moved to another instance): its state is
        freed and its gauges leave the snapshot. Its next event, if any, starts it
        afresh. Dropping a model the engine does not hold does nothing."""
        self.models.pop(name, None)

    def _restore(self, name: str, state: dict[str, Any], mm: ModelMonitor | None = None) -> None:
        """Install a model's state, applying its reference if that changed since."""
        if mm is None:
            mm = ModelMonitor.from_state(name, self.settings.for_model(name), state)
        self.models[name] = mm
        ref = self._reference(name)
        now = ref.fingerprint if ref is not None else stream_fingerprint(mm.settings)
        if now != mm.reference_fingerprint:
            log.info("model %r: the reference changed since the checkpoint (%s, was %s): applying it",
                     name, describe_fingerprint(now), describe_fingerprint(mm.reference_fingerprint))
            mm.replace_reference(ref)


def _check_format(state: dict[str, Any], what: str) -> None:
    """Refuse a state written in another format (by another driftline version)."""
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{what} has format {state.get('format', 1)!r}, this driftline reads format {STATE_FORMAT}: move the "
            "checkpoint away to start afresh from the committed offsets (each model's reference is then rebuilt "
            "from the stream)")
