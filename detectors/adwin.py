"""ADWIN (adaptive windowing), batch-vectorized and exact to river 0.26's ``ADWIN``.

Bifet, A. and Gavaldà, R. (2007). Learning from time-changing data with adaptive
windowing. In Proceedings of the 2007 SIAM International Conference on Data Mining,
pp. 443-448.

How a batch is evaluated at once
--------------------------------
river's ADWIN keeps an exponential histogram: level ``i`` holds at most
``max_buckets`` buckets of ``2**i`` samples, and a level that reaches
``max_buckets + 1`` buckets merges its two oldest into one bucket of the next level.
Two facts make the whole histogram a function of the samples seen since the last
reset:

* river 0.26 resets the detector on the sample after a drift (its ``update`` starts
  with ``if self.drift_detected: self._reset()``), so between drifts buckets are only
  ever inserted and merged, never deleted;
* merges always take the two oldest buckets of a level, so bucket ``j`` of level ``i``
  always holds samples ``[j * 2**i, (j + 1) * 2**i)`` of the segment, and how many
  buckets of each level exist after ``n`` samples follows from ``n`` alone
  (:func:`_created_counts`).

So a batch is handled level by level (a loop over the O(log n) levels, each one numpy
expression over all the batch's new buckets of that level), and every clock check of the
batch is evaluated at once: one row per check, one column per bucket boundary, with the
running sums taken along the rows by ``np.cumsum`` and ``np.subtract.accumulate``, which
add left to right exactly as river's loop does. The window's running total and variance
are prefix sums over the batch, again in river's order. The only Python loops are over
levels, over drifts (each drift restarts the detector, so the rest of the batch is
evaluated again from there), and one ``math.log`` per clock check (the libm ``log`` that
river's compiled core calls, rather than numpy's vectorized one, whose last bit may
differ).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import scan_with_restarts

__all__ = ["ADWIN"]

# Above this many (check, bucket) cells, the checks of a batch are evaluated in pieces.
_MAX_CELLS = 1 << 16


def _created_counts(n: Any, max_buckets: int, n_levels: int) -> np.ndarray:
    """How many buckets of each level were ever created after ``n`` insertions.

    Level 0 receives every sample; a level merges its two oldest buckets each time it
    reaches ``max_buckets + 1`` of them, so ``c[i + 1] = max(0, (c[i] - max_buckets +
    1) // 2)``, which unrolls to ``max(0, (n - (max_buckets - 1) * (2**i - 1)) >> i)``.
    Returns an int64 array of shape ``np.shape(n) + (n_levels,)``.

    Examples
    --------
    >>> _created_counts(12, 5, 4).tolist()
    [12, 4, 0, 0]
    """
    level = np.arange(n_levels, dtype=np.int64)
    shifted = np.asarray(n, dtype=np.int64)[..., None] - (max_buckets - 1) * ((1 << level) - 1)
    counts: np.ndarray = np.maximum(shifted >> level, 0)
    return counts


def _level_counts(n: int, max_buckets: int) -> list[int]:
    """:func:`_created_counts` of one ``n``, as Python ints, up to the top level."""
    counts = [n]
    while counts[-1] > max_buckets:
        counts.append((counts[-1] - max_buckets + 1) // 2)
    return counts


def _merge_pairs(totals: np.ndarray, variances: np.ndarray | None, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge consecutive pairs of buckets of ``size`` samples, in river's arithmetic order
    (``variances`` None: all zero, as for single samples, where ``0 + 0 + spread`` is
    ``spread`` and ``t / 1.0`` is ``t``)."""
    t0, t1 = totals[0::2], totals[1::2]
    diff = t0 - t1 if size == 1.0 else t0 / size - t1 / size
    spread = size * 0.5 * diff * diff
    if variances is None:
        return t0 + t1, spread
    return t0 + t1, (variances[0::2] + variances[1::2]) + spread


class ADWIN(ChangeDetector):
    r"""ADWIN change detector (Bifet & Gavaldà, 2007), batch-vectorized.

    Gives the same drift indices as ``river.drift.ADWIN`` (river 0.26) fed one sample at
    a time, whatever the batch sizes.

    Parameters
    ----------
    delta
        Significance value, in (0, 1].
    clock
        The window is checked for a change every ``clock`` samples (an int >= 1).
    max_buckets
        Buckets kept per level of the exponential histogram before the two oldest are
        merged (an int >= 1).
    min_window_length
        Smallest sub-window length considered at a cut (an int >= 1).
    grace_period
        No change is looked for until the window holds more than this many samples
        (an int >= 0).

    Notes
    -----
    After a drift, river 0.26 discards the whole window on the next sample (it rebuilds
    its core), so this detector restarts from an empty window right after the drifting
    sample; :attr:`width` is then 0. Memory is O(``max_buckets`` * log n) between
    batches. Values are processed as float64; non-finite values are skipped and counted
    by the base class; finite values so large that the window's sums overflow give
    inf/nan statistics and, as in river, no cut. With ``max_buckets=1`` river 0.26's
    core panics when it shrinks a window after a cut; this class reports that drift.

    Python loops: over the O(log n) levels of the histogram, over drifts, over blocks of
    checks (to bound temporaries) and one ``math.log`` per clock check (see the module
    docstring); never over samples.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> stream = np.concatenate([rng.normal(0.0, 1.0, 1000), rng.normal(3.0, 1.0, 1000)])
    >>> detector = ADWIN()
    >>> found = detector.update(stream)
    >>> bool(1000 <= found.drifts[0] < 1100)
    True
    """

    _PARAMS = ("delta", "clock", "max_buckets", "min_window_length", "grace_period")
    _STATE_KEYS = ("_width", "_total", "_variance", "_bucket_totals", "_bucket_variances")

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta: float = check_param("delta", delta, low=0, high=1, low_open=True)
        self.clock: int = check_param("clock", clock, low=1, integer=True)
        self.max_buckets: int = check_param("max_buckets", max_buckets, low=1, integer=True)
        self.min_window_length: int = check_param("min_window_length", min_window_length, low=1, integer=True)
        self.grace_period: int = check_param("grace_period", grace_period, low=0, integer=True)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen (river's ``_reset``)."""
        self._reset_columns()
        self._restart()

    def _restart(self) -> None:
        self._width = 0
        self._total = 0.0
        self._variance = 0.0
        # Buckets alive in the histogram: level 0 first, oldest first within a level;
        # how many sit on each level follows from ``_width``.
        self._bucket_totals = np.empty(0, dtype=np.float64)
        self._bucket_variances = np.empty(0, dtype=np.float64)

    def _stream_started(self) -> bool:
        return self._width > 0 or self._total != 0.0

    @property
    def width(self) -> int:
        """Samples in the current window (0 right after a drift)."""
        return self._width

    @property
    def estimation(self) -> float:
        """Mean of the current window (0.0 when it is empty)."""
        return self._total / self._width if self._width else 0.0

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        drifts, _ = scan_with_restarts(x, self._scan, self._restart, pace=self._pace())
        return drifts, EMPTY_INDEX

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        # Values near the float64 limit overflow the window's sums to inf and the cut
        # statistics to nan, as in river's loop (where nan compares false: no cut).
        with np.errstate(over="ignore", invalid="ignore"):
            return self._advance(x), EMPTY_INDEX

    def _advance(self, x: np.ndarray) -> int:
        """Feed ``x`` from the current state; return the index of the first drift in
        ``x`` (state then undefined: the caller restarts) or -1 (state advanced)."""
        max_buckets = self.max_buckets
        width0 = self._width
        width1 = width0 + x.size
        counts0 = _level_counts(width0, max_buckets)
        counts1 = _level_counts(width1, max_buckets)
        n_levels = len(counts1)

        # Window total and variance after each sample (river's incremental update).
        totals = np.cumsum(np.concatenate(([self._total], x)))
        before = np.arange(width0, width1, dtype=np.float64)  # window length before each
        # 0 / 0 at an empty window is replaced below
        with np.errstate(invalid="ignore"):
            delta_v = x - totals[:-1] / before
        increments = before * delta_v * delta_v / (before + 1.0)
        if width0 == 0:
            increments[0] = 0.0
        variances = np.cumsum(np.concatenate(([self._variance], increments)))

        # Per level, every bucket alive at some point of the batch: the ones alive
        # before it, then the ones it creates; first_index[level] is the number (within
        # its level) of the first one.
        counts0 += [0] * (n_levels + 1 - len(counts0))
        level_totals, level_variances, first_index = [], [], []
        new_totals, new_variances = x, None
        held = 0
        for level in range(n_levels):
            first = 2 * counts0[level + 1]
            alive = counts0[level] - first
            old_t = self._bucket_totals[held : held + alive]
            old_v = self._bucket_variances[held : held + alive]
            held += alive
            if new_totals.size:
                if new_variances is None:
                    new_variances = np.zeros_like(new_totals)
                old_t = np.concatenate((old_t, new_totals)) if alive else new_totals
                old_v = np.concatenate((old_v, new_variances)) if alive else new_variances
            level_totals.append(old_t)
            level_variances.append(old_v)
            first_index.append(first)
            # Merges into the next level take pairs from the oldest bucket held here.
            n_merged = 2 * ((counts1[level + 1] if level + 1 < n_levels else 0) - counts0[level + 1])
            if n_merged:
                new_totals, new_variances = _merge_pairs(
                    old_t[:n_merged], old_v[:n_merged] if level else None, float(1 << level)
                )
            else:
                new_totals = new_variances = x[:0]

        hit = self._first_drift(width0, width1, totals, variances, level_totals, first_index)
        if hit >= 0:
            return hit

        counts1.append(0)
        keep_t, keep_v = [], []
        for level in range(n_levels):
            start = 2 * counts1[level + 1] - first_index[level]
            stop = counts1[level] - first_index[level]
            keep_t.append(level_totals[level][start:stop])
            keep_v.append(level_variances[level][start:stop])
        self._width = width1
        self._total = float(totals[-1])
        self._variance = float(variances[-1])
        self._bucket_totals = np.concatenate(keep_t)
        self._bucket_variances = np.concatenate(keep_v)
        return -1

    def _first_drift(
        self,
        width0: int,
        width1: int,
        totals: np.ndarray,
        variances: np.ndarray,
        level_totals: list[np.ndarray],
        first_index: list[int],
    ) -> int:
        """Evaluate every clock check in ``(width0, width1]`` at once; return the batch
        index of the first check that finds a cut, or -1."""
        clock, min_len, max_buckets = self.clock, self.min_window_length, self.max_buckets
        # A check needs more than grace_period samples and room for two sub-windows.
        lowest = max(self.grace_period + 1, 2 * min_len, width0 + 1)
        first_check = -(-lowest // clock) * clock
        if first_check > width1:
            return -1
        n_levels = len(level_totals)
        cells = max_buckets * n_levels
        step = max(1, _MAX_CELLS // cells) * clock
        for begin in range(first_check, width1 + 1, step):
            checks = np.arange(begin, min(width1, begin + step - clock) + 1, clock, dtype=np.int64)
            hit = self._first_cut(checks, width0, totals, variances, level_totals, first_index)
            if hit >= 0:
                return hit
        return -1

    def _first_cut(
        self,
        checks: np.ndarray,
        width0: int,
        totals: np.ndarray,
        variances: np.ndarray,
        level_totals: list[np.ndarray],
        first_index: list[int],
    ) -> int:
        max_buckets, min_len = self.max_buckets, self.min_window_length
        n_levels = len(level_totals)
        counts = _created_counts(checks, max_buckets, n_levels + 1)
        # Columns: levels from the top down, then buckets oldest first (river's scan).
        # Level i holds buckets 2 * counts[i + 1] .. counts[i] - 1 at a check.
        counts_here, counts_next = counts[:, n_levels - 1 :: -1], counts[:, n_levels:0:-1]
        sizes = [t.size for t in level_totals]
        level_start = np.cumsum([0] + sizes[:-1]) - np.asarray(first_index)
        slot = np.arange(max_buckets)
        index = (level_start[::-1] + 2 * counts_next)[:, :, None] + slot
        valid = slot < (counts_here - 2 * counts_next)[:, :, None]
        # Padding cells read a 0.0 appended after the buckets: they repeat the cut
        # before them (same n0, n1, u0, u1), so they change no decision.
        flat_totals = np.concatenate(level_totals + [np.zeros(1)])
        index = np.where(valid, index, flat_totals.size - 1).reshape(checks.size, -1)
        bucket_totals = flat_totals[index]
        bucket_sizes = np.repeat(2.0 ** np.arange(n_levels - 1, -1, -1), max_buckets)
        n0 = np.cumsum(valid.reshape(checks.size, -1) * bucket_sizes, axis=1)
        width = checks.astype(np.float64)
        n1 = width[:, None] - n0
        u0 = np.cumsum(bucket_totals, axis=1)
        at = checks - width0
        u1 = np.empty((checks.size, bucket_totals.shape[1] + 1))
        u1[:, 0] = totals[at]
        u1[:, 1:] = bucket_totals
        np.subtract.accumulate(u1, axis=1, out=u1)
        # The cut after the last bucket has n1 == 0 (river's exit_flag): excluded here.
        candidate = (n0 >= min_len) & (n1 >= min_len)
        delta_prime = np.array([math.log(2.0 * math.log(w) / self.delta) for w in width.tolist()])
        variance = variances[at] / width
        with np.errstate(divide="ignore", invalid="ignore"):  # non-candidate cells
            delta_mean = u0 / n0 - u1[:, 1:] / n1
            m_recip = 1.0 / (n0 - (min_len - 1)) + 1.0 / (n1 - (min_len - 1))
            epsilon = np.sqrt(2.0 * m_recip * variance[:, None] * delta_prime[:, None])
            epsilon += (2.0 / 3.0 * delta_prime)[:, None] * m_recip
            cut = candidate & (np.abs(delta_mean) > epsilon)
        rows = np.flatnonzero(cut.any(axis=1))
        return int(checks[rows[0]] - width0 - 1) if rows.size else -1
