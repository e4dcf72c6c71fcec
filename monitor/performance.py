"""The checks of a version's labelled stream: performance, concept drift, label drift.

* performance per labelled window (accuracy, F1, ROC-AUC ... or MAE, RMSE ...) against
  the version's first windows (its baseline);
* concept-drift detectors (DDM, ADWIN, ...) on the stream of errors, with the last
  ``performance.window`` labelled events as an alarm's evidence;
* label drift: each window's labels against the version's first labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from driftline.detectors import ADWIN, DDM, EDDM, FHDDM, HDDMA, HDDMW, KSWIN, PageHinkley
from driftline.detectors.homogeneity import bucket_counts, chi2_homogeneity
from driftline.detectors.metrics import classification_metrics, multiclass_metrics, regression_metrics
from driftline.detectors.statistics import NumericReference, numeric_drift
from driftline.monitor.alarms import Alarm, AlarmFactory, ConceptDetector, DriftStatistic, PerformanceMetric
from driftline.monitor.config import DriftSettings, PerformanceSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import (
    CLASS_RECALLS,
    L_ERR,
    L_IDX,
    L_PRED,
    L_SCORE,
    L_SCORES,
    L_TRUE,
    L_TS,
    SCORED_CLASSES,
)

__all__ = [
    "CONCEPT_DETECTORS",
    "concept_detector",
    "concept_detectors",
    "concept_alarms",
    "window_performance",
    "performance_alarm",
    "label_drift",
]

CONCEPT_DETECTORS: dict[ConceptDetector, Any] = {
    "ddm": DDM,
    "eddm": EDDM,
    "fhddm": FHDDM,
    "hddm_a": HDDMA,
    "hddm_w": HDDMW,
    "adwin": ADWIN,
    "page_hinkley": PageHinkley,
    "kswin": KSWIN,
}
"""Concept-drift detectors by their config name (``performance.concept_detectors``)."""

_BINARY_ONLY: frozenset[ConceptDetector] = frozenset({"ddm", "eddm", "fhddm"})
"""Detectors of 0/1 errors, left out for a regression model."""


def concept_detector(name: ConceptDetector, params: Mapping[str, Any]) -> Any:
    """A concept-drift detector by its config name, with river's parameter names."""
    return CONCEPT_DETECTORS[name](**params)


def concept_detectors(perf: PerformanceSettings, task: str | None) -> dict[ConceptDetector, Any]:
    """The configured detectors that apply to the model's task."""
    return {
        name: concept_detector(name, dict(perf.detector_params.get(name, {})))
        for name in perf.concept_detectors
        if not (task == "regression" and name in _BINARY_ONLY)
    }


def concept_alarms(
    detectors: Mapping[ConceptDetector, Any],
    recent: np.ndarray,
    rows: np.ndarray,
    window: int,
    task: str | None,
    alarm: AlarmFactory,
) -> tuple[list[Alarm], np.ndarray]:
    """Feed the labelled rows' errors to every detector.

    ``recent`` holds (index, error) of the labelled events before ``rows`` (at most
    ``window``); an alarm's evidence is the last ``window`` labelled events up to the
    change, whatever the batch cuts. Returns the alarms and the new ``recent``.
    """
    alarms = []
    err = rows[:, L_ERR]
    recent = np.concatenate([recent, rows[:, [L_IDX, L_ERR]]])
    offset = len(recent) - len(rows)
    for name, det in detectors.items():
        found = det.update(err)
        for i in np.asarray(found.drifts, dtype=np.int64).tolist():
            ev = recent[max(0, offset + i - window + 1) : offset + i + 1]
            alarms.append(
                alarm(
                    "concept_drift",
                    name,
                    "error_rate" if task != "regression" else "abs_error",
                    float(ev[:, 1].mean()),
                    None,
                    None,
                    int(ev[0, 0]),
                    int(ev[-1, 0]),
                    float(rows[i, L_TS]),
                )
            )
    return alarms, recent[-window:].copy()


def window_performance(
    w: np.ndarray, task: str | None, positive_code: float, classes: Mapping[str, int]
) -> tuple[dict[str, float], dict[str, float] | None]:
    """A labelled window's metrics, and (multi-class; None otherwise) the recall of its
    most frequent classes by class name; ``classes`` is the model's label vocabulary
    (name -> code)."""
    if task == "regression":
        metrics = regression_metrics(w[:, L_TRUE], w[:, L_PRED])
    else:
        score = w[:, L_SCORE]
        metrics = classification_metrics(
            w[:, L_TRUE], w[:, L_PRED], score if np.isfinite(score).all() else None, positive=positive_code
        )
    performance = {k: float(v) for k, v in metrics.items()}
    class_recall: dict[str, float] | None = None
    if task == "classification" and len(classes) > 2:
        extra, class_recall = _multiclass(w, classes)
        performance.update(extra)
    return performance, class_recall


