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
  (:func:`_level_counts`).

A bucket's variance only serves river's ``delete_element``, which runs after a cut has
already decided the drift, on a window that river then discards: it never changes a
drift, :attr:`ADWIN.width` or :attr:`ADWIN.estimation`, so only bucket totals are kept.

A batch is handled level by level: each level's new buckets are the pairwise sums
``t0 + t1`` of the level below (river's ``total12``), one numpy expression per level
while a level receives many merges, plain Python floats (the same IEEE additions) for
the upper levels that receive a few. Every clock check of the batch is then evaluated
at once: one row per check, one column per (level, slot) of the histogram, top level
first as river scans it, and the running sums are taken along the rows by
``cumsum`` and ``np.subtract.accumulate``, which add left to right exactly as
river's loop does. The window's running total and variance are prefix sums over the
batch, again in river's order.

What depends on the window's width alone is computed once per check width and kept in
tables shared by the detectors with the same parameters (a service runs one per
model): which bucket sits in each (level, slot), the sub-window lengths ``n0 = (j + 1)
* 2**i`` and ``n1``, river's ``m_recip`` (set to inf where a sub-window is shorter than
``min_window_length``, so that no separate test is needed), and ``delta'`` (two libm
``log`` calls, as river's core makes them, rather than numpy's vectorized ``log``,
whose last bit may differ). The tables are bounded (:data:`_TABLE_CELLS`,
:data:`_DP_TABLE_MAX`); checks of longer windows compute the same values directly.

A batch of at most ``_SCALAR_MAX`` samples (the service's concept detector sees a few
labels per model and batch) skips the vectorized path's fixed cost: its samples go
through river's insertion one at a time in Python, and each clock check it holds is
one row of the same check.

