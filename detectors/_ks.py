"""The Kolmogorov-Smirnov distribution's numerics, vectorized (private).

:func:`ks_p_value` is the two-sided p-value of ``scipy.stats.ks_2samp(method="asymp")``
for many features at once; :func:`kstwo_sf` re-implements ``scipy.stats.kstwo.sf`` with
its two common branches (Smirnov's exact sum and the Pelz-Good approximation)
evaluated for all elements at once, and scipy's element-by-element code for the rest,
memoized on the exact arguments (the same values come back bit for bit; see
:func:`_scipy_kstwo_sf`). Used by :func:`driftline.detectors.statistics.numeric_drift`; tested against scipy on
every branch (``tests/detectors/test_statistics.py``).
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

__all__ = ["SMIRNOV_MAX_N", "ks_p_value", "kstwo_sf", "pelz_good_cdf", "smirnov_sf"]

Array = NDArray[np.float64]


def ks_p_value(statistic: Array, n_reference: Array, n_window: Array) -> Array:
    """Two-sided KS p-value as ``ks_2samp(method="asymp")``: ``kstwo.sf(D, round(n_e))``
    with ``n_e = m n / (m + n)``."""
    p_value = np.full(statistic.shape, np.nan)
    large = np.maximum(n_reference, n_window).astype(np.float64)
    small = np.minimum(n_reference, n_window).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        effective_n = np.round(large * small / (large + small))
    # effective_n rounds to 0 only for one value against one: no asymptotic p-value
    ok = np.isfinite(statistic) & (effective_n >= 1)
    if ok.any():
        p_value[ok] = np.clip(kstwo_sf(statistic[ok], effective_n[ok]), 0.0, 1.0)
    return p_value


SMIRNOV_MAX_N = 20_000


def kstwo_sf(x: Array, n: Array) -> Array:
    """``scipy.stats.kstwo.sf(x, n)``, with its two common branches vectorized.

    scipy evaluates ``kstwo.sf`` element by element in Python (``_ksstats._kolmogn``).
    For ``n > 140`` (any window of a few hundred values) and ``1 < n x < n - 1``,
    ``x < 0.5`` it takes one of these branches, selected here by the same float
    tests:

    * ``2.2 <= n x^2 < 370`` (a drifting feature): ``2 * smirnov(n, x)``, an exact
      sum costing ~0.4 ms per element at n ~ 1,000. Evaluated here for all elements
      at once as the Birnbaum-Tingey sum
      ``smirnov(n, x) = x sum_{j=0}^{floor(n (1 - x))} C(n, j) (1 - x - j/n)^(n - j)
      (x + j/n)^(j - 1)`` in log space (positive terms: relative error ~1e-12), for
      ``n <= SMIRNOV_MAX_N`` (bounds the (elements, n) temporary array).
    * ``n x^2 >= 370``: 0.
    * ``n x^2 < 2.2`` and not (``n <= 100000`` and ``n x^1.5 <= 1.4``): 1 minus
      the Pelz-Good (1976) approximation of the CDF, the same series as scipy's
      ``_kolmogn_PelzGood`` summed directly instead of by Horner's scheme.

    Every other element (tiny or huge statistics, small n) goes to scipy.
    """
    t = n * x
    squared = t * x
    common = (n > 140) & (x > 0.0) & (x < 0.5) & (t > 1.0) & (t < n - 1)
    smirnov = common & (n <= SMIRNOV_MAX_N) & (squared >= 2.2) & (squared < 370.0)
    zero = common & (squared >= 370.0)
    with np.errstate(invalid="ignore"):
        pelz_good = common & (squared < 2.2) & ~((n <= 100_000) & (n * x**1.5 <= 1.4))
    result = np.zeros(x.shape)
    scipy_side = ~(smirnov | zero | pelz_good)
    if scipy_side.any():
        result[scipy_side] = _scipy_kstwo_sf(x[scipy_side], n[scipy_side])
    if smirnov.any():
        result[smirnov] = 2.0 * smirnov_sf(n[smirnov], t[smirnov], x[smirnov])
    if pelz_good.any():
        result[pelz_good] = np.clip(1.0 - pelz_good_cdf(n[pelz_good], x[pelz_good]), 0.0, 1.0)
    return result


SCIPY_CACHE_SIZE = 1 << 16
"""Entries of the memo of scipy's ``kstwo.sf`` (:func:`_scipy_kstwo_sf`): about 10 MB."""

_scipy_cache: dict[tuple[float, float], float] = {}
_scipy_cache_lock = threading.Lock()  # writers only: a read of a dict is atomic


