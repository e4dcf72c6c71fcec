"""Two-sample drift statistics of a window against a prepared reference.

Every statistic is computed for all d features in one call, with no Python loop over
features or events: the reference side (sorted values, prefix sums, quantile bin
edges, bin proportions) is prepared once by ``fit``; the window side is one sort of
the (n, d) window plus one ``searchsorted`` into the sorted reference, in the manner
of scipy's ``stats/_cdf_distance_1d.py``.

Features with different numbers of valid values are handled by padding: each
feature's sorted values form one row of a (d, m_max) array padded with ``+inf``, and
a ``searchsorted`` over all rows at once runs on complex keys ``j + 1j * value``
(numpy orders complex numbers lexicographically), so that the rows occupy disjoint,
ordered ranges of one flat sorted array. Comparisons stay exact.

Several windows at once
    :func:`numeric_drift_windows` and :func:`categorical_drift_windows` take w windows of
    one size and lay their features side by side as the w * d rows of one computation
    (each row searching its feature's reference row): the per-call cost is paid once for
    all the windows a batch completed, and each window's results equal those of the
    window computed alone, bit for bit.

Numeric features
    :class:`NumericReference` and :func:`numeric_drift`: Kolmogorov-Smirnov statistic
    and p-value, population stability index (PSI), Jensen-Shannon distance,
    Wasserstein-1 distance, out-of-range and missing rates.
Categorical features
    :class:`CategoricalReference` and :func:`categorical_drift`: chi-square test of
    homogeneity (statistic and p-value), PSI, total variation distance, unseen and missing rates.

Smoothing of empty bins (one rule, used by PSI and JS)
    A bin's proportion ``p_k`` (count / number of valid values) is smoothed to
    ``(p_k + PROPORTION_EPSILON) / (1 + K * PROPORTION_EPSILON)`` over the feature's
    K bins, with ``PROPORTION_EPSILON = 1e-4``; the smoothed proportions are positive
    and sum to 1. Reference and window proportions are smoothed alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from driftline.detectors._base import as_batch, check_param
from driftline.detectors._ks import extended_elements, ks_p_value
from driftline.detectors.homogeneity import chi2_homogeneity

__all__ = [
    "PROPORTION_EPSILON",
    "NumericReference",
    "NumericDrift",
    "numeric_drift",
    "numeric_drift_windows",
    "unextended_p_values",
    "CategoricalReference",
    "CategoricalDrift",
    "categorical_drift",
    "categorical_drift_windows",
    "smooth_proportions",
]

PROPORTION_EPSILON = 1e-4


# ---- kernels -------------------------------------------------------------------------


def smooth_proportions(counts: np.ndarray, valid_bins: np.ndarray) -> np.ndarray:
    """Smoothed bin proportions, the rule shared by PSI, JS and chi-square.

    Parameters
    ----------
    counts
        (d, K_max) counts; bins outside ``valid_bins`` are ignored.
    valid_bins
        (d, K_max) boolean mask of the bins that exist for each feature.

    Returns
    -------
    numpy.ndarray
        (d, K_max) float64: ``(p + PROPORTION_EPSILON) / (1 + K * PROPORTION_EPSILON)``
        on valid bins, where ``p = count / total`` and K is the feature's number of
        bins, and exactly 1.0 on padding bins (so that PSI and JS terms vanish there).
        A feature with no values gets NaN.

    Examples
    --------
    >>> import numpy as np
    >>> smooth_proportions(np.array([[3, 1, 0]]), np.array([[True, True, True]])).round(4).tolist()
    [[0.7499, 0.25, 0.0001]]
    """
    counts = np.where(valid_bins, counts, 0).astype(np.float64)
    total = counts.sum(axis=1, keepdims=True)
    n_bins = valid_bins.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        proportions = counts / total
    smoothed = (proportions + PROPORTION_EPSILON) / (1.0 + n_bins * PROPORTION_EPSILON)
    return np.where(valid_bins, smoothed, 1.0)


def _row_keys(sorted_rows: np.ndarray) -> np.ndarray:
    """Flat complex keys ``row + 1j * value`` of a (d, m) array sorted along rows."""
    d, m = sorted_rows.shape
    keys = np.empty(d * m, dtype=np.complex128)
    keys.real = np.repeat(np.arange(d, dtype=np.float64), m)
    keys.imag = sorted_rows.ravel()
    return keys


def _searchsorted_rows(
    sorted_rows: np.ndarray,
    queries: np.ndarray,
    side: Literal["left", "right"],
    keys: np.ndarray | None = None,
    row_of: np.ndarray | None = None,
) -> np.ndarray:
    """``np.searchsorted(sorted_rows[row_of[j]], queries[j], side)`` for every query row j.

    With many queries per row, one float ``searchsorted`` per row (0.46 ms for 20 rows
    of 1,000 queries into 5,000 values); with few, all rows at once on complex keys
    ``row + 1j * value`` (one call, no per-row overhead; 0.66 ms for the same).

    ``sorted_rows`` is (d, m) ascending along each row (padding ``+inf`` at the end);
    ``queries`` is (r, q); ``row_of`` (r,) names the row of ``sorted_rows`` each query
    row searches (default: row j for query row j, r = d). Results for finite queries
    are exact; results for non-finite queries are meaningless and must be masked by
    the caller.
    """
    m = sorted_rows.shape[1]
    rows_of = np.arange(queries.shape[0], dtype=np.int64) if row_of is None else row_of
    if queries.shape[1] >= 64:  # enough work per row that one call per row is cheaper
        out = np.empty(queries.shape, dtype=np.int64)
        for j, row in enumerate(rows_of.tolist()):
            out[j] = np.searchsorted(sorted_rows[row], queries[j], side=side)
        return out
    if keys is None:
        keys = _row_keys(sorted_rows)
    query_keys = np.empty(queries.size, dtype=np.complex128)
    query_keys.real = np.repeat(rows_of.astype(np.float64), queries.shape[1])
    query_keys.imag = queries.ravel()
    positions = np.searchsorted(keys, query_keys, side=side).reshape(queries.shape)
    rows: np.ndarray = positions - (rows_of * m)[:, None]
    return rows


def _take_rows(a: np.ndarray, index: np.ndarray, row_of: np.ndarray | None = None) -> np.ndarray:
    """``np.take_along_axis(a[row_of], index, axis=1)`` for 2-D arrays, as one flat
    ``take`` (``row_of`` defaults to every row of ``a`` in order)."""
    rows_of = np.arange(a.shape[0]) if row_of is None else row_of
    taken: np.ndarray = a.ravel().take(index + (rows_of * a.shape[1])[:, None])
    return taken


def _sorted_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite values of each column of an (n, d) array as sorted rows of a (d, max(n, 1))
    array padded with ``+inf``, and the number of finite values per column."""
    finite = np.isfinite(values)
    rows = np.full((values.shape[1], max(values.shape[0], 1)), np.inf)
    rows[:, : values.shape[0]] = np.where(finite, values, np.inf).T
    rows.sort(axis=1)
    return rows, finite.sum(axis=0).astype(np.int64)


