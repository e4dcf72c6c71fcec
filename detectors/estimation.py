"""Label-free performance estimation: a model's accuracy, precision, recall, F1 and
ROC-AUC on a window of predictions whose labels have not arrived yet.

Confidence-based performance estimation (CBPE, as in NannyML): a classifier's scores are
calibrated on the labelled reference (isotonic regression, :class:`IsotonicCalibrator`),
and the calibrated probability that each prediction is right fills an *expected*
confusion matrix for the window, from which every metric follows
(:func:`expected_binary_metrics`, :func:`expected_multiclass_metrics`).
:class:`PerformanceEstimator` packs the calibration, the reference's realized metrics
and the per-window estimate for one model version. :class:`RegressionErrorEstimator`
is the documented simpler method for regression (expected absolute error per
prediction bin).

Assumptions: the calibrated scores are probabilities on the monitored traffic too,
i.e. P(y | x) is what it was on the reference (covariate shift is fine, concept drift
is invisible) and the shift does not lead into regions the reference never covered.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> p = rng.uniform(size=5000)                  # perfectly calibrated scores
>>> y = (rng.uniform(size=5000) < p).astype(int)
>>> est = PerformanceEstimator().fit(p, y)
>>> window = rng.uniform(0.3, 0.7, size=1000)   # less confident traffic: accuracy falls
>>> e = est.estimate(window)
>>> round(est.reference.accuracy.value, 2), round(e.accuracy.value, 2)
(0.75, 0.6)
>>> e.below(est.reference, margin=0.1)          # the whole band under 0.75 - 0.1
True

References
----------
NannyML, "Confidence-based Performance Estimation (CBPE)",
https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html

Zadrozny, B. and Elkan, C. (2002). Transforming classifier scores into accurate
multiclass probability estimates. KDD '02.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "Band",
    "ErrorEstimate",
    "IsotonicCalibrator",
    "METRICS",
    "PerformanceEstimate",
    "PerformanceEstimator",
    "RegressionErrorEstimator",
    "expected_binary_metrics",
    "expected_multiclass_metrics",
    "isotonic_fit",
]

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
"""The classification metrics estimated, in the order of :class:`PerformanceEstimate`'s fields."""

_NAN = float("nan")


