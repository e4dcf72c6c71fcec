"""The Kolmogorov-Smirnov distribution's numerics, vectorized (private).

:func:`ks_p_value` is the two-sided p-value of ``scipy.stats.ks_2samp(method="asymp")``
for many features at once; :func:`kstwo_sf` re-implements ``scipy.stats.kstwo.sf`` with
its common branches evaluated for all elements at once: Smirnov's exact sum and the
Pelz-Good approximation for ``n > 140``, and for ``n <= 140`` (windows of up to ~140
values) the Durbin matrix (:func:`durbin_sf`, scipy's arithmetic bit for bit), Pomeranz's
recursion (:func:`pomeranz_sf`) and scipy's own ``special.smirnov``. scipy's
element-by-element code does the rest (the closed forms at the ends, ``x >= 0.5``, tiny
statistics at ``n > 140``). The values computed one group at a time (scipy's side,
Durbin's and Pomeranz's) are memoized on the exact arguments (the same values come back
bit for bit; see :func:`_memoized`). An element's value never depends on the other
elements of a call (or, with ``block``, on the other blocks'). Used by
:func:`driftline.detectors.statistics.numeric_drift`; tested against scipy on every
branch (``tests/detectors/test_statistics.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = [
    "SMIRNOV_MAX_N",
    "durbin_sf",
    "extended_elements",
    "ks_p_value",
    "kstwo_sf",
    "pelz_good_cdf",
    "pomeranz_sf",
    "smirnov_sf",
]

Array = NDArray[np.float64]


def ks_p_value(
    statistic: Array,
    n_reference: Array,
    n_window: Array,
    block: NDArray[np.int64] | None = None,
    extended: bool = True,
) -> Array:
    """Two-sided KS p-value as ``ks_2samp(method="asymp")``: ``kstwo.sf(D, round(n_e))``
    with ``n_e = m n / (m + n)``.

    ``block`` (one integer per element, default: all in one block) makes each element's
    value what it would be in a call with only its own block's elements: see
    :func:`kstwo_sf` (the monitor passes one block per window). ``extended=False``
    skips the long-double recomputation of :func:`pomeranz_sf` (see
    :func:`extended_elements`).
    """
    p_value = np.full(statistic.shape, np.nan)
    effective_n = _effective_n(n_reference, n_window)
    # effective_n rounds to 0 only for one value against one: no asymptotic p-value
    ok = np.isfinite(statistic) & (effective_n >= 1)
    if ok.any():
        blocks = None if block is None else block[ok]
        p_value[ok] = np.clip(kstwo_sf(statistic[ok], effective_n[ok], blocks, extended), 0.0, 1.0)
    return p_value


def _effective_n(n_reference: Array, n_window: Array) -> Array:
    large = np.maximum(n_reference, n_window).astype(np.float64)
    small = np.minimum(n_reference, n_window).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        effective_n: Array = np.round(large * small / (large + small))
    return effective_n


def extended_elements(statistic: Array, n_reference: Array, n_window: Array, p_value: Array) -> NDArray[np.bool_]:
    """The elements whose :func:`ks_p_value` is computed again in long double
    (:func:`pomeranz_sf`), given their p-values from ``ks_p_value(..., extended=False)``:
    Pomeranz's branch of :func:`kstwo_sf` with a p-value below ``n``
    :data:`POMERANZ_EXTENDED_BELOW`. Every other p-value of ``extended=False`` is the
    exact call's, bit for bit (a p-value the memo already held is exact too, and may be
    listed here: listing it only costs a recomputation that hits the memo).
    """
    n = _effective_n(n_reference, n_window)
    with np.errstate(invalid="ignore"):
        t = n * statistic
        squared = t * statistic
        pomeranz = (
            (statistic > 0.0)
            & (statistic < 0.5)
            & (t > 1.0)
            & (t < n - 1)
            & (n <= SMALL_N_MAX)
            & (n == np.floor(n))
            & (squared > 0.754693)
            & (squared <= 4.0)
        )
        flagged: NDArray[np.bool_] = pomeranz & (p_value < n * POMERANZ_EXTENDED_BELOW)
    return flagged


SMIRNOV_MAX_N = 20_000


SMALL_N_MAX = 140
"""scipy's bound on n for its small-n branches (Durbin matrix, Pomeranz, ``smirnov``)."""