The only Python loops are over levels, over drifts (each drift restarts the detector,
so the rest of the batch is evaluated again from there), over blocks of checks, and
over the samples of a batch of at most ``_SCALAR_MAX``.
"""

from __future__ import annotations

import math

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import scan_with_restarts

__all__ = ["ADWIN"]

# Above this many (check, bucket) cells, the checks of a batch are evaluated in pieces.
_MAX_CELLS = 1 << 16
# Batches of at most this many samples are inserted one sample at a time in Python:
# below it, that costs less than the vectorized path's fixed ~60 numpy calls (measured:
# the two cost the same at 50 to 60 samples).
_SCALAR_MAX = 48
# A level receiving fewer merges than this in one scan is merged in Python floats,
# cheaper than the numpy calls of a level (same IEEE additions).
_PY_MERGES = 12
# delta' is tabulated for the first this many checks after a reset (8 bytes each,
# shared by the detectors with the same delta and clock).
_DP_TABLE_MAX = 4096
# Cells (32 bytes each) of one shared table of the check's structure (about 8 MB: with
# the default parameters, the checks of windows up to ~110,000 samples), and how many
# parameter sets keep a table.
_TABLE_CELLS = 1 << 18
_TABLE_KEYS = 4
# A padding slot's bucket number: clips to the 0.0 after the buckets.
_NO_BUCKET = 1 << 62


def _level_counts(n: int, max_buckets: int) -> list[int]:
    """How many buckets of each level were ever created after ``n`` insertions, up to
    the top level (which holds at most ``max_buckets``).

    Level 0 receives every sample; a level merges its two oldest buckets each time it
    reaches ``max_buckets + 1`` of them, so ``c[i + 1] = max(0, (c[i] - max_buckets +
    1) // 2)``, which unrolls to ``max(0, (n - (max_buckets - 1) * (2**i - 1)) >> i)``.
    Level ``i`` holds the buckets numbered ``2 * c[i + 1]`` to ``c[i] - 1``.

    Examples
    --------
    >>> _level_counts(12, 5)
    [12, 4]
    """
    counts = [n]
    while counts[-1] > max_buckets:
        counts.append((counts[-1] - max_buckets + 1) // 2)
    return counts


def _check_structure(
    first: int, stop: int, clock: int, max_buckets: int, min_window_length: int, n_levels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The parts of river's check that depend on the window's width alone, for the
    checks at widths ``k * clock``, ``first <= k < stop``: one row per check, one column
    per (level, slot), levels ``n_levels - 1`` down to 0 (river's scan order), slots
    oldest first.

    Returns
    -------
    number
        int64: the number of the bucket in each slot (level ``i`` holds buckets
        ``2 * c[i + 1]`` to ``c[i] - 1``); ``_NO_BUCKET`` in a padding slot, past a
        level's last bucket.
    n0
        float64: the length of sub-window W0 when it ends after that slot, ``(j + 1) *
        2**i`` for bucket ``j`` of level ``i``; a padding slot repeats the cut before it
        (same n0 and, its bucket total being 0.0, the same u0 and u1), so it changes no
        decision.
    n1
        float64: the length of sub-window W1, the width minus n0.
    m_recip
        float64: river's ``1 / (n0 - min_window_length + 1) + 1 / (n1 -
        min_window_length + 1)``, or inf where a sub-window is shorter than
        ``min_window_length`` (river does not evaluate those cuts; this includes the
        cut after the last bucket, river's ``exit_flag``).
    """
    shifts = np.arange(n_levels, -1, -1, dtype=np.int64)
    lags = (max_buckets - 1) * ((np.int64(1) << shifts) - 1)
    checks = np.arange(first, stop, dtype=np.int64) * clock
    counts = np.maximum((checks[:, None] - lags) >> shifts, 0)
    here = counts[:, 1:, None]
    # the bucket number + 1 in each slot: level i holds 2 * c[i + 1] .. c[i] - 1
    number = (counts[:, :-1, None] << 1) + np.arange(1, max_buckets + 1, dtype=np.int64)
    rows = checks.size
    n0 = (np.minimum(number, here) << shifts[1:, None]).reshape(rows, -1).astype(np.float64)
    number = np.where(number <= here, number - 1, _NO_BUCKET).reshape(rows, -1)
    n1 = checks[:, None].astype(np.float64) - n0
    # n0 - min_window_length + 1.0 in river: exact on these integers
    with np.errstate(divide="ignore"):
        m_recip = 1.0 / np.maximum(n0 - (min_window_length - 1), 0.0)
        m_recip += 1.0 / np.maximum(n1 - (min_window_length - 1), 0.0)
    return number, n0, n1, m_recip


#: Shared tables of river's delta' by (delta, clock): entry k is the value at width
#: k * clock (see :meth:`ADWIN._delta_primes`).
_DELTA_PRIMES: dict[tuple[float, int], np.ndarray] = {}

#: Shared tables of :func:`_check_structure` by (clock, max_buckets,
#: min_window_length): (n_levels, number, n0, n1, m_recip) for the checks at widths
#: 0, clock, 2 * clock, ... A cache of values that depend on the parameters alone
#: (not state), shared by the detectors of a process (a service runs one per model).
_CheckTable = tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_CHECK_TABLES: dict[tuple[int, int, int], _CheckTable] = {}


def _check_table(clock: int, max_buckets: int, min_window_length: int, stop: int) -> _CheckTable | None:
    """The shared table of :func:`_check_structure` covering checks ``k < stop``
    (grown by doubling), or None if that would exceed ``_TABLE_CELLS`` cells."""
    key = (clock, max_buckets, min_window_length)
    table = _CHECK_TABLES.get(key)
    if table is not None and table[1].shape[0] >= stop:
        return table
    size = max(2 * stop, 64)
    n_levels = len(_level_counts((size - 1) * clock, max_buckets))
    size = min(size, _TABLE_CELLS // (n_levels * max_buckets))
    if size < stop:
        return None
    arrays = _check_structure(0, size, clock, max_buckets, min_window_length, n_levels)
    for array in arrays:
        array.setflags(write=False)
    if key not in _CHECK_TABLES and len(_CHECK_TABLES) >= _TABLE_KEYS:
        del _CHECK_TABLES[next(iter(_CHECK_TABLES))]
    table = _CHECK_TABLES[key] = (n_levels, *arrays)
    return table


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
    batches, plus the tables shared by the detectors with the same parameters (at most
    about 8 MB per parameter set, for four sets; see the module docstring). Values are
    processed as float64; non-finite values are skipped and counted by the base class;
    finite values so large that the window's sums overflow give inf/nan statistics and,
    as in river, no cut. With ``max_buckets=1`` river 0.26's core panics when it shrinks a window
    after a cut; this class reports that drift. A state saved before bucket variances
    were dropped (it has a ``bucket_variances`` field) loads, and that field is ignored.

    Python loops: over the O(log n) levels of the histogram, over drifts, over blocks of
    checks (to bound temporaries), and over the samples of batches of at most 48 (see
    the module docstring).

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
    _STATE_KEYS = ("_width", "_total", "_variance", "_bucket_totals")
    # the two forms of _bucket_totals (see that property)
    _flat: np.ndarray | None
    _lists: list[list[float]] | None

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
        self._bucket_totals = np.empty(0, dtype=np.float64)

    @property
    def _bucket_totals(self) -> np.ndarray:
        """Bucket totals alive in the histogram: level 0 first, oldest first within a
        level; how many sit on each level follows from ``_width``. Kept as this array
        (by batches) or as one list per level (by :meth:`_feed_samples`, which then
        saves the conversions), whichever was written last."""
        if self._flat is None:
            self._flat = np.array([t for bucket in self._lists or () for t in bucket], dtype=np.float64)
        return self._flat

    @_bucket_totals.setter
    def _bucket_totals(self, value: np.ndarray) -> None:
        self._flat = value
        self._lists = None

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
        if x.size <= _SCALAR_MAX:
            return self._feed_samples(x), EMPTY_INDEX
        # Values near the float64 limit overflow the window's sums to inf and the cut
        # statistics to nan, as in river's loop (where nan compares false: no cut); the
        # check also divides by empty sub-windows in cells it then ignores.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            drifts, _ = scan_with_restarts(x, self._scan, self._restart, pace=self._pace())
        return drifts, EMPTY_INDEX

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        return self._advance(x), EMPTY_INDEX

    # ---- a few samples: river's insertion, one sample at a time -------------------------
    def _feed_samples(self, x: np.ndarray) -> np.ndarray:
        """Feed ``x`` one sample at a time (river's ``insert_element`` and
        ``compress_buckets`` on Python floats), restarting after each drift; return the
        drift indices."""
        max_buckets, clock = self.max_buckets, self.clock
        lowest = max(self.grace_period + 1, 2 * self.min_window_length)
        width, total, variance = self._width, self._total, self._variance
        levels = self._levels()
        drifts: list[int] = []
        for i, value in enumerate(x.tolist()):
            if width:
                # river: width += 1; delta_v = value - total / (width - 1);
                # variance += (width - 1) * delta_v * delta_v / width
                delta_v = value - total / width
                variance += width * delta_v * delta_v / (width + 1)
            width += 1
            total += value
            bucket = levels[0]
            bucket.append(value)
            level = 0
            while len(bucket) > max_buckets:
                merged = bucket[0] + bucket[1]
                del bucket[:2]
                level += 1
                if level == len(levels):
                    levels.append([])
                bucket = levels[level]
                bucket.append(merged)
            if width % clock == 0 and width >= lowest and self._cut_now(width, total, variance, levels):
                drifts.append(i)
                width, total, variance, levels = 0, 0.0, 0.0, [[]]
        self._width, self._total, self._variance = width, total, variance
        self._flat, self._lists = None, levels
        return np.array(drifts, dtype=np.int64) if drifts else EMPTY_INDEX

    def _levels(self) -> list[list[float]]:
        """The alive bucket totals of each level (level 0 first), as lists."""
        if self._lists is not None:
            return self._lists
        counts = _level_counts(self._width, self.max_buckets) + [0]
        flat = self._bucket_totals.tolist()
        levels: list[list[float]] = []
        start = 0
        for level in range(len(counts) - 1):
            stop = start + counts[level] - 2 * counts[level + 1]
            levels.append(flat[start:stop])
            start = stop
        return levels

    def _cut_now(self, width: int, total: float, variance: float, levels: list[list[float]]) -> bool:
        """River's check at ``width`` samples on the histogram ``levels``."""
        counts = _level_counts(width, self.max_buckets) + [0]
        flat: list[float] = []
        offsets: list[int] = []
        for level in range(len(counts) - 1):
            offsets.append(len(flat) - 2 * counts[level + 1])
            flat += levels[level]
        flat.append(0.0)
        # see _update_stream
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            row = self._first_cut(
                width, width, len(counts) - 1, np.array(flat), offsets, np.array([total]), np.array([variance])
            )
        return row >= 0

    # ---- a batch at once --------------------------------------------------------------
    def _advance(self, x: np.ndarray) -> int:
        """Feed ``x`` from the current state; return the index of the first drift in
        ``x`` (state then undefined: the caller restarts) or -1 (state advanced)."""
        max_buckets = self.max_buckets
        width0, n = self._width, x.size
        width1 = width0 + n
        counts0 = _level_counts(width0, max_buckets)
        counts1 = _level_counts(width1, max_buckets)
        n_levels = len(counts1)
        counts0 += [0] * (n_levels + 1 - len(counts0))
        counts1.append(0)

        # Window total and variance after each sample (river's incremental update).
        totals = np.empty(n + 1)
        totals[0] = self._total
        totals[1:] = x
        totals.cumsum(out=totals)
        before = np.arange(width0, width1, dtype=np.float64)  # window length before each
        if width0 == 0:
            before[0] = 1.0  # river adds nothing for the first sample (set below)
        delta_v = totals[:-1] / before
        np.subtract(x, delta_v, out=delta_v)
        variances = np.empty(n + 1)
        variances[0] = self._variance
        # (width - 1) * delta_v * delta_v / width, in place
        increments = np.multiply(before, delta_v, out=variances[1:])
        increments *= delta_v
        before += 1.0
        increments /= before
        if width0 == 0:
            increments[0] = 0.0
        variances.cumsum(out=variances)

        # Per level, every bucket alive at some point of the batch: the ones alive
        # before it, then the ones it creates, each level in its region of ``flat``
        # (level 0 first); the bucket numbered j of a level is flat[offsets[level] + j].
        state = self._bucket_totals
        alives = [counts0[level] - 2 * counts0[level + 1] for level in range(n_levels)]
        sizes = [alives[level] + counts1[level] - counts0[level] for level in range(n_levels)]
        flat = np.empty(sum(sizes) + 1)
        flat[-1] = 0.0  # the check's padding slots read this 0.0
        offsets: list[int] = []
        held = position = previous = 0
        level = 0
        while level < n_levels:
            created = counts1[level] - counts0[level]
            if level and created < _PY_MERGES:
                break
            alive = alives[level]
            if alive:
                flat[position : position + alive] = state[held : held + alive]
                held += alive
            start = position + alive
            if level:
                # pairs of the level below, from its oldest bucket (river's total12)
                pairs = flat[previous : previous + 2 * created]
                np.add(pairs[0::2], pairs[1::2], out=flat[start : start + created])
            else:
                flat[start : start + n] = x
            offsets.append(position - 2 * counts0[level + 1])
            previous = position
            position += sizes[level]
            level += 1
        if level < n_levels:
            # The upper levels get a few buckets each: the same additions in Python.
            rest = state[held:].tolist()
            created = counts1[level] - counts0[level]
            below = flat[previous : previous + 2 * created].tolist()
            new = [below[j] + below[j + 1] for j in range(0, 2 * created, 2)]
            tail: list[float] = []
            tail_start = position
            for upper in range(level, n_levels):
                alive = alives[upper]
                avail = rest[:alive] + new
                del rest[:alive]
                tail += avail
                offsets.append(position - 2 * counts0[upper + 1])
                position += len(avail)
                created = counts1[upper + 1] - counts0[upper + 1]
                new = [avail[j] + avail[j + 1] for j in range(0, 2 * created, 2)]
            flat[tail_start:position] = tail

        clock, min_len = self.clock, self.min_window_length
        # A check needs more than grace_period samples and room for two sub-windows.
        lowest = max(self.grace_period + 1, 2 * min_len, width0 + 1)
        first_check = -(-lowest // clock) * clock
        step = max(1, _MAX_CELLS // (max_buckets * n_levels)) * clock
        for begin in range(first_check, width1 + 1, step):
            end = min(width1, begin + step - clock)
            at = slice(begin - width0, end - width0 + 1, clock)
            row = self._first_cut(begin, end, n_levels, flat, offsets, totals[at], variances[at])
            if row >= 0:
                return begin + row * clock - width0 - 1

        self._width = width1
        self._total = float(totals[-1])
        self._variance = float(variances[-1])
        self._bucket_totals = np.concatenate(
            [flat[offsets[i] + 2 * counts1[i + 1] : offsets[i] + counts1[i]] for i in range(n_levels)]
        )
        return -1

    def _first_cut(
        self,
        begin: int,
        end: int,
        n_levels: int,
        flat: np.ndarray,
        offsets: list[int],
        at_totals: np.ndarray,
        at_variances: np.ndarray,
    ) -> int:
        """Evaluate river's check at the widths ``begin, begin + clock, ..., end`` (the
        window total and variance there in ``at_totals``, ``at_variances``); return the
        row of the first one that finds a cut, or -1.

        The bucket numbered j of ``level`` is ``flat[offsets[level] + j]``, and
        ``flat[-1]`` is 0.0."""
        clock, max_buckets = self.clock, self.max_buckets
        first, stop = begin // clock, end // clock + 1
        table = _check_table(clock, max_buckets, self.min_window_length, stop)
        if table is not None and table[0] >= n_levels:
            columns = slice(table[1].shape[1] - n_levels * max_buckets, None)
            number, n0, n1, m_recip = (a[first:stop, columns] for a in table[1:])
        else:
            number, n0, n1, m_recip = _check_structure(
                first, stop, clock, max_buckets, self.min_window_length, n_levels
            )
        width = np.arange(begin, end + 1, clock, dtype=np.float64)
        # Bucket totals in river's scan order; a padding slot's huge number clips to
        # flat[-1] == 0.0, which leaves u0 and u1 as they are.
        base = np.array(offsets[::-1]).repeat(max_buckets)
        buckets = np.take(flat, number + base, mode="clip")
        u0 = buckets.cumsum(axis=1)
        u1 = np.concatenate((at_totals[:, None], buckets), axis=1)
        np.subtract.accumulate(u1, axis=1, out=u1)
        delta_mean = u0 / n0 - u1[:, 1:] / n1
        delta_prime = self._delta_primes(begin, end)[:, None]
        # river: sqrt(2 * m_recip * (variance / width) * delta_prime) + 2 / 3 * delta_prime * m_recip
        epsilon = np.sqrt(2.0 * m_recip * (at_variances / width)[:, None] * delta_prime)
        epsilon += (2.0 / 3.0 * delta_prime) * m_recip
        # m_recip is inf where a sub-window is shorter than min_window_length (river
        # skips those cuts): epsilon is then inf or nan, and no cut is found there.
        cut = np.abs(delta_mean) > epsilon
        hit = int(cut.argmax())
        return hit // cut.shape[1] if cut.flat[hit] else -1

    def _delta_primes(self, begin: int, end: int) -> np.ndarray:
        """river's ``delta_prime = ln(2 ln(width) / delta)`` at the check widths
        ``begin, begin + clock, ..., end``, by libm's ``log`` as river's core computes
        it (from a table shared by the detectors with the same ``delta`` and ``clock``)."""
        clock, delta = self.clock, self.delta
        first, stop = begin // clock, end // clock + 1
        key = (delta, clock)
        table = _DELTA_PRIMES.get(key)
        if table is None or stop > table.size:
            if stop > _DP_TABLE_MAX:
                return np.array([math.log(2.0 * math.log(w) / delta) for w in range(begin, end + 1, clock)])
            size = min(max(2 * stop, 64), _DP_TABLE_MAX)
            known = 0 if table is None else table.size
            # widths below 2 are never checked (log(0) would fail): nan placeholders
            more = [
                math.log(2.0 * math.log(k * clock) / delta) if k * clock >= 2 else math.nan for k in range(known, size)
            ]
            table = np.concatenate((table, more)) if table is not None else np.array(more)
            table.setflags(write=False)
            if key not in _DELTA_PRIMES and len(_DELTA_PRIMES) >= _TABLE_KEYS:
                del _DELTA_PRIMES[next(iter(_DELTA_PRIMES))]
            _DELTA_PRIMES[key] = table
        return table[first:stop]
