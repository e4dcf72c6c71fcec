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
* the restart-after-alarm loop (:func:`scan_with_restarts`): the only Python loop of a
  detector, over alarms, never over samples.

All functions are pure (arrays in, arrays out), compute in float64 and never write to
their inputs.
"""

from __future__ import annotations

import functools
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
]

#: Smallest chunk scanned right after an alarm (see :func:`scan_with_restarts`).
FIRST_CHUNK = 256
#: Largest chunk scanned at once: bounds the temporaries of one scan.
MAX_CHUNK = 1 << 16
#: After a drift, scan up to this many times the distance between the last two drifts
#: (see :func:`restart_loop`).
CHUNK_FACTOR = 1.25

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
    i = int(np.argmax(mask))
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
    """

    __slots__ = ("gap", "since")

    def __init__(self) -> None:
        self.gap = 0  # events between the last two drifts; 0 while unknown
        self.since = 0  # events scanned since the last drift

    def chunk(self, first_chunk: int) -> int:
        """The size of the next scan: up to a little past where the next drift is due;
        once that point is passed, as many events as have been scanned since the last
        drift (the doubling of :func:`restart_loop`, continued across calls)."""
        if self.gap == 0:
            return MAX_CHUNK
        due = int(CHUNK_FACTOR * self.gap) - self.since
        return min(max(due, self.since, first_chunk), MAX_CHUNK)


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
    every scan has a fixed cost of a few dozen numpy calls; so the chunk is sized from
    ``pace``, the distance between the detector's last two drifts, carried across calls:
    a chunk ends ``CHUNK_FACTOR`` times that distance after the last drift (at least
    ``first_chunk`` events), and doubles while no drift is found. On a stream that
    drifts every ``g`` events a drift costs about one scan of ``~CHUNK_FACTOR * g``
    events, whatever the batch size and however many drifts a batch holds; a stream
    that rarely drifts is scanned ``MAX_CHUNK`` events at a time.

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
        end = min(size, pos + chunk)
        drift, warn = scan(pos, end)
        if len(warn):
            warnings.append(warn)
        if drift < 0:
            pace.since += end - pos
            pos = end
            chunk = min(2 * chunk, MAX_CHUNK)
            continue
        drifts.append(drift)
        reset()
        pace.gap = pace.since + drift + 1 - pos
        pace.since = 0
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