def kstwo_sf(x: Array, n: Array, block: NDArray[np.int64] | None = None, extended: bool = True) -> Array:
    """``scipy.stats.kstwo.sf(x, n)``, with its common branches vectorized.

    scipy evaluates ``kstwo.sf`` element by element in Python (``_ksstats._kolmogn``).
    For ``1 < n x < n - 1``, ``x < 0.5`` it takes one of these branches, selected here
    by the same float tests:

    * ``n > 140`` (any window of a few hundred values):

      - ``2.2 <= n x^2 < 370`` (a drifting feature): ``2 * smirnov(n, x)``, an exact
        sum costing ~0.4 ms per element at n ~ 1,000. Evaluated here for all elements
        at once as the Birnbaum-Tingey sum
        ``smirnov(n, x) = x sum_{j=0}^{floor(n (1 - x))} C(n, j) (1 - x - j/n)^(n - j)
        (x + j/n)^(j - 1)`` in log space (positive terms: relative error ~1e-12), for
        ``n <= SMIRNOV_MAX_N`` (bounds the (elements, n) temporary array).
      - ``n x^2 >= 370``: 0.
      - ``n x^2 < 2.2`` and not (``n <= 100000`` and ``n x^1.5 <= 1.4``): 1 minus
        the Pelz-Good (1976) approximation of the CDF, the same series as scipy's
        ``_kolmogn_PelzGood`` summed directly instead of by Horner's scheme.

    * ``n <= 140`` (windows of up to ~140 values, integer n):

      - ``n x^2 <= 0.754693`` (p-values above ~0.4: about half the windows that do
        not drift): 1 minus the Durbin-matrix CDF, :func:`durbin_sf`, scipy's own
        arithmetic for many elements at once: the same values bit for bit.
      - ``0.754693 < n x^2 <= 4`` (p-values from ~0.4 down to ~4e-4): 1 minus
        Pomeranz's (1974) CDF, :func:`pomeranz_sf` (~4 ms per element in scipy).
        Differs from scipy by at most 6e-12 relative (on a grid of every n from 2 to
        140), at the smallest p-values, where that is scipy's own rounding (``1 - CDF``
        loses three digits at p ~ 6e-4): against the exact value (rational
        arithmetic) this one is within 1e-14, scipy off by up to 6e-12.
      - ``n x^2 > 4``: ``2 * scipy.special.smirnov(n, x)``, scipy's own ufunc: the
        same values bit for bit.

    Every other element (the closed forms at the ends, ``x >= 0.5``, tiny statistics
    at ``n > 140``) goes to scipy. The values of scipy's side, Durbin's and Pomeranz's
    are memoized (:func:`_memoized`).

    Parameters
    ----------
    x, n
        Statistics and sample sizes, (k,) float64.
    block
        (k,) integers, default: one block. An element's value equals, bit for bit, its
        value in a call with only the elements of its block: the two series of the
        ``n > 140`` branches are summed over a width padded to the widest element of
        the block (which sets the rounding of numpy's pairwise sum), every other
        branch is element by element.
    extended
        False: Pomeranz's p-values below ``n`` :data:`POMERANZ_EXTENDED_BELOW` keep
        their float64 value (within ~1e-11 relative of the exact one) instead of being
        computed again in long double (~3 ms each); they are not memoized.
    """
    t = n * x
    squared = t * x
    inside = (x > 0.0) & (x < 0.5) & (t > 1.0) & (t < n - 1)
    common = inside & (n > SMALL_N_MAX)
    smirnov = common & (n <= SMIRNOV_MAX_N) & (squared >= 2.2) & (squared < 370.0)
    zero = common & (squared >= 370.0)
    with np.errstate(invalid="ignore"):
        pelz_good = common & (squared < 2.2) & ~((n <= 100_000) & (n * x**1.5 <= 1.4))
    # a non-integer n stays on scipy's side, which rejects it
    small = inside & (n <= SMALL_N_MAX) & (n == np.floor(n))
    durbin = small & (squared <= 0.754693)
    pomeranz = small & (squared > 0.754693) & (squared <= 4.0)
    small_smirnov = small & (squared > 4.0)
    result = np.zeros(x.shape)
    scipy_side = ~(smirnov | zero | pelz_good | durbin | pomeranz | small_smirnov)
    if scipy_side.any():
        result[scipy_side] = _scipy_kstwo_sf(x[scipy_side], n[scipy_side])
    if smirnov.any():
        sx, sn, st = x[smirnov], n[smirnov], t[smirnov]
        widths = _block_widths(np.floor(sn * (1.0 - sx)).astype(np.int64) + 1, block, smirnov)
        result[smirnov] = _by_width(widths, lambda i, w: 2.0 * smirnov_sf(sn[i], st[i], sx[i], w))
    if pelz_good.any():
        px, pn = x[pelz_good], n[pelz_good]
        widths = _block_widths(np.ceil(16 * (np.sqrt(pn) * px) / np.pi).astype(np.int64), block, pelz_good)
        result[pelz_good] = _by_width(widths, lambda i, w: np.clip(1.0 - pelz_good_cdf(pn[i], px[i], w), 0.0, 1.0))
    if durbin.any():
        result[durbin] = _memoized(x[durbin], n[durbin], lambda x, n: durbin_sf(n, x))
    if pomeranz.any():
        if extended:
            result[pomeranz] = _memoized(x[pomeranz], n[pomeranz], lambda x, n: pomeranz_sf(n, x))
        else:
            result[pomeranz] = _memoized(
                x[pomeranz],
                n[pomeranz],
                lambda x, n: pomeranz_sf(n, x, extended=False),
                final=lambda sf, n: sf >= n * POMERANZ_EXTENDED_BELOW,
            )
    if small_smirnov.any():
        result[small_smirnov] = np.clip(2.0 * special.smirnov(n[small_smirnov], x[small_smirnov]), 0.0, 1.0)
    return result


