"""Shared arithmetic of the batch-vectorized change detectors.

Every detector in :mod:`detectors` is "a running statistic, a threshold test, and a
reset after an alarm". This module holds the pieces once:

* prefix sums and running means that continue from a carried state
  (:func:`running_mean`), running extrema that continue from a carried value
  (:func:`running_min`, :func:`running_max`), "index of the last event so far"
  (:func:`last_index`) and :func:`first_index`;
* first-order linear recurrences evaluated by :func:`scipy.signal.lfilter` in the
  same floating-point order as a Python loop (:func:`linear_recurrence`), also over
  many independent segments at once (:func:`segmented_recurrence`), and river's
  exponentially weighted mean on top of it (:func:`ewma`);
* the restart-after-alarm loop (:func:`restart_loop`, :func:`scan_with_restarts` on
  top, sized by :class:`Pace`): the only Python loop of a detector, over alarms,
  never over samples;
* what makes a restart cheap: per-batch prefix sums (:func:`prefix_sums`) and shared
  tables (:func:`counts`, :func:`decay_tables`), so that a statistic restarted at any
  row is a few numpy calls on slices; faded sums as scaled prefix sums
  (:func:`decayed_sums`); and the first rise above a running minimum without the
  running minimum where it is not needed (:func:`first_rise`).

All functions are pure (arrays in, arrays out), compute in float64 and never write to
their inputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "running_mean",
    "running_min",
    "running_max",
    "last_index",
    "first_index",
    "linear_recurrence",
    "segmented_recurrence",
    "ewma",
    "Pace",
    "restart_loop",
    "scan_with_restarts",
    "ranges",
    "recurrence_table",
    "powers",
    "geometric_sums",
    "counts",
    "decay_tables",
    "decayed_sums",
    "prefix_sums",
    "first_rise",
]

#: Smallest chunk scanned right after an alarm (see :func:`scan_with_restarts`).
FIRST_CHUNK = 256
#: Largest chunk scanned at once: bounds the temporaries of one scan.
MAX_CHUNK = 1 << 16
#: After a drift, scan up to this many times the longest of the last ``RECENT_GAPS``
#: distances between drifts (see :func:`restart_loop`).
CHUNK_FACTOR = 1.0
RECENT_GAPS = 5

EMPTY = np.empty(0, dtype=np.int64)
EMPTY.setflags(write=False)


def running_mean(
    x: np.ndarray, count: float, total: float, reference: float = 0.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Running count and mean of ``x`` continuing from a carried state.

    The mean after sample ``t`` is ``reference + (total + sum(x[:t+1] - reference)) /
    (count + t + 1)``: a left-to-right prefix sum of the deviations from
    ``reference``. With ``reference`` the stream's first value, a constant stream has
    a mean that is exactly that constant (as river's incremental mean has); with
    0/1 data and ``reference = 0`` the mean is the correctly rounded ``k / n``.

    Parameters
    ----------
    x
        The new samples (1-D float64).
    count
        Samples seen before ``x``.
    total
        Sum of ``previous - reference`` over the samples seen before ``x``.
    reference
        The shift applied before summing.

    Returns
    -------
    counts, means, total
        float64 arrays of the running counts and means, and the new ``total``.

    Examples
    --------
    >>> counts, means, total = running_mean(np.array([1.0, 0.0, 1.0]), 1, 1.0)
    >>> means.tolist(), total
    ([1.0, 0.6666666666666666, 0.75], 3.0)
    """
    deviations = x - reference if reference != 0.0 else x
    if total != 0.0:
        # add the carried total first, so that the order is that of one long cumsum
        sums = np.cumsum(np.concatenate(([total], deviations)))[1:]
    else:
        sums = np.cumsum(deviations)
    counts = np.arange(count + 1, count + 1 + x.size, dtype=np.float64)
    means = sums / counts
    if reference != 0.0:
        means += reference
    new_total = float(sums[-1]) if x.size else total
    return counts, means, new_total


def running_min(values: np.ndarray, initial: float) -> np.ndarray:
    """``min(initial, values[0], ..., values[t])`` for every ``t``.

    Examples
    --------
    >>> running_min(np.array([3.0, 1.0, 2.0]), 2.0).tolist()
    [2.0, 1.0, 1.0]
    """
    out = np.minimum.accumulate(values)
    np.minimum(out, initial, out=out)
    return out