def _psi_js(reference_p: np.ndarray, window_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSI and Jensen-Shannon distance (natural log) between smoothed proportions
    (padding bins hold 1.0 on both sides and contribute exactly 0)."""
    psi = ((window_p - reference_p) * np.log(window_p / reference_p)).sum(axis=1)
    middle = (reference_p + window_p) / 2.0
    divergence = (reference_p * np.log(reference_p / middle) + window_p * np.log(window_p / middle)).sum(axis=1) / 2.0
    return psi, np.sqrt(np.maximum(divergence, 0.0))


def _freeze(obj: Any) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)


# ---- numeric -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NumericReference:
    """A numeric reference sample prepared for :func:`numeric_drift`.

    Build it with :meth:`fit`; rebuild a saved one with :meth:`from_state`. All arrays
    are read-only and feature-major (one row per feature).

    Attributes
    ----------
    sorted_values
        (d, m_max) float64: each feature's finite reference values in ascending
        order, padded with ``+inf`` after ``count[j]`` values.
    count
        (d,) int64: finite reference values per feature.
    missing_rate
        (d,) float64: share of non-finite reference values (NaN for an empty reference).
    minimum, maximum
        (d,) float64: range of the finite reference values (NaN if none).
    edges
        (d, n_bins - 1) float64: interior PSI bin edges, ascending, padded with
        ``+inf`` after ``n_edges[j]`` edges.
    n_edges
        (d,) int64: number of interior edges; feature j has ``n_edges[j] + 1`` bins.
    bin_proportions
        (d, n_bins) float64: raw (unsmoothed) share of the reference in each bin,
        0 on padding bins.
    n_bins
        The number of bins asked for.

    Notes
    -----
    PSI bins are right-closed: ``(-inf, e_1], (e_1, e_2], ..., (e_last, +inf)``.
    The edge ``e_k`` is the inverted-CDF quantile at ``k / n_bins`` (the
    ``ceil(k * m / n_bins)``-th smallest reference value, in exact integer
    arithmetic), so every edge is a reference value. Ties collapse edges by one rule:
    repeated edges are kept once and edges equal to the reference maximum are
    dropped. Every reference bin is therefore non-empty; a feature with heavy ties
    gets fewer bins, and a constant feature gets a single bin (PSI = JS = 0).
    """

    sorted_values: np.ndarray
    count: np.ndarray
    missing_rate: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    edges: np.ndarray
    n_edges: np.ndarray
    bin_proportions: np.ndarray
    n_bins: int
    # derived once from the fields above (not part of the state)
    _keys: np.ndarray = field(init=False, repr=False)
    _tie_start: np.ndarray = field(init=False, repr=False)
    _centered: np.ndarray = field(init=False, repr=False)
    _prefix: np.ndarray = field(init=False, repr=False)
    _center: np.ndarray = field(init=False, repr=False)
    _smoothed: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        values = self.sorted_values
        d, m_max = values.shape
        positions = np.arange(m_max, dtype=np.int64)
        # index of the first value of each run of ties: left = tie_start[right - 1]
        new_run = np.ones((d, m_max), dtype=bool)
        new_run[:, 1:] = values[:, 1:] != values[:, :-1]
        tie_start = np.maximum.accumulate(np.where(new_run, positions, 0), axis=1)
        # Wasserstein works on values centred at the median, to keep prefix sums small
        valid = positions < self.count[:, None]
        center_at = np.maximum((self.count - 1) // 2, 0)[:, None]
        center = np.take_along_axis(values, center_at, axis=1)[:, 0]
        center = np.where(self.count > 0, center, 0.0)
        centered = np.zeros((d, m_max + 1))
        centered[:, :m_max] = np.where(valid, values - center[:, None], 0.0)
        prefix = np.zeros((d, m_max + 1))
        np.cumsum(centered[:, :m_max], axis=1, out=prefix[:, 1:])
        valid_bins = np.arange(self.bin_proportions.shape[1]) <= self.n_edges[:, None]
        derived = {
            "_keys": _row_keys(values),
            "_tie_start": tie_start,
            "_centered": centered,
            "_prefix": prefix,
            "_center": center,
            "_smoothed": smooth_proportions(self.bin_proportions, valid_bins),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        _freeze(self)

    @property
    def n_features(self) -> int:
        """Number of features d."""
        return int(self.sorted_values.shape[0])

    @classmethod
    def fit(cls, reference: Any, n_bins: int = 10) -> NumericReference:
        """Prepare a reference sample.

        Parameters
        ----------
        reference
            (m, d) array of real numbers; non-finite values are skipped (their share
            is ``missing_rate``).
        n_bins
            Number of quantile bins for PSI and JS (at least 1); ties may collapse
            some (see the class Notes).

        Examples
        --------
        >>> import numpy as np
        >>> ref = NumericReference.fit(np.arange(100.0).reshape(50, 2), n_bins=5)
        >>> ref.edges[0]
        array([18., 38., 58., 78.])
        """
        n_bins = check_param("n_bins", n_bins, low=1, integer=True)
        values, one_d = as_batch(reference, "reference")
        if one_d:
            raise ValueError(f"reference must be a 2-D array of shape (m, d), got shape {np.shape(reference)}")
        m_rows, d = values.shape
        sorted_values, count = _sorted_rows(values)
        has_values = count > 0
        last = np.maximum(count - 1, 0)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            missing_rate = (m_rows - count) / np.float64(m_rows)
        minimum = np.where(has_values, sorted_values[:, 0], np.nan)
        maximum = np.where(has_values, np.take_along_axis(sorted_values, last, 1)[:, 0], np.nan)
        # inverted-CDF quantiles at k / n_bins: the ceil(k m / n_bins)-th smallest value
        k = np.arange(1, n_bins, dtype=np.int64)
        rank = (k[None, :] * count[:, None] + n_bins - 1) // n_bins - 1
        candidates = np.take_along_axis(sorted_values, np.maximum(rank, 0), axis=1)
        keep = has_values[:, None] & (candidates < maximum[:, None])
        keep[:, 1:] &= candidates[:, 1:] != candidates[:, :-1]
        order = np.argsort(~keep, axis=1, kind="stable")
        edges = np.where(
            np.take_along_axis(keep, order, axis=1),
            np.take_along_axis(candidates, order, axis=1),
            np.inf,
        )
        n_edges = keep.sum(axis=1).astype(np.int64)
        counts = _bin_counts(sorted_values, count, edges, n_edges)
        with np.errstate(invalid="ignore", divide="ignore"):
            proportions = np.where(has_values[:, None], counts / count[:, None], 0.0)
        return cls(
            sorted_values=sorted_values,
            count=count,
            missing_rate=missing_rate,
            minimum=minimum,
            maximum=maximum,
            edges=edges,
            n_edges=n_edges,
            bin_proportions=proportions,
            n_bins=n_bins,
        )

    def to_state(self) -> dict[str, Any]:
        """The fields as plain values and array copies (what :meth:`from_state` takes)."""
        return {
            f.name: (
                getattr(self, f.name).copy() if isinstance(getattr(self, f.name), np.ndarray) else getattr(self, f.name)
            )
            for f in fields(self)
            if f.init
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> NumericReference:
        """Rebuild a reference from :meth:`to_state` output."""
        arrays = {
            "sorted_values": np.float64,
            "count": np.int64,
            "missing_rate": np.float64,
            "minimum": np.float64,
            "maximum": np.float64,
            "edges": np.float64,
            "n_edges": np.int64,
            "bin_proportions": np.float64,
        }
        missing = set(arrays) - set(state)
        if missing or "n_bins" not in state:
            raise ValueError(f"state: expected a NumericReference state, missing {sorted(missing)}")
        kwargs = {k: np.array(state[k], dtype=t) for k, t in arrays.items()}
        return cls(n_bins=int(state["n_bins"]), **kwargs)


def _bin_counts(
    sorted_rows: np.ndarray,
    count: np.ndarray,
    edges: np.ndarray,
    n_edges: np.ndarray,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """(d, n_edges_max + 1) counts of the right-closed bins; 0 on padding bins."""
    d = sorted_rows.shape[0]
    at_or_below = _searchsorted_rows(sorted_rows, edges, "right", keys)
    real_edge = np.arange(edges.shape[1]) < n_edges[:, None]
    at_or_below = np.where(real_edge, at_or_below, count[:, None])
    cumulative = np.concatenate([np.zeros((d, 1), np.int64), at_or_below, count[:, None]], axis=1)
    return np.diff(cumulative, axis=1)


@dataclass(frozen=True, eq=False)
class NumericDrift:
    """Drift statistics of one window, one entry per feature (all (d,) arrays).

    Attributes
    ----------
    ks_statistic, ks_p_value
        Two-sample Kolmogorov-Smirnov statistic and asymptotic two-sided p-value.
    psi
        Population stability index over the reference's quantile bins.
    js
        Jensen-Shannon distance (natural logarithm, scipy's default) over those bins.
    wasserstein
        Wasserstein-1 distance between the window and reference samples.
    n
        Finite window values per feature.
    skipped
        Non-finite window values per feature.
    out_of_range_rate
        Share of finite window values outside the reference's [minimum, maximum].
    missing_rate
        Share of the window's rows whose value is non-finite.
    """

    ks_statistic: np.ndarray
    ks_p_value: np.ndarray
    psi: np.ndarray
    js: np.ndarray
    wasserstein: np.ndarray
    n: np.ndarray
    skipped: np.ndarray
    out_of_range_rate: np.ndarray
    missing_rate: np.ndarray

    def __post_init__(self) -> None:
        _freeze(self)


def numeric_drift(reference: NumericReference, window: Any) -> NumericDrift:
    """Compare a window with a prepared reference, every feature at once.

    Parameters
    ----------
    reference
        A :class:`NumericReference` with d features.
    window
        (n, d) array of real numbers; non-finite values are skipped and counted.

    Returns
    -------
    NumericDrift

    Notes
    -----
    * KS: the statistic equals ``scipy.stats.ks_2samp``'s exactly (the same counts
      divided the same way). The p-value is Smirnov's asymptotic distribution,
      ``scipy.stats.kstwo.sf(D, round(m n / (m + n)))``, i.e. ``ks_2samp(...,
      method="asymp")``. ``method="auto"`` would switch to the exact distribution
      when both samples have at most 10,000 values, which costs O(m n / gcd(m, n))
      per feature in Python; the asymptotic value differs from it by about 0.001
      (absolute) for a 300-value window against 1,000 reference values. With one
      value on each side
      ``round(m n / (m + n)) = 0`` and the p-value is NaN.
    * scipy evaluates ``kstwo.sf`` element by element in Python (0.03 to 4 ms per
      feature); its two common branches for windows of more than 140 values, and the
      Durbin-matrix, Pomeranz and Smirnov branches of smaller ones, are computed here
      for many features at once (see ``_ks.kstwo_sf``: within about 6e-12 relative of
      scipy, all of it scipy's own rounding; the Durbin matrix bit for bit).
    * Wasserstein-1 is computed as the integral of ``|Q_window(p) - Q_reference(p)|``
      over p in [0, 1] with reference prefix sums (no merge of the two samples);
      it agrees with ``scipy.stats.wasserstein_distance`` to rounding.
    * PSI and JS use the reference's bins and the smoothing rule of the module
      docstring: ``psi = sum((q - p) * log(q / p))``,
      ``js = sqrt((KL(p || m) + KL(q || m)) / 2)``, ``m = (p + q) / 2``.
    * A feature with no finite window values (or no finite reference values) gets
      NaN statistics and NaN ``out_of_range_rate``; ``n`` and ``skipped`` are still
      counted. An empty window gives NaN everywhere except ``n = skipped = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = NumericReference.fit(rng.normal(size=(2000, 2)))
    >>> drift = numeric_drift(ref, rng.normal(loc=[0.0, 1.0], size=(500, 2)))
    >>> (drift.ks_p_value < 0.01).tolist()
    [False, True]
    """
    values, one_d = as_batch(window, "window")
    d = reference.n_features
    if one_d or values.shape[1] != d:
        raise ValueError(f"window must be a 2-D array of shape (n, {d}), got shape {np.shape(window)}")
    return NumericDrift(**_numeric_kernel(reference, values, 1))


def numeric_drift_windows(reference: NumericReference, windows: Any, *, extended: bool = True) -> NumericDrift:
    """:func:`numeric_drift` of several windows of one size at once.

    Parameters
    ----------
    reference
        A :class:`NumericReference` with d features.
    windows
        (w, n, d) array: w windows of n rows.
    extended
        False: the KS p-values that are computed again in long double (small windows,
        p-values from ~4e-4 to ~1e-2, ~3 ms each) keep their float64 value, within
        ~1e-11 relative of the exact one; :func:`unextended_p_values` lists them.
        Every other attribute, and every other p-value, is the same bit for bit. For a
        caller that needs the exact value of only a few windows (it computes those
        again alone).

    Returns
    -------
    NumericDrift
        Every attribute a (w, d) array whose row i is, bit for bit, the attribute of
        ``numeric_drift(reference, windows[i])``.

    Notes
    -----
    The windows' features are laid side by side as the w * d rows of one computation
    (each searches its feature's reference row), so the per-call cost is paid once
    for all the windows completed by a batch. The KS p-values of all the windows are
    evaluated in one call too, each window as a block of its own (``_ks.kstwo_sf``: two
    of its branches sum series over a padded length, which is then the window's own), so
    that a window's p-values do not depend on its neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ref = NumericReference.fit(rng.normal(size=(2000, 2)))
    >>> wins = rng.normal(size=(3, 100, 2))
    >>> both = numeric_drift_windows(ref, wins)
    >>> bool((both.ks_statistic[1] == numeric_drift(ref, wins[1]).ks_statistic).all())
    True
    """
    arr = np.asarray(windows)
    d = reference.n_features
    if arr.dtype.kind not in "biuf" or arr.ndim != 3 or arr.shape[2] != d:
        raise ValueError(
            f"windows must be a 3-D array of real numbers of shape (w, n, {d}), "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    w, n_rows = arr.shape[0], arr.shape[1]
    # window-major columns: column i * d + j is feature j of window i
    values = arr.astype(np.float64, copy=False).transpose(1, 0, 2).reshape(n_rows, w * d)
    out = _numeric_kernel(reference, values, w, extended)
    return NumericDrift(**{k: v.reshape(w, d) for k, v in out.items()})


def unextended_p_values(reference: NumericReference, drift: NumericDrift) -> np.ndarray:
    """Which KS p-values of ``numeric_drift_windows(reference, windows, extended=False)``
    may differ from the exact ones (a boolean array shaped like ``drift.ks_p_value``).

    The exact values are those of the same windows with ``extended=True`` (or of
    :func:`numeric_drift` of each window); a value listed here may already be exact.
    """
    m = np.broadcast_to(reference.count, drift.n.shape)
    listed: np.ndarray = extended_elements(drift.ks_statistic, m, drift.n, drift.ks_p_value)
    return listed


def _numeric_kernel(
    reference: NumericReference, values: np.ndarray, n_windows: int, extended: bool = True
) -> dict[str, np.ndarray]:
    """The statistics of the (n, n_windows * d) columns ``values`` (window-major: column
    i * d + j is feature j of window i) against the reference, as flat arrays."""
    d = reference.n_features
    n_rows = values.shape[0]
    row_of = np.tile(np.arange(d, dtype=np.int64), n_windows)  # the reference row of each column
    rows, n = _sorted_rows(values)
    m = reference.count[row_of]
    n_max = rows.shape[1]
    index = np.arange(n_max, dtype=np.int64)
    valid = index < n[:, None]
    usable = (n > 0) & (m > 0)
    n_safe = np.maximum(n, 1)[:, None]
    m_safe = np.maximum(m, 1)[:, None]

    # reference counts at or below (right) and strictly below (left) each window value
    right = _searchsorted_rows(reference.sorted_values, rows, "right", reference._keys, row_of)
    right = np.where(valid, np.minimum(right, m[:, None]), 0)
    last_at_or_below = np.maximum(right - 1, 0)
    tied = (right > 0) & (_take_rows(reference.sorted_values, last_at_or_below, row_of) == rows)
    left = np.where(tied, _take_rows(reference._tie_start, last_at_or_below, row_of), right)

    # KS: sup |F_ref - F_win| is reached just below or at a window value
    below = left / m_safe - index / n_safe
    at = (index + 1) / n_safe - right / m_safe
    ks = np.maximum(np.where(valid, np.maximum(below, at), 0.0).max(axis=1, initial=0.0), 0.0)
    ks = np.where(usable, ks, np.nan)

    # Wasserstein-1 over quantile functions: window quantile i covers p in [i/n, (i+1)/n)
    def integral(t: np.ndarray) -> np.ndarray:
        """H(t / (n m)) = integral of the centred reference quantile from 0 to p."""
        whole = t // n_safe
        frac = (t - whole * n_safe) / n_safe
        h: np.ndarray = (
            _take_rows(reference._prefix, whole, row_of) + frac * _take_rows(reference._centered, whole, row_of)
        ) / m_safe
        return h

    grid = np.minimum(np.arange(n_max + 1, dtype=np.int64)[None, :] * m[:, None], (n * m)[:, None])
    h_grid = integral(grid)
    crossing = np.clip(right * n_safe, grid[:, :-1], grid[:, 1:])
    centered_window = np.where(valid, rows - reference._center[row_of][:, None], 0.0)
    pieces = (
        centered_window * (2 * crossing - grid[:, :-1] - grid[:, 1:]) / (m_safe * n_safe)
        + h_grid[:, :-1]
        + h_grid[:, 1:]
        - 2.0 * integral(crossing)
    )
    wasserstein = np.where(usable, np.where(valid, pieces, 0.0).sum(axis=1), np.nan)

    # PSI and JS over the reference bins
    n_edges = reference.n_edges[row_of]
    counts = _bin_counts(rows, n, reference.edges[row_of], n_edges)
    valid_bins = np.arange(counts.shape[1]) <= n_edges[:, None]
    window_p = smooth_proportions(counts, valid_bins)
    with np.errstate(invalid="ignore"):
        psi, js = _psi_js(reference._smoothed[row_of], window_p)
    psi = np.where(usable, psi, np.nan)
    js = np.where(usable, js, np.nan)

    outside = valid & ((right == 0) | (left == m[:, None]))
    with np.errstate(invalid="ignore", divide="ignore"):
        out_of_range_rate = np.where(usable, outside.sum(axis=1) / n, np.nan)
        missing_rate = (n_rows - n) / np.float64(n_rows)
    # one block per window: see numeric_drift_windows' Notes
    block = None if n_windows == 1 else np.repeat(np.arange(n_windows, dtype=np.int64), d)
    p_value = ks_p_value(ks, m, n, block, extended)
    return {
        "ks_statistic": ks,
        "ks_p_value": p_value,
        "psi": psi,
        "js": js,
        "wasserstein": wasserstein,
        "n": n,
        "skipped": n_rows - n,
        "out_of_range_rate": out_of_range_rate,
        "missing_rate": np.broadcast_to(missing_rate, (n.size,)).copy(),
    }


# ---- categorical ---------------------------------------------------------------------


def _as_codes(codes: Any, n_categories: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(codes)
    d = n_categories.size
    if arr.dtype.kind not in "iu" or arr.ndim != 2 or arr.shape[1] != d:
        raise ValueError(
            f"{name} must be a 2-D integer array of shape (n, {d}) of category codes, "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < -1) | (arr > n_categories[None, :])
    if bad.any():
        row, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{name}: codes of feature {j} must lie in -1 (missing) .. {n_categories[j]} "
            f"(other), got {arr[row, j]} in row {row}"
        )
    return arr


def _bucket_layout(n_categories: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each feature's codes go in one flat bincount: per feature the slots
    missing, 0 .. K_j - 1, other. Returns the (d,) shift to add to code + 0 (so that -1
    lands on the feature's first slot), the (d, K_max + 2) gather index back to a padded
    layout (padding points at the always-empty slot ``total``), and ``total``."""
    slots = n_categories + 2
    starts = np.concatenate([[0], np.cumsum(slots)[:-1]]).astype(np.int64)
    total = int(slots.sum())
    width = int(n_categories.max(initial=0)) + 2
    column = np.arange(width)[None, :]
    gather = np.where(column < slots[:, None], starts[:, None] + column, total)
    return starts + 1, gather, total


def _bucket_counts(codes: np.ndarray, layout: tuple[np.ndarray, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature counts of codes 0..K_j (K_j = other) as a (d, K_max + 1) array with
    zero padding, and the (d,) counts of missing codes (-1): one offset bincount."""
    shift, gather, total = layout
    counts = np.bincount((codes + shift).ravel(), minlength=total + 1)[gather]
    return counts[:, 1:], counts[:, 0]


@dataclass(frozen=True, eq=False)
class CategoricalReference:
    """A categorical reference sample prepared for :func:`categorical_drift`.

    Codes per feature j: ``0 .. K_j - 1`` known categories, ``K_j`` "other" (a value
    not in the reference vocabulary), ``-1`` missing.

    Attributes
    ----------
    n_categories
        (d,) int64: K_j, the vocabulary size of each feature.
    proportions
        (d, K_max + 1) float64: raw share of each code 0..K_j among the non-missing
        reference values (the last real bucket, index K_j, is "other"); 0 on padding.
    count
        (d,) int64: non-missing reference values per feature.
    missing_rate
        (d,) float64: share of missing reference values.
    """

    n_categories: np.ndarray
    proportions: np.ndarray
    count: np.ndarray
    missing_rate: np.ndarray
    _smoothed: np.ndarray = field(init=False, repr=False)
    _valid: np.ndarray = field(init=False, repr=False)
    _layout: tuple[np.ndarray, np.ndarray, int] = field(init=False, repr=False)
    _counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        valid = np.arange(self.proportions.shape[1]) <= self.n_categories[:, None]
        object.__setattr__(self, "_smoothed", smooth_proportions(self.proportions, valid))
        # The bucket counts, exactly: each proportion is count_k / count correctly
        # rounded, so times count it lies within a few ulp of the integer count_k.
        counts = np.rint(self.proportions * self.count[:, None].astype(np.float64))
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(self, "_valid", valid)
        object.__setattr__(self, "_layout", _bucket_layout(self.n_categories))
        _freeze(self)

    @property
    def n_features(self) -> int:
        """Number of features d."""
        return self.n_categories.size

    @classmethod
    def fit(cls, codes: Any, n_categories: Sequence[int]) -> CategoricalReference:
        """Prepare a reference sample of category codes.

        Parameters
        ----------
        codes
            (m, d) integer array of codes in -1 .. K_j.
        n_categories
            The d vocabulary sizes K_j (each >= 0).

        Examples
        --------
        >>> import numpy as np
        >>> ref = CategoricalReference.fit(np.array([[0], [1], [1], [-1]]), [2])
        >>> ref.proportions.round(3).tolist(), ref.missing_rate.tolist()
        ([[0.333, 0.667, 0.0]], [0.25])
        """
        sizes = np.asarray(n_categories)
        if sizes.size == 0:  # no categorical feature (an all-numeric model): d = 0
            sizes = sizes.astype(np.int64).reshape(0)
        if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or (sizes < 0).any():
            raise ValueError(f"n_categories must be a sequence of d integers >= 0, got {n_categories!r}")
        sizes = sizes.astype(np.int64)
        arr = _as_codes(codes, sizes, "codes")
        buckets, missing = _bucket_counts(arr, _bucket_layout(sizes))
        count = buckets.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            proportions = np.where(count[:, None] > 0, buckets / count[:, None], 0.0)
            missing_rate = missing / np.float64(arr.shape[0])
        return cls(n_categories=sizes, proportions=proportions, count=count, missing_rate=missing_rate)

    def to_state(self) -> dict[str, Any]:
        """The fields as array copies (what :meth:`from_state` takes)."""
        return {f.name: getattr(self, f.name).copy() for f in fields(self) if f.init}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CategoricalReference:
        """Rebuild a reference from :meth:`to_state` output."""
        try:
            return cls(
                n_categories=np.array(state["n_categories"], dtype=np.int64),
                proportions=np.array(state["proportions"], dtype=np.float64),
                count=np.array(state["count"], dtype=np.int64),
                missing_rate=np.array(state["missing_rate"], dtype=np.float64),
            )
        except KeyError as exc:
            raise ValueError(f"state: expected a CategoricalReference state, missing {exc}") from None


@dataclass(frozen=True, eq=False)
class CategoricalDrift:
    """Drift statistics of one window of codes, one entry per feature ((d,) arrays).

    Attributes
    ----------
    chi2_statistic, chi2_p_value
        Pearson's chi-square test of homogeneity of the reference's and the window's
        counts over the K_j + 1 buckets (categories and "other"); degrees of freedom:
        the buckets seen in either sample, minus one.
    psi
        Population stability index over the same buckets (smoothed proportions).
    tv
        Total variation distance between the raw bucket proportions.
    unseen_rate
        Share of non-missing window codes equal to "other" (K_j).
    missing_rate
        Share of window rows with the missing code (-1).
    n
        Non-missing window codes per feature.
    skipped
        Missing window codes per feature.
    """

    chi2_statistic: np.ndarray
    chi2_p_value: np.ndarray
    psi: np.ndarray
    tv: np.ndarray
    unseen_rate: np.ndarray
    missing_rate: np.ndarray
    n: np.ndarray
    skipped: np.ndarray

    def __post_init__(self) -> None:
        _freeze(self)


def categorical_drift(reference: CategoricalReference, codes: Any) -> CategoricalDrift:
    """Compare a window of category codes with a prepared reference, all features at once.

    Parameters
    ----------
    reference
        A :class:`CategoricalReference` with d features.
    codes
        (n, d) integer array of codes in -1 .. K_j.

    Returns
    -------
    CategoricalDrift

    Notes
    -----
    * The chi-square is Pearson's test of homogeneity of the reference's and the
      window's bucket counts (:func:`~driftline.detectors.homogeneity.chi2_homogeneity`,
      the ``correction=False`` case of ``scipy.stats.chi2_contingency``), the test the
      monitor's alarms use: both samples' noise counts, so a category the reference
      never saw is not drift by itself (the unseen rate reports it).
    * A feature with no non-missing window codes, or whose reference had none, gets
      NaN PSI, TV and unseen rate, and chi-square 0 with p-value 1 (nothing to test);
      so does a feature whose buckets seen in both samples together number one (for
      ``K_j = 0`` PSI and TV are then 0).
    * TV uses raw proportions (it needs no smoothing).

    Examples
    --------
    >>> import numpy as np
    >>> ref = CategoricalReference.fit(np.array([[0], [1]] * 50), [2])
    >>> drift = categorical_drift(ref, np.array([[0]] * 30 + [[2]] * 10))
    >>> drift.unseen_rate.tolist(), bool(drift.chi2_p_value[0] < 1e-6)
    ([0.25], True)
    """
    if not isinstance(reference, CategoricalReference):
        raise ValueError(f"reference must be a CategoricalReference, got {type(reference).__name__}")
    arr = _as_codes(codes, reference.n_categories, "codes")
    buckets, missing = _bucket_counts(arr, reference._layout)
    return CategoricalDrift(**_categorical_kernel(reference, buckets, missing, arr.shape[0], None))


def categorical_drift_windows(reference: CategoricalReference, codes: Any) -> CategoricalDrift:
    """:func:`categorical_drift` of several windows of one size at once.

    Parameters
    ----------
    reference
        A :class:`CategoricalReference` with d features.
    codes
        (w, n, d) integer array: w windows of n rows of codes in -1 .. K_j.

    Returns
    -------
    CategoricalDrift
        Every attribute a (w, d) array whose row i is, bit for bit, the attribute of
        ``categorical_drift(reference, codes[i])``.

    Examples
    --------
    >>> import numpy as np
    >>> ref = CategoricalReference.fit(np.array([[0], [1]] * 50), [2])
    >>> wins = np.array([[[0]] * 40, [[0]] * 30 + [[2]] * 10])
    >>> categorical_drift_windows(ref, wins).unseen_rate.tolist()
    [[0.0], [0.25]]
    """
    if not isinstance(reference, CategoricalReference):
        raise ValueError(f"reference must be a CategoricalReference, got {type(reference).__name__}")
    arr = np.asarray(codes)
    d = reference.n_features
    if arr.ndim != 3 or arr.shape[2] != d:
        raise ValueError(
            f"codes must be a 3-D integer array of shape (w, n, {d}) of category codes, "
            f"got dtype {arr.dtype} and shape {arr.shape}"
        )
    w, n_rows = arr.shape[0], arr.shape[1]
    row_of = np.tile(np.arange(d, dtype=np.int64), w)
    sizes = reference.n_categories[row_of]
    # window-major columns: column i * d + j is feature j of window i
    flat = _as_codes(arr.transpose(1, 0, 2).reshape(n_rows, w * d), sizes, "codes")
    buckets, missing = _bucket_counts(flat, _bucket_layout(sizes))
    out = _categorical_kernel(reference, buckets, missing, n_rows, row_of)
    return CategoricalDrift(**{k: v.reshape(w, d) for k, v in out.items()})


def _categorical_kernel(
    reference: CategoricalReference, buckets: np.ndarray, missing: np.ndarray, n_rows: int, row_of: np.ndarray | None
) -> dict[str, np.ndarray]:
    """The statistics of bucket counts (one row per column of the window(s); ``row_of``
    names each row's reference feature, default: row j is feature j)."""

    def ref(a: np.ndarray) -> np.ndarray:
        return a if row_of is None else a[row_of]

    sizes = ref(reference.n_categories)
    n = buckets.sum(axis=1)
    usable = (n > 0) & (ref(reference.count) > 0)
    valid = ref(reference._valid)
    smoothed = ref(reference._smoothed)
    window_p = smooth_proportions(buckets, valid)
    chi2, p_value = chi2_homogeneity(ref(reference._counts), buckets.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        psi = ((window_p - smoothed) * np.log(window_p / smoothed)).sum(1)
        raw = buckets / n[:, None]
        tv = 0.5 * np.abs(np.where(valid, raw - ref(reference.proportions), 0.0)).sum(axis=1)
        unseen = buckets[np.arange(sizes.size), sizes] / n
        missing_rate = missing / np.float64(n_rows)
    return {
        "chi2_statistic": chi2,
        "chi2_p_value": p_value,
        "psi": np.where(usable, psi, np.nan),
        "tv": np.where(usable, tv, np.nan),
        "unseen_rate": np.where(usable, unseen, np.nan),
        "missing_rate": missing_rate,
        "n": n,
        "skipped": missing,
    }