def _block_widths(
    width: NDArray[np.int64], block: NDArray[np.int64] | None, chosen: NDArray[np.bool_]
) -> NDArray[np.int64]:
    """Each element's padded width: the largest ``width`` among the elements of its block."""
    if block is None:
        return np.full(width.shape, int(width.max()))
    _, inverse = np.unique(block[chosen], return_inverse=True)
    widest = np.zeros(int(inverse.max()) + 1, dtype=np.int64)
    np.maximum.at(widest, inverse, width)
    return widest[inverse]


def _by_width(widths: NDArray[np.int64], compute: Callable[[NDArray[np.intp], int], Array]) -> Array:
    """``compute(members, width)`` for each group of elements of one padded width."""
    out = np.empty(widths.shape)
    for width in np.unique(widths).tolist():
        members = np.flatnonzero(widths == width)
        out[members] = compute(members, width)
    return out


MEMO_SIZE = 1 << 16
"""Entries of the memo of the values computed one group at a time (:func:`_memoized`):
about 10 MB."""

_memo: dict[tuple[float, float], float] = {}
_memo_lock = threading.Lock()  # writers only: a read of a dict is atomic


def _scipy_kstwo_sf(x: Array, n: Array) -> Array:
    """``scipy.stats.kstwo.sf(x, n)``, memoized on the exact ``(x, n)`` pair (:func:`_memoized`).

    The elements :func:`kstwo_sf` leaves to scipy are evaluated one by one in Python;
    for ``n <= 140`` (windows of up to about 140 values) that is mostly the Durbin
    matrix power (small statistics, ~0.3 ms each).
    """
    from scipy import stats  # scipy.stats takes ~0.6 s to import: only when first needed

    return _memoized(x, n, lambda x, n: np.asarray(stats.kstwo.sf(x, n), dtype=np.float64).reshape(-1))


def _memoized(
    x: Array,
    n: Array,
    compute: Callable[[Array, Array], Array],
    final: Callable[[Array, Array], NDArray[np.bool_]] | None = None,
) -> Array:
    """``compute(x, n)``, memoized on the exact ``(x, n)`` pair.

    For the values computed element by element: scipy's side of :func:`kstwo_sf` and
    :func:`pomeranz_sf` (~0.5 ms an element). Their arguments repeat: a
    window of n complete values against a reference of m has a KS statistic among
    the few thousand values ``|k / m - i / n|`` near the no-drift range, and the
    effective n is the same in every window; so the memo returns, bit for bit, the
    value computed the first time (``compute`` gives each element the same value alone
    or among others; an ``(x, n)`` pair always takes the same branch, so one memo
    serves both). A pure function's cache (like ``functools.lru_cache``): bounded by
    :data:`MEMO_SIZE` entries, the oldest dropped first. ``final(values, n)``, if given,
    says which computed values may be memoized (the others are not the exact ones).
    """
    keys = list(zip(x.tolist(), n.tolist(), strict=True))
    cache = _memo
    out = np.array([cache.get(k, np.nan) for k in keys], dtype=np.float64)
    todo = np.isnan(out)
    if todo.any():
        computed = compute(x[todo], n[todo])
        out[todo] = computed
        missed = (k for k, t in zip(keys, todo.tolist(), strict=True) if t)
        keep = [True] * len(computed) if final is None else final(computed, n[todo]).tolist()
        with _memo_lock:
            for k, value, exact in zip(missed, computed.tolist(), keep, strict=True):
                if value == value and exact:  # never memoize NaN: it marks a miss
                    cache[k] = value
            while len(cache) > MEMO_SIZE:
                del cache[next(iter(cache))]
    return out


