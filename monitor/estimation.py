"""Label-free performance estimation of a version's traffic, before its labels arrive.

One :class:`VersionEstimation` per (model, version) wraps the estimators of
:mod:`driftline.detectors.estimation` for the engine:

* **Calibration, once.** Labels arrive late, so the labelled reference is collected as
  it joins: the version's labelled events whose prediction lies in the version's
  *reference window* (its first ``reference.size`` prediction events, counted from its
  first event; with a stream reference, the first version's reference window is the
  model's). Once ``performance.estimation.min_reference_labels`` of them have joined,
  the estimator is fitted on them and never changes (a later label of the reference
  window is not used). Until then the version waits (gauge 0); a reference whose
  labelled events hold a single class turns estimation off for the version (logged
  once, gauge 0).
* **Estimates.** From the fit on, each version's prediction events fill tumbling windows
  of ``performance.window`` events; only what the estimator reads is kept (the score of
  a binary scorer, the class scores of a classifier that sends ``scores``, the
  prediction of a regression model). A completed window is estimated and its
  ``performance_estimated`` alarm is edge-triggered (:mod:`~driftline.monitor.edges`):
  it fires when the whole confidence band of a configured metric falls below the
  reference's value minus ``margin``, once per episode.
* **Realized beside estimated.** Each labelled window (``performance.window`` labelled
  events) is estimated from its scores and measured against its labels by the same
  definitions: the realized metric and the estimation error (estimate - realized).

Which estimator, by the model's task (see the engine's task inference):

* ``binary_score`` (the prediction is the positive class's score, labels 0/1): CBPE on
  that score, a positive prediction at score >= 0.5 (as the engine counts errors);
* ``classification`` with ``scores`` objects: CBPE on the class-score matrix in the
  label encoder's code order, up to :data:`~driftline.monitor.encoding.SCORED_CLASSES`
  classes, the predicted class being the argmax of the scores; precision, recall, F1
  and ROC-AUC are macro averages. Without ``scores`` nothing is estimated;
* ``regression``: :class:`~driftline.detectors.estimation.RegressionErrorEstimator`
  (expected absolute error per prediction bin, the simple documented stand-in for
  direct loss estimation); it alarms when the band's low end exceeds the reference's
  MAE times ``1 + margin``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from driftline.detectors.estimation import (
    PerformanceEstimator,
    RegressionErrorEstimator,
)
from driftline.detectors.windows import TumblingWindow
from driftline.monitor.alarms import Alarm, AlarmFactory, EstimationMethod
from driftline.monitor.config import ModelSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import (
    IDX,
    L_IDX,
    L_PRED,
    L_SCORE,
    L_SCORES,
    L_TRUE,
    PRED,
    SCORED_CLASSES,
    TS,
)
from driftline.monitor.snapshot import EstimationSnapshot

__all__ = ["KINDS", "VersionEstimation", "class_score_matrix"]

log = logging.getLogger(__name__)

Kind = Literal["binary", "multiclass", "regression"]
KINDS: dict[str, Kind] = {"binary_score": "binary", "classification": "multiclass", "regression": "regression"}
"""The estimator kind of each engine task."""
Status = Literal["waiting", "active", "off"]

# a window row: [index, ts, values...]; a calibration row: [label, values...]
_W_VALUES = 2
_ONE_VALUE = np.array([IDX, TS, PRED])
"""The prediction rows' columns of a window row that holds one value (the score, the prediction)."""


def class_score_matrix(scores: Sequence[Any], vocab: Mapping[str, int]) -> np.ndarray:
    """Each event's ``scores`` object as a row, column c for class code c of ``vocab``
    (the label encoder's), for the codes below :data:`SCORED_CLASSES`; NaN where a
    class has no score.

    Notes
    -----
    A ``scores`` key is a JSON object key, hence a string, which is its class's key in
    the encoder (``str(canonical_label(key))`` is the key itself); the rows are built
    by dict lookups per coded class rather than per score entry (the hot path of a
    multi-class version).
    """
    n = min(len(vocab), SCORED_CLASSES)
    keys: list[str] = [""] * n
    for key, code in vocab.items():
        if code < n:
            keys[code] = key
    nan = math.nan
    missing = [nan] * n
    rows = [[s.get(k, nan) for k in keys] if isinstance(s, dict) else missing for s in scores]
    return np.array(rows, dtype=np.float64).reshape(len(scores), n)


