"""Multiple-testing corrections across features.

When d features are tested on the same window, some p-values are small by chance;
these functions adjust them so that a rejection threshold ``alpha`` controls the
family-wise error rate (Bonferroni) or the false discovery rate (Benjamini-Hochberg,
1995, "Controlling the false discovery rate").

NaN p-values mean "no test" (a feature with no data in the window): they stay NaN,
are never rejected, and do not count in the number of tests m.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["bonferroni", "benjamini_hochberg", "reject", "METHODS"]

METHODS = ("bonferroni", "bh")


def _as_p_values(p_values: Any) -> np.ndarray:
    arr = np.asarray(p_values)
    if arr.dtype.kind not in "iuf" or arr.ndim not in (1, 2):
        raise ValueError(
            "p_values must be a 1-D array (one family) or a 2-D array (one family per row) "
            f"of numbers in [0, 1] or NaN, got dtype {arr.dtype} and shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    tested = ~np.isnan(arr)
    if ((arr[tested] < 0) | (arr[tested] > 1)).any():
        raise ValueError("p_values must lie in [0, 1] (NaN for features without a test)")
    return arr


def bonferroni(p_values: Any) -> np.ndarray:
    """Bonferroni-adjusted p-values: ``min(1, m * p)``.

    Parameters
    ----------
    p_values
        1-D array of p-values, or 2-D with one family per row (the correction runs
        along the last axis). NaN means "no test".

    Returns
    -------
    numpy.ndarray
        float64, same shape; NaN where the input is NaN. m is the number of non-NaN
        p-values in the family.

    Examples
    --------
    >>> bonferroni([0.01, 0.2, float("nan")]).tolist()
    [0.02, 0.4, nan]
    """
    arr = _as_p_values(p_values)
    m = (~np.isnan(arr)).sum(axis=-1, keepdims=True)
    adjusted: np.ndarray = np.minimum(arr * m, 1.0)
    return adjusted


def benjamini_hochberg(p_values: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (the same as
    ``scipy.stats.false_discovery_control(p, method="bh")`` on the non-NaN entries).

    ``adjusted_(i) = min_{k >= i} min(1, m p_(k) / k)`` for the sorted p-values.

    Parameters
    ----------
    p_values
        1-D array of p-values, or 2-D with one family per row. NaN means "no test".

    Returns
    -------
    numpy.ndarray
        float64, same shape; NaN where the input is NaN.

    Examples
    --------
    >>> benjamini_hochberg([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    arr = _as_p_values(p_values)
    family = np.atleast_2d(arr)
    m = (~np.isnan(family)).sum(axis=1, keepdims=True)
    order = np.argsort(family, axis=1, kind="stable")  # NaN last
    ranked = np.take_along_axis(family, order, axis=1)
    rank = np.arange(1, family.shape[1] + 1)[None, :]
    scaled = ranked * m / rank
    # the running minimum from the largest p-value down; NaN (at the end) stay out
    scaled = np.where(np.isnan(scaled), np.inf, scaled)
    adjusted_sorted = np.minimum(np.minimum.accumulate(scaled[:, ::-1], axis=1)[:, ::-1], 1.0)
    adjusted = np.empty_like(family)
    np.put_along_axis(adjusted, order, adjusted_sorted, axis=1)
    adjusted[np.isnan(family)] = np.nan
    return adjusted.reshape(arr.shape)


def reject(p_values: Any, alpha: float = 0.05, method: str = "bh") -> np.ndarray:
    """Which hypotheses to reject at level ``alpha`` after correction.

    Parameters
    ----------
    p_values
        1-D array, or 2-D with one family per row. NaN p-values are never rejected.
    alpha
        Family-wise error rate ("bonferroni") or false discovery rate ("bh"), in (0, 1).
    method
        "bh" (Benjamini-Hochberg) or "bonferroni".

    Returns
    -------
    numpy.ndarray
        Boolean mask, same shape: adjusted p-value <= alpha.

    Examples
    --------
    >>> reject([0.001, 0.02, 0.5, float("nan")], alpha=0.05, method="bonferroni").tolist()
    [True, False, False, False]
    """
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if method == "bh":
        adjusted = benjamini_hochberg(p_values)
    elif method == "bonferroni":
        adjusted = bonferroni(p_values)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    with np.errstate(invalid="ignore"):
        return adjusted <= alpha