def smirnov_sf(n: Array, t: Array, x: Array, width: int | None = None) -> Array:
    """One-sided exact ``smirnov(n, x)`` (Birnbaum-Tingey sum), ``t = n x``; the terms
    are summed over ``width`` columns (default: the most any element has), the columns
    past an element's last term holding zeros."""
    n, t, x = n[:, None], t[:, None], x[:, None]
    last = np.floor(n * (1.0 - x))
    j = np.arange(int(last.max()) + 1 if width is None else width, dtype=np.float64)[None, :]
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


def pelz_good_cdf(n: Array, x: Array, width: int | None = None) -> Array:
    """Pelz-Good approximation of P(D_n <= x), as scipy's ``_kolmogn_PelzGood``; the
    series are summed over ``width`` terms (default: the most any element has), the
    terms past an element's last holding zeros."""
    pi2, pi4, pi6 = np.pi**2, np.pi**4, np.pi**6
    sqrt2pi = np.sqrt(2 * np.pi)
    z = (np.sqrt(n) * x)[:, None]
    z2, z3, z4, z6 = z**2, z**3, z**4, z**6
    qlog = -pi2 / 8 / z2
    max_k = np.ceil(16 * z / np.pi)
    k = np.arange(1, (int(max_k.max()) if width is None else width) + 1, dtype=np.float64)[None, :]
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


_TWO_128 = 2.0**128


def durbin_sf(n: Array, x: Array) -> Array:
    """``1 - P(D_n <= x)`` by the Durbin matrix (Marsaglia, Tsang and Wang, 2003), scipy's
    ``_kolmogn_DMTW`` for many elements at once: the same values bit for bit.

    For integer ``n`` and ``n x > 1`` (:func:`kstwo_sf` uses it for ``n <= 140``,
    ``n x^2 <= 0.754693`` as scipy does).

    Notes
    -----
    scipy raises a ``(2k - 1)``-square matrix (``k = ceil(n x)``) to the power n by
    squaring, rescaling by ``2^-128`` when its middle entry passes ``2^128``, then
    multiplies the entry by ``n! / n^n`` one factor at a time, switching to
    ``np.longdouble`` once it falls below ``2^-128``. Here the elements of one
    ``(n, k)`` are raised together (a stack of contiguous matrices: numpy hands each to
    BLAS alone, the product scipy computes) and the factors are applied to all elements
    at once, each element keeping its own scale and precision: every operation is
    scipy's, on the same operands.
    """
    nd = n * x
    k = np.ceil(nd).astype(np.int64)
    sizes = n.astype(np.int64)
    entry = np.empty(x.shape)
    expnt = np.empty(x.shape, dtype=np.int64)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(sizes.tolist(), k.tolist(), strict=True)):
        groups.setdefault(key, []).append(i)
    for (size, kk), members in groups.items():
        chosen = np.array(members)
        entry[chosen], expnt[chosen] = _durbin_power(size, kk, kk - nd[chosen])
    # p = entry * n! / n^n, factor by factor for all elements at once: float64 until it
    # falls below 2^-128, then np.longdouble (scipy's p *= 2^128 with a longdouble
    # constant changes its type). An element past its own n keeps its p (which was
    # checked when it last changed).
    p, exponent = entry, expnt
    wide = np.zeros(x.shape, dtype=bool)
    p_wide = np.zeros(x.shape, dtype=np.longdouble)
    tiny, scale = np.longdouble(2.0**-128), np.longdouble(_TWO_128)
    smallest = int(sizes.min(initial=0))
    with np.errstate(under="ignore"):
        for i in range(1, int(sizes.max(initial=0)) + 1):
            if i <= smallest:
                p = i * p / n
            else:
                p = np.where(sizes >= i, i * p / n, p)
            fall = ~wide & (np.abs(p) < tiny)
            if wide.any():
                p_wide = i * p_wide / n if i <= smallest else np.where(sizes >= i, i * p_wide / n, p_wide)
                again = wide & (np.abs(p_wide) < tiny)
                if again.any():
                    p_wide[again] *= scale
                    exponent[again] -= 128
            if fall.any():
                p_wide[fall] = p[fall].astype(np.longdouble) * scale
                exponent[fall] -= 128
                wide |= fall
    sf = np.empty(x.shape)
    narrow = ~wide
    sf[narrow] = _one_minus(np.ldexp(p[narrow], exponent[narrow]))  # ldexp by 0: unchanged
    sf[wide] = _one_minus(np.ldexp(p_wide[wide], exponent[wide]))
    return sf


