"""Model performance over windows of labelled predictions.

Both functions take either one window (1-D arrays, a dict of floats back) or a stack
of k windows of equal length ((k, w) arrays, a dict of (k,) arrays back), since one
batch can complete several windows. Rows with a non-finite value in any input are
skipped and counted (``skipped``); ``n`` is the number of rows used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["classification_metrics", "regression_metrics", "PROBABILITY_CLIP"]

# Scores are clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] for log loss, as
# river.metrics.LogLoss and scikit-learn (before 1.5) do.
PROBABILITY_CLIP = 1e-15


def _as_windows(name: str, values: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf" or arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be a 1-D array (one window) or a 2-D array (k, w) (k windows) "
            f"of numbers, got dtype {arr.dtype} and shape {arr.shape}"
        )
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have the shape of y_true {shape}, got {arr.shape}")
    return np.atleast_2d(arr.astype(np.float64, copy=False))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def _out(result: dict[str, np.ndarray], one_window: bool) -> dict[str, Any]:
    if one_window:
        return {k: (int(v[0]) if v.dtype.kind == "i" else float(v[0])) for k, v in result.items()}
    return result


def _midranks(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """1-based ranks of the valid entries of each row, ties sharing their mean rank
    (as ``scipy.stats.rankdata``); invalid entries get 0."""
    k, w = values.shape
    keyed = np.where(valid, values, np.inf)
    order = np.argsort(keyed, axis=1, kind="stable")
    ranked = np.take_along_axis(keyed, order, axis=1)
    position = np.broadcast_to(np.arange(w), (k, w))
    starts = np.ones((k, w), dtype=bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    ends = np.ones((k, w), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, w)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((k, w))
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return np.where(valid, ranks, 0.0)


def classification_metrics(
    y_true: Any, y_pred: Any, y_score: Any = None, positive: float = 1
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC AUC and log loss of one or k windows.

    Parameters
    ----------
    y_true, y_pred
        Labels as numbers (class codes), shape (w,) or (k, w); NaN means missing.
    y_score
        Optional score of the positive class (a probability for log loss), same shape.
    positive
        The positive class label.

    Returns
    -------
    dict
        ``accuracy, precision, recall, f1, roc_auc, log_loss`` (floats, or (k,) float
        arrays for stacked input) and ``n, skipped`` (ints, or (k,) int arrays).

    Notes
    -----
    * Multiclass labels: accuracy compares labels; precision, recall, F1, ROC AUC and
      log loss are one-vs-rest for ``positive``.
    * ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
      ``f1 = 2 tp / (2 tp + fp + fn)``; each is NaN when its denominator is 0 (no
      evidence), so F1 is 0, not NaN, when there are positives but no hit.
    * ROC AUC is the Mann-Whitney probability that a positive outscores a negative,
      ties counting 1/2 (the scikit-learn value), from midranks. NaN without
      ``y_score`` or when the window holds only one class.
    * Log loss is the binary cross-entropy of ``y_true == positive`` against
      ``y_score`` clipped to ``[1e-15, 1 - 1e-15]``; NaN without ``y_score``.
    * A row is skipped when ``y_true``, ``y_pred`` or ``y_score`` (if given) is not
      finite. A window with no valid rows gets NaN metrics.

    Examples
    --------
    >>> m = classification_metrics([1, 0, 1, 1], [1, 0, 0, 1], y_score=[0.9, 0.2, 0.4, 0.7])
    >>> m["accuracy"], m["recall"], m["roc_auc"]
    (0.75, 0.6666666666666666, 1.0)
    """
    one_window = np.ndim(y_true) == 1
    truth = _as_windows("y_true", y_true, None)
    shape = np.shape(y_true)
    predicted = _as_windows("y_pred", y_pred, shape)
    valid = np.isfinite(truth) & np.isfinite(predicted)
    score = None
    if y_score is not None:
        score = _as_windows("y_score", y_score, shape)
        valid &= np.isfinite(score)
    n = valid.sum(axis=1)
    true_positive = valid & (truth == positive)
    predicted_positive = valid & (predicted == positive)
    tp = (true_positive & predicted_positive).sum(axis=1)
    fp = (predicted_positive & ~true_positive).sum(axis=1)
    fn = (true_positive & ~predicted_positive).sum(axis=1)
    result = {
        "accuracy": _ratio((valid & (truth == predicted)).sum(axis=1), n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": np.full(truth.shape[0], np.nan),
        "log_loss": np.full(truth.shape[0], np.nan),
    }
    if score is not None:
        n_positive = true_positive.sum(axis=1)
        n_negative = n - n_positive
        rank_sum = (_midranks(score, valid) * true_positive).sum(axis=1)
        u_statistic = rank_sum - n_positive * (n_positive + 1) / 2.0
        result["roc_auc"] = _ratio(u_statistic, n_positive * n_negative)
        p = np.clip(np.where(valid, score, 0.5), PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
        loss = np.where(true_positive, -np.log(p), -np.log1p(-p))
        result["log_loss"] = _ratio(np.where(valid, loss, 0.0).sum(axis=1), n)
    result["n"] = n.astype(np.int64)
    result["skipped"] = (truth.shape[1] - n).astype(np.int64)
    return _out(result, one_window)


def regression_metrics(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """MAE, RMSE and MAPE of one or k windows.

    Parameters
    ----------
    y_true, y_pred
        Shape (w,) or (k, w).

    Returns
    -------
    dict
        ``mae, rmse, mape`` (floats, or (k,) arrays) and ``n, skipped,
        mape_excluded`` (ints, or (k,) int arrays).

    Notes
    -----
    * MAPE is a fraction, not a percentage: ``mean(|y_true - y_pred| / |y_true|)``
      over the rows with ``y_true != 0``; rows with ``y_true == 0`` are left out of
      MAPE only and counted in ``mape_excluded``. MAPE is NaN if no row is left, and
      may be ``inf`` when a ``y_true`` is so close to 0 that the ratio overflows.
    * A row is skipped when either value is not finite; with no valid rows every
      metric is NaN.

    Examples
    --------
    >>> m = regression_metrics([1.0, 2.0, 0.0], [1.5, 2.0, 1.0])
    >>> m["mae"], m["mape"], m["mape_excluded"]
    (0.5, 0.25, 1)
    """
    one_window = np.ndim(y_true) == 1
    truth = _as_windows("y_true", y_true, None)
    predicted = _as_windows("y_pred", y_pred, np.shape(y_true))
    valid = np.isfinite(truth) & np.isfinite(predicted)
    n = valid.sum(axis=1)
    error = np.abs(np.where(valid, truth, 0.0) - np.where(valid, predicted, 0.0))
    nonzero = valid & (truth != 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        relative = np.where(nonzero, error / np.abs(truth), 0.0)
    result = {
        "mae": _ratio(error.sum(axis=1), n),
        "rmse": np.sqrt(_ratio((error**2).sum(axis=1), n)),
        "mape": _ratio(relative.sum(axis=1), nonzero.sum(axis=1)),
        "n": n.astype(np.int64),
        "skipped": (truth.shape[1] - n).astype(np.int64),
        "mape_excluded": (valid & (truth == 0)).sum(axis=1).astype(np.int64),
    }
    return _out(result, one_window)