def _multiclass(w: np.ndarray, classes: Mapping[str, int]) -> tuple[dict[str, float], dict[str, float]]:
    """Macro and micro averages, one-vs-rest ROC-AUC (when every class has a score
    column) and the recall of the most frequent classes, for a multi-class window."""
    n_classes = len(classes)
    scores = w[:, L_SCORES : L_SCORES + n_classes] if n_classes <= SCORED_CLASSES else None
    if scores is not None and not np.isfinite(scores).any():
        scores = None
    r = multiclass_metrics(w[:, L_TRUE], w[:, L_PRED], scores, n_classes=n_classes, max_classes=CLASS_RECALLS)
    names = {code: name for name, code in classes.items()}
    class_recall = {names[int(c)]: float(v) for c, v in r["class_recall"].items()}
    out = {
        f"{metric}_{avg}": float(r[f"{avg}_{metric}"])
        for avg in ("macro", "micro")
        for metric in ("precision", "recall", "f1")
    }
    if scores is not None:
        out["roc_auc_ovr"] = float(r["roc_auc"])
    return out, class_recall


def performance_alarm(
    performance: Mapping[str, float],
    task: str | None,
    baseline: dict[str, list[float]],
    perf: PerformanceSettings,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
) -> list[Alarm]:
    """Accuracy (MAE for regression) against the version's baseline, the mean of its
    first ``baseline_windows`` windows (collected here, in ``baseline``): an alarm when
    it falls by more than ``max_drop`` (MAE: rises by more than that share)."""
    key: PerformanceMetric
    worse: Callable[[float, float], bool]
    limit: Callable[[float], float]
    if task == "regression":
        key, worse = "mae", lambda now, base: now > base * (1 + perf.max_drop)
        limit = lambda base: base * (1 + perf.max_drop)  # noqa: E731
    else:
        key, worse = "accuracy", lambda now, base: now < base - perf.max_drop
        limit = lambda base: base - perf.max_drop  # noqa: E731
    hist = baseline.setdefault(key, [])
    if len(hist) < perf.baseline_windows:
        hist.append(float(performance[key]))
        return []
    base = float(np.mean(hist))
    now = float(performance[key])
    if states.edge(f"performance:{key}", bool(worse(now, base))):
        return [alarm("performance", key, key, now, limit(base), None, first, last, ts)]
    return []


def label_drift(
    w: np.ndarray,
    label_baseline: np.ndarray | None,
    size: int,
    task: str | None,
    cfg: DriftSettings,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
) -> tuple[np.ndarray, list[Alarm]]:
    """Label distribution of this window against the version's first ``size`` labels
    (as many as the feature reference holds, so that the baseline's own noise is
    small; collected here). Returns the baseline and the alarms."""
    labels = w[:, L_TRUE]
    if label_baseline is None or len(label_baseline) < size:
        prev = label_baseline if label_baseline is not None else np.empty(0)
        return np.concatenate([prev, labels])[:size], []
    det: DriftStatistic
    if task == "regression":
        ref = NumericReference.fit(label_baseline[:, None], n_bins=cfg.psi_bins)
        r = numeric_drift(ref, labels[:, None])
        stat, p = float(r.ks_statistic[0]), float(r.ks_p_value[0])
        det = "ks"
    else:
        k = np.array([int(max(labels.max(), label_baseline.max())) + 1])
        base = bucket_counts(label_baseline[:, None].astype(np.int64), k)
        now = bucket_counts(labels[:, None].astype(np.int64), k)
        _, p_arr = chi2_homogeneity(base, now)
        stat = 0.5 * float(np.abs(base[0] / base.sum() - now[0] / now.sum()).sum())  # total variation
        p = float(p_arr[0])
        det = "chi2"
    hit = p < cfg.alpha and stat >= cfg.min_effect
    if states.edge("label_drift", hit):
        return label_baseline, [alarm("prediction_drift", det, "label", stat, cfg.alpha, p, first, last, ts)]
    return label_baseline, []