def _durbin_power(n: int, k: int, h: Array) -> tuple[Array, NDArray[np.int64]]:
    """The middle entry of scipy's scaled ``H^n`` and its scale (a power of two) for the
    elements of one ``(n, k)`` of :func:`durbin_sf`, ``h = k - n x``."""
    m = 2 * k - 1
    intm = np.arange(1, m + 1)
    # w[j] = 1 / j! by scipy's successive divisions; v[j] = (1 - h^(j+1)) / (j+1)!
    w = np.empty(m)
    facs = np.empty(m)
    fac = 1.0
    for j in intm.tolist():
        w[j - 1] = fac
        fac /= j
        facs[j - 1] = fac
    v = np.empty((h.size, m))
    for e, he in enumerate(h.tolist()):
        # scipy's scalar arithmetic, element by element (numpy's vectorized power may
        # round differently from its scalar one)
        h_e = np.float64(he)
        v[e] = (1.0 - h_e**intm) * facs
        tt = max(2 * h_e - 1.0, 0) ** m - 2 * h_e**m
        v[e, -1] = (1.0 + tt) * fac
    rows, cols = np.indices((m, m))
    band = (cols >= 1) & (rows >= cols - 1)
    H = np.zeros((h.size, m, m))
    H[:, band] = w[(rows - cols + 1)[band]]
    H[:, :, 0] = v
    H[:, -1, :] = v[:, ::-1]
    power = np.broadcast_to(np.eye(m), H.shape).copy()
    expnt = np.zeros(h.size, dtype=np.int64)
    h_expnt = np.zeros(h.size, dtype=np.int64)
    nn = n
    while nn > 0:
        if nn % 2:
            power = np.matmul(power, H)
            expnt += h_expnt
        H = np.matmul(H, H)
        h_expnt *= 2
        big = np.abs(H[:, k - 1, k - 1]) > _TWO_128
        if big.any():
            H[big] /= _TWO_128
            h_expnt[big] += 128
        nn //= 2
    return power[:, k - 1, k - 1].copy(), expnt


POMERANZ_EXTENDED_BELOW = 1e-4
""":func:`pomeranz_sf` recomputes in ``np.longdouble`` the p-values below this times n."""