# ---- isotonic regression ---------------------------------------------------------------
def isotonic_fit(values: Any, weights: Any = None) -> np.ndarray:
    """Least-squares non-decreasing fit of a sequence (pool adjacent violators).

    Parameters
    ----------
    values
        1-D array of finite reals, in the order the fit must be non-decreasing in.
    weights
        Optional 1-D array of positive weights of the same length (default: ones).

    Returns
    -------
    numpy.ndarray
        float64 array of the fitted values, same length; the caller's arrays are not
        written to.

    Notes
    -----
    Each pass pools every maximal run of adjacent blocks whose means do not increase
    (``mean[i] >= mean[i + 1]``) into one block, with ``np.add.reduceat``. Pooling a
    non-increasing run is a sequence of adjacent-violator merges (the pooled mean of two
    violators stays at or above the next one), so the result is PAV's unique solution
    (Barlow et al., 1972). A pass is O(blocks); the number of passes is the depth of
    nested violations: a few dozen on calibration data, n in a contrived worst case
    (an increasing ramp followed by one value below all of it). Pooling equal means too
    leaves strictly increasing blocks. An empty input gives an empty result.

    Examples
    --------
    >>> isotonic_fit([1.0, 3.0, 2.0, 4.0]).tolist()
    [1.0, 2.5, 2.5, 4.0]
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"values must be a 1-D array, got shape {y.shape}")
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != y.shape:
        raise ValueError(f"weights must have the shape of values {y.shape}, got {w.shape}")
    if not (np.isfinite(y).all() and np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("values must be finite and weights finite and > 0; drop the other rows first")
    n = y.size
    if n == 0:
        return np.empty(0)
    sums, totals, starts = y * w, w.copy(), np.arange(n)
    while sums.size > 1:
        means = sums / totals
        joins = means[:-1] >= means[1:]
        if not joins.any():
            break
        first = np.ones(sums.size, dtype=bool)
        first[1:] = ~joins  # a block starts a new pool unless it joins its left neighbour
        heads = np.flatnonzero(first)
        sums, totals, starts = np.add.reduceat(sums, heads), np.add.reduceat(totals, heads), starts[heads]
    return np.repeat(sums / totals, np.diff(np.append(starts, n)))


@dataclass(frozen=True, eq=False)
class IsotonicCalibrator:
    """Scores to probabilities: isotonic regression of the labels on the scores.

    Build it with :meth:`fit` on the labelled reference; rebuild a saved one with
    :meth:`from_state`. The state is the fitted curve's knots: the first and the last
    distinct score of each constant piece, with its value.

    Attributes
    ----------
    knots_x
        Ascending float64 scores (read-only).
    knots_y
        Non-decreasing float64 probabilities in [0, 1] at ``knots_x`` (read-only).

    Notes
    -----
    As scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``, which NannyML's CBPE
    uses: tied scores are pooled first (one point per distinct score, weighted by its
    count), the calibrated value between two knots is interpolated linearly, and scores
    outside the reference's range take the end values. A reference with a single class
    gives a constant curve (0 or 1); constant reference scores give the reference's
    positive share everywhere. A non-finite score calibrates to NaN.

    Examples
    --------
    >>> cal = IsotonicCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    >>> cal.calibrate([0.0, 0.25, 1.0]).tolist()
    [0.0, 0.5, 1.0]
    """

    knots_x: np.ndarray
    knots_y: np.ndarray

    def __post_init__(self) -> None:
        x = np.array(self.knots_x, dtype=np.float64)
        y = np.array(self.knots_y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(
                f"knots_x and knots_y must be non-empty 1-D arrays of one length, got {x.shape}, {y.shape}"
            )
        if not (np.isfinite(x).all() and (np.diff(x) > 0).all()):
            raise ValueError("knots_x must be finite and strictly increasing")
        if not (np.isfinite(y).all() and (np.diff(y) >= 0).all() and y[0] >= 0 and y[-1] <= 1):
            raise ValueError("knots_y must be non-decreasing probabilities in [0, 1]")
        x.setflags(write=False)
        y.setflags(write=False)
        object.__setattr__(self, "knots_x", x)
        object.__setattr__(self, "knots_y", y)

    @classmethod
    def fit(cls, scores: Any, labels: Any) -> IsotonicCalibrator:
        """Fit on a labelled sample.

        Parameters
        ----------
        scores
            1-D array of real scores (any scale: only their order matters).
        labels
            1-D array of 0/1 (or booleans), same length; rows where either is
            non-finite are skipped.

        Raises
        ------
        ValueError
            If no row has a finite score and a finite label, or a label is not 0 or 1.
        """
        x = _vector("scores", scores)
        y = _vector("labels", labels)
        if x.shape != y.shape:
            raise ValueError(f"labels must have the shape of scores {x.shape}, got {y.shape}")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size == 0:
            raise ValueError("no row has both a finite score and a finite label; the calibration needs labelled rows")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1 (one-vs-rest: 1 for the class being calibrated)")
        distinct, inverse = np.unique(x, return_inverse=True)
        counts = np.bincount(inverse).astype(np.float64)
        fitted = isotonic_fit(np.bincount(inverse, weights=y) / counts, counts)
        keep = np.ones(distinct.size, dtype=bool)
        changes = fitted[1:] != fitted[:-1]
        keep[1:-1] = changes[:-1] | changes[1:]  # interior points of a flat piece add nothing
        return cls(distinct[keep], np.clip(fitted[keep], 0.0, 1.0))

    def calibrate(self, scores: Any) -> np.ndarray:
        """Probabilities for scores (float64, the input's shape; NaN for a non-finite score)."""
        x = np.asarray(scores, dtype=np.float64)
        finite = np.isfinite(x)
        return np.where(finite, np.interp(np.where(finite, x, 0.0), self.knots_x, self.knots_y), np.nan)

    def state_dict(self) -> dict[str, Any]:
        """The knots, as plain lists."""
        return {"knots_x": self.knots_x.tolist(), "knots_y": self.knots_y.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild from :meth:`state_dict`'s output."""
        return cls(np.asarray(state["knots_x"], dtype=np.float64), np.asarray(state["knots_y"], dtype=np.float64))


# ---- results -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Band:
    """A metric's value with the ends of its confidence band (NaN when undefined)."""

    value: float
    low: float
    high: float

    def as_tuple(self) -> tuple[float, float, float]:
        """``(value, low, high)``."""
        return (self.value, self.low, self.high)


_UNDEFINED = Band(_NAN, _NAN, _NAN)


@dataclass(frozen=True)
class PerformanceEstimate:
    """Estimated (or realized) classification metrics of one window.

    Attributes
    ----------
    n
        Rows used.
    skipped
        Rows skipped (a non-finite score, or an unknown label for realized metrics).
    accuracy, precision, recall, f1, roc_auc
        Each a :class:`Band`. Binary: of the positive class. Multi-class: accuracy over
        all rows; the others macro-averaged over the classes where they are defined.
    """

    n: int
    skipped: int
    accuracy: Band
    precision: Band
    recall: Band
    f1: Band
    roc_auc: Band

    def as_dict(self) -> dict[str, tuple[float, float, float]]:
        """``{metric: (value, low, high)}`` for the metrics in :data:`METRICS`."""
        return {name: getattr(self, name).as_tuple() for name in METRICS}

    def below(self, reference: PerformanceEstimate, margin: float, metric: str = "accuracy") -> bool:
        """Whether the whole band of ``metric`` lies below the reference's value minus
        ``margin`` (an absolute drop, as ``performance.max_drop``); False when either is NaN."""
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        high = getattr(self, metric).high
        base = getattr(reference, metric).value
        return bool(high < base - margin)  # NaN compares False


@dataclass(frozen=True)
class ErrorEstimate:
    """Estimated (or realized) regression error of one window: ``mae`` and ``rmse``
    as :class:`Band`, over ``n`` rows (``skipped`` rows had a non-finite value)."""

    n: int
    skipped: int
    mae: Band
    rmse: Band


# ---- expected metrics --------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _z(confidence: float) -> float:
    # cached: a version's estimator asks for the same few confidences at every window
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _band(value: float, variance: float, z: float, low: float = 0.0, high: float = 1.0) -> Band:
    if not math.isfinite(value):
        return _UNDEFINED
    if not math.isfinite(variance):
        return Band(value, _NAN, _NAN)
    half = z * math.sqrt(max(variance, 0.0))
    return Band(value, max(low, value - half), min(high, value + half))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is not positive (broadcasting)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan), dtype=np.float64)