def running_max(values: np.ndarray, initial: float) -> np.ndarray:
    """``max(initial, values[0], ..., values[t])`` for every ``t``.

    Examples
    --------
    >>> running_max(np.array([1.0, 3.0, 2.0]), 2.0).tolist()
    [2.0, 3.0, 3.0]
    """
    out = np.maximum.accumulate(values)
    np.maximum(out, initial, out=out)
    return out


def previous(values: np.ndarray, initial: float) -> np.ndarray:
    """``values`` shifted right by one, ``initial`` in front: the value *before* each
    sample, e.g. the running minimum a new sample is compared with."""
    out = np.empty_like(values)
    if values.size:
        out[0] = initial
        out[1:] = values[:-1]
    return out


def last_index(mask: np.ndarray) -> np.ndarray:
    """For every ``t``, the largest ``i <= t`` with ``mask[i]``, or -1 if none.

    Examples
    --------
    >>> last_index(np.array([False, True, False, True])).tolist()
    [-1, 1, 1, 3]
    """
    idx = np.where(mask, np.arange(mask.size), -1)
    return np.maximum.accumulate(idx) if idx.size else idx


def first_index(mask: np.ndarray) -> int:
    """Index of the first True in ``mask``, or -1.

    Examples
    --------
    >>> first_index(np.array([False, True, True])), first_index(np.zeros(2, bool))
    (1, -1)
    """
    if mask.size == 0:
        return -1
    i = int(mask.argmax())  # the method: a microsecond less than np.argmax's wrapper
    return i if mask[i] else -1


def linear_recurrence(x: np.ndarray, gain: float, decay: float, initial: float) -> np.ndarray:
    """``y[t] = gain * x[t] + decay * y[t-1]`` with ``y[-1] = initial``.

    Evaluated by :func:`scipy.signal.lfilter`, whose direct form II transposed does,
    per sample, ``z = decay * y`` (as ``0 * x - (-decay) * y``, exact) and then
    ``y = z + gain * x``: the same two roundings, in the same order, as a Python loop
    ``y = gain * x + decay * y`` (addition commutes). The result is bit-identical to
    the loop.

    Examples
    --------
    >>> linear_recurrence(np.array([1.0, 0.0]), 0.5, 0.5, 0.0).tolist()
    [0.5, 0.25]
    """
    if x.size == 0:
        return np.empty(0)
    from scipy.signal import lfilter  # scipy.signal takes ~0.5 s to import: only when used

    y: np.ndarray = lfilter([gain], [1.0, -decay], x, zi=[decay * initial])[0]
    return y


def segmented_recurrence(
    x: np.ndarray, starts: np.ndarray, initial: np.ndarray, gain: float, decay: float
) -> np.ndarray:
    """:func:`linear_recurrence` restarted at every ``starts[i]`` from ``initial[i]``.

    Segment ``i`` covers ``x[starts[i]:starts[i+1]]`` (the last runs to the end).
    Segments are grouped by length into power-of-four buckets, each bucket filtered as
    one 2-D :func:`~scipy.signal.lfilter` call (rows are independent and computed
    exactly as in the 1-D case): O(log n) calls whatever the number of segments, and
    at most four times the input's memory.

    Examples
    --------
    >>> segmented_recurrence(np.ones(4), np.array([0, 2]), np.array([0.0, 1.0]), 0.5, 0.5).tolist()
    [0.5, 0.75, 1.0, 1.0]
    """
    n = x.size
    out = np.empty(n)
    if n == 0:
        return out
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(np.append(starts, n))
    keep = lengths > 0
    starts, lengths, initial = starts[keep], lengths[keep], np.asarray(initial)[keep]
    if starts.size == 1:
        out[starts[0] :] = linear_recurrence(x[starts[0] :], gain, decay, float(initial[0]))
        return out
    from scipy.signal import lfilter  # scipy.signal takes ~0.5 s to import: only when used

    # power-of-four buckets: few lfilter calls, at most 4x the input's memory
    bucket = np.ceil(np.log2(lengths) / 2).astype(np.int64)
    for b in np.unique(bucket):
        rows = np.flatnonzero(bucket == b)
        width = int(lengths[rows].max())
        cols = np.arange(width)
        index = starts[rows, None] + cols
        np.minimum(index, n - 1, out=index)  # padding reads a valid cell, then is dropped
        y, _ = lfilter([gain], [1.0, -decay], x[index], axis=1, zi=(decay * initial[rows])[:, None])
        valid = cols < lengths[rows, None]
        out[index[valid]] = y[valid]
    return out