def pomeranz_sf(n: Array, x: Array, extended: bool = True) -> Array:
    """``1 - P(D_n <= x)`` by Pomeranz's (1974) recursion, as scipy's ``_kolmogn_Pomeranz``.

    For integer ``n`` and ``1 < n x < n - 1``; :func:`kstwo_sf` uses it for
    ``n <= 140``, ``0.754693 < n x^2 <= 4`` as scipy does.

    Notes
    -----
    scipy runs the recursion row by row, ``2 n + 1`` rows each a convolution of the
    previous one with Poisson-like weights, for one element at a time. With
    ``t = n x = ll + f``, the weights depend on ``g = min(f, 1 - f)`` only and the band of
    each row on ``(ll, ceil(f), round(f))`` only; between the first and the last two rows
    the rows come in pairs (weights ``(2 g / n)^m / m!`` and ``((1 - 2 g) / n)^m / m!``)
    whose band moves by one. scipy clips the band to ``0..n``, which changes nothing: the
    convolutions only move mass upward, from 0 to the answer's entry n. So the middle
    rows are one fixed ``(w, w)`` matrix (``w ~ 2 ll``) raised to the power ``n - 1``
    by squaring (~2 log2(n) BLAS products instead of 2 n Python-level convolutions);
    grouped by ``(n, ll, ceil(f), round(f))``, the elements of a group as one stack of
    C-ordered matrices. A value must not depend on the others in the call (the memo
    keeps it): numpy hands each matrix of a C-ordered stack to BLAS alone, the same
    product as for the element alone (a stack in another layout takes numpy's own loop,
    which rounds differently), and each element is rescaled on its own, by exact powers
    of two when its products leave ``2^-256 .. 2^256`` (scipy rescales by ``2^128``:
    float64 would underflow for n near 140).

    Precision: the CDF carries an absolute error of up to ~``n / 4`` float64 epsilons
    (8e-15 at n = 140; scipy's row-by-row float64 up to half that), which ``1 - CDF``
    turns into a relative error of up to 1e-11 at the branch's smallest p-values
    (~6e-4). So a p-value below ``n`` :data:`POMERANZ_EXTENDED_BELOW` (~1% of the
    elements of windows that do not drift) is computed again in ``np.longdouble``
    (80-bit on x86-64; numpy multiplies its matrices without BLAS, so this runs pair by
    pair with ``np.convolve``): within 1e-14 of the exact value, where scipy is off by up
    to 6e-12. Above it the float64 value is within 7e-13 (measured on a grid of n up to
    140). Where ``np.longdouble`` is float64 (Windows, macOS on arm64) the small
    p-values keep float64's 1e-11. Cost: ~0.03-0.3 ms an element in float64 (less the
    more elements a group has), ~3 ms in longdouble (scipy: ~4 ms), on this project's
    shared 2-core test machine; ``extended=False`` skips the longdouble recomputation
    (the caller finds those elements with :func:`extended_elements`).
    """
    t = n * x
    whole = np.floor(t)
    frac = t - whole
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    keys = zip(n.tolist(), whole.tolist(), (frac > 0.0).tolist(), (frac > 0.5).tolist(), strict=True)
    for i, key in enumerate(keys):
        groups.setdefault(tuple(map(int, key)), []).append(i)  # type: ignore[arg-type]
    sf = np.empty(x.shape)
    for shape, members in groups.items():
        chosen = np.array(members)
        group_sf = _one_minus(_pomeranz_cdf(*shape, frac[chosen], np.float64))
        small = group_sf < shape[0] * POMERANZ_EXTENDED_BELOW
        if extended and small.any():
            group_sf[small] = _one_minus(_pomeranz_cdf(*shape, frac[chosen[small]], np.longdouble))
        sf[chosen] = group_sf
    return sf


def _one_minus(cdf: NDArray[np.floating]) -> Array:
    """``1 - cdf`` in cdf's precision, as a float64 probability."""
    sf: Array = np.clip(1.0 - np.clip(cdf, 0.0, 1.0), 0.0, 1.0).astype(np.float64)
    return sf


_RESCALE_BELOW, _RESCALE_ABOVE = 2.0**-256, 2.0**256


