"""The engine: routes each model's columns to the detectors and turns their findings
into alarms.

Per model (one :class:`ModelMonitor`): the reference (a file, or the first
``reference.size`` events), the feature schema, the label join, and per version (one
:class:`VersionMonitor`) the count windows and detectors:

* data quality per window: missing rate against the reference's, share of values
  outside the reference range, share of unseen categories;
* feature and prediction drift per window: KS / PSI / JS / Wasserstein for numeric
  features, chi-squared / PSI for categorical ones, against the reference, with a
  multiple-testing correction across features;
* on the labelled stream: windowed performance metrics against the version's first
  windows, concept-drift detectors on the error stream, and label drift;
* between versions (canary against stable): a mixture SPRT on the error rate and a
  latency comparison.

Alarms are edge-triggered: a feature (or check) alarms when it enters the alarming
state, and re-arms once a window finds it back to normal; gauges in the snapshot show
the ongoing state. ``first_index``/``last_index`` count the model's prediction events
from the start of the stream, so replay and Kafka runs agree.

Nothing here does I/O: the service hands in decoded batches and takes out alarms.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from driftline.detectors import ADWIN, DDM, EDDM, FHDDM, HDDMA, HDDMW, KSWIN, PageHinkley
from driftline.detectors.homogeneity import bucket_counts, chi2_homogeneity
from driftline.detectors.metrics import classification_metrics, multiclass_metrics, regression_metrics
from driftline.detectors.multiple_testing import benjamini_hochberg, bonferroni
from driftline.detectors.sequential import TwoSampleMSPRT
from driftline.detectors.statistics import (
    CategoricalReference,
    NumericReference,
    categorical_drift,
    numeric_drift,
)
from driftline.detectors.windows import SlidingWindow, TumblingWindow
from driftline.monitor.alarms import Alarm
from driftline.monitor.config import ModelSettings, Settings
from driftline.monitor.decode import (
    TYPE_SHARE,
    DeadLetter,
    DecodedBatch,
    Predictions,
    Record,
    Schema,
    bad_numeric_predictions,
    columnarize,
    columnarize_raw,
    dead_letter,
    decode_features,
    infer_feature_types,
    infer_prediction_kind,
)
from driftline.monitor.exceptions import CheckpointError
from driftline.monitor.join import LabelJoin, Labelled
from driftline.monitor.snapshot import FeatureStatistic, VersionSnapshot

__all__ = ["Engine", "EngineResult", "ModelMonitor", "ReferenceData", "CONCEPT_DETECTORS", "concept_detector"]

log = logging.getLogger(__name__)

# Columns of a version's prediction window, before the numeric and categorical blocks.
_IDX, _TS, _LAT, _PRED = 0, 1, 2, 3
_FIXED = 4
# Columns of a version's labelled window.
_L_IDX, _L_TS, _L_TRUE, _L_PRED, _L_SCORE, _L_ERR = range(6)
_L_SCORES = 6
"""Then, for classification, the score of each class code below :data:`SCORED_CLASSES`."""
SCORED_CLASSES = 20
"""Classes whose scores are kept for one-vs-rest ROC-AUC (a model with more classes
gets the other multi-class metrics, not that one)."""
CLASS_RECALLS = 10
"""Classes (the most frequent of each window) whose recall is exposed."""
STATE_FORMAT = 2
"""Format of :meth:`Engine.state_dict` (2: event origins, reference fingerprints,
unindexed reference events, the label join per version)."""
MAX_VERSIONS = 32
"""Versions tracked per model; the least recently seen is dropped beyond (bounds state)."""


CONCEPT_DETECTORS = {"ddm": DDM, "eddm": EDDM, "fhddm": FHDDM, "hddm_a": HDDMA, "hddm_w": HDDMW,
                     "adwin": ADWIN, "page_hinkley": PageHinkley, "kswin": KSWIN}
"""Concept-drift detectors by their config name (``performance.concept_detectors``)."""


def concept_detector(name: str, params: dict[str, Any]):
    """A concept-drift detector by its config name, with river's parameter names."""
    return CONCEPT_DETECTORS[name](**params)


_BINARY_ONLY = {"ddm", "eddm", "fhddm"}

_WRONG_TYPE = "a value has the wrong type for the model's schema"


