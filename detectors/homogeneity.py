"""Two-sample chi-squared test of homogeneity, vectorized across features.

The one categorical drift test (:func:`driftline.detectors.statistics.categorical_drift`
reports it). A goodness-of-fit test of the window against the reference *proportions*
(``scipy.stats.chisquare``) would treat the reference as exact: when the reference is
itself a sample of a few thousand events, that under-states the noise (the statistic
is inflated by about ``1 + n/m`` for a window of n against a reference of m) and a
category the reference never saw gets a near-zero expectation, so one unseen value
looks like drift. This test of homogeneity of the two samples (Pearson, 1900; the
``correction=False`` case of ``scipy.stats.chi2_contingency`` on the 2 x K table)
accounts for both samples' noise; unseen categories are reported by the data-quality
check instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

__all__ = ["chi2_homogeneity", "bucket_counts"]


def bucket_counts(codes: np.ndarray, n_buckets: np.ndarray) -> np.ndarray:
    """Counts of codes 0..n_buckets[j]-1 per column, as a (d, max(n_buckets)) array
    padded with zeros; negative codes (missing) are not counted.

    Examples
    --------
    >>> bucket_counts(np.array([[0, 1], [0, -1], [2, 1]]), np.array([3, 2])).tolist()
    [[2.0, 0.0, 1.0], [0.0, 2.0, 0.0]]
    """
    codes = np.asarray(codes, dtype=np.int64)
    d = codes.shape[1]
    width = int(n_buckets.max()) if d else 0
    flat = codes + np.arange(d, dtype=np.int64) * width
    counted = (codes >= 0) & (codes < n_buckets)
    return np.bincount(flat[counted], minlength=d * width).reshape(d, width).astype(np.float64)


def chi2_homogeneity(reference_counts: Any, window_counts: Any) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-squared test that two samples of categories share one distribution.

    Parameters
    ----------
    reference_counts, window_counts
        (d, K) counts per feature and bucket (pad unused buckets with 0).

    Returns
    -------
    statistic, p_value
        (d,) arrays. Degrees of freedom per feature: (buckets seen in either sample) - 1.

    Notes
    -----
    A feature with an empty sample, or with a single bucket seen in both samples
    together, has nothing to test: statistic 0 and p-value 1.

    Examples
    --------
    >>> ref = np.array([[50.0, 50.0, 0.0]])
    >>> win = np.array([[20.0, 70.0, 10.0]])
    >>> stat, p = chi2_homogeneity(ref, win)
    >>> round(float(stat[0]), 3), bool(p[0] < 0.001)
    (20.889, True)
    """
    a = np.asarray(reference_counts, dtype=np.float64)
    b = np.asarray(window_counts, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"reference_counts and window_counts must be (d, K) arrays of one shape, got {a.shape} and {b.shape}"
        )
    n_a = a.sum(axis=1, keepdims=True)
    n_b = b.sum(axis=1, keepdims=True)
    total = n_a + n_b
    col = a + b
    seen = col > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        e_a = col * n_a / total
        e_b = col * n_b / total
        terms = np.where(seen, (a - e_a) ** 2 / e_a + (b - e_b) ** 2 / e_b, 0.0)
    statistic = terms.sum(axis=1)
    dof = seen.sum(axis=1) - 1
    testable = (n_a[:, 0] > 0) & (n_b[:, 0] > 0) & (dof > 0)
    statistic = np.where(testable, statistic, 0.0)
    p_value = np.ones_like(statistic)
    p_value[testable] = special.chdtrc(dof[testable], statistic[testable])
    return statistic, p_value