def _pomeranz_cdf(
    n: int, ll: int, ceilf: int, roundf: int, frac: Array, dtype: type[np.floating]
) -> NDArray[np.floating]:
    """``P(D_n <= (ll + frac) / n)`` for one group of :func:`pomeranz_sf`, in ``dtype``."""
    g = np.minimum(frac, 1.0 - frac)
    npwrs = 2 * (ll + 1)  # scipy's number of weights: the widest band
    # the weights (g/n)^m/m!, (2g/n)^m/m!, ((1-2g)/n)^m/m!, from scipy's float64 ratios
    ratio = np.stack([g / n, 2 * g / n, (1 - 2 * g) / n]).astype(dtype)
    steps = ratio[:, :, None] / np.arange(1, npwrs, dtype=dtype)
    weights = np.concatenate([np.ones(ratio.shape + (1,), dtype=dtype), np.cumprod(steps, axis=2)], axis=2)
    g_power, two_g_power, rest_power = weights
    # the row after each odd step i (scipy's j1..j2), relative to (i + 1) / 2, and the
    # even step's row, relative to i / 2
    odd_band = np.arange(-ll - roundf, ll + ceilf - 1)
    even_band = np.arange(-ll, ll + roundf)

    def toeplitz(power: NDArray[np.floating], rows: NDArray[np.int_], cols: NDArray[np.int_]) -> NDArray[np.floating]:
        lag = cols[None, :] - rows[:, None]  # entry (k, j): power[j - k], zero below
        inside = (lag >= 0) & (lag < npwrs)
        # C order: numpy hands each matrix of a C-ordered stack to BLAS alone, the same
        # product whatever the stack (other layouts take numpy's own loop, whose
        # rounding differs)
        return np.ascontiguousarray(np.where(inside, power[:, np.clip(lag, 0, npwrs - 1)], 0.0))

    to_even = toeplitz(rest_power, odd_band, even_band)
    to_odd = toeplitz(two_g_power, even_band, odd_band + 1)  # the next half: one up
    # the row after step 1 (from row 0 = [1]): g_power, at 1 + odd_band
    first = 1 + odd_band
    row = np.ascontiguousarray(np.where(first >= 0, g_power[:, np.clip(first, 0, npwrs - 1)], 0.0)[:, None, :])
    row_exp = np.zeros(len(g), dtype=np.int64)
    if dtype is np.float64:
        # steps 2 .. 2n - 1: n - 1 pairs, by binary powering (BLAS products)
        pair, pair_exp = _rescaled(np.matmul(to_even, to_odd), np.zeros(len(g), dtype=np.int64))
        left = n - 1
        while left:
            if left & 1:
                row, row_exp = _rescaled(np.matmul(row, pair), row_exp + pair_exp)
            left >>= 1
            if left:
                pair, pair_exp = _rescaled(np.matmul(pair, pair), 2 * pair_exp)
    else:
        # pair by pair, element by element: numpy multiplies longdouble matrices without
        # BLAS (w^3 per product), and np.convolve does a row's Toeplitz product 4x faster
        # than matmul; the bands' offsets: even = conv[roundf:], odd = conv[1 - roundf:]
        for e in range(len(g)):
            values, scale = row[e, 0], 0
            for done in range(1, n):
                even = np.convolve(values, rest_power[e])[roundf : roundf + len(even_band)]
                values = np.convolve(even, two_g_power[e])[1 - roundf : 1 - roundf + len(odd_band)]
                if done % 8 == 0:  # a pair scales the row by ~1/n: 8 stay far from underflow
                    top = values.max()
                    if not _RESCALE_BELOW <= top <= _RESCALE_ABOVE and top > 0:
                        power = int(np.frexp(top)[1])
                        values, scale = np.ldexp(values, -power), scale + power
            row[e, 0], row_exp[e] = values, scale
    # step 2n (even), then step 2n + 1 keeps entry n: sum_k row[k] g_power[n - k]
    last = np.ascontiguousarray(
        np.where(even_band <= 0, g_power[:, np.clip(-even_band, 0, npwrs - 1)], 0.0)[:, :, None]
    )
    entry = np.matmul(np.matmul(row, to_even), last)[:, 0, 0]
    mantissa, exponent = np.frexp(_factorial(n, dtype))
    cdf: NDArray[np.floating] = np.ldexp(entry * mantissa, row_exp + exponent)
    return cdf


def _rescaled(a: NDArray[np.floating], exponent: NDArray[np.int64]) -> tuple[NDArray[np.floating], NDArray[np.int64]]:
    """``a`` (nonnegative, one matrix per element) and ``exponent``, with each element
    whose largest entry left ``2^-256 .. 2^256`` divided by the power of two that brings
    it into ``[0.5, 1)`` and that power added to its exponent: exact either way, and
    decided element by element (an element's value must not depend on its neighbours)."""
    top = a.max(axis=(1, 2))
    outside = ((top < _RESCALE_BELOW) | (top > _RESCALE_ABOVE)) & (top > 0)
    if not outside.any():
        return a, exponent
    _, power = np.frexp(top)
    power = np.where(outside, power, 0).astype(np.int64)
    return np.ascontiguousarray(np.ldexp(a, -power[:, None, None])), exponent + power


def _factorial(n: int, dtype: type[np.floating]) -> np.floating:
    """``n!`` rounded to ``dtype`` (from its leading 64 bits, which a uint64 holds)."""
    exact = math.factorial(n)
    if dtype is np.float64:
        return np.float64(float(exact))  # correctly rounded (n <= 170 is finite)
    shift = max(exact.bit_length() - 64, 0)
    return dtype(np.uint64(exact >> shift)) * dtype(2.0) ** shift