@dataclass
class ReferenceData:
    """Reference events loaded from a file: feature dicts and predictions, and what
    identifies their source (kept in checkpoints: a changed reference is applied on
    restart)."""

    features: list[dict[str, Any]]
    prediction: list[Any]
    fingerprint: str = "given"


def stream_fingerprint(settings: ModelSettings) -> str:
    """What identifies a reference taken from the stream: its size."""
    return f"stream:{settings.reference.size}"


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


# ---- helpers ----------------------------------------------------------------------------


def _canonical_label(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


REARM_WINDOWS = 3
"""Consecutive normal windows after which an alarming check is re-armed (hysteresis,
so that a drift hovering at the threshold does not alarm every other window)."""


def _edge(state: dict[str, int], key: str, alarming: bool) -> bool:
    """Edge trigger: True when ``key`` enters the alarming state. ``state`` maps each
    alarming key to its run of normal windows since."""
    if alarming:
        fresh = key not in state
        state[key] = 0
        return fresh
    if key in state:
        state[key] += 1
        if state[key] >= REARM_WINDOWS:
            del state[key]
    return False


MAX_CLASSES = 1000
"""Distinct class labels (or categorical predictions) coded per model; further values
share the code ``MAX_CLASSES`` (bounds memory whatever the labels hold)."""


class _Encoder:
    """Values to stable float codes (class labels, categorical predictions), at most
    :data:`MAX_CLASSES` of them."""

    def __init__(self, vocab: dict[str, int] | None = None) -> None:
        self.vocab: dict[str, int] = dict(vocab or {})

    def code(self, v: Any) -> int:
        key = str(_canonical_label(v))
        code = self.vocab.get(key)
        if code is None:
            if len(self.vocab) >= MAX_CLASSES:
                return MAX_CLASSES
            code = self.vocab[key] = len(self.vocab)
        return code

    def codes(self, values: Sequence[Any]) -> np.ndarray:
        return np.array([self.code(v) for v in values], dtype=np.float64)


# ---- per version ---------------------------------------------------------------------------


class VersionMonitor:
    """Windows, detectors and latest statistics of one (model, version)."""

    def __init__(self, model: "ModelMonitor", version: str) -> None:
        self.model = model
        self.version = version
        cfg = model.settings
        self.window: SlidingWindow | None = None  # made at the first monitored event (needs the schema)
        self.perf_window: TumblingWindow | None = None  # made at the first labels (its width needs the task)
        self.events = 0
        self.labelled = 0
        self.last_ts: float | None = None
        self.alarming: dict[str, int] = {}
        self.drift: tuple[FeatureStatistic, ...] = ()
        self.quality: dict[str, dict[str, float]] = {}
        self.performance: dict[str, float] = {}
        self.class_recall: dict[str, float] = {}
        self.baseline: dict[str, list[float]] = {}
        self.label_baseline: np.ndarray | None = None
        self.latency_ms: float | None = None
        self.detectors: dict[str, Any] = {}
        self.recent = np.empty((0, 2))  # (index, error) of the last performance.window labelled events

    def reset_drift(self) -> None:
        """Forget the prediction windows and drift state (the reference changed)."""
        self.window = None
        self.drift = ()
        self.quality = {}
        self.alarming = {k: v for k, v in self.alarming.items()
                         if not k.startswith(("feature_drift:", "prediction_drift:", "quality:"))}

    # -- predictions -------------------------------------------------------------------
    def add(self, rows: np.ndarray) -> list[Alarm]:
        self.events += len(rows)
        self.last_ts = float(rows[-1, _TS])
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
        schema = m.schema
        first, last = int(w[0, _IDX]), int(w[-1, _IDX])
        ts = float(w[-1, _TS])
        lat = w[:, _LAT]
        lat = lat[np.isfinite(lat)]
        self.latency_ms = float(lat.mean()) if lat.size else None
        latency_alarms = self._latency_regression(first, last, ts)
        d_num = len(schema.numeric)
        num = w[:, _FIXED:_FIXED + d_num]
        codes = w[:, _FIXED + d_num:].astype(np.int64)
        stats: list[FeatureStatistic] = []
        quality: dict[str, dict[str, float]] = {}
        candidates: list[tuple[str, str, float, float, float]] = []  # feature, det, stat, p, effect
        wanted = set(cfg.drift.statistics)
        r = numeric_drift(m.num_ref, num) if d_num else None
        if codes.shape[1]:
            c = categorical_drift(m.cat_ref, codes)
            chi2, chi2_p = chi2_homogeneity(m.cat_counts, bucket_counts(codes, m.cat_ref.n_categories + 1))
        # p-values corrected across the model's features: what the gauges show and what
        # the alarms (and the alert rules) compare with alpha
        adjusted = _adjust(np.concatenate([r.ks_p_value if r is not None else [],
                                           chi2_p if codes.shape[1] else []]), cfg.drift.correction).tolist()
        if r is not None:
            for j, name in enumerate(schema.numeric):
                p = adjusted[j]
                if "ks" in wanted:
                    stats.append(FeatureStatistic(name, "ks", float(r.ks_statistic[j]), p, cfg.drift.alpha))
                if "psi" in wanted:
                    stats.append(FeatureStatistic(name, "psi", float(r.psi[j]), None, cfg.drift.psi_threshold))
                if "js" in wanted:
                    stats.append(FeatureStatistic(name, "js", float(r.js[j]), None, None))
                if "wasserstein" in wanted:
                    stats.append(FeatureStatistic(name, "wasserstein", float(r.wasserstein[j]), None, None))
                quality[name] = {"missing_rate": float(r.missing_rate[j]),
                                 "out_of_range_rate": float(r.out_of_range_rate[j])}
                candidates.append((name, "ks", float(r.ks_statistic[j]), p, float(r.psi[j])))
        if codes.shape[1]:
            for j, name in enumerate(schema.categorical):
                p = adjusted[d_num + j]
                if "chi2" in wanted:
                    stats.append(FeatureStatistic(name, "chi2", float(chi2[j]), p, cfg.drift.alpha))
                if "psi" in wanted:
                    stats.append(FeatureStatistic(name, "psi", float(c.psi[j]), None, cfg.drift.psi_threshold))
                quality[name] = {"missing_rate": float(c.missing_rate[j]),
                                 "unseen_rate": float(c.unseen_rate[j])}
                candidates.append((name, "chi2", float(c.tv[j]), p, float(c.psi[j])))
        alarms = self._drift_alarms(candidates, "feature_drift", first, last, ts)
        alarms += self._quality_alarms(quality, first, last, ts)
        if cfg.drift.prediction and m.pred_kind is not None:
            pstats, palarms = self._prediction_drift(w[:, _PRED], first, last, ts)
            stats += pstats
            alarms += palarms
        self.drift = tuple(stats)
        self.quality = quality
        return alarms + latency_alarms

    def _latency_regression(self, first: int, last: int, ts: float) -> list[Alarm]:
        """A newer version whose window latency exceeds the model's latency baseline
        (the stable version's first window) by more than the tolerance."""
        m = self.model
        cfg = m.settings.regression
        if self.latency_ms is None or not cfg.enabled:
            return []
        if self.version == m.stable_version():
            if m.latency_baseline is None:
                m.latency_baseline = self.latency_ms
            return []
        base = m.latency_baseline
        if base is None or base <= 0:
            return []
        limit = base * (1 + cfg.latency_tolerance)
        if _edge(self.alarming, "latency", self.latency_ms > limit):
            return [self._alarm("regression", "latency", "latency_ms", self.latency_ms, limit, None, first, last, ts)]
        return []

    def _prediction_drift(self, pred: np.ndarray, first: int, last: int, ts: float):
        m = self.model
        cfg = m.settings.drift
        stats: list[FeatureStatistic] = []
        if m.pred_kind == "numeric":
            r = numeric_drift(m.pred_ref, pred[:, None])
            stat, p, psi, det = float(r.ks_statistic[0]), float(r.ks_p_value[0]), float(r.psi[0]), "ks"
        else:
            codes = pred[:, None].astype(np.int64)
            c = categorical_drift(m.pred_ref, codes)
            chi2, chi2_p = chi2_homogeneity(m.pred_counts, bucket_counts(codes, m.pred_ref.n_categories + 1))
            stat, p, psi, det = float(c.tv[0]), float(chi2_p[0]), float(c.psi[0]), "chi2"
            stats.append(FeatureStatistic("prediction", "chi2", float(chi2[0]), p, cfg.alpha, "prediction_drift"))
        if det == "ks":
            stats.append(FeatureStatistic("prediction", "ks", stat, p, cfg.alpha, "prediction_drift"))
        stats.append(FeatureStatistic("prediction", "psi", psi, None, cfg.psi_threshold, "prediction_drift"))
        alarms = self._drift_alarms([("prediction", det, stat, p, psi)], "prediction_drift", first, last, ts)
        return stats, alarms

    def _drift_alarms(self, candidates, kind: str, first: int, last: int, ts: float) -> list[Alarm]:
        if not candidates:
            return []
        cfg = self.model.settings.drift
        p = np.array([c[3] for c in candidates], dtype=np.float64)  # already corrected
        if cfg.alarm_on == "p_value":
            with np.errstate(invalid="ignore"):
                significant = p <= cfg.alpha  # NaN (no test) is never significant
            effect = np.array([c[2] for c in candidates]) >= cfg.min_effect
            hit = significant & effect
        else:
            hit = np.array([c[4] for c in candidates]) > cfg.psi_threshold
        alarms = []
        for (feature, det, stat, pv, psi), h in zip(candidates, hit):
            if _edge(self.alarming, f"{kind}:{feature}", bool(h)):
                if cfg.alarm_on == "psi":
                    det, stat, thr, pv = "psi", psi, cfg.psi_threshold, None
                else:
                    thr = cfg.alpha
                alarms.append(self._alarm(kind, det, feature, stat, thr, pv, first, last, ts))
        return alarms

    def _quality_alarms(self, quality, first: int, last: int, ts: float) -> list[Alarm]:
        m = self.model
        q = m.settings.quality
        alarms = []
        for name, rates in quality.items():
            checks = [
                ("missing_rate", rates.get("missing_rate", 0.0),
                 m.ref_missing.get(name, 0.0) + q.max_missing_rate_increase),
                ("out_of_range_rate", rates.get("out_of_range_rate", 0.0), q.max_out_of_range_rate),
                ("unseen_rate", rates.get("unseen_rate", 0.0), q.max_unseen_rate),
            ]
            for check, value, limit in checks:
                if _edge(self.alarming, f"quality:{check}:{name}", value > limit):
                    alarms.append(self._alarm("data_quality", check, name, value, limit, None, first, last, ts))
        return alarms

    # -- labelled -----------------------------------------------------------------------
    def add_labelled(self, rows: np.ndarray) -> list[Alarm]:
        """rows: (n, 6) float64 [index, ts, y_true, y_pred, score, error]."""
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
            for name in perf.concept_detectors:
                if m.task == "regression" and name in _BINARY_ONLY:
                    continue
                self.detectors[name] = concept_detector(name, dict(perf.detector_params.get(name, {})))
        alarms = []
        err = rows[:, _L_ERR]
        # the evidence of an alarm: the last `window` labelled events, whatever the batch cuts
        recent = np.concatenate([self.recent, rows[:, [_L_IDX, _L_ERR]]])
        offset = len(self.recent)
        for name, det in self.detectors.items():
            found = det.update(err)
            for i in np.asarray(found.drifts, dtype=np.int64).tolist():
                ev = recent[max(0, offset + i - perf.window + 1): offset + i + 1]
                alarms.append(self._alarm(
                    "concept_drift", name, "error_rate" if m.task != "regression" else "abs_error",
                    float(ev[:, 1].mean()), None, None, int(ev[0, 0]), int(ev[-1, 0]), float(rows[i, _L_TS])))
        self.recent = recent[-perf.window:].copy()
        return alarms

    def _on_perf_window(self, w: np.ndarray) -> list[Alarm]:
        m = self.model
        perf = m.settings.performance
        first, last, ts = int(w[:, _L_IDX].min()), int(w[:, _L_IDX].max()), float(w[-1, _L_TS])
        if m.task == "regression":
            metrics = regression_metrics(w[:, _L_TRUE], w[:, _L_PRED])
            key, worse = "mae", lambda now, base: now > base * (1 + perf.max_drop)
            limit = lambda base: base * (1 + perf.max_drop)  # noqa: E731
        else:
            score = w[:, _L_SCORE]
            metrics = classification_metrics(
                w[:, _L_TRUE], w[:, _L_PRED], score if np.isfinite(score).all() else None,
                positive=m.positive_code)
            key, worse = "accuracy", lambda now, base: now < base - perf.max_drop
            limit = lambda base: base - perf.max_drop  # noqa: E731
        self.performance = {k: float(v) for k, v in metrics.items()}
        if m.task == "classification" and len(m.label_encoder.vocab) > 2:
            self.performance.update(self._multiclass(w))
        alarms = self._label_drift(w, first, last, ts)
        hist = self.baseline.setdefault(key, [])
        if len(hist) < perf.baseline_windows:
            hist.append(float(metrics[key]))
            return alarms
        base = float(np.mean(hist))
        now = float(metrics[key])
        if _edge(self.alarming, f"performance:{key}", bool(worse(now, base))):
            alarms.append(self._alarm("performance", key, key, now, limit(base), None, first, last, ts))
        return alarms

    def _multiclass(self, w: np.ndarray) -> dict[str, float]:
        """Macro and micro averages, one-vs-rest ROC-AUC (when every class has a score
        column) and the recall of the most frequent classes, for a multi-class window."""
        m = self.model
        n_classes = len(m.label_encoder.vocab)
        scores = w[:, _L_SCORES:_L_SCORES + n_classes] if n_classes <= SCORED_CLASSES else None
        if scores is not None and not np.isfinite(scores).any():
            scores = None
        r = multiclass_metrics(w[:, _L_TRUE], w[:, _L_PRED], scores, n_classes=n_classes,
                               max_classes=CLASS_RECALLS)
        names = {code: name for name, code in m.label_encoder.vocab.items()}
        self.class_recall = {names[int(c)]: float(v) for c, v in r["class_recall"].items()}
        out = {f"{metric}_{avg}": float(r[f"{avg}_{metric}"])
               for avg in ("macro", "micro") for metric in ("precision", "recall", "f1")}
        if scores is not None:
            out["roc_auc_ovr"] = float(r["roc_auc"])
        return out

    def _label_drift(self, w: np.ndarray, first: int, last: int, ts: float) -> list[Alarm]:
        """Label distribution of this window against the version's first labels (as many
        as the feature reference holds, so that the baseline's own noise is small)."""
        m = self.model
        labels = w[:, _L_TRUE]
        if self.label_baseline is None or len(self.label_baseline) < m.settings.reference.size:
            prev = self.label_baseline if self.label_baseline is not None else np.empty(0)
            self.label_baseline = np.concatenate([prev, labels])[: m.settings.reference.size]
            return []
        cfg = m.settings.drift
        if m.task == "regression":
            ref = NumericReference.fit(self.label_baseline[:, None], n_bins=cfg.psi_bins)
            r = numeric_drift(ref, labels[:, None])
            stat, p = float(r.ks_statistic[0]), float(r.ks_p_value[0])
            det = "ks"
        else:
            k = np.array([int(max(labels.max(), self.label_baseline.max())) + 1])
            base = bucket_counts(self.label_baseline[:, None].astype(np.int64), k)
            now = bucket_counts(labels[:, None].astype(np.int64), k)
            _, p_arr = chi2_homogeneity(base, now)
            stat = 0.5 * float(np.abs(base[0] / base.sum() - now[0] / now.sum()).sum())  # total variation
            p = float(p_arr[0])
            det = "chi2"
        hit = p < cfg.alpha and stat >= cfg.min_effect
        if _edge(self.alarming, "label_drift", hit):
            return [self._alarm("prediction_drift", det, "label", stat, cfg.alpha, p, first, last, ts)]
        return []

    # -- shared -------------------------------------------------------------------------
    def _alarm(self, kind, detector, feature, statistic, threshold, p_value, first, last, ts) -> Alarm:
        m = self.model
        stable = self.version == m.stable_version()
        if kind == "regression":
            action = "rollback"
        elif kind == "data_quality" or not stable:
            action = "none"
        else:
            action = "retrain"
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
            "alarming": dict(self.alarming),
            "drift": [vars_of(s) for s in self.drift],
            "quality": self.quality, "performance": self.performance, "baseline": self.baseline,
            "label_baseline": self.label_baseline, "latency_ms": self.latency_ms,
            "detectors": {k: d.state_dict() for k, d in self.detectors.items()},
            "recent": self.recent,
        }

    def load_state(self, s: dict[str, Any]) -> None:
        if s["window"] is not None:
            cls = TumblingWindow if s["window_type"] == "TumblingWindow" else SlidingWindow
            self.window = cls.from_state(s["window"])
        if s["perf_window"] is not None:
            self.perf_window = TumblingWindow.from_state(s["perf_window"])
        self.events, self.labelled, self.last_ts = s["events"], s["labelled"], s["last_ts"]
        self.alarming = dict(s["alarming"])
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
        self.pred_ref: Any = None
        self.pred_encoder = _Encoder()
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
        self.label_encoder = _Encoder()
        self.positive_code = 1.0
        self.regression: dict[str, TwoSampleMSPRT] = {}
        self.regression_start: dict[str, float] = {}  # evidence start of each version's test
        self.version_first: dict[str, int] = {}  # each version's first prediction index
        self.latency_baseline: float | None = None
        self.regressed: set[str] = set()  # versions already found worse than the stable one
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
        """Infer the schema (feature types, the prediction's kind) from reference events;
        returns their columns and the rows of the wrong type under it."""
        cfg = self.settings
        types = infer_feature_types(features, cfg.ignore_features)
        given = set(cfg.numeric_features or ()) | set(cfg.categorical_features or ())
        self.mixed_features = [n for n, t in types.items() if t == "mixed" and n not in given]
        self.schema, self.dropped_features = Schema.infer(
            features, cfg.numeric_features, cfg.categorical_features, cfg.ignore_features, cfg.max_features,
            types=types)
        kind = infer_prediction_kind(prediction)
        self.schema.prediction = kind if kind in ("numeric", "categorical") else None
        num, codes, bad = columnarize(features, self.schema)
        if kind == "numeric":
            bad |= bad_numeric_predictions(prediction)
        elif kind == "mixed":
            self.mixed_features.append("prediction")
        if self.mixed_features:
            log.warning("model %r: %s hold both numbers and strings in the reference (neither reaches %d %%), "
                        "so they are not monitored; list them under numeric_features or categorical_features "
                        "(or ignore_features)", self.name, ", ".join(self.mixed_features), round(TYPE_SHARE * 100))
        return num, codes, bad

    def _fit_reference(self, num: np.ndarray, codes: np.ndarray, prediction: Sequence[Any]) -> None:
        """Fit the references on the reference events' columns (all of the right type)."""
        cfg = self.settings
        self.num_ref = NumericReference.fit(num, n_bins=cfg.drift.psi_bins)
        self.cat_ref = CategoricalReference.fit(codes, [len(v) for v in self.schema.vocabularies])
        self.cat_counts = bucket_counts(codes, self.cat_ref.n_categories + 1)
        self.ref_missing = {n: float(np.mean(~np.isfinite(num[:, j]))) if len(num) else 0.0
                            for j, n in enumerate(self.schema.numeric)}
        self.ref_missing.update({n: float(np.mean(codes[:, j] < 0)) if len(codes) else 0.0
                                 for j, n in enumerate(self.schema.categorical)})
        preds = [p for p in prediction if p is not None]
        self.pred_ref, self.pred_counts = None, None
        if self.pred_kind == "numeric":
            self.pred_ref = NumericReference.fit(np.array(preds, dtype=np.float64)[:, None], n_bins=cfg.drift.psi_bins)
        elif self.pred_kind == "categorical":
            codes_p = self.pred_encoder.codes(preds)[:, None].astype(np.int64)
            self.pred_ref = CategoricalReference.fit(codes_p, [len(self.pred_encoder.vocab)])
            self.pred_counts = bucket_counts(codes_p, self.pred_ref.n_categories + 1)
            self._pred_categories = len(self.pred_encoder.vocab)

    def _build_reference(self, features: Sequence[dict[str, Any]], prediction: Sequence[Any]) -> None:
        """A reference from a file: its events of the wrong type are left out."""
        num, codes, bad = self._infer_schema(features, prediction)
        good = ~bad
        self._fit_reference(num[good], codes[good], [p for p, g in zip(prediction, good.tolist()) if g])

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
        cols = p.columns
        if cols is not None:  # decoded where the batch was decoded, with this schema
            if start or cols.fingerprint != self.schema.fingerprint():
                raise RuntimeError(f"model {self.name!r}: a batch's columns were decoded with another schema")
            num, codes, bad, bad_sources = cols.numeric, cols.codes, cols.bad, cols.bad_sources
        else:
            raws = p.features[start:] if start else p.features
            num, codes, bad = columnarize_raw(raws, self.schema)
            if self.pred_kind == "numeric":
                bad = bad | bad_numeric_predictions(p.prediction[start:])
            bad_sources = [p.sources[start + i] for i in np.flatnonzero(bad).tolist()]
        ids, versions, ts = p.ids[start:], p.versions[start:], p.ts[start:]
        prediction, scores, latency = p.prediction[start:], p.scores[start:], p.latency_ms[start:]
        if bad_sources:  # dead-lettered: no index, no join, no count
            for src in bad_sources:
                result.dead_letters.append(dead_letter(src, "wrong_type", _WRONG_TYPE))
            keep = np.flatnonzero(~bad).tolist()
            ids, versions, ts, prediction, scores, latency = (
                [col[i] for i in keep] for col in (ids, versions, ts, prediction, scores, latency))
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
        rows = np.empty((len(index), _FIXED + num.shape[1] + codes.shape[1]), dtype=np.float64)
        rows[:, _IDX] = index
        rows[:, _TS] = ts
        rows[:, _LAT] = latency
        rows[:, _PRED] = self._prediction_column(prediction)
        rows[:, _FIXED:_FIXED + num.shape[1]] = num
        rows[:, _FIXED + num.shape[1]:] = codes
        if only is not None:  # one version: no split
            result.alarms.extend(self._version(only).add(rows))
            return
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
        for b, is_bad in zip(buffered, bad.tolist()):
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
            codes = np.array([self.pred_encoder.vocab.get(str(_canonical_label(v)), k) if v is not None else -1
                              for v in values], dtype=np.float64)
            return codes
        return np.full(len(values), np.nan)

    def _version(self, version: str) -> VersionMonitor:
        vm = self.versions.get(version)
        if vm is None:
            if len(self.versions) >= MAX_VERSIONS:
                oldest = min(self.versions.values(), key=lambda v: v.last_ts or -math.inf)
                del self.versions[oldest.version]
                self.regression.pop(oldest.version, None)
                self.regression_start.pop(oldest.version, None)
                self.regressed.discard(oldest.version)
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
        rows[:, _L_IDX] = index
        rows[:, _L_TS] = lab.ts
        if self.task == "regression":
            rows[:, _L_TRUE] = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.labels])
            rows[:, _L_PRED] = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.prediction])
            rows[:, _L_SCORE] = np.nan
            rows[:, _L_ERR] = np.abs(rows[:, _L_TRUE] - rows[:, _L_PRED])
        elif self.task == "binary_score":
            rows[:, _L_TRUE] = [float(_canonical_label(v) == 1) for v in lab.labels]
            score = np.array([float(v) if isinstance(v, (int, float)) else np.nan for v in lab.prediction])
            rows[:, _L_SCORE] = score
            rows[:, _L_PRED] = (score >= 0.5).astype(np.float64)
            rows[:, _L_ERR] = rows[:, _L_PRED] != rows[:, _L_TRUE]
        else:
            rows[:, _L_TRUE] = self.label_encoder.codes(lab.labels)
            rows[:, _L_PRED] = self.label_encoder.codes(lab.prediction)
            pos = str(self._positive_key())
            rows[:, _L_SCORE] = [s.get(pos, np.nan) if isinstance(s, dict) else np.nan for s in lab.scores]
            rows[:, _L_ERR] = rows[:, _L_PRED] != rows[:, _L_TRUE]
            rows[:, _L_SCORES:] = np.nan
            self._class_scores(lab.scores, rows[:, _L_SCORES:])
            self.positive_code = self._positive_code()
        valid = np.isfinite(rows[:, _L_ERR])
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
                    c = vocab.get(str(_canonical_label(cls)))
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
        return 1 if pos is None else _canonical_label(pos)

    def _infer_task(self, lab: Labelled) -> None:
        labels = [_canonical_label(v) for v in lab.labels]
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
        """Each newer version's labelled errors against the stable version's, in one
        mixture SPRT per newer version. The stable side is its labels of predictions
        made since the newer version's first prediction (the same traffic period), fed
        in join order whatever the batches' cuts, so a replay and a Kafka run agree."""
        cfg = self.settings.regression
        stable = self.stable_version()
        if not cfg.enabled or stable is None or len(self.version_first) < 2:
            return
        is_stable = versions == stable
        index = rows[:, _L_IDX]
        for canary, since in list(self.version_first.items()):
            if canary == stable or canary in self.regressed:
                continue  # a version found worse is reported once: a rollback is due, not a stream of alarms
            is_canary = versions == canary
            sel = is_canary | (is_stable & (index >= since))
            if not sel.any():
                continue
            test = self.regression.get(canary)
            if test is None:
                test = self.regression[canary] = TwoSampleMSPRT(alpha=cfg.alpha, tau=cfg.tau, min_samples=cfg.min_samples)
            sub = rows[sel]
            found = test.update(sub[:, _L_ERR], is_canary[sel])
            start = self.regression_start[canary] = min(self.regression_start.get(canary, math.inf),
                                                        float(sub[:, _L_IDX].min()))
            for i, diff in zip(found.alarms.tolist()[:1], found.alarm_diffs.tolist()[:1]):
                self.regressed.add(canary)
                # statistic: how much higher the canary's error is; p-value <= alpha by construction
                result.alarms.append(self._version(canary)._alarm(
                    "regression", "msprt", "error_rate", diff, cfg.alpha, None,
                    int(min(start, sub[: i + 1, _L_IDX].min())), int(sub[i, _L_IDX]), float(sub[i, _L_TS])))

    # -- views and state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
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
            "regression": {name: t.state_dict() for name, t in self.regression.items()},
            "regression_start": dict(self.regression_start),
            "version_first": dict(self.version_first),
            "latency_baseline": self.latency_baseline,
            "regressed": sorted(self.regressed),
            "dropped_features": self.dropped_features,
        }

    @classmethod
    def from_state(cls, name: str, settings: ModelSettings, s: dict[str, Any]) -> "ModelMonitor":
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
        mm.pred_encoder = _Encoder(s["pred_vocab"])
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
        mm.label_encoder = _Encoder(s["label_vocab"])
        mm.positive_code = float(s["positive_code"])
        mm.regression = {k: TwoSampleMSPRT.from_state(v) for k, v in s["regression"].items()}
        mm.regression_start = {k: float(v) for k, v in s["regression_start"].items()}
        mm.version_first = {k: int(v) for k, v in s["version_first"].items()}
        mm.latency_baseline = s["latency_baseline"]
        mm.regressed = set(s["regressed"])
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