def ewma(x: np.ndarray, starts: np.ndarray, initial: np.ndarray, fresh: np.ndarray, alpha: float) -> np.ndarray:
    """river's ``stats.EWMean(alpha)`` over segments: ``m = alpha * x + (1 - alpha) * m``,
    where a fresh mean takes the first value as is (``m = x``).

    Parameters
    ----------
    x
        Samples.
    starts
        Segment starts (sorted, ``starts[0] == 0``); at each the mean restarts.
    initial
        The mean carried into each segment (ignored where ``fresh``).
    fresh
        Whether the segment's mean has seen no value yet.
    alpha
        The fading factor.

    Examples
    --------
    >>> ewma(np.array([1.0, 0.0, 0.0]), np.array([0]), np.array([0.0]), np.array([True]), 0.5).tolist()
    [1.0, 0.5, 0.25]
    """
    starts = np.asarray(starts, dtype=np.int64)
    inside = starts < x.size  # a restart after the last sample has nothing to do
    starts = starts[inside]
    initial = np.asarray(initial, dtype=np.float64)[inside]
    fresh = np.asarray(fresh, dtype=bool)[inside]
    if fresh.any():
        # the first value of a fresh segment is taken as is; the recurrence then
        # starts one sample later from that value
        initial[fresh] = x[starts[fresh]]
        starts = starts.copy()
        starts[fresh] += 1
    decay = 1.0 - alpha
    out = segmented_recurrence(x, starts, initial, alpha, decay)
    if fresh.any():
        first = starts[fresh] - 1
        out[first] = x[first]
    return out


