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
* :mod:`~driftline.monitor.estimation`: performance estimated from the scores before
  the labels arrive (calibrated on the version's labelled reference);
* :mod:`~driftline.monitor.canary`: newer versions against the stable one (a mixture
  SPRT on the error rate, latency);
* :mod:`~driftline.monitor.segments`: drift, data quality and performance per segment
  of a categorical feature (``segments.features``; off by default: no state, no work);
* :mod:`~driftline.monitor.edges`: alarms are edge-triggered (with hysteresis);
* :mod:`~driftline.monitor.encoding`: class labels as codes, the windows' row layouts;
* :mod:`~driftline.monitor.reference`: a reference's identity, schema and fitting;
* :mod:`~driftline.monitor.versions`: what model lifecycle events set (roles, each
  version's own reference, timers), applied by :meth:`Engine.apply_lifecycle`.

``first_index``/``last_index`` count the model's prediction events from the start of
the stream, so replay and Kafka runs agree.

Nothing here does I/O: the service hands in decoded batches and takes out alarms.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np

from driftline.detectors.statistics import CategoricalReference, NumericReference
from driftline.detectors.windows import SlidingWindow, TumblingWindow
from driftline.monitor.alarms import Action, Alarm, AlarmKind, ConceptDetector, Detector
from driftline.monitor.canary import ErrorRegression, NonInferiority, group_moments, latency_regression
from driftline.monitor.config import ModelSettings, Settings
from driftline.monitor.contract import as_record
from driftline.monitor.decode import (
    TYPE_SHARE,
    Columns,
    DeadLetter,
    DecodedBatch,
    Feedback,
    Predictions,
    Record,
    Schema,
    bad_numeric_predictions,
    columnarize,
    columnarize_raw,
    dead_letter,
    decode_features,
)
from driftline.monitor.drift import WINDOW_CHUNK_VALUES, window_checks
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
from driftline.monitor.estimation import VersionEstimation, class_score_matrix
from driftline.monitor.exceptions import CheckpointError, ReferenceLoadError
from driftline.monitor.join import LabelJoin, Labelled
from driftline.monitor.lifecycle import LifecycleEvent
from driftline.monitor.performance import (
    CONCEPT_DETECTORS,
    concept_alarms,
    concept_detector,
    concept_detectors,
    label_drift,
    performance_alarm,
    window_performance,
)
from driftline.monitor.reference import (
    AppendLog,
    FittedReference,
    ReferenceData,
    describe_fingerprint,
    fit_reference,
    infer_schema,
    stream_fingerprint,
)
from driftline.monitor.segments import ModelSegments, VersionSegments
from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot
from driftline.monitor.versions import VersionLifecycle, VersionReference, labels_needed

__all__ = [
    "Engine",
    "EngineResult",
    "ModelMonitor",
    "VersionMonitor",
    "ReferenceData",
    "CONCEPT_DETECTORS",
    "concept_detector",
    "stream_fingerprint",
    "STATE_FORMAT",
    "MAX_VERSIONS",
]

log = logging.getLogger(__name__)

STATE_FORMAT = 3
"""Format of :meth:`Engine.state_dict` and :meth:`Engine.model_state` (2: event origins,
reference fingerprints, unindexed reference events, the label join per version; 3:
lifecycle state per model: roles, per-version references, queued lifecycle events,
timers, non-inferiority tests). Format 2 is still read (as a model no lifecycle event
has named yet)."""
_READABLE_FORMATS = (2, 3)
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
    """What one batch (and the lifecycle events handed in before it) caused.

    Attributes
    ----------
    alarms, dead_letters
        Alarms in stream order; records that broke the contract.
    join, feature_overflow
        Label-join outcome counts; features beyond ``max_features`` per model.
    lifecycle
        Counts of what the lifecycle events did, by outcome (``applied``, ``queued``,
        ``model_limit``, ``rollback_confirmed``, ``reference_failed`` ...): metric-ready.
    schema_changed
        Models whose schema was rebuilt by a lifecycle event (a reference with other
        features became the stable one): the service must decode their next batches
        with the engine's new schema (``engine.models[name].schema``).
    """

    alarms: list[Alarm] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    join: Counter[str] = field(default_factory=Counter)
    feature_overflow: Counter[str] = field(default_factory=Counter)
    lifecycle: Counter[str] = field(default_factory=Counter)
    schema_changed: list[str] = field(default_factory=list)


def suggested_action(kind: AlarmKind, stable: bool) -> Action:
    """What the engine suggests for an alarm: ``rollback`` for a regression, ``promote``
    for a canary found not inferior, ``retrain`` for any other alarm of the stable
    version except data quality and the lifecycle checks (``canary_stalled``,
    ``rollback_unconfirmed``: for people, through their gauges and alert rules), else
    ``none`` (the trigger policy decides what is sent)."""
    if kind == "regression":
        return "rollback"
    if kind == "promote_ready":
        return "promote"
    if kind in ("data_quality", "canary_stalled", "rollback_unconfirmed") or not stable:
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
        self.estimation = VersionEstimation(model.settings, f"model {model.name!r} version {version!r}")
        self.segments = None if model.segments is None else VersionSegments(model.segments)

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
        if self.segments is not None:
            self.segments.reset_drift()

    # -- predictions -------------------------------------------------------------------
    def add(self, rows: np.ndarray, class_scores: np.ndarray | None = None) -> list[Alarm]:
        self.events += len(rows)
        self.last_ts = float(rows[-1, TS])
        if self.window is None:
            cfg = self.model.settings.window
            if cfg.step is None:
                self.window = TumblingWindow(cfg.size, rows.shape[1])
            else:
                self.window = SlidingWindow(cfg.size, cfg.step, rows.shape[1])
        alarms: list[Alarm] = []
        done = [values for values, _, _ in self.window.extend(rows, self.events - len(rows))]
        if done:  # the batch's windows in one computation, in chunks of bounded size
            chunk = max(1, WINDOW_CHUNK_VALUES // done[0].size)
            for k in range(0, len(done), chunk):
                alarms.extend(self._on_windows(np.stack(done[k : k + chunk])))
        total = self.model.version_events.get(self.version, self.events)  # the version's events up to these
        alarms += self.estimation.predictions(rows, class_scores, total, self.states, self._alarm)
        if self.segments is not None and self.model.schema is not None:
            alarms += self.segments.predictions(
                rows, self.model.schema, self.model.settings, self.model.pred_kind, self._alarm
            )
        return alarms

    def _on_windows(self, ws: np.ndarray) -> list[Alarm]:
        """Consecutive windows ((w, size, columns)): their statistics in one computation
        (each window's equal to its own alone), then each window's checks in order; the
        snapshot keeps the last window's."""
        m = self.model
        schema, ref = m.schema, m.reference_of(self.version)  # the version's own reference, else the stable one's
        assert schema is not None and ref is not None
        stable = self.version == m.stable_version()

        def latency(i: int, w: np.ndarray, first: int, last: int, ts: float) -> list[Alarm]:
            lat = w[:, LAT]
            lat = lat[np.isfinite(lat)]
            self.latency_ms = float(lat.mean()) if lat.size else None
            m.latency_baseline, alarms = latency_regression(
                self.latency_ms,
                stable,
                m.latency_baseline,
                m.settings.regression,
                self.states,
                self._alarm,
                first,
                last,
                ts,
            )
            return alarms

        found = window_checks(ws, schema, ref, m.settings, m.pred_kind, self.states, self._alarm, also=latency)
        self.drift, self.quality = found.drift, found.quality
        return found.alarms

    # -- labelled -----------------------------------------------------------------------
    def add_labelled(self, rows: np.ndarray) -> list[Alarm]:
        """rows: (n, 6) float64 [index, ts, y_true, y_pred, score, error] (and, for
        classification, the class scores; see :mod:`~driftline.monitor.encoding`)."""
        self.labelled += len(rows)
        alarms = self._concept(rows)
        self.estimation.labelled(rows, self.model.task, len(self.model.label_encoder.vocab))
        if self.segments is not None:
            m = self.model
            alarms += self.segments.labelled(
                rows, m.settings, m.task, m.positive_code, m.label_encoder.vocab, self._alarm
            )
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
        self.label_baseline, alarms = label_drift(
            w, self.label_baseline, cfg.reference.size, m.task, cfg.drift, self.states, self._alarm, first, last, ts
        )
        alarms += performance_alarm(
            self.performance, m.task, self.baseline, cfg.performance, self.states, self._alarm, first, last, ts
        )
        self.estimation.labelled_window(w)
        return alarms

    # -- shared -------------------------------------------------------------------------
    def _alarm(
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
    ) -> Alarm:
        m = self.model
        action = suggested_action(kind, self.version == m.stable_version())
        return Alarm(
            m.name,
            self.version,
            kind,
            detector,
            feature,
            float(statistic),
            None if threshold is None else float(threshold),
            None if p_value is None else float(p_value),
            int(first),
            int(last),
            float(ts),
            action,
            origin=m.origin,
        )

    def snapshot(self) -> VersionSnapshot:
        m = self.model
        return VersionSnapshot(
            model=m.name,
            version=self.version,
            events=m.version_events.get(self.version, self.events),
            labelled=self.labelled,
            reference_ready=True,
            drift=self.drift,
            quality={k: dict(v) for k, v in self.quality.items()},
            performance=dict(self.performance),
            latency_ms=self.latency_ms,
            last_event_ts=self.last_ts,
            mixed_features=tuple(m.mixed_features),
            class_recall=dict(self.class_recall),
            estimation=self.estimation.snapshot(),
            segments=() if self.segments is None else self.segments.snapshot(),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": None if self.window is None else self.window.state_dict(),
            "window_type": type(self.window).__name__,
            "perf_window": None if self.perf_window is None else self.perf_window.state_dict(),
            "events": self.events,
            "labelled": self.labelled,
            "last_ts": self.last_ts,
            "alarming": self.states.state_dict(),
            "drift": [vars_of(s) for s in self.drift],
            "quality": self.quality,
            "performance": self.performance,
            "baseline": self.baseline,
            "label_baseline": self.label_baseline,
            "latency_ms": self.latency_ms,
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "recent": self.recent,
            "estimation": self.estimation.state_dict(),
            **({} if self.segments is None else {"segments": self.segments.state_dict()}),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        if s["window"] is not None:
            tumbling = s["window_type"] == "TumblingWindow"
            self.window = TumblingWindow.from_state(s["window"]) if tumbling else SlidingWindow.from_state(s["window"])
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
        if "estimation" in s:  # absent from checkpoints written before estimation existed: it starts afresh
            self.estimation.load_state(s["estimation"])
        if self.segments is not None and "segments" in s:  # absent: written without segments, they start afresh
            self.segments.load_state(s["segments"])


def vars_of(stat: FeatureStatistic) -> dict[str, Any]:
    return {
        "feature": stat.feature,
        "detector": stat.detector,
        "statistic": stat.statistic,
        "p_value": stat.p_value,
        "threshold": stat.threshold,
        "kind": stat.kind,
    }


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

    def __init__(
        self, name: str, settings: ModelSettings, reference: ReferenceData | None = None, origin: str | None = None
    ) -> None:
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
        self.lifecycle = VersionLifecycle()  # roles, per-version references, queued events, timers
        self.promote = NonInferiority()  # canaries' non-inferiority tests (canary.promote)
        self.reference_loader: Callable[..., ReferenceData | None] | None = None  # set by the engine
        # per-segment checks (segments.features); None when off: no state, no work
        self.segments = ModelSegments(settings.segments) if settings.segments.features else None
        self._previous_schema: Schema | None = None  # the schema before a lifecycle rebuild (its batch's columns)
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
        """The version a lifecycle event made stable, else ``regression.stable_version``,
        else the version with the most prediction events."""
        if self.lifecycle.stable is not None:
            return self.lifecycle.stable
        configured = self.settings.regression.stable_version
        if configured is not None:
            return configured
        if not self.version_events:
            return None
        return max(self.version_events.items(), key=lambda kv: (kv[1], kv[0]))[0]

    # -- reference ------------------------------------------------------------------------
    def _infer_schema(
        self, features: Sequence[dict[str, Any]], prediction: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Infer the schema from reference events (see :func:`~driftline.monitor.
        reference.infer_schema`); returns their columns and the rows of the wrong
        type under it."""
        inferred = infer_schema(features, prediction, self.settings)
        self.schema, self.dropped_features = inferred.schema, inferred.dropped_features
        self.mixed_features = inferred.mixed_features
        if self.mixed_features:
            log.warning(
                "model %r: %s hold both numbers and strings in the reference (neither reaches %d %%), "
                "so they are not monitored; list them under numeric_features or categorical_features "
                "(or ignore_features)",
                self.name,
                ", ".join(self.mixed_features),
                round(TYPE_SHARE * 100),
            )
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
        if self.segments is not None:  # each segment's part of the reference, and the segments themselves
            self.segments.fit(
                num, codes, list(prediction), self.schema, self.pred_encoder, self.settings.drift.psi_bins, self.name
            )

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
            self._fit_reference(
                np.concatenate([r[0] for r in rows]),
                np.concatenate([r[1] for r in rows]),
                [v for r in rows for v in r[2]],
            )

    def replace_reference(self, reference: ReferenceData | None) -> None:
        """Apply a changed reference (a restart found another file, size or source than
        the checkpoint's): the schema and references are rebuilt (a stream reference is
        collected again from the next events) and the drift windows start afresh;
        event indices, the label join and performance state go on."""
        self.reference_fingerprint = (
            reference.fingerprint if reference is not None else stream_fingerprint(self.settings)
        )
        self.schema = self.num_ref = None
        self._buffer, self._ref_rows, self._ref_count = [], [], 0
        if self.segments is not None:
            self.segments.reset()
        for vm in self.versions.values():
            vm.reset_drift()
        if reference is not None:
            self._build_reference(reference.features, reference.prediction)

    # -- predictions ----------------------------------------------------------------------
    def add_predictions(
        self, p: Predictions, result: EngineResult, feedback: Feedback | None = None
    ) -> Feedback | None:
        """Accept a batch's prediction events, applying each queued lifecycle event just
        before the first of them whose ``ts`` reaches the event's (see
        :meth:`Engine.apply_lifecycle`), then run the lifecycle timers.

        ``feedback``: the model's feedback of the same batch. Where a lifecycle event or
        timer cuts the predictions at time T, the feedback with ``ts < T`` is joined
        first, so that the labels an event may stop counting (a test stopped, a version
        freed) are the same whatever the batch cuts. Returns the feedback left (None when
        none was given), which the caller joins after the predictions as usual.
        """
        lc = self.lifecycle
        start = 0
        ts: np.ndarray | None = None  # made when something is due (rare): most batches need no cut
        while start < len(p):
            due = lc.next_due()
            if due == math.inf:
                break
            if ts is None:
                ts = np.asarray(p.ts, dtype=np.float64)
            reached = np.flatnonzero(ts[start:] >= due)
            if not len(reached):
                break
            cut = start + int(reached[0])  # the first prediction at or after the due time: cut there
            if cut > start:
                self._add_slice(p, start, cut, result)
            if feedback is not None and len(feedback):
                early = np.asarray(feedback.ts, dtype=np.float64) < due
                if early.any():
                    self.add_feedback(_select_feedback(feedback, early), result)
                    feedback = _select_feedback(feedback, ~early)
            lc.clock = max(lc.clock, float(ts[cut]))
            for event in lc.due(lc.clock):
                self._apply_event(event, result)
            self.tick(result)  # everything due by the clock is handled: the next due time is later
            start = cut
        if start < len(p):
            self._add_slice(p, start, len(p), result)
            self.tick(result)
        return feedback

    def add_feedback(self, feedback: Feedback, result: EngineResult) -> None:
        """Join feedback with the predictions and run the labelled pairs."""
        labelled, counts = self.join.match(feedback)
        result.join.update(counts)
        before = len(result.alarms)
        self.add_labelled(labelled, result)
        if self.watch_rollbacks(result.alarms[before:]):
            # A rollback found on labels may be due already: the model's clock can have
            # passed its confirmation deadline in this very batch (a large batch, or late
            # labels). Settle it now, as a batch cut at the deadline would have; waiting for
            # the next batch made the verdict depend on the batch size.
            self.tick(result)

    def _add_slice(self, p: Predictions, start: int, end: int, result: EngineResult) -> None:
        part = p if (start, end) == (0, len(p)) else _slice_predictions(p, start, end)
        before = len(result.alarms)
        self._add_predictions(part, result)
        self.lifecycle.clock = max(self.lifecycle.clock, max(part.ts))
        self.watch_rollbacks(result.alarms[before:])

    def _add_predictions(self, p: Predictions, result: EngineResult) -> None:
        if self.origin is None:  # the first prediction record (whatever the batch cuts) places it
            self.origin = p.first_position
        start = 0
        if self.schema is None:  # the reference's first events: they wait, unindexed, for the schema
            if p.columns is not None:
                raise RuntimeError(f"model {self.name!r}: a batch was decoded with a schema the engine does not have")
            size = self.settings.reference.size
            while self.schema is None and start < len(p):
                end = start + size - len(self._buffer)
                pending = map(
                    _Pending,
                    decode_features(p.features[start:end]),
                    p.prediction[start:end],
                    p.sources[start:end],
                    p.ids[start:end],
                    p.versions[start:end],
                    p.ts[start:end],
                    p.scores[start:end],
                    p.latency_ms[start:end],
                )
                for b in pending:
                    if b.features is None:  # no Python value can hold it: dead, and no trace
                        result.dead_letters.append(dead_letter(b.source, "wrong_type", _WRONG_TYPE))
                    else:  # held in state: as a Record, whichever client read it
                        self._buffer.append(b if type(b.source) is Record else b._replace(source=as_record(b.source)))
                start = min(end, len(p))
                if len(self._buffer) >= size:
                    self._complete_schema(result)
            if start == len(p):
                return
        schema = self.schema
        assert schema is not None  # known, or every event of the batch went to the reference window
        cols = p.columns
        if (
            cols is not None
            and cols.fingerprint != schema.fingerprint()
            and self._previous_schema is not None
            and cols.fingerprint == self._previous_schema.fingerprint()
        ):
            # decoded before a lifecycle event rebuilt the schema within this batch
            cols = _remap_columns(cols, self._previous_schema, schema)
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
            self._monitor(
                index[head:],
                versions[head:] if only is None else None,
                only,
                ts[head:],
                latency[head:],
                prediction[head:],
                num[head:],
                codes[head:],
                result,
                scores[head:],
            )
        if len(early):  # labels that had arrived before these predictions
            self.add_labelled(early, result)

    def _monitor(
        self,
        index: np.ndarray,
        versions: list[str] | None,
        only: str | None,
        ts: list[float],
        latency: list[float],
        prediction: list[Any],
        num: np.ndarray,
        codes: np.ndarray,
        result: EngineResult,
        scores: Sequence[Any] = (),
    ) -> None:
        """Run accepted events through their versions' windows (``only``: the batch's
        one version, else ``versions`` per row); ``scores`` are the events' class scores
        (read only for a calibrated multi-class version, see :mod:`~driftline.monitor.estimation`)."""
        if any(r.collecting for r in self.lifecycle.refs.values()):  # from_stream references take their events
            keep = self._collect_references(index, versions, only, prediction, num, codes)
            if keep is not None:
                if not keep.any():
                    return
                sel = np.flatnonzero(keep).tolist()
                if len(scores) == len(index):
                    scores = [scores[i] for i in sel]
                index, num, codes = index[keep], num[keep], codes[keep]
                ts, latency, prediction = [ts[i] for i in sel], [latency[i] for i in sel], [prediction[i] for i in sel]
                if versions is not None:
                    versions = [versions[i] for i in sel]
        rows = np.empty((len(index), FIXED + num.shape[1] + codes.shape[1]), dtype=np.float64)
        rows[:, IDX] = index
        rows[:, TS] = ts
        rows[:, LAT] = latency
        rows[:, PRED] = self._prediction_column(prediction)
        rows[:, FIXED : FIXED + num.shape[1]] = num
        rows[:, FIXED + num.shape[1] :] = codes
        class_scores = None
        if len(scores) == len(index) and any(vm.estimation.wants_class_scores for vm in self.versions.values()):
            class_scores = class_score_matrix(scores, self.label_encoder.vocab)
        if only is not None:  # one version: no split
            result.alarms.extend(self._version(only).add(rows, class_scores))
            return
        assert versions is not None
        names = np.asarray(versions, dtype=object)
        for version in dict.fromkeys(versions):
            mask = names == version
            scored = None if class_scores is None else class_scores[mask]
            result.alarms.extend(self._version(version).add(rows[mask], scored))

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
            _, _, early = self._accept(
                [b.id for b in kept],
                [b.version for b in kept],
                [b.ts for b in kept],
                prediction,
                [b.scores for b in kept],
                result,
            )
            if len(early):
                self.add_labelled(early, result)

    def _accept(
        self,
        ids: list[str],
        versions: list[str],
        ts: list[float],
        prediction: list[Any],
        scores: list[Any],
        result: EngineResult,
    ) -> tuple[np.ndarray, str | None, Labelled]:
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
            codes = np.array(
                [self.pred_encoder.vocab.get(str(canonical_label(v)), k) if v is not None else -1 for v in values],
                dtype=np.float64,
            )
            return codes
        return np.full(len(values), np.nan)

    def _version(self, version: str) -> VersionMonitor:
        vm = self.versions.get(version)
        if vm is None:
            if len(self.versions) >= MAX_VERSIONS:
                oldest = min(self.versions.values(), key=lambda v: v.last_ts or -math.inf)
                del self.versions[oldest.version]
                self.canary.forget(oldest.version)
                self.promote.forget(oldest.version)
                self.lifecycle.forget(oldest.version)
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
            rows[:, L_TRUE] = _numbers(lab.labels)
            rows[:, L_PRED] = _numbers(lab.prediction)
            rows[:, L_SCORE] = np.nan
            rows[:, L_ERR] = np.abs(rows[:, L_TRUE] - rows[:, L_PRED])
        elif self.task == "binary_score":
            # == 1 is canonical_label(v) == 1 for every label type (bool, number, string)
            rows[:, L_TRUE] = np.fromiter(map(operator.eq, lab.labels, repeat(1)), dtype=np.float64, count=n)
            score = _numbers(lab.prediction)
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
        kept = lab.versions
        if not valid.all():
            rows = rows[valid]
            kept = [v for v, ok in zip(kept, valid.tolist()) if ok]
        versions = np.asarray(kept, dtype=object)
        distinct = dict.fromkeys(kept)
        lc = self.lifecycle
        for version in distinct:
            if version not in self.versions and version in lc.freed:
                continue  # late labels of a freed version: its state is gone and stays gone
            mine = rows if len(distinct) == 1 else rows[versions == version]  # read only below: no copy
            fresh = lc.fresh_from.get(version)
            if fresh is not None:  # it started clean at fresh: labels of earlier predictions stay out
                mine = mine[mine[:, L_IDX] >= fresh]
                if not len(mine):
                    continue
            result.alarms.extend(self._version(version).add_labelled(mine))
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
        result.alarms.extend(
            self.canary.update(
                rows,
                versions,
                self.stable_version(),
                self.version_first,
                self.settings.regression,
                lambda v: self._version(v)._alarm,
            )
        )
        canaries = {v: first for v, first in self.version_first.items() if self.lifecycle.roles.get(v) == "canary"}
        if canaries:
            result.alarms.extend(
                self.promote.update(
                    rows,
                    versions,
                    self.stable_version(),
                    canaries,
                    self.settings.canary.promote,
                    lambda v: self._version(v)._alarm,
                )
            )

    # -- lifecycle ------------------------------------------------------------------------
    def lifecycle_event(self, event: LifecycleEvent, result: EngineResult) -> None:
        """Apply a lifecycle event now when the model's event clock has reached its
        time, else queue it (see :meth:`Engine.apply_lifecycle`)."""
        if event.ts <= self.lifecycle.clock:
            self._apply_event(event, result)
            self.tick(result)
        else:
            self.lifecycle.enqueue(event)
            result.lifecycle["queued"] += 1

    def _apply_event(self, event: LifecycleEvent, result: EngineResult) -> None:
        lc, v, cfg = self.lifecycle, event.version, self.settings.canary
        result.lifecycle[event.event] += 1
        log.info("model %r version %r: %s%s", self.name, v, event.event, f" as {event.role}" if event.role else "")
        if event.event == "deployed":
            lc.free_at.pop(v, None)
            if v in lc.freed:  # deployed again: its labels count again
                lc.freed.remove(v)
            ref = self._version_reference(v, event.reference, result)
            if event.traffic_share is not None:
                lc.shares[v] = float(event.traffic_share)
            if event.role == "stable":
                self._make_stable(v, ref, event.ts, result)
                return
            lc.roles[v] = event.role or "shadow"
            if ref is not None or v in lc.refs:  # a new reference, or back to the stable one's
                self._set_version_reference(v, ref)
            if event.role == "canary":  # its comparisons with the stable version start afresh
                self.canary.restart(v, self.n_events)
                self.promote.restart(v, self.n_events)
                lc.stall[v] = [event.ts + cfg.stall_after_seconds, float(self.version_events.get(v, 0)), 0.0]
                lc.stalled.discard(v)
                lc.unconfirmed.discard(v)
                lc.rollbacks.pop(v, None)
        elif event.event == "promoted":
            self._make_stable(v, self._version_reference(v, event.reference, result), event.ts, result)
        elif event.event == "rolled_back":
            self.canary.stop(v, self.n_events)
            self.promote.stop(v, self.n_events)
            if lc.rollbacks.pop(v, None) is not None or v in lc.unconfirmed:
                result.lifecycle["rollback_confirmed"] += 1
            lc.unconfirmed.discard(v)
            lc.stall.pop(v, None)
            lc.stalled.discard(v)
            lc.roles[v] = "retiring"
            lc.free_at[v] = event.ts + cfg.grace_seconds
        else:  # retired
            self._free(v)

    def _make_stable(self, version: str, ref: VersionReference | None, ts: float, result: EngineResult) -> None:
        """``version`` becomes the stable one (``promoted``, or ``deployed`` as stable)."""
        lc = self.lifecycle
        old = self.stable_version()
        if old == version and lc.stable == version and ref is None:
            return  # already the stable one (a repeated event): nothing starts afresh
        if ref is not None:
            lc.refs[version] = ref
        own = lc.refs.pop(version, None)
        if old is not None and old != version:
            # the old stable keeps the reference it was measured against (for its remaining
            # traffic); its gauges clear now and its state goes after the grace period
            if self.num_ref is not None and old not in lc.refs:
                lc.refs[old] = VersionReference(self.reference_fingerprint, self._model_fitted())
            lc.roles[old] = "retiring"
            lc.free_at[old] = ts + self.settings.canary.grace_seconds
            self.canary.exclude(old)
            self.promote.forget(old)
            if old in self.versions:
                self.versions[old].reset_drift()
        lc.stable = version
        lc.roles[version] = "stable"
        lc.shares.pop(version, None)
        for timers in (lc.stall, lc.rollbacks, lc.free_at):
            timers.pop(version, None)
        lc.stalled.discard(version)
        lc.unconfirmed.discard(version)
        self.canary.forget(version)
        self.promote.forget(version)
        for other, role in lc.roles.items():  # the canaries were compared with the old stable
            if role == "canary":
                self.canary.restart(other, self.n_events)
                self.promote.restart(other, self.n_events)
        self.latency_baseline = None  # set again by the new stable's first window
        lc.fresh_from[version] = self.n_events  # labels of its earlier predictions stay out of its fresh detectors
        vm = self.versions.get(version)
        if vm is not None:  # its detectors and performance baseline start clean; its counts go on
            fresh = self.versions[version] = VersionMonitor(self, version)
            fresh.events, fresh.labelled, fresh.last_ts = vm.events, vm.labelled, vm.last_ts
        if own is not None:
            self._rebase(version, own, result)

    def _rebase(self, version: str, own: VersionReference, result: EngineResult) -> None:
        """The stable version's own reference becomes the model's."""
        lc = self.lifecycle
        if own.path is not None and (own.rebuild or self.schema is None):
            data = self._load(own.path, result)
            if data is None:
                return
            previous = self.schema
            self.replace_reference(data)  # a new schema, and every version's drift afresh
            lc.rebased = True
            if previous is not None and self.schema is not None and self.schema.fingerprint() != previous.fingerprint():
                self._previous_schema = previous
                result.schema_changed.append(self.name)
                for other, r in list(lc.refs.items()):  # fitted under the old schema: fit again (or inherit)
                    if r.path is not None:
                        r.fitted, r.rows, r.count = None, [], 0
                    elif r.collecting:
                        r.rows, r.count = [], 0
                    else:
                        log.warning(
                            "model %r version %r: its stream reference was fitted under the previous "
                            "schema; it is measured against the stable reference now",
                            self.name,
                            other,
                        )
                        del lc.refs[other]
            return
        if own.fitted is None:  # a stream reference still collecting: it becomes the model's when complete
            lc.refs[version] = own
            return
        self._install_fitted(own.fitted)
        self.reference_fingerprint = own.fingerprint
        lc.rebased = True
        for name, vm in self.versions.items():  # every version measured against the old reference
            if name not in lc.refs:
                vm.reset_drift()

    def _set_version_reference(self, version: str, ref: VersionReference | None) -> None:
        if ref is None:
            self.lifecycle.refs.pop(version, None)
        else:
            self.lifecycle.refs[version] = ref
        if version in self.versions:
            self.versions[version].reset_drift()

    def _free(self, version: str) -> None:
        """Forget a version: its state, tests, timers and gauges."""
        self.lifecycle.mark_freed(version)
        self.versions.pop(version, None)
        self.canary.forget(version)
        self.promote.forget(version)
        self.lifecycle.forget(version)
        self.version_events.pop(version, None)
        self.version_first.pop(version, None)

    def watch_rollbacks(self, alarms: Sequence[Alarm]) -> bool:
        """Rollbacks the engine asked for wait for their confirmation: a ``rolled_back``
        event, or the version's predictions stopping, within ``canary.rollback_confirm_seconds``.
        True when a new one is watched."""
        added = False
        for alarm in alarms:
            if alarm.action == "rollback" and alarm.version not in self.lifecycle.rollbacks:
                self.lifecycle.rollbacks[alarm.version] = [
                    alarm.ts,
                    alarm.ts + self.settings.canary.rollback_confirm_seconds,
                    float(alarm.last_index),
                ]
                added = True
        return added

    def tick(self, result: EngineResult) -> None:
        """Run the timers due by the model's event clock: canary stall checks, rollback
        confirmations (a version whose last prediction is later than halfway through its
        confirmation period has not stopped), the end of grace periods."""
        lc, cfg, now = self.lifecycle, self.settings.canary, self.lifecycle.clock
        for v, timer in list(lc.stall.items()):
            deadline, base, fired = timer
            if fired or now < deadline:
                continue
            timer[2] = 1.0
            got = self.version_events.get(v, 0) - base
            if got < cfg.stall_min_events:
                lc.stalled.add(v)
                result.alarms.append(
                    self._lifecycle_alarm(v, "canary_stalled", "traffic", got, cfg.stall_min_events, deadline)
                )
        for v, entry in list(lc.rollbacks.items()):
            since, deadline, at = entry[0], entry[1], entry[2:]
            if now < deadline:
                continue
            del lc.rollbacks[v]
            vm = self.versions.get(v)
            last = None if vm is None else vm.last_ts
            quiet = cfg.rollback_confirm_seconds / 2
            if last is None or last <= since + quiet:
                result.lifecycle["rollback_confirmed"] += 1
            else:
                lc.unconfirmed.add(v)
                # Placed at the rollback's own evidence and stating the time waited: what
                # the model's clock had reached when the verdict was due depends on the batch
                # cuts, so neither the current index nor the last prediction's time is used.
                alarm = self._lifecycle_alarm(
                    v, "rollback_unconfirmed", "confirmation", deadline - since, quiet, deadline
                )
                if at:
                    alarm = replace(alarm, first_index=int(at[0]), last_index=int(at[0]))
                result.alarms.append(alarm)
        for v, free_at in list(lc.free_at.items()):
            if now >= free_at:
                self._free(v)
                result.lifecycle["freed"] += 1

    def _lifecycle_alarm(
        self, version: str, kind: AlarmKind, detector: Detector, statistic: float, threshold: float, ts: float
    ) -> Alarm:
        """An alarm of a lifecycle timer, placed at the model's last accepted event."""
        index = max(self.n_events - 1, 0)
        return Alarm(
            self.name,
            version,
            kind,
            detector,
            None,
            float(statistic),
            float(threshold),
            None,
            index,
            index,
            float(ts),
            suggested_action(kind, version == self.stable_version()),
            origin=self.origin,
        )

    # per-version references
    def reference_of(self, version: str) -> FittedReference | None:
        """What ``version``'s windows are compared with: its own reference, else the
        model's (the stable version's); None before the model's is fitted."""
        own = self.lifecycle.refs.get(version)
        if own is not None:
            if own.fitted is None and own.path is not None and self.schema is not None:
                self._fit_file_reference(own, None)  # it waited for the schema
            if own.fitted is not None:
                return own.fitted
        return None if self.num_ref is None else self._model_fitted()

    def _model_fitted(self) -> FittedReference:
        assert self.num_ref is not None and self.cat_ref is not None and self.cat_counts is not None
        return FittedReference(
            self.num_ref, self.cat_ref, self.cat_counts, self.ref_missing, self.pred_ref, self.pred_counts
        )

    def _install_fitted(self, f: FittedReference) -> None:
        self.num_ref, self.cat_ref, self.cat_counts = f.num_ref, f.cat_ref, f.cat_counts
        self.ref_missing, self.pred_ref, self.pred_counts = dict(f.ref_missing), f.pred_ref, f.pred_counts

    def _version_reference(self, version: str, reference: Any, result: EngineResult) -> VersionReference | None:
        """A lifecycle event's ``reference`` as a version's own (None: inherit the stable one's)."""
        if reference is None:
            return None
        if reference.from_stream is not None:
            n = int(reference.from_stream)
            return VersionReference(f"from_stream:{version}:{n}", size=n)
        ref = VersionReference(f"path:{reference.path}", path=reference.path)
        if self.schema is not None and not self._fit_file_reference(ref, result):
            return None
        return ref

    def _load(self, path: str, result: EngineResult | None) -> ReferenceData | None:
        """Load a lifecycle reference file through the engine's reference loader."""
        try:
            if self.reference_loader is None:
                raise ReferenceLoadError("the engine was built without a reference_loader")
            data = self.reference_loader(self.name, path)
            if data is None:
                raise ReferenceLoadError(f"the reference loader gave nothing for {path}")
            return data
        except (ReferenceLoadError, OSError, TypeError) as exc:
            log.warning(
                "model %r: the lifecycle reference %s cannot be used (%s): the version is measured "
                "against the stable reference; check the path (it is the service's)",
                self.name,
                path,
                exc,
            )
            if result is not None:
                result.lifecycle["reference_failed"] += 1
            return None

    def _fit_file_reference(self, ref: VersionReference, result: EngineResult | None) -> bool:
        """Load and fit a file reference under the model's schema; True when fitted."""
        assert self.schema is not None and ref.path is not None
        data = self._load(ref.path, result)
        if data is None:
            return False
        schema = self.schema
        num, codes, bad = columnarize(data.features, schema)
        keys = {k for f in data.features for k in f} - set(self.settings.ignore_features)
        known = set(schema.numeric) | set(schema.categorical)
        unseen = codes == np.array([len(v) for v in schema.vocabularies], dtype=np.int64)
        ref.rebuild = (
            bool(known - keys)
            or bool(unseen.any())
            or (not self.dropped_features and bool(keys - known - set(self.mixed_features)))
        )
        good = ~bad
        ref.fingerprint = data.fingerprint
        ref.fitted = self._fit_version(
            num[good], codes[good], [p for p, g in zip(data.prediction, good.tolist(), strict=True) if g]
        )
        return True

    def _fit_version(self, num: np.ndarray, codes: np.ndarray, prediction: list[Any]) -> FittedReference:
        """Fit a version's reference under the model's schema; the prediction codes stay
        the model's (a prediction class the model's reference never had leaves the
        version without prediction drift, rather than shift every code)."""
        assert self.schema is not None
        encoder = Encoder(dict(self.pred_encoder.vocab))
        fitted = fit_reference(num, codes, prediction, self.schema, encoder, self.settings.drift.psi_bins)
        if len(encoder.vocab) != len(self.pred_encoder.vocab):
            fitted = replace(fitted, pred_ref=None, pred_counts=None)
        return fitted

    def _collect_references(
        self,
        index: np.ndarray,
        versions: list[str] | None,
        only: str | None,
        prediction: list[Any],
        num: np.ndarray,
        codes: np.ndarray,
    ) -> np.ndarray | None:
        """Give ``from_stream`` references their versions' next events; returns the mask
        of the rows left to monitor (None when none was taken)."""
        n = len(index)
        keep = np.ones(n, dtype=bool)
        names = None if versions is None else np.asarray(versions, dtype=object)
        took = False
        for v, ref in list(self.lifecycle.refs.items()):
            if not ref.collecting:
                continue
            if only is not None:
                rows = np.arange(n) if only == v else np.empty(0, dtype=np.int64)
            else:
                assert names is not None
                rows = np.flatnonzero(names == v)
            take = rows[: ref.size - ref.count]
            if not take.size:
                continue
            took = True
            keep[take] = False
            ref.rows.append((num[take], codes[take], [prediction[i] for i in take.tolist()]))
            ref.count += int(take.size)
            if ref.count >= ref.size:
                rows_, ref.rows, ref.count = ref.rows, [], ref.size
                ref.fitted = self._fit_version(
                    np.concatenate([r[0] for r in rows_]),
                    np.concatenate([r[1] for r in rows_]),
                    [x for r in rows_ for x in r[2]],
                )
                if self.lifecycle.stable == v:  # promoted while it collected: it is the model's now
                    del self.lifecycle.refs[v]
                    self._install_fitted(ref.fitted)
                    self.reference_fingerprint = ref.fingerprint
                    self.lifecycle.rebased = True
                    for name, vm in self.versions.items():
                        if name not in self.lifecycle.refs:
                            vm.reset_drift()
        return keep if took else None

    def _canary_progress(self, version: str) -> tuple[float | None, float | None]:
        """A canary's observed traffic share (of the labelled comparison) and the labels
        its tests still need (see :func:`~driftline.monitor.versions.labels_needed`)."""
        announced = self.lifecycle.shares.get(version)
        reg, pro = self.settings.regression, self.settings.canary.promote
        test = self.canary.tests.get(version)
        moments = None if test is None else group_moments(test)
        if moments is not None:
            n_c, n_s, p_c, p_s, var_c, var_s = moments
        else:
            ni = self.promote.tests.get(version)
            swapped = None if ni is None else group_moments(ni)
            if swapped is None:
                return announced, None
            n_s, n_c, p_s, p_c, var_s, var_c = swapped  # its "candidate" group is the stable's, plus the margin
            p_s -= pro.margin
        share = n_c / (n_c + n_s)
        d = p_c - p_s
        needs = []
        if reg.enabled and version not in self.canary.regressed:
            needs.append(labels_needed(d, var_c, var_s, share, reg.tau, reg.alpha, reg.min_samples))
        if pro.enabled and version not in self.promote.ready:
            needs.append(labels_needed(pro.margin - d, var_c, var_s, share, pro.tau, pro.alpha, pro.min_samples))
        if not needs:
            return share, None
        return share, max(0.0, min(needs) - (n_c + n_s))

    def _lifecycle_snapshot(self, snap: VersionSnapshot) -> VersionSnapshot:
        lc, v = self.lifecycle, snap.version
        role = lc.roles.get(v)
        if role is None and v == lc.stable:
            role = "stable"
        share, needed = self._canary_progress(v) if role == "canary" else (None, None)
        own = lc.refs.get(v)
        reference = own.fingerprint if own is not None and own.fitted is not None else self.reference_fingerprint
        return replace(
            snap,
            role=role,
            traffic_share=share,
            labels_needed=needed,
            canary_stalled=v in lc.stalled,
            rollback_pending=v in lc.rollbacks,
            rollback_unconfirmed=v in lc.unconfirmed,
            reference=reference,
        )

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
            # the pending events themselves (encoded as the lists they were written as):
            # checkpoints store them in segments, each full one written once
            "buffer": AppendLog(self._buffer),
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
            "regression_bounds": canary["regression_bounds"],
            "dropped_features": self.dropped_features,
            "lifecycle": self.lifecycle.state_dict(),
            "promote": self.promote.state_dict(),
            **({} if self.segments is None else {"segments": self.segments.state_dict()}),
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
        mm._ref_rows = [
            (
                np.asarray(num, dtype=np.float64).reshape(-1, d_num),
                np.asarray(codes, dtype=np.int64).reshape(-1, d_cat),
                list(preds),
            )
            for num, codes, preds in s["ref_rows"]
        ]
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
        # absent from a format-2 state (before lifecycle events): no roles, no tests
        mm.lifecycle = VersionLifecycle.from_state(s.get("lifecycle"), d_num, d_cat)
        mm.promote.load_state(s.get("promote"))
        if mm.segments is not None and s.get("segments") is not None:  # absent: written without segments
            mm.segments.load_state(s["segments"])
        for vname, vs in s["versions"].items():
            vm = mm.versions[vname] = VersionMonitor(mm, vname)
            vm.load_state(vs)
        return mm

    def snapshot(self) -> list[VersionSnapshot]:
        if self.num_ref is None:  # collecting the reference (its first events are not counted yet)
            waiting = Counter(b.version for b in self._buffer)
            waiting.update(self.version_events)
            return [
                VersionSnapshot(self.name, v, c, 0, False, mixed_features=tuple(self.mixed_features))
                for v, c in waiting.items()
            ]
        return [self._lifecycle_snapshot(vm.snapshot()) for vm in self.versions.values()]


def _numbers(values: list[Any]) -> np.ndarray:
    """Numbers (booleans too) as float64, anything else NaN (a string is not read as a
    number); at C speed when every value is an int or a float."""
    if set(map(type, values)) <= {float, int}:
        return np.array(values, dtype=np.float64)
    return np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in values], dtype=np.float64)


def _slice_predictions(p: Predictions, start: int, end: int) -> Predictions:
    """Rows ``start:end`` of a model's batch (cut at a lifecycle event's time)."""
    cols = p.columns
    if cols is not None:
        before = int(np.count_nonzero(cols.bad[:start]))
        inside = int(np.count_nonzero(cols.bad[start:end]))
        cols = Columns(
            cols.fingerprint,
            cols.numeric[start:end],
            cols.codes[start:end],
            cols.bad[start:end],
            cols.bad_sources[before : before + inside],
        )
    return replace(
        p,
        versions=p.versions[start:end],
        ids=p.ids[start:end],
        ts=p.ts[start:end],
        features=p.features[start:end],
        prediction=p.prediction[start:end],
        scores=p.scores[start:end],
        latency_ms=p.latency_ms[start:end],
        sources=p.sources[start:end],
        columns=cols,
        first_position=p.first_position if start == 0 else None,
    )


def _select_feedback(fb: Feedback, mask: np.ndarray) -> Feedback:
    """The rows of a model's feedback where ``mask`` holds, in order."""
    keep = np.flatnonzero(mask).tolist()
    n = len(fb.ids)
    columns = ("ids", "ts", "labels", "prediction", "versions", "scores", "sources")
    # a column a decoder left empty (not carried for this batch) stays empty
    picked: dict[str, Any] = {
        c: [getattr(fb, c)[i] for i in keep] if len(getattr(fb, c)) == n else getattr(fb, c) for c in columns
    }
    return replace(fb, **picked)


def _remap_columns(cols: Columns, old: Schema, new: Schema) -> Columns:
    """Columns decoded under ``old`` re-expressed under ``new`` (a lifecycle event rebuilt
    the schema within the batch): shared features carried over by name, categories
    recoded by value, features new to the schema missing."""
    n = len(cols.bad)
    num = np.full((n, len(new.numeric)), np.nan)
    codes = np.full((n, len(new.categorical)), -1, dtype=np.int64)
    old_num = {name: j for j, name in enumerate(old.numeric)}
    for j, name in enumerate(new.numeric):
        if name in old_num:
            num[:, j] = cols.numeric[:, old_num[name]]
    old_cat = {name: j for j, name in enumerate(old.categorical)}
    for j, name in enumerate(new.categorical):
        i = old_cat.get(name)
        if i is None:
            continue
        old_vocab, new_vocab = old.vocabularies[i], new.vocabularies[j]
        table = np.full(len(old_vocab) + 2, len(new_vocab), dtype=np.int64)  # code + 1: missing (-1) at 0
        table[0] = -1
        for value, code in old_vocab.items():
            table[code + 1] = new_vocab.get(value, len(new_vocab))
        codes[:, j] = table[cols.codes[:, i] + 1]
    return Columns(new.fingerprint(), num, codes, cols.bad, cols.bad_sources)


def _alarm_order(a: Alarm) -> tuple:
    """Within a batch, alarms go out in stream order, ties broken by name."""
    return (a.last_index, a.model, a.version, a.kind, a.detector, a.feature or "", a.segment or "")


class Engine:
    """All models' monitors; the service's only entry into detection.

    Parameters
    ----------
    settings
        The service settings (per-model settings come from ``settings.for_model``).
    references
        Reference data per model, loaded by the service from files
        (``reference.source: file``); other models take the first events of the stream.
    reference_loader
        Loads a reference: called as ``reference_loader(model)`` for the configured one
        (None: take it from the stream) and as ``reference_loader(model, path)`` for a
        lifecycle event's ``{"path": ...}`` (the service's path); it may raise
        :class:`~driftline.monitor.exceptions.ReferenceLoadError`.
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
            mm.reference_loader = self.reference_loader
        return mm

    def apply_lifecycle(self, events: Sequence[LifecycleEvent], result: EngineResult) -> None:
        """Hand the engine a batch's model lifecycle events (pure: no I/O but the
        reference loader callback).

        The service calls it once per batch with the lifecycle events decoded from that
        batch (possibly none), *before* :meth:`process` of the same batch, passing the
        same ``result`` to both::

            result = EngineResult()
            engine.apply_lifecycle(lifecycle_events, result)
            result = engine.process(decoded, result)

        Ordering rule (the same in a replay and over Kafka, whatever the batch cuts):
        each model's events are taken in event-time order (``ts``, ties in the order
        given), and an event with time ``T`` takes effect just before that model's
        first prediction event, in stream order, whose ``ts >= T``; an event no later
        than the model's event clock (its latest prediction ``ts``) when handed in takes
        effect at once, before the batch's predictions. Events wait in the model's
        state (checkpointed) until then. Timers (stall, rollback confirmation, grace
        periods) run on the same event clock.

        What each event does (see :mod:`~driftline.monitor.versions`):

        * ``deployed`` (role ``stable``): the version becomes the model's stable one
          (over ``regression.stable_version`` and the most-events default); role
          ``canary``: its tests against the stable version start afresh (``regression``,
          and with ``canary.promote.enabled`` the non-inferiority test that says
          ``promote_ready``), and its stall timer starts; role ``shadow``: recorded.
          ``reference``: ``{"path"}`` is loaded through the engine's reference loader
          (``reference_loader(model, path)`` when it takes a path), ``{"from_stream": N}``
          is the version's first N prediction events from then on, absent inherits the
          stable version's. Drift of each version is measured against its own reference.
        * ``promoted``: the stable version and the model's reference move to this
          version; its detectors and performance baseline start clean; every drift and
          quality alarm state and gauge measured against the old reference is cleared;
          the old stable version's state is freed after ``canary.grace_seconds``.
        * ``rolled_back``: the version's canary tests stop, a pending rollback of it is
          confirmed, its state is freed after ``canary.grace_seconds``.
        * ``retired``: the version's state and gauges are freed at once.

        Events of a model beyond ``max_models`` are dropped (counted as
        ``result.lifecycle["model_limit"]``); a reference file that cannot be read is
        logged and counted (``reference_failed``) and the version inherits the stable
        reference: a lifecycle event never stops the loop.

        Parameters
        ----------
        events
            Decoded lifecycle events (:class:`~driftline.monitor.lifecycle.LifecycleEvent`),
            of any models, in source order.
        result
            The batch's result: alarms raised by events applied at once (``promote``
            resets nothing that alarms, but timers may fire), outcome counts and schema
            changes are added to it.
        """
        for event in sorted(events, key=lambda e: e.ts):  # stable: ties keep source order
            mm = self._model(event.model)
            if mm is None:
                result.lifecycle["model_limit"] += 1
                continue
            mm.lifecycle_event(event, result)

    def process(self, batch: DecodedBatch, result: EngineResult | None = None) -> EngineResult:
        """Run one decoded batch through every model's detectors.

        Predictions of a batch are processed before its feedback, so feedback can
        join predictions of the same batch. Events of models beyond ``max_models``
        become dead letters (``model_limit``). ``result``: the one given to
        :meth:`apply_lifecycle` for this batch (default a new one).
        """
        result = EngineResult() if result is None else result
        left: dict[str, Feedback] = {}  # feedback not joined at a lifecycle cut
        for name, preds in batch.predictions.items():
            mm = self._model(name)
            if mm is None:
                self._refuse(name, preds.sources, result)
            else:
                rest = mm.add_predictions(preds, result, batch.feedback.get(name))
                if rest is not None:
                    left[name] = rest
        for name, fb in batch.feedback.items():
            mm = self._model(name)
            if mm is None:
                self._refuse(name, fb.sources, result)
                continue
            mm.add_feedback(left.get(name, fb), result)
        result.alarms.sort(key=_alarm_order)
        return result

    def _refuse(self, name: str, sources: Sequence[Any], result: EngineResult) -> None:
        detail = f"driftline tracks at most max_models={self.settings.max_models} models"
        result.dead_letters.extend(dead_letter(src, "model_limit", detail) for src in sources)
        if name not in self._refused:
            if len(self._refused) < 1000:  # bounded: a flood of names is logged once per name, then not
                self._refused.add(name)
            log.warning(
                "model %r is beyond max_models=%d: its events are dead-lettered (reason model_limit)",
                name[:100],
                self.settings.max_models,
            )

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
                "from its own state"
            )
        try:
            mm = ModelMonitor.from_state(name, self.settings.for_model(name), state)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise CheckpointError(
                f"the state of model {name!r} is incomplete or malformed ({type(exc).__name__}: {exc}): drop it "
                "to rebuild the model from the stream"
            ) from None
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
        mm.reference_loader = self.reference_loader
        self.models[name] = mm
        ref = self._reference(name)
        now = ref.fingerprint if ref is not None else stream_fingerprint(mm.settings)
        if now != mm.reference_fingerprint and not mm.lifecycle.rebased:  # a lifecycle reference wins
            log.info(
                "model %r: the reference changed since the checkpoint (%s, was %s): applying it",
                name,
                describe_fingerprint(now),
                describe_fingerprint(mm.reference_fingerprint),
            )
            mm.replace_reference(ref)


def _check_format(state: dict[str, Any], what: str) -> None:
    """Refuse a state written in another format (by another driftline version)."""
    if state.get("format") not in _READABLE_FORMATS:
        raise CheckpointError(
            f"{what} has format {state.get('format', 1)!r}, this driftline reads format {STATE_FORMAT}: move the "
            "checkpoint away to start afresh from the committed offsets (each model's reference is then rebuilt "
            "from the stream)"
        )