def _adjust(p_values: Sequence[float], correction: str) -> np.ndarray:
    """p-values corrected for testing several features at once (NaN: no test)."""
    p = np.asarray(p_values, dtype=np.float64)
    if correction == "bh" and p.size:
        return benjamini_hochberg(p)
    if correction == "bonferroni" and p.size:
        return bonferroni(p)
    return p


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
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"the checkpoint's engine state has format {state.get('format', 1)!r}, this driftline "
                f"reads format {STATE_FORMAT}: move the checkpoint away to start afresh from the committed "
                "offsets (each model's reference is then rebuilt from the stream)")
        self.models = {}
        for name, s in state["models"].items():
            mm = self.models[name] = ModelMonitor.from_state(name, self.settings.for_model(name), s)
            ref = self._reference(name)
            now = ref.fingerprint if ref is not None else stream_fingerprint(mm.settings)
            if now != mm.reference_fingerprint:
                log.info("model %r: the reference changed since the checkpoint (%s, was %s): applying it",
                         name, _describe(now), _describe(mm.reference_fingerprint))
                mm.replace_reference(ref)


def _describe(fingerprint: str) -> str:
    """A reference fingerprint for a log line (the digest shortened)."""
    kind, _, rest = fingerprint.partition(":")
    if kind == "file":
        path, size, digest = rest.rsplit(":", 2)
        return f"file {path}, {size} events, sha256 {digest[:12]}"
    return f"{kind} {rest}".strip()