class VersionEstimation:
    """Label-free performance estimation of one (model, version) (see the module's
    docstring for when it calibrates and what it keeps).

    Parameters
    ----------
    settings
        The model's settings (``performance.estimation``, ``performance.window``,
        ``reference.size``).
    name
        What log lines call the version (``model 'fraud' version 'v7'``).
    """

    def __init__(self, settings: ModelSettings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.status: Status = "waiting"
        self.kind: Kind | None = None
        self.n_classes = 0
        self.reference_end: int | None = None  # index of the version's last reference-window prediction
        self.calibration = np.empty((0, 0))  # labelled reference rows [label, values...], at most min_reference_labels
        self.estimator: PerformanceEstimator | RegressionErrorEstimator | None = None
        self.window: TumblingWindow | None = None
        self.windowed = 0  # rows pushed into the windows
        self.estimated: dict[str, tuple[float, float, float]] = {}
        self.realized: dict[str, float] = {}
        self.error: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.performance.estimation.enabled

    @property
    def wants_class_scores(self) -> bool:
        """Whether prediction batches must bring the class-score matrix (a calibrated
        multi-class version)."""
        return self.enabled and self.status == "active" and self.kind == "multiclass"

    @property
    def method(self) -> EstimationMethod:
        return "error_bins" if self.kind == "regression" else "cbpe"

    # -- prediction events ---------------------------------------------------------------
    def predictions(
        self,
        rows: np.ndarray,
        class_scores: np.ndarray | None,
        version_total: int,
        states: AlarmStates,
        alarm: AlarmFactory,
    ) -> list[Alarm]:
        """Take a batch of the version's monitored prediction rows (engine layout) and,
        for a multi-class version, their class scores (:func:`class_score_matrix`);
        ``version_total`` counts the version's prediction events up to the batch's
        last one. Returns the alarms of the windows the batch completes."""
        if self.reference_end is None and len(rows):
            # the version's reference window ends at its reference.size-th event; events of
            # a stream reference never reach here, so an end already passed is just before
            k = self.settings.reference.size - 1 - (version_total - len(rows))
            if k < 0:
                self.reference_end = int(rows[0, IDX]) - 1
            elif k < len(rows):
                self.reference_end = int(rows[k, IDX])
        if not self.enabled or self.status != "active" or not len(rows):
            return []
        if self.kind == "multiclass":
            if class_scores is None or class_scores.shape[1] < self.n_classes:
                return []
            values = class_scores[:, : self.n_classes]
            block = np.empty((len(rows), _W_VALUES + values.shape[1]))
            block[:, 0], block[:, 1], block[:, _W_VALUES:] = rows[:, IDX], rows[:, TS], values
        else:
            block = rows[:, _ONE_VALUE]  # one take, a copy: [index, ts, prediction]
        if self.window is None:
            self.window = TumblingWindow(self.settings.performance.window, block.shape[1])
        alarms: list[Alarm] = []
        for w, _, _ in self.window.extend(block, self.windowed):
            alarms.extend(self._on_window(w, states, alarm))
        self.windowed += len(block)
        return alarms

    def _on_window(self, w: np.ndarray, states: AlarmStates, alarm: AlarmFactory) -> list[Alarm]:
        cfg = self.settings.performance.estimation
        first, last, ts = int(w[0, 0]), int(w[-1, 0]), float(w[-1, 1])
        x = w[:, _W_VALUES:]
        checks: list[tuple[str, float, bool, float]] = []
        if isinstance(self.estimator, RegressionErrorEstimator):
            err = self.estimator.estimate(x[:, 0])
            self.estimated = {"mae": err.mae.as_tuple(), "rmse": err.rmse.as_tuple()}
            limit = self.estimator.reference.mae.value * (1 + cfg.margin)
            checks.append(("mae", err.mae.value, bool(err.mae.low > limit), limit))
        else:
            assert self.estimator is not None  # active
            est = self.estimator.estimate(x[:, 0] if self.kind == "binary" else x)
            ref = self.estimator.reference
            self.estimated = est.as_dict()
            for metric in cfg.metrics:
                checks.append(
                    (
                        metric,
                        getattr(est, metric).value,
                        est.below(ref, cfg.margin, metric),
                        getattr(ref, metric).value - cfg.margin,
                    )
                )
        alarms = []
        for metric_name, value, hit, limit in checks:
            if states.edge(f"performance_estimated:{metric_name}", hit):
                alarms.append(
                    alarm("performance_estimated", self.method, metric_name, value, limit, None, first, last, ts)
                )
        return alarms

    # -- labelled events -----------------------------------------------------------------
    def labelled(self, rows: np.ndarray, task: str | None, classes: int) -> None:
        """Collect the labelled reference (labelled rows, engine layout) until it is
        large enough, then calibrate; ``classes`` is the size of the model's label
        vocabulary."""
        if not self.enabled or self.status != "waiting" or task not in KINDS or not len(rows):
            return
        self.kind = KINDS[task]
        values = self._labelled_values(rows, SCORED_CLASSES)
        keep = np.isfinite(values).any(axis=1) & np.isfinite(rows[:, L_TRUE])
        if self.reference_end is not None:
            keep &= rows[:, L_IDX] <= self.reference_end
        if not keep.any():
            return
        new = np.column_stack([rows[keep, L_TRUE], values[keep]])
        need = self.settings.performance.estimation.min_reference_labels
        held = self.calibration if len(self.calibration) else np.empty((0, new.shape[1]))
        self.calibration = np.concatenate([held, new])[:need]  # bounded: never more than need rows
        if len(self.calibration) >= need:
            self._fit(classes)

    def _labelled_values(self, rows: np.ndarray, n_classes: int) -> np.ndarray:
        if self.kind == "regression":
            return rows[:, [L_PRED]]
        if self.kind == "binary":
            return rows[:, [L_SCORE]]
        return rows[:, L_SCORES : L_SCORES + n_classes]

    def _fit(self, classes: int) -> None:
        cfg = self.settings.performance.estimation
        cal, self.calibration = self.calibration, np.empty((0, 0))
        labels = cal[:, 0]
        try:
            if self.kind == "regression":
                self.estimator = RegressionErrorEstimator(confidence=cfg.confidence).fit(cal[:, 1], labels)
            elif self.kind == "binary":
                self.estimator = PerformanceEstimator(threshold=0.5, confidence=cfg.confidence).fit(cal[:, 1], labels)
            else:
                self.n_classes = min(max(classes, 2), SCORED_CLASSES)
                self.estimator = PerformanceEstimator(confidence=cfg.confidence).fit(
                    cal[:, 1 : 1 + self.n_classes], labels
                )
        except ValueError as exc:
            self.status, self.estimator = "off", None
            log.warning(
                "%s: performance estimation is off for this version: %s (it needs scores and both outcomes "
                "among the labelled events of its reference window)",
                self.name,
                exc,
            )
            return
        self.status = "active"
        log.info("%s: performance estimation calibrated on %d labelled reference events", self.name, len(cal))

    def labelled_window(self, w: np.ndarray) -> None:
        """A completed labelled window: its estimate and its realized metrics on the same
        rows, and their difference."""
        if not self.enabled or self.status != "active" or self.estimator is None:
            return
        if isinstance(self.estimator, RegressionErrorEstimator):
            pred, target = w[:, L_PRED], w[:, L_TRUE]
            ok = np.isfinite(pred) & np.isfinite(target)
            if not ok.any():
                return
            est = self.estimator.estimate(pred[ok])
            err = target[ok] - pred[ok]
            realized = {"mae": float(np.abs(err).mean()), "rmse": math.sqrt(float(np.mean(err**2)))}
            estimated = {"mae": est.mae.value, "rmse": est.rmse.value}
        else:
            x = self._labelled_values(w, self.n_classes)
            x = x[:, 0] if self.kind == "binary" else x
            estimated = {m: v[0] for m, v in self.estimator.estimate(x).as_dict().items()}
            realized = {m: v[0] for m, v in self.estimator.realized(x, w[:, L_TRUE]).as_dict().items()}
        self.realized = {m: v for m, v in realized.items() if math.isfinite(v)}
        self.error = {m: estimated[m] - v for m, v in self.realized.items() if math.isfinite(estimated[m])}

    # -- views and state -----------------------------------------------------------------
    def snapshot(self) -> EstimationSnapshot | None:
        """None where estimation does not apply: off by config, or nothing with scores
        joined yet (a classifier without scores never gets one)."""
        if not self.enabled or (self.status == "waiting" and not len(self.calibration)):
            return None
        estimated = {m: v for m, v in self.estimated.items() if math.isfinite(v[0])}
        return EstimationSnapshot(self.status == "active", estimated, dict(self.realized), dict(self.error))

    def state_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "kind": self.kind,
            "n_classes": self.n_classes,
            "reference_end": self.reference_end,
            "calibration": self.calibration,
            "estimator": None if self.estimator is None else self.estimator.state_dict(),
            "window": None if self.window is None else self.window.state_dict(),
            "windowed": self.windowed,
            "estimated": {m: list(v) for m, v in self.estimated.items()},
            "realized": dict(self.realized),
            "error": dict(self.error),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.status, self.kind, self.n_classes = s["status"], s["kind"], int(s["n_classes"])
        self.reference_end = None if s["reference_end"] is None else int(s["reference_end"])
        cal = np.asarray(s["calibration"], dtype=np.float64)
        self.calibration = cal if cal.ndim == 2 else np.empty((0, 0))
        est = s["estimator"]
        if est is None:
            self.estimator = None
        elif self.kind == "regression":
            self.estimator = RegressionErrorEstimator.from_state(est)
        else:
            self.estimator = PerformanceEstimator.from_state(est)
        self.window = None if s["window"] is None else TumblingWindow.from_state(s["window"])
        self.windowed = int(s["windowed"])
        self.estimated = {m: (float(v[0]), float(v[1]), float(v[2])) for m, v in s["estimated"].items()}
        self.realized = {m: float(v) for m, v in s["realized"].items()}
        self.error = {m: float(v) for m, v in s["error"].items()}