def _expected_auc(p: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """Area under the expected ROC curve of one class, and its gradient in the labels.

    Rows are ranked by ``scores`` (descending, ties grouped), each contributing ``p``
    expected positives and ``1 - p`` expected negatives. The AUC is
    ``f(y) = A(y) / (S (n - S))`` with ``A = sum_ij y_i (1 - y_j) K_ij`` (``K_ij`` = 1 if
    row i ranks above row j, 1/2 on a tie, the row itself included, as in NannyML's
    cumulative sums) and ``S = sum y``; at ``y = p`` its gradient is
    ``(r_i - 1/2 - S - f (n - 2 S)) / (S (n - S))``, ``r_i`` the ascending midrank.
    """
    order = np.argsort(-scores, kind="stable")
    ranked, q = scores[order], p[order]
    heads = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    tp = np.add.reduceat(q, heads)
    size = np.diff(np.concatenate((heads, [q.size])))
    fp = size - tp
    positives, negatives = float(tp.sum()), float(fp.sum())
    gradient = np.full(q.size, np.nan)
    if not (positives > 0 and negatives > 0):
        return _NAN, gradient
    denominator = positives * negatives
    auc = float(np.sum(fp * (np.cumsum(tp) - 0.5 * tp)) / denominator)
    below = q.size - np.cumsum(size)  # rows ranked below each group
    gradient[order] = np.repeat((below + 0.5 * size - positives - auc * (negatives - positives)) / denominator, size)
    return auc, gradient


def _class_metrics(
    p: np.ndarray, positive: np.ndarray, ranking: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Precision, recall, F1 and ROC-AUC of each column (one-vs-rest class), with the
    gradient of each in the row's label (for the delta method).

    ``p`` (n, c) probabilities of the class, ``positive`` (n, c) whether the row is
    predicted as the class, ``ranking`` (n, c) scores that rank rows for ROC-AUC.
    Returns ``{metric: (values (c,), gradients (n, c))}``, NaN where undefined.
    """
    hits = np.where(positive, p, 0.0)
    tp, predicted, actual = hits.sum(axis=0), positive.sum(axis=0).astype(np.float64), p.sum(axis=0)
    flags = positive.astype(np.float64)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, actual)  # TP / (TP + FN)
    f1 = _ratio(2.0 * tp, predicted + actual)  # 2 TP / (2 TP + FP + FN)
    out = {
        "precision": (precision, _ratio(flags, predicted)),
        "recall": (recall, _ratio(flags - recall, actual)),
        "f1": (f1, _ratio(2.0 * flags - f1, predicted + actual)),
    }
    aucs = np.full(p.shape[1], np.nan)
    auc_gradients = np.empty_like(p)
    for k in range(p.shape[1]):  # one sort per class; c is small
        aucs[k], auc_gradients[:, k] = _expected_auc(p[:, k], ranking[:, k])
    out["roc_auc"] = (aucs, auc_gradients)
    return out


def expected_binary_metrics(
    probabilities: Any, predicted: Any, scores: Any = None, confidence: float = 0.95, skipped: int = 0
) -> PerformanceEstimate:
    """Expected metrics of a binary classifier's window from calibrated probabilities.

    Parameters
    ----------
    probabilities
        1-D array: each row's calibrated probability of the positive class. With the
        labels (0/1) in its place, the result is the realized metrics, with zero-width
        bands.
    predicted
        1-D array of booleans (or 0/1): the rows predicted positive.
    scores
        Optional 1-D array ranking the rows for ROC-AUC (the raw scores; default
        ``probabilities``). Isotonic calibration flattens the ranking within each
        step, so NannyML, as this function, ranks by the raw score.
    confidence
        Coverage of the bands, in (0, 1).
    skipped
        Passed through to the result's ``skipped``.

    Returns
    -------
    PerformanceEstimate

    Notes
    -----
    NannyML's CBPE: row j is right with probability ``p_j`` if predicted positive and
    ``1 - p_j`` otherwise; summing gives the expected confusion matrix (TP, FP, FN, TN)
    and accuracy = (TP + TN) / n, precision = TP / (TP + FP), recall = TP / (TP + FN),
    F1 = 2 TP / (2 TP + FP + FN), each a ratio of expected counts. ROC-AUC is the
    area under the expected ROC curve (one point per distinct score, ties grouped
    as in scikit-learn's ``roc_curve``).

    Bands: given the window's scores, the realized metric is a function of n
    independent Bernoulli labels with the calibrated probabilities. The band is the
    normal approximation of its distribution around the estimate, with the variance of
    the first-order (delta-method) expansion in the labels, ``sum_j g_j**2 p_j (1 - p_j)``
    with ``g_j`` the metric's derivative in label j: exact for accuracy
    (``sum q (1 - q) / n**2``) and precision, first-order for recall, F1 and ROC-AUC.
    It holds sampling noise only: a calibration error or a concept drift moves the
    truth outside it. NannyML instead scales a standard deviation measured once on the
    reference by ``1 / sqrt(n)``; the band here follows the window (less confident
    traffic widens it). With labels in place of probabilities every variance is 0.
    Ends are clipped to [0, 1].

    A metric is NaN when its denominator is 0 (precision with no positive prediction,
    recall and ROC-AUC with no expected positive, ROC-AUC with no expected negative);
    an empty window gives NaN everywhere and ``n = 0``.

    Examples
    --------
    >>> e = expected_binary_metrics([0.9, 0.8, 0.3, 0.1], [True, True, False, False])
    >>> round(e.accuracy.value, 3), round(e.precision.value, 3), round(e.recall.value, 3)
    (0.825, 0.85, 0.81)
    """
    p = _vector("probabilities", probabilities)
    positive = _vector("predicted", predicted).astype(bool)
    ranking = p if scores is None else _vector("scores", scores)
    if not p.shape == positive.shape == ranking.shape:
        raise ValueError(
            f"probabilities, predicted and scores must have one shape, got {p.shape}, {positive.shape}, {ranking.shape}"
        )
    n = p.size
    if n == 0:
        return PerformanceEstimate(0, skipped, *([_UNDEFINED] * len(METRICS)))
    z = _z(confidence)
    right = np.where(positive, p, 1.0 - p)
    bands = {"accuracy": _band(float(right.mean()), float(np.sum(right * (1.0 - right))) / n**2, z)}
    bernoulli = p * (1.0 - p)
    for name, (value, gradient) in _binary_class_metrics(p, positive, ranking).items():
        variance = _NAN if gradient is None else float(np.sum(gradient**2 * bernoulli))
        bands[name] = _band(value, variance, z)
    return PerformanceEstimate(n, skipped, *(bands[name] for name in METRICS))


def _binary_class_metrics(
    p: np.ndarray, positive: np.ndarray, ranking: np.ndarray
) -> dict[str, tuple[float, np.ndarray | None]]:
    """:func:`_class_metrics` of the one positive class, on 1-D arrays: the same
    arithmetic in the same order (the same floats), without the (n, 1) arrays and the
    masked divisions that a window of a few hundred rows pays more for than for its
    sums. Returns ``{metric: (value, gradient (n,))}``; the gradient is None (and the
    value NaN) where the metric's denominator is not positive."""
    tp = float(np.where(positive, p, 0.0).sum())
    predicted, actual = float(np.count_nonzero(positive)), float(p.sum())
    flags = positive.astype(np.float64)
    both = predicted + actual
    out: dict[str, tuple[float, np.ndarray | None]] = {
        "precision": (tp / predicted, flags / predicted) if predicted > 0 else (_NAN, None),
    }
    if actual > 0:
        recall = tp / actual  # TP / (TP + FN)
        out["recall"] = (recall, (flags - recall) / actual)
    else:
        out["recall"] = (_NAN, None)
    if both > 0:
        f1 = 2.0 * tp / both  # 2 TP / (2 TP + FP + FN)
        out["f1"] = (f1, (2.0 * flags - f1) / both)
    else:
        out["f1"] = (_NAN, None)
    out["roc_auc"] = _expected_auc(p, ranking)
    return out


def expected_multiclass_metrics(
    probabilities: Any, predicted: Any, scores: Any = None, confidence: float = 0.95, skipped: int = 0
) -> PerformanceEstimate:
    """Expected metrics of a multi-class classifier's window (macro averages).

    Parameters
    ----------
    probabilities
        (n, c) array of calibrated class probabilities (rows summing to 1). With the
        one-hot labels in its place, the result is the realized metrics.
    predicted
        (n,) array of predicted class codes in ``0 .. c - 1``.
    scores
        Optional (n, c) array ranking the rows per class for one-vs-rest ROC-AUC
        (the raw scores; default ``probabilities``).
    confidence, skipped
        As in :func:`expected_binary_metrics`.

    Returns
    -------
    PerformanceEstimate

    Notes
    -----
    Accuracy is the mean probability of the predicted class. Precision, recall, F1 and
    ROC-AUC are computed one-vs-rest per class as in :func:`expected_binary_metrics`
    and macro-averaged over the classes where they are defined (a class never
    predicted has no precision; a class with no expected rows has no recall), as
    NannyML does. Bands: each row's label is one categorical draw with the row's
    probabilities, so the delta-method variance of a macro average ``M`` is
    ``sum_j (sum_k g_jk**2 p_jk - (sum_k g_jk p_jk)**2)``, ``g_jk`` the derivative of
    ``M`` in the indicator of class k at row j: this keeps the covariances between the
    classes' metrics (a row that is not of class k is of another one).

    Examples
    --------
    >>> probs = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]
    >>> round(expected_multiclass_metrics(probs, [0, 1, 2]).accuracy.value, 3)
    0.7
    """
    q = np.asarray(probabilities, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] < 2:
        raise ValueError(f"probabilities must be an (n, c) array with c >= 2 classes, got shape {q.shape}")
    n, c = q.shape
    codes = _vector("predicted", predicted)
    ranking = q if scores is None else np.asarray(scores, dtype=np.float64)
    if codes.shape != (n,) or ranking.shape != q.shape:
        raise ValueError(f"predicted must have shape {(n,)} and scores {q.shape}, got {codes.shape}, {ranking.shape}")
    if n == 0:
        return PerformanceEstimate(0, skipped, *([_UNDEFINED] * len(METRICS)))
    if not np.isin(codes, np.arange(c)).all():
        raise ValueError(f"predicted must hold class codes 0 .. {c - 1}")
    z = _z(confidence)
    positive = codes.astype(np.int64)[:, None] == np.arange(c)[None, :]
    right = q[positive]
    bands = {"accuracy": _band(float(right.mean()), float(np.sum(right * (1.0 - right))) / n**2, z)}
    for name, (values, gradients) in _class_metrics(q, positive, ranking).items():
        defined = np.isfinite(values)
        m = int(defined.sum())
        if m == 0:
            bands[name] = _UNDEFINED
            continue
        g = np.where(defined[None, :], gradients, 0.0) / m
        variance = float(np.sum(np.sum(g**2 * q, axis=1) - np.sum(g * q, axis=1) ** 2))
        bands[name] = _band(float(values[defined].mean()), variance, z)
    return PerformanceEstimate(n, skipped, *(bands[name] for name in METRICS))


# ---- the estimator of one model version --------------------------------------------------
class PerformanceEstimator:
    """CBPE for one classifier version: calibrate on the labelled reference, then
    estimate each window's metrics from its scores alone.

    Parameters
    ----------
    threshold
        Binary: a score at or above it is a positive prediction (the engine's 0.5).
    confidence
        Coverage of the bands, in (0, 1).
    calibration
        ``"isotonic"`` (default): one isotonic calibrator per class (one-vs-rest), rows
        renormalised to sum to 1 for multi-class (a row whose calibrated values are all
        0 gets the uniform distribution), as NannyML does. ``"none"``: the scores are
        taken as probabilities (clipped to [0, 1], rows renormalised) for a model
        calibrated by construction; NannyML decides this per class by comparing
        calibration errors, which is left to the caller here.

    Notes
    -----
    The task follows the reference scores' shape in :meth:`fit`: a 1-D array is a
    binary classifier's score of the positive class, with 0/1 labels; an (n, c) array
    is a multi-class classifier's class scores (column k for class code k), with class
    codes ``0 .. c - 1`` as labels. Reference rows with a non-finite score or label (or
    a label that is not a class code) are skipped; window rows with a non-finite score
    are skipped and counted. :attr:`reference` holds the reference's realized metrics
    (by :func:`expected_binary_metrics` with the labels as probabilities), against which
    :meth:`PerformanceEstimate.below` compares a window's estimate. The calibration is
    fitted and measured on the same reference: with a small reference the isotonic
    steps overfit it (a few thousand labelled rows are advisable).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> p = rng.uniform(size=4000)
    >>> est = PerformanceEstimator().fit(p, rng.uniform(size=4000) < p)
    >>> same = PerformanceEstimator.from_state(est.state_dict())
    >>> same.estimate(p[:500]) == est.estimate(p[:500])
    True
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("threshold", "confidence", "calibration")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ("_n_classes", "_multiclass", "_calibrators", "_reference")

    def __init__(self, threshold: float = 0.5, confidence: float = 0.95, calibration: str = "isotonic") -> None:
        if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        _check_confidence(confidence)
        if calibration not in ("isotonic", "none"):
            raise ValueError(f"calibration must be 'isotonic' or 'none', got {calibration!r}")
        self.threshold = float(threshold)
        self.confidence = float(confidence)
        self.calibration = calibration
        self.reset()

    def reset(self) -> None:
        """Forget the fit."""
        self._n_classes = 0
        self._multiclass = False
        self._calibrators: list[IsotonicCalibrator] = []
        self._reference: PerformanceEstimate | None = None

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_state`) has run."""
        return self._reference is not None

    @property
    def n_classes(self) -> int:
        """2 for a binary classifier (1-D scores), c for c score columns; 0 before the fit."""
        return self._n_classes

    @property
    def reference(self) -> PerformanceEstimate:
        """The reference's realized metrics."""
        if self._reference is None:
            raise RuntimeError("the estimator is not fitted: call fit(reference_scores, reference_labels) first")
        return self._reference

    def fit(self, reference_scores: Any, reference_labels: Any) -> PerformanceEstimator:
        """Calibrate on the labelled reference and measure its realized metrics.

        Parameters
        ----------
        reference_scores
            (m,) scores of the positive class (binary) or (m, c) class scores.
        reference_labels
            (m,) labels: 0/1 (binary) or class codes ``0 .. c - 1``.

        Raises
        ------
        ValueError
            If fewer than two classes occur among the usable reference rows: nothing
            can be calibrated then (give the version a reference with both outcomes,
            or leave its estimation off).
        """
        scores = np.asarray(reference_scores, dtype=np.float64)
        labels = _vector("reference_labels", reference_labels)
        if scores.ndim not in (1, 2) or scores.shape[0] != labels.size or (scores.ndim == 2 and scores.shape[1] < 2):
            raise ValueError(
                "reference_scores must be (m,) (binary) or (m, c) with c >= 2 (multi-class) and have one row "
                f"per label, got shapes {scores.shape} and {labels.shape}"
            )
        n_classes = 2 if scores.ndim == 1 else scores.shape[1]
        usable = _finite_rows(scores) & np.isin(labels, np.arange(n_classes))
        present = np.unique(labels[usable])
        if present.size < 2:
            raise ValueError(
                f"the reference has {int(usable.sum())} usable labelled rows with classes {present.tolist()}; "
                "performance estimation needs at least two classes among them"
            )
        scores, labels = scores[usable], labels[usable]
        self.reset()
        self._n_classes, self._multiclass = n_classes, scores.ndim == 2
        if self.calibration == "isotonic":
            if scores.ndim == 1:
                self._calibrators = [IsotonicCalibrator.fit(scores, labels)]
            else:
                self._calibrators = [IsotonicCalibrator.fit(scores[:, k], labels == k) for k in range(n_classes)]
        self._reference = self._metrics(_one_hot(labels, scores), scores, self._predicted(scores, None), 0)
        return self

    def calibrate(self, scores: Any) -> np.ndarray:
        """Calibrated probabilities: (n,) of the positive class, or (n, c) rows summing to 1."""
        x = self._scores(scores)
        if self.calibration == "none":
            p = np.clip(x, 0.0, 1.0)
        elif x.ndim == 1:
            p = self._calibrators[0].calibrate(x)
        else:
            p = np.column_stack([cal.calibrate(x[:, k]) for k, cal in enumerate(self._calibrators)])
        if p.ndim == 2:
            total = p.sum(axis=1, keepdims=True)
            uniform = np.full_like(p, 1.0 / p.shape[1])
            p = np.divide(p, total, out=uniform, where=total > 0)
        return np.asarray(p, dtype=np.float64)

    def estimate(self, scores: Any, predictions: Any = None) -> PerformanceEstimate:
        """Estimated metrics of one window from its scores.

        Parameters
        ----------
        scores
            (n,) or (n, c) scores, as in :meth:`fit`; rows with a non-finite score are
            skipped and counted.
        predictions
            Multi-class only: (n,) predicted class codes, when the model's prediction is
            not the argmax of its scores (default: the argmax). Binary predictions are
            ``scores >= threshold``.
        """
        x = self._scores(scores)
        keep = _finite_rows(x)
        codes = None if predictions is None else _vector("predictions", predictions)
        if codes is not None:
            if not self._multiclass:
                raise ValueError("predictions are for multi-class models; binary predictions are scores >= threshold")
            if codes.shape != (x.shape[0],):
                raise ValueError(f"predictions must have shape {(x.shape[0],)}, got {codes.shape}")
            keep &= _is_code(codes, self._n_classes)
            codes = codes[keep]
        x = x[keep]
        return self._metrics(self.calibrate(x), x, self._predicted(x, codes), int(keep.size - keep.sum()))

    def realized(self, scores: Any, labels: Any, predictions: Any = None) -> PerformanceEstimate:
        """Realized metrics of a labelled window, by the same definitions as
        :meth:`estimate` (rows with a non-finite score or an unknown label are skipped)."""
        x = self._scores(scores)
        y = _vector("labels", labels)
        if y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape {(x.shape[0],)}, got {y.shape}")
        keep = _finite_rows(x) & _is_code(y, self._n_classes)
        codes = None
        if predictions is not None:
            codes = _vector("predictions", predictions)
            if not self._multiclass or codes.shape != y.shape:
                raise ValueError("predictions must be (n,) class codes of a multi-class model")
            keep &= _is_code(codes, self._n_classes)
            codes = codes[keep]
        x, y = x[keep], y[keep]
        return self._metrics(_one_hot(y, x), x, self._predicted(x, codes), int(keep.size - keep.sum()))

    def _scores(self, scores: Any) -> np.ndarray:
        if self._reference is None:
            raise RuntimeError("the estimator is not fitted: call fit(reference_scores, reference_labels) first")
        x = np.asarray(scores, dtype=np.float64)
        if (x.ndim, x.shape[1:]) != ((2, (self._n_classes,)) if self._multiclass else (1, ())):
            shape = f"(n, {self._n_classes})" if self._multiclass else "(n,)"
            raise ValueError(f"scores must have shape {shape} as in the reference, got {x.shape}")
        return x

    def _predicted(self, x: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
        if x.ndim == 1:
            return x >= self.threshold
        if codes is not None:
            return codes.astype(np.int64)
        return np.asarray(np.argmax(x, axis=1), dtype=np.int64)

    def _metrics(self, p: np.ndarray, x: np.ndarray, predicted: np.ndarray, skipped: int) -> PerformanceEstimate:
        if x.ndim == 1:
            return expected_binary_metrics(p, predicted, x, self.confidence, skipped)
        return expected_multiclass_metrics(p, predicted, x, self.confidence, skipped)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters, task, calibrators' knots and the reference's metrics (plain values)."""
        reference = None if self._reference is None else _estimate_state(self._reference)
        return {
            "params": {name: getattr(self, name) for name in self._PARAMS},
            "n_classes": self._n_classes,
            "multiclass": self._multiclass,
            "calibrators": [cal.state_dict() for cal in self._calibrators],
            "reference": reference,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PerformanceEstimator:
        """Rebuild from :meth:`state_dict`'s output."""
        est = cls(**state["params"])
        est._n_classes = int(state["n_classes"])
        est._calibrators = [IsotonicCalibrator.from_state(s) for s in state["calibrators"]]
        est._multiclass = bool(state["multiclass"])
        est._reference = None if state["reference"] is None else _estimate_from_state(state["reference"])
        return est


# ---- regression ---------------------------------------------------------------------------
class RegressionErrorEstimator:
    """Expected absolute and squared error of a regression model's window, from its
    predictions alone.

    NannyML estimates regression performance by direct loss estimation (DLE): a second
    model (gradient boosting on the features and the prediction) learns each row's
    error on the reference. This is the simpler method chosen here, a DLE whose nanny
    model is a step function of the prediction alone: the reference's predictions are
    cut into ``n_bins`` quantile bins, each bin keeps the mean and the variance of its
    absolute and squared errors, and a window's expected MAE (MSE) is the mean of its
    rows' bin means. It sees a shift that moves predictions into ranges where the
    model errs more (or less); it does not see a shift in features that leaves the
    predictions' distribution alone, nor a concept drift.

    Parameters
    ----------
    n_bins
        Quantile bins of the reference's predictions (ties may merge some), >= 1.
    confidence
        Coverage of the bands, in (0, 1).

    Notes
    -----
    Bands: the realized MAE (MSE) given the window's predictions has variance
    ``sum var_bin(j) / n**2`` (independent rows, each with its bin's variance); the
    band is its normal approximation, and the RMSE band is the square root of the
    MSE band's ends. An empty window gives NaN and ``n = 0``; a prediction outside the
    reference's range falls into the first or last bin.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> pred = rng.uniform(0, 10, size=5000)
    >>> target = pred + rng.normal(scale=0.1 + 0.1 * pred)   # errors grow with the prediction
    >>> est = RegressionErrorEstimator().fit(pred, target)
    >>> est.estimate(np.full(100, 9.5)).mae.value > est.estimate(np.full(100, 0.5)).mae.value
    True
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("n_bins", "confidence")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ("_edges", "_bins", "_reference")

    def __init__(self, n_bins: int = 10, confidence: float = 0.95) -> None:
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
        _check_confidence(confidence)
        self.n_bins = n_bins
        self.confidence = float(confidence)
        self.reset()

    def reset(self) -> None:
        """Forget the fit."""
        self._edges = np.empty(0)
        # per bin: mean |e|, var |e|, mean e^2, var e^2
        self._bins = np.empty((0, 4))
        self._reference: ErrorEstimate | None = None

    @property
    def reference(self) -> ErrorEstimate:
        """The reference's realized MAE and RMSE."""
        if self._reference is None:
            raise RuntimeError("the estimator is not fitted: call fit(reference_predictions, reference_targets) first")
        return self._reference

    def fit(self, reference_predictions: Any, reference_targets: Any) -> RegressionErrorEstimator:
        """Learn the error per prediction bin on the labelled reference.

        Raises
        ------
        ValueError
            If no reference row has a finite prediction and target.
        """
        pred = _vector("reference_predictions", reference_predictions)
        target = _vector("reference_targets", reference_targets)
        if pred.shape != target.shape:
            raise ValueError(
                f"reference_targets must have the shape of the predictions {pred.shape}, got {target.shape}"
            )
        keep = np.isfinite(pred) & np.isfinite(target)
        pred, error = pred[keep], np.abs(target[keep] - pred[keep])
        if pred.size == 0:
            raise ValueError("no reference row has a finite prediction and target; the estimate needs labelled rows")
        quantiles = np.quantile(pred, np.arange(1, self.n_bins) / self.n_bins, method="inverted_cdf")
        edges = np.unique(quantiles[quantiles < pred.max()])
        index = np.searchsorted(edges, pred, side="left")
        counts = np.bincount(index, minlength=edges.size + 1).astype(np.float64)
        columns = []
        for value in (error, error**2):
            mean = np.bincount(index, weights=value, minlength=edges.size + 1) / counts
            columns += [mean, np.bincount(index, weights=(value - mean[index]) ** 2, minlength=edges.size + 1) / counts]
        self.reset()
        self._edges, self._bins = edges, np.column_stack(columns)
        mse = float(np.mean(error**2))
        self._reference = ErrorEstimate(int(pred.size), 0, _point(float(error.mean())), _point(math.sqrt(mse)))
        return self

    def estimate(self, predictions: Any) -> ErrorEstimate:
        """Expected MAE and RMSE of one window (non-finite predictions skipped and counted)."""
        if self._reference is None:
            raise RuntimeError("the estimator is not fitted: call fit(reference_predictions, reference_targets) first")
        pred = _vector("predictions", predictions)
        keep = np.isfinite(pred)
        pred = pred[keep]
        skipped, n = int(keep.size - keep.sum()), int(pred.size)
        if n == 0:
            return ErrorEstimate(0, skipped, _UNDEFINED, _UNDEFINED)
        rows = self._bins[np.searchsorted(self._edges, pred, side="left")]
        z = _z(self.confidence)
        mae = _band(float(rows[:, 0].mean()), float(rows[:, 1].sum()) / n**2, z, high=math.inf)
        mse = _band(float(rows[:, 2].mean()), float(rows[:, 3].sum()) / n**2, z, high=math.inf)
        rmse = Band(math.sqrt(mse.value), math.sqrt(mse.low), math.sqrt(mse.high))
        return ErrorEstimate(n, skipped, mae, rmse)

    def state_dict(self) -> dict[str, Any]:
        """Parameters, bin edges, per-bin error moments and the reference's errors."""
        reference = (
            None
            if self._reference is None
            else {"n": self._reference.n, "mae": self._reference.mae.value, "rmse": self._reference.rmse.value}
        )
        return {
            "params": {name: getattr(self, name) for name in self._PARAMS},
            "edges": self._edges.tolist(),
            "bins": self._bins.tolist(),
            "reference": reference,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RegressionErrorEstimator:
        """Rebuild from :meth:`state_dict`'s output."""
        est = cls(**state["params"])
        est._edges = np.asarray(state["edges"], dtype=np.float64)
        est._bins = np.asarray(state["bins"], dtype=np.float64).reshape(-1, 4)
        ref = state["reference"]
        if ref is not None:
            est._reference = ErrorEstimate(int(ref["n"]), 0, _point(float(ref["mae"])), _point(float(ref["rmse"])))
        return est


# ---- helpers --------------------------------------------------------------------------------
def _vector(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf" or arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of numbers or booleans, got dtype {arr.dtype} and shape {arr.shape}"
        )
    return arr.astype(np.float64, copy=False)


def _is_code(values: np.ndarray, n: int) -> np.ndarray:
    """Where float ``values`` hold a class code ``0 .. n - 1`` (``np.isin(values,
    np.arange(n))``, without its sort: it is asked at every window)."""
    return np.asarray((values >= 0) & (values < n) & (values == np.floor(values)), dtype=bool)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    return finite if x.ndim == 1 else np.asarray(finite.all(axis=1))


def _one_hot(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:
        return labels.astype(np.float64)
    return np.asarray(labels[:, None] == np.arange(scores.shape[1])[None, :], dtype=np.float64)


def _point(value: float) -> Band:
    return Band(value, value, value)


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")


def _estimate_state(estimate: PerformanceEstimate) -> dict[str, Any]:
    return {
        f.name: (getattr(estimate, f.name).as_tuple() if f.name in METRICS else getattr(estimate, f.name))
        for f in fields(estimate)
    }


def _estimate_from_state(state: dict[str, Any]) -> PerformanceEstimate:
    return PerformanceEstimate(
        int(state["n"]), int(state["skipped"]), *(Band(*map(float, state[name])) for name in METRICS)
    )