class Pace:
    """How far apart a detector's drifts have been: the chunk-size hint of
    :func:`restart_loop`, carried from one ``update`` call to the next.

    Not part of a detector's state (no checkpoint holds it): it decides how a batch is
    cut into scans, never a result. A new ``Pace`` (no drift seen yet) scans
    ``MAX_CHUNK`` events at once, as a detector on a stream that rarely drifts wants.

    Parameters
    ----------
    median
        Size the chunk after a drift from the median of the last ``RECENT_GAPS`` gaps
        instead of the longest (for gaps with a long tail, such as EDDM's).
    factor
        The chunk after a drift ends ``factor`` times that typical gap after it.
    growth
        After a chunk without a drift, the events scanned since the last drift grow by
        this factor with the next one.
    """

    __slots__ = ("gap", "since", "recent", "median", "factor", "growth")

    def __init__(self, median: bool = False, factor: float = CHUNK_FACTOR, growth: float = 1.5) -> None:
        self.gap = 0  # events between the last two drifts; 0 while unknown
        self.since = 0  # events scanned since the last drift
        self.recent: list[int] = []  # the last RECENT_GAPS gaps, oldest first
        self.median, self.factor, self.growth = median, factor, growth

    def drifted(self, gap: int) -> None:
        """Record a drift ``gap`` events after the previous one."""
        self.gap = gap
        self.since = 0
        recent = self.recent
        recent.append(gap)
        if len(recent) > RECENT_GAPS:
            del recent[0]

    def chunk(self, first_chunk: int) -> int:
        """The size of the next scan: up to ``factor`` times the typical recent gap after
        the last drift (the longest of them by default: one short gap does not shrink
        it); once that point is passed, enough to grow the events scanned since the
        last drift by ``growth``."""
        if self.gap == 0:
            return MAX_CHUNK
        recent = self.recent or [self.gap]
        typical = sorted(recent)[len(recent) // 2] if self.median else max(recent)
        due = int(self.factor * typical) - self.since
        return min(max(due, int(self.since * (self.growth - 1.0)), first_chunk), MAX_CHUNK)


def restart_loop(
    size: int,
    scan: Callable[[int, int], tuple[int, np.ndarray]],
    reset: Callable[[], None],
    first_chunk: int = FIRST_CHUNK,
    pace: Pace | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The restart-after-alarm loop over ``size`` events, by position.

    ``scan(start, stop)`` processes events ``start .. stop - 1`` from the detector's
    current state and returns ``(drift, warnings)``: the position of the first drift
    (-1 if none) and the warning indices up to it, both as the caller numbers them
    (positions for :func:`scan_with_restarts`; a detector that scans over a subset of
    its samples, such as EDDM over its errors, returns sample rows for the warnings).
    With no drift, ``scan`` leaves the state as after ``stop``; after a drift the state
    is discarded and ``reset()`` is called (as river does on the next update), then
    scanning resumes after the drift.

    The loop runs once per drift and per chunk, never per event. A scan that finds a
    drift wastes the events after it (they are scanned again from the fresh state), and
    every scan has a fixed cost of a dozen or more numpy calls; so the chunk is sized
    from ``pace``, the distances between the detector's recent drifts, carried across
    calls: a chunk ends ``CHUNK_FACTOR`` times the longest of them after the last drift
    (at least ``first_chunk`` events), and the scanned length grows by half per scan
    while no drift is found (see :meth:`Pace.chunk`). On a stream that drifts every
    ``g`` events a drift costs about one scan of ``~g`` events, whatever the batch size
    and however many drifts a batch holds; a stream that rarely drifts is scanned
    ``MAX_CHUNK`` events at a time.

    Parameters
    ----------
    pace
        The detector's :class:`Pace` (updated in place); a new one if None.

    Returns
    -------
    drifts, warnings
        int64 arrays: the drift positions and the concatenated warnings.
    """
    if pace is None:
        pace = Pace()
    drifts: list[int] = []
    warnings: list[np.ndarray] = []
    pos = 0
    chunk = pace.chunk(first_chunk)
    while pos < size:
        end = pos + chunk
        if size - end < chunk // 2:
            # a short rest of the batch would cost a scan of its own: take it now
            end = size
        drift, warn = scan(pos, end)
        if len(warn):
            warnings.append(warn)
        if drift < 0:
            pace.since += end - pos
            pos = end
            chunk = pace.chunk(first_chunk)
            continue
        drifts.append(drift)
        reset()
        pace.drifted(pace.since + drift + 1 - pos)
        pos = drift + 1
        chunk = pace.chunk(first_chunk)
    if not warnings:
        warn_all = EMPTY
    elif len(warnings) == 1:
        warn_all = np.asarray(warnings[0], dtype=np.int64)
    else:
        warn_all = np.concatenate(warnings).astype(np.int64, copy=False)
    return np.asarray(drifts, dtype=np.int64), warn_all


def scan_with_restarts(
    x: np.ndarray,
    scan: Callable[[np.ndarray], tuple[int, np.ndarray]],
    reset: Callable[[], None],
    first_chunk: int = FIRST_CHUNK,
    pace: Pace | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``scan`` over ``x``, restarting the detector after every drift.

    ``scan(chunk)`` processes ``chunk`` from the detector's current state and returns
    ``(drift, warnings)``: the index of the first drift in ``chunk`` (-1 if none) and
    the warning indices up to it, relative to ``chunk``. The chunks and restarts are
    those of :func:`restart_loop`.

    Returns
    -------
    drifts, warnings
        int64 index arrays into ``x``.
    """

    def scan_range(start: int, stop: int) -> tuple[int, np.ndarray]:
        drift, warn = scan(x[start:stop])
        return (start + drift if drift >= 0 else -1), (warn + start if len(warn) else EMPTY)

    return restart_loop(x.size, scan_range, reset, first_chunk, pace)


def ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(starts[i], stops[i])`` without a loop.

    Examples
    --------
    >>> ranges(np.array([0, 5]), np.array([2, 8])).tolist()
    [0, 1, 5, 6, 7]
    """
    lengths = np.asarray(stops, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    keep = lengths > 0
    starts, lengths = np.asarray(starts, dtype=np.int64)[keep], lengths[keep]
    if lengths.size == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def recurrence_table(gain: float, decay: float, initial: float, limit: int = 1 << 20) -> np.ndarray | None:
    """``table[k]``: the value of ``y = gain + decay * y`` after ``k`` steps from
    ``initial``, up to the step where it stops changing (then it is constant for ever:
    the same value goes through the same operations). None if it has not settled
    within ``limit`` steps.

    Examples
    --------
    >>> recurrence_table(0.25, 0.5, 1.0)[:3].tolist()
    [1.0, 0.75, 0.625]
    """
    values = [np.array([initial])]
    last, size = initial, 256
    while sum(v.size for v in values) < limit:
        y = linear_recurrence(np.ones(size), gain, decay, last)
        values.append(y)
        settled = np.flatnonzero(y[1:] == y[:-1])
        if settled.size or y[0] == last:
            table = np.concatenate(values)
            return table[: np.flatnonzero(table[1:] == table[:-1])[0] + 1]
        last, size = float(y[-1]), size * 2
    return None


@functools.lru_cache(maxsize=16)
def _power_table(base: float) -> np.ndarray:
    table = np.power(base, np.arange(MAX_CHUNK + 1, dtype=np.float64))
    table.setflags(write=False)
    return table


def powers(base: float, size: int) -> np.ndarray:
    """``base ** arange(size)`` (read-only), from a table shared by every detector with
    the same ``base`` when ``size <= MAX_CHUNK + 1``: the decay of a linear filter's
    initial condition after ``k`` steps, ``decay ** k``, as one gather.

    Examples
    --------
    >>> powers(0.5, 3).tolist()
    [1.0, 0.5, 0.25]
    """
    if size <= MAX_CHUNK + 1:
        return _power_table(float(base))[:size]
    return np.power(base, np.arange(size, dtype=np.float64))


@functools.lru_cache(maxsize=16)
def _geometric_table(base: float) -> np.ndarray:
    steps = np.arange(MAX_CHUNK + 1, dtype=np.float64)
    if base == 1.0:
        table = steps
    else:
        # (1 - base**k) / (1 - base) with expm1/log1p: accurate to a few ulp even when
        # base is within 1e-12 of 1 (where 1 - base**k cancels)
        table = -np.expm1(steps * np.log1p(base - 1.0)) / (1.0 - base)
    table.setflags(write=False)
    return table


def geometric_sums(base: float, size: int) -> np.ndarray:
    """``1 + base + ... + base ** (k - 1)`` for ``k`` in ``arange(size)`` (read-only):
    the value after ``k`` steps of ``y = base * y + 1`` from 0, in closed form, to a
    few units in the last place; from a shared table when ``size <= MAX_CHUNK + 1``.

    Examples
    --------
    >>> geometric_sums(0.5, 4).tolist()
    [0.0, 1.0, 1.5, 1.75]
    """
    if size <= MAX_CHUNK + 1:
        return _geometric_table(float(base))[:size]
    steps = np.arange(size, dtype=np.float64)
    if base == 1.0:
        return steps
    sums: np.ndarray = -np.expm1(steps * np.log1p(base - 1.0)) / (1.0 - base)
    return sums


@functools.lru_cache(maxsize=1)
def _count_table() -> np.ndarray:
    table = np.arange(MAX_CHUNK + 2, dtype=np.float64)
    table.setflags(write=False)
    return table


def counts(start: int, size: int) -> np.ndarray:
    """``arange(start, start + size)`` in float64 (read-only when it is a slice of the
    shared table, i.e. when ``start + size <= MAX_CHUNK + 2``): the running counts a
    prefix sum is divided by.

    Examples
    --------
    >>> counts(1, 3).tolist()
    [1.0, 2.0, 3.0]
    """
    if start >= 0 and start + size <= MAX_CHUNK + 2:
        return _count_table()[start : start + size]
    return np.arange(start, start + size, dtype=np.float64)


#: :func:`decay_tables` keeps ``base ** -k`` below this: a sample scaled by it cannot
#: overflow unless its magnitude is above ~1e258.
_INVERSE_LIMIT = 1e50


@functools.lru_cache(maxsize=16)
def decay_tables(base: float) -> tuple[np.ndarray, np.ndarray, int]:
    """``(base ** k, base ** -k, limit)`` for ``k`` in ``arange(limit)`` (read-only):
    the tables of :func:`decayed_sums`. ``limit`` is at most ``MAX_CHUNK + 1`` and
    keeps ``base ** -k`` under 1e50 (0 for ``base`` so small that even one step would
    not: the caller then filters).

    Examples
    --------
    >>> up, down, limit = decay_tables(0.5)
    >>> up[:3].tolist(), down[:3].tolist(), limit
    ([1.0, 0.5, 0.25], [1.0, 2.0, 4.0], 166)
    """
    if not 0.0 < base <= 1.0:
        raise ValueError(f"base must be a number in (0, 1], got {base!r}")
    limit = MAX_CHUNK + 1 if base == 1.0 else int(min(MAX_CHUNK + 1, math.log(_INVERSE_LIMIT) / -math.log(base)))
    steps = np.arange(limit, dtype=np.float64)
    up, down = np.power(base, steps), np.power(1.0 / base, steps) if base != 1.0 else np.ones(limit)
    if base != 1.0:
        # 1 / base rounds: base ** -k from the exact power instead (one division, exact
        # to half an ulp of the correctly rounded power)
        np.divide(1.0, up, out=down)
    up.setflags(write=False)
    down.setflags(write=False)
    return up, down, limit


def decayed_sums(y: np.ndarray, decay: float, initial: float, out: np.ndarray) -> np.ndarray:
    """``s[t] = decay * s[t-1] + y[t]`` from ``s[-1] = initial``, into ``out`` (which may
    be ``y``): a prefix sum of ``y`` scaled by ``decay ** -t``, scaled back by
    ``decay ** t`` (three numpy calls, no filter). Where ``decay ** -t`` would grow past
    :func:`decay_tables`' limit, the sums restart in blocks from the previous block's
    last value; for a ``decay`` so small that blocks would be tiny (limit < 512), this
    is :func:`linear_recurrence`.

    Not rounded as the loop is (which :func:`linear_recurrence` is): each ``s[t]``
    differs from the loop's by a few units in the last place of the largest
    ``decay ** (t - j) * |s[j]|``, the order of the loop's own rounding error.

    Examples
    --------
    >>> y = np.array([1.0, 1.0, 1.0])
    >>> decayed_sums(y, 0.5, 2.0, np.empty(3)).tolist()
    [2.0, 2.0, 2.0]
    """
    n = y.size
    if n == 0:
        return out[:0]
    up, down, limit = decay_tables(float(decay))
    if limit < 512:
        out[:n] = linear_recurrence(y, 1.0, decay, initial)
        return out[:n]
    start = 0
    while start < n:
        stop = min(n, start + limit)
        m = stop - start
        block = out[start:stop]
        np.multiply(y[start:stop], down[:m], out=block)
        # the carried sum enters as the first step: decay * initial + y[0], in the loop's order
        block[0] = decay * initial + y[start]
        np.add.accumulate(block, out=block)
        np.multiply(block, up[:m], out=block)
        initial = float(block[-1])
        start = stop
    return out[:n]


def first_rise(values: np.ndarray, initial: float, threshold: float, start: int = 0) -> tuple[int, float]:
    """The first ``t >= start`` where ``values[t] - min(initial, values[0], ..., values[t])
    > threshold`` (computed as that subtraction), or -1; and that overall minimum.

    The rise of a running statistic above its running minimum (PageHinkley's
    ``sum - min``, or with negated values a fall below a running maximum), with the
    running minimum only where it is needed. Let ``p`` be where ``values`` is smallest
    (first occurrence): from ``p`` on the running minimum is ``values[p]`` (or
    ``initial`` everywhere, if that is smaller), so there the test is one subtraction.
    Before ``p`` a rise is only possible if the range of ``values[:p]`` and ``initial``
    exceeds the threshold (two reductions); only then is the running minimum of
    ``values[:p]`` accumulated. The comparisons are those of the loop, value for value.

    Examples
    --------
    >>> first_rise(np.array([3.0, 1.0, 2.0, 4.5, 0.0]), 2.0, 3.0)
    (3, 0.0)
    >>> first_rise(np.array([3.0, 1.0, 2.0]), 2.0, 3.0)
    (-1, 1.0)
    """
    size = values.size
    if size == 0:
        return -1, initial
    p = int(values.argmin())
    low = float(values[p])
    if not low < initial:
        # the running minimum is `initial` throughout
        return _first_above(values[start:], initial, threshold, start), initial
    if p > start:
        head = values[:p]
        before = min(initial, float(head[int(head.argmin())]))
        if float(values[start + int(values[start:p].argmax())]) - before > threshold:
            # a rise may come before the minimum: the running minimum up to it, and
            # values[p] from there on, then one test over both parts
            running = np.empty(size)
            np.minimum.accumulate(head, out=running[:p])
            if initial < running[0]:
                np.minimum(running[:p], initial, out=running[:p])
            running[p:] = low
            np.subtract(values, running, out=running)
            return _first_above(running[start:], 0.0, threshold, start), low
    start = max(p, start)
    return _first_above(values[start:], low, threshold, start), low


def _first_above(values: np.ndarray, low: float, threshold: float, offset: int) -> int:
    """``offset +`` the first index where ``values - low > threshold``, or -1."""
    if values.size == 0:
        return -1
    rise = values - low if low != 0.0 else values
    above = rise > threshold
    i = int(above.argmax())
    return offset + i if above[i] else -1


def prefix_sums(x: np.ndarray) -> np.ndarray:
    """``[0, x[0], x[0] + x[1], ...]`` in float64 (``x.size + 1`` values), summed left
    to right as a loop does: exact for integer-valued ``x`` (0/1 errors) below 2**53.

    Examples
    --------
    >>> prefix_sums(np.array([1.0, 0.0, 1.0])).tolist()
    [0.0, 1.0, 1.0, 2.0]
    """
    out = np.empty(x.size + 1)
    out[0] = 0.0
    np.cumsum(x, out=out[1:])
    return out