def _scipy_kstwo_sf(x: Array, n: Array) -> Array:
    """``scipy.stats.kstwo.sf(x, n)``, memoized on the exact ``(x, n)`` pair.

    The elements :func:`kstwo_sf` leaves to scipy are evaluated one by one in Python;
    for ``n <= 140`` (windows of up to about 140 values) that is the Pomeranz
    recursion (~4 ms each) or the Durbin matrix power. Their arguments repeat: a
    window of n complete values against a reference of m has a KS statistic among
    the few thousand values ``|k / m - i / n|`` near the no-drift range, and the
    effective n is the same in every window; so the memo returns, bit for bit, the
    value scipy computed the first time. A pure function's cache (like
    ``functools.lru_cache``): bounded by :data:`SCIPY_CACHE_SIZE` entries, the oldest
    dropped first.
    """
    keys = list(zip(x.tolist(), n.tolist(), strict=True))
    cache = _scipy_cache
    out = np.array([cache.get(k, np.nan) for k in keys], dtype=np.float64)
    todo = np.isnan(out)
    if todo.any():
        computed = np.asarray(stats.kstwo.sf(x[todo], n[todo]), dtype=np.float64).reshape(-1)
        out[todo] = computed
        missed = (k for k, t in zip(keys, todo.tolist(), strict=True) if t)
        with _scipy_cache_lock:
            for k, value in zip(missed, computed.tolist(), strict=True):
                if value == value:  # never memoize NaN: it marks a miss
                    cache[k] = value
            while len(cache) > SCIPY_CACHE_SIZE:
                del cache[next(iter(cache))]
    return out


def smirnov_sf(n: Array, t: Array, x: Array) -> Array:
    """One-sided exact ``smirnov(n, x)`` (Birnbaum-Tingey sum), ``t = n x``."""
    n, t, x = n[:, None], t[:, None], x[:, None]
    last = np.floor(n * (1.0 - x))
    j = np.arange(int(last.max()) + 1, dtype=np.float64)[None, :]
    inside = j <= last
    with np.errstate(divide="ignore", invalid="ignore"):
        rest = np.where(inside, (n - j - t) / n, 1.0)  # 1 - x - j/n
        log_term = (
            special.gammaln(n + 1)
            - special.gammaln(j + 1)
            - special.gammaln(n - j + 1)
            + np.where(n - j > 0, (n - j) * np.log(rest), 0.0)
            + (j - 1) * np.log((t + j) / n)
        )
    log_term = np.where(inside & ((rest > 0) | (n - j == 0)), log_term, -np.inf)
    sf: Array = x[:, 0] * np.exp(log_term).sum(axis=1)
    return sf


def pelz_good_cdf(n: Array, x: Array) -> Array:
    """Pelz-Good approximation of P(D_n <= x), as scipy's ``_kolmogn_PelzGood``."""
    pi2, pi4, pi6 = np.pi**2, np.pi**4, np.pi**6
    sqrt2pi = np.sqrt(2 * np.pi)
    z = (np.sqrt(n) * x)[:, None]
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    qlog = -pi2 / 8 / z2
    max_k = np.ceil(16 * z / np.pi)
    k = np.arange(1, int(max_k.max()) + 1, dtype=np.float64)[None, :]
    inside = k <= max_k
    m2 = (2 * k - 1) ** 2
    weight = np.where(inside, np.exp(qlog * m2), 0.0)  # q^(m^2), m = 2k - 1
    k1 = (-z2 + pi2 / 4 * m2) * weight
    k2 = 6 * z6 + 2 * z4 + (2 * z4 - 5 * z2) * pi2 / 4 * m2 + pi4 * (1 - 2 * z2) / 16 * m2**2
    k3 = (
        -30 * z6
        - 90 * z**8
        + pi2 * (135 * z4 - 96 * z6) / 4 * m2
        + pi4 * (-60 * z2 + 212 * z4) / 16 * m2**2
        + pi6 * (5 - 30 * z2) / 64 * m2**3
    )
    k0 = weight.sum(axis=1) * sqrt2pi / z[:, 0]
    k1 = k1.sum(axis=1) * sqrt2pi / (6 * z4[:, 0])
    k2 = (k2 * weight).sum(axis=1) * sqrt2pi / (72 * z[:, 0] ** 7)
    k3 = (k3 * weight).sum(axis=1) * sqrt2pi / (6480 * z[:, 0] ** 10)
    q_all = np.where(inside, np.exp(-pi2 / 2 / z2 * k**2), 0.0)
    k2 = k2 + (k**2 * q_all).sum(axis=1) * pi2 * sqrt2pi / (-36 * z3[:, 0])
    sqrt3z = np.sqrt(3) * z
    k3 = k3 + ((sqrt3z + np.pi * k) * (sqrt3z - np.pi * k) * k**2 * q_all).sum(axis=1) * (
        pi2 * sqrt2pi / (216 * z6[:, 0])
    )
    n = n.astype(np.float64)
    cdf = k0 + k1 / np.sqrt(n) + k2 / n + k3 / n**1.5
    return np.where(qlog[:, 0] < -708, 0.0, cdf)
