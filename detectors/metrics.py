"""Model performance over windows of labelled predictions.

:func:`classification_metrics` and :func:`regression_metrics` take either one window
(1-D arrays, a dict of floats back) or a stack of k windows of equal length ((k, w)
arrays, a dict of (k,) arrays back), since one batch can complete several windows;
:func:`multiclass_metrics` takes one window (its per-class results differ in size from
window to window). Rows with a non-finite value in any input are skipped and counted
(``skipped``); ``n`` is the number of rows used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "multiclass_metrics", "regression_metrics", "PROBABILITY_CLIP"]

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


def classification_metrics(y_true: Any, y_pred: Any, y_score: Any = None, positive: float = 1) -> dict[str, Any]:
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


def _class_codes(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array of class codes (NaN: missing)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf" or arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of class codes (integers >= 0, NaN for missing), "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    arr = arr.astype(np.float64, copy=False)
    known = arr[np.isfinite(arr)]
    if (known < 0).any() or (known != np.floor(known)).any():
        raise ValueError(
            f"{name} must hold class codes (integers >= 0, NaN for missing), "
            f"got {known[(known < 0) | (known != np.floor(known))][0]!r}"
        )
    return arr


def multiclass_metrics(
    y_true: Any, y_pred: Any, scores: Any = None, n_classes: int | None = None, max_classes: int = 10
) -> dict[str, Any]:
    """Macro and micro precision, recall and F1, one-vs-rest ROC AUC and the recall of
    the most frequent classes, for one window of class codes.

    Parameters
    ----------
    y_true, y_pred
        Class codes 0 .. n_classes - 1 as numbers, shape (w,); NaN means missing.
    scores
        Optional (w, n_classes) scores: column c is the score of class c (a probability
        or any number that ranks rows; only the order within a column matters).
    n_classes
        The number of class codes; by default the number of score columns, else the
        largest code plus one.
    max_classes
        At most this many classes get a per-class recall (see Notes).

    Returns
    -------
    dict
        ``macro_precision, macro_recall, macro_f1, micro_precision, micro_recall,
        micro_f1, roc_auc`` (floats), ``n, skipped, classes, roc_auc_classes,
        roc_auc_n, roc_auc_skipped`` (ints), ``class_recall`` (dict code -> float) and
        ``class_support`` (dict code -> int), both in the order of the rule below.

    Raises
    ------
    ValueError
        When an input has the wrong shape or dtype, a code is negative, fractional or
        not below ``n_classes``, or ``max_classes`` is negative.

    Notes
    -----
    * Labels: a row is used when ``y_true`` and ``y_pred`` are both finite (``n``),
      else skipped (``skipped``). For class c, ``tp`` counts rows with both codes c,
      its support the rows with ``y_true == c``, its predictions those with
      ``y_pred == c``.
    * Macro averages are over the ``classes`` present in the window (in ``y_true`` or
      ``y_pred``): per-class precision ``tp / predictions``, recall ``tp / support``
      and F1 ``2 tp / (predictions + support)``, each 0 when its denominator is 0, as
      river's ``MacroPrecision``, ``MacroRecall``, ``MacroF1`` and scikit-learn (with
      ``zero_division=0``) do. Micro precision, recall and F1 are all equal to the
      accuracy (single-label classes). Every one is NaN when ``n`` is 0.
    * ROC AUC one-vs-rest is the mean, over the classes c with at least one row of
      class c and one of another class, of the Mann-Whitney probability that a row of
      class c has a higher ``scores[:, c]`` than a row of another class, ties counting
      1/2 (scikit-learn's ``roc_auc_score(multi_class="ovr", average="macro")`` when
      every class is present). It uses the rows with a finite ``y_true`` and all their
      scores finite (``roc_auc_n``; ``y_pred`` may be missing); rows with a label but
      a missing score are skipped and counted in ``roc_auc_skipped``;
      ``roc_auc_classes`` is the number of classes averaged. NaN without ``scores``
      or when no class qualifies.
    * Per-class recall is given for the ``max_classes`` classes with the largest
      support in the window (the most frequent true classes), ties going to the
      smaller code; classes with no support are left out (their recall is undefined).
    * Cost: O(w + n_classes) for the label metrics (``np.bincount``), O(n_classes w
      log w) time and O(n_classes w) memory for ROC AUC (one ranking per class).

    Examples
    --------
    >>> m = multiclass_metrics([0, 1, 2, 2, 2], [0, 0, 2, 2, 1],
    ...                        scores=[[.8, .1, .1], [.5, .4, .1], [.1, .2, .7], [.2, .2, .6], [.1, .5, .4]])
    >>> round(m["macro_precision"], 4), round(m["macro_recall"], 4), m["micro_f1"]
    (0.5, 0.5556, 0.6)
    >>> m["roc_auc"], m["class_recall"]
    (0.9166666666666666, {2: 0.6666666666666666, 0: 1.0, 1: 0.0})
    """
    truth = _class_codes("y_true", y_true)
    predicted = _class_codes("y_pred", y_pred)
    if predicted.shape != truth.shape:
        raise ValueError(f"y_pred must have the shape of y_true {truth.shape}, got {predicted.shape}")
    if isinstance(max_classes, bool) or not isinstance(max_classes, (int, np.integer)) or max_classes < 0:
        raise ValueError(f"max_classes must be an integer >= 0, got {max_classes!r}")
    score = None
    if scores is not None:
        score = np.asarray(scores)
        if score.dtype.kind not in "biuf" or score.ndim != 2 or score.shape[0] != truth.shape[0]:
            raise ValueError(
                f"scores must be a (w, n_classes) array of numbers with w = {truth.shape[0]} "
                f"rows, got dtype {score.dtype} and shape {score.shape}"
            )
        score = score.astype(np.float64, copy=False)
    if n_classes is None:
        if score is not None:
            n_classes = score.shape[1]
        else:
            known = np.concatenate([truth[np.isfinite(truth)], predicted[np.isfinite(predicted)]])
            n_classes = int(known.max()) + 1 if known.size else 0
    elif score is not None and score.shape[1] != n_classes:
        raise ValueError(f"scores must have n_classes = {n_classes} columns, got {score.shape[1]}")
    k = int(n_classes)
    for name, codes in (("y_true", truth), ("y_pred", predicted)):
        if (codes[np.isfinite(codes)] >= k).any():
            raise ValueError(f"{name} holds a code >= n_classes = {k}; codes must be 0 .. n_classes - 1")

    valid = np.isfinite(truth) & np.isfinite(predicted)
    n = int(valid.sum())
    t = truth[valid].astype(np.int64)
    p = predicted[valid].astype(np.int64)
    support = np.bincount(t, minlength=k)
    predictions = np.bincount(p, minlength=k)
    tp = np.bincount(t[t == p], minlength=k)
    present = (support + predictions) > 0
    n_present = int(present.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predictions > 0, tp / predictions, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(support + predictions > 0, 2 * tp / (support + predictions), 0.0)
    macro = {
        name: float(values[present].sum() / n_present) if n_present else math.nan
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1))
    }
    micro = float(tp.sum() / n) if n else math.nan

    roc_auc, auc_classes, auc_n, auc_skipped = math.nan, 0, 0, 0
    if score is not None:
        labelled = np.isfinite(truth)
        scored = labelled & np.isfinite(score).all(axis=1)
        auc_n, auc_skipped = int(scored.sum()), int((labelled & ~scored).sum())
        positive = (truth[None, :] == np.arange(k, dtype=np.float64)[:, None]) & scored[None, :]  # (k, w)
        n_positive = positive.sum(axis=1)
        n_negative = auc_n - n_positive
        ranks = _midranks(score.T, np.broadcast_to(scored, positive.shape))
        u_statistic = (ranks * positive).sum(axis=1) - n_positive * (n_positive + 1) / 2.0
        defined = (n_positive > 0) & (n_negative > 0)
        auc_classes = int(defined.sum())
        if auc_classes:
            roc_auc = float((u_statistic[defined] / (n_positive[defined] * n_negative[defined])).mean())

    order = np.argsort(-support, kind="stable")[:max_classes]  # stable: ties keep the smaller code first
    order = order[support[order] > 0].tolist()
    return {
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "macro_f1": macro["f1"],
        "micro_precision": micro,
        "micro_recall": micro,
        "micro_f1": micro,
        "roc_auc": roc_auc,
        "n": n,
        "skipped": int(truth.shape[0] - n),
        "classes": n_present,
        "roc_auc_classes": auc_classes,
        "roc_auc_n": auc_n,
        "roc_auc_skipped": auc_skipped,
        "class_recall": {c: float(recall[c]) for c in order},
        "class_support": {c: int(support[c]) for c in order},
    }


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
