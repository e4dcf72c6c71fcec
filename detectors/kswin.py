"""KSWIN (Kolmogorov-Smirnov windowing), batch-vectorized and exact to river 0.26's
``KSWIN`` given the same random draws.

Raab, C., Heusinger, M. and Schleif, F.-M. (2020). Reactive soft prototype computing for
concept drift streams. Neurocomputing, 416, 340-351.

How a batch is evaluated at once
--------------------------------
Once its window holds ``window_size`` samples, river's KSWIN tests, at every sample,
``stat_size`` values drawn without replacement from the older part of the window against
the ``stat_size`` most recent ones with :func:`scipy.stats.ks_2samp`, and signals a drift
when ``p_value <= alpha and statistic > 0.1``. Both samples have ``stat_size`` values, so
the statistic is ``h / stat_size`` for an integer ``h``, and scipy's exact p-value
depends on ``h`` alone: the decision is a table over ``h`` computed once with scipy
(:func:`ks_table`). Per batch, all tests are one 2-D computation: the draws of every
test come from the sampler at once (one row per test), every value is replaced by its
rank among the batch's values, and :func:`ks_distances` sorts the (tests, 2 *
stat_size) block of ranks and reads ``h`` off a running count. The Python loops are
over drifts (the detector restarts after each), over blocks of a few thousand tests
(to keep temporaries in cache), over the ``2 * stat_size`` positions of the running
count and, in the default sampler, over the ``stat_size`` steps of Floyd's sampling
algorithm: each step is one vector operation over all the tests of a block, and none of
these loops runs once per sample.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Protocol

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import first_index, scan_with_restarts

__all__ = ["KSWIN", "NumpySampler", "Sampler", "ks_distances", "ks_table"]

# scipy's ks_2samp computes exact p-values up to this sample size (method="auto").
_MAX_STAT_SIZE = 10_000
# Tests evaluated together hold about this many values in their (tests, 2 * stat_size)
# temporaries.
_BLOCK_CELLS = 1 << 17


class Sampler(Protocol):
    """Where KSWIN's random draws come from.

    A sampler is stateless; the random state it works on is plain data held by the
    detector (so that it is saved by ``state_dict``).
    """

    def fresh(self, seed: int | None) -> Any:
        """The random state right after seeding with ``seed`` (plain data)."""

    def draw(self, state: Any, population: int, size: int, count: int) -> tuple[np.ndarray, Any]:
        """``count`` successive samples of ``size`` distinct indices in
        ``range(population)``, as an int array of shape (count, size), and the state
        after them. Drawing ``count = a + b`` at once must give the rows of drawing
        ``a`` then ``b``."""


class NumpySampler:
    """The default :class:`Sampler`: numpy's PCG64 generator and Floyd's algorithm.

    The state is ``np.random.default_rng(seed).bit_generator.state``, a dict of ints.
    Each sample takes ``size`` uniform doubles, one row of ``Generator.random`` per
    sample, so that draws do not depend on how many samples are taken per call.

    Examples
    --------
    >>> sampler = NumpySampler()
    >>> rows, state = sampler.draw(sampler.fresh(1), population=10, size=3, count=2)
    >>> rows.shape, bool((np.sort(rows, axis=1)[:, 1:] > np.sort(rows, axis=1)[:, :-1]).all())
    ((2, 3), True)
    """

    def fresh(self, seed: int | None) -> dict[str, Any]:
        return dict(np.random.default_rng(seed).bit_generator.state)

    def draw(self, state: dict[str, Any], population: int, size: int, count: int) -> tuple[np.ndarray, dict[str, Any]]:
        bit_generator = np.random.PCG64()
        bit_generator.state = state  # type: ignore[assignment]  # numpy types it as a TypedDict
        uniforms = np.random.Generator(bit_generator).random((count, size))
        # Floyd (Bentley & Floyd, 1987): for j = population - size .. population - 1,
        # pick t uniform in [0, j]; take j instead if t was already taken. Cells of a
        # flat (count, population) table of taken indices, one row per sample.
        row_start = np.arange(count, dtype=np.int64) * population
        last = np.arange(population - size, population, dtype=np.int64)
        cells = (uniforms.T * (last + 1)[:, None]).astype(np.int64) + row_start
        fallback = last[:, None] + row_start
        taken = np.zeros(count * population, dtype=bool)
        for column in range(size):
            pick = cells[column]
            np.copyto(pick, fallback[column], where=taken[pick])
            taken[pick] = True
        picks = cells.T - row_start[:, None]
        return picks, dict(bit_generator.state)


@functools.lru_cache(maxsize=64)
def ks_table(stat_size: int) -> tuple[np.ndarray, np.ndarray]:
    """scipy's two-sample KS statistic and p-value for two samples of ``stat_size``
    values whose empirical CDFs differ by at most ``h / stat_size``, for every ``h`` in
    ``0..stat_size``.

    Computed by :func:`scipy.stats.ks_2samp` itself (``method="auto"``, as river calls
    it) on two shifted ranges realizing each ``h``; for equal sample sizes of at most
    10,000 scipy's result depends on ``h`` only.

    Examples
    --------
    >>> statistic, p_value = ks_table(4)
    >>> statistic.tolist(), bool(p_value[0] == 1.0)
    ([0.0, 0.25, 0.5, 0.75, 1.0], True)
    """
    base = np.arange(stat_size, dtype=np.float64)
    from scipy import stats  # ~0.6 s to import: only when KSWIN's table is first made

    statistic = np.empty(stat_size + 1)
    p_value = np.empty(stat_size + 1)
    for h in range(stat_size + 1):
        with warnings.catch_warnings():
            # as river: scipy warns when it falls back to the asymptotic p-value
            warnings.simplefilter("ignore", category=RuntimeWarning)
            result = stats.ks_2samp(base, base + h, method="auto")
        statistic[h], p_value[h] = result.statistic, result.pvalue
    statistic.setflags(write=False)
    p_value.setflags(write=False)
    return statistic, p_value


def ks_distances(first: np.ndarray, second: np.ndarray, ties: bool = True) -> np.ndarray:
    """Row-wise ``stat_size`` times the two-sample KS distance, for samples of equal
    size given as integer ranks (equal values, equal ranks).

    Parameters
    ----------
    first, second
        Non-negative integer arrays of shape (m, stat_size), ranks below 2**30.
    ties
        False promises that no rank occurs twice in a row (then groups of equal ranks
        need not be looked for).

    Returns
    -------
    np.ndarray
        int64 array of shape (m,): ``max_v |#{first <= v} - #{second <= v}|`` per row.

    Notes
    -----
    Sorts ``2 * rank + (0 for first, 1 for second)`` per row and takes the running
    difference of counts at the last element of each group of equal ranks (where
    scipy's ``searchsorted(side="right")`` evaluates the CDFs). Computes in int32; the
    one Python loop is over the ``2 * stat_size`` positions of a row, each step a
    vector operation over all rows.

    Examples
    --------
    >>> ks_distances(np.array([[0, 1, 2]]), np.array([[1, 2, 3]])).tolist()
    [1]
    """
    keys = np.concatenate((first << 1, (second << 1) | 1), axis=1).astype(np.int32, copy=False)
    keys.sort(axis=1)
    # One row per position in the merged order: the running count below adds rows,
    # a vector operation over all tests, where np.cumsum along a row would not be.
    positions = np.ascontiguousarray(keys.T)
    running = positions & 1
    for j in range(1, running.shape[0]):
        running[j] += running[j - 1]
    # (firsts so far) - (seconds so far) = (position + 1) - 2 * (seconds so far)
    running *= -2
    running += np.arange(1, running.shape[0] + 1, dtype=running.dtype)[:, None]
    if ties:
        # a group of equal ranks ends where the next key has another rank
        running[:-1] *= (positions[:-1] ^ positions[1:]) > 1
    np.abs(running, out=running)
    distances: np.ndarray = running.max(axis=0).astype(np.int64)
    return distances


class KSWIN(ChangeDetector):
    r"""KSWIN change detector (Raab, Heusinger & Schleif, 2020), batch-vectorized.

    Parameters
    ----------
    alpha
        Significance of the KS test, in [0, 1].
    window_size
        Length of the sliding window (an int >= 2 * ``stat_size``, so that
        ``stat_size`` values can be drawn from its older part).
    stat_size
        Length of the most recent part of the window, and of the sample drawn from the
        older part (an int in [1, 10000]).
    seed
        Seed of the random draws (None: fresh entropy at construction and after each
        drift, as ``random.Random(None)`` in river).
    window
        Values to start the window with (the last ``window_size`` finite ones are kept);
        used at construction only, as in river.
    sampler
        Where the draws come from (a :class:`Sampler`); None means
        :class:`NumpySampler`. Injecting a sampler that reproduces Python's
        ``random.Random(seed).sample`` gives river's exact draws.

    Notes
    -----
    Decisions are river's exactly (``p_value <= alpha and statistic > 0.1``, with
    scipy's p-value) given the same draws; river draws with Python's ``random`` and this
    class by default with numpy, so the default draws, and hence some decisions near
    the threshold, differ from river's. After a drift the window is emptied and the
    random state reseeded (river rebuilds both on the next sample); :attr:`p_value`
    and :attr:`statistic` keep the values of the last test performed.
    Memory is O(``window_size``); values are processed as float64, non-finite values
    are skipped and counted by the base class.

    Python loops: over drifts, over blocks of tests, over the ``2 * stat_size``
    positions of :func:`ks_distances` and the ``stat_size`` steps of the default
    sampler (see the module docstring); never over samples.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(12345)
    >>> stream = np.concatenate([rng.choice([0, 1], 1000), rng.choice([4, 5, 6, 7], 1000)])
    >>> detector = KSWIN(alpha=0.0001, seed=42)
    >>> found = detector.update(stream)
    >>> bool(1000 <= found.drifts[0] < 1030)
    True
    """

    _PARAMS = ("alpha", "window_size", "stat_size", "seed", "window", "sampler")
    _STATE_KEYS = ("_window", "_n", "_rng_state", "_p_value", "_statistic")

    def __init__(
        self,
        alpha: float = 0.005,
        window_size: int = 100,
        stat_size: int = 30,
        seed: int | None = None,
        window: Any = None,
        sampler: Sampler | None = None,
    ) -> None:
        alpha = check_param("alpha", alpha, low=0, high=1)
        stat_size = check_param(
            "stat_size", stat_size, low=1, high=_MAX_STAT_SIZE, integer=True, why="scipy's exact KS p-values"
        )
        window_size = check_param("window_size", window_size, low=2 * stat_size, integer=True, why="2 * stat_size")
        seed = check_param("seed", seed, low=0, integer=True, optional=True)
        if sampler is not None and not (hasattr(sampler, "fresh") and hasattr(sampler, "draw")):
            raise ValueError(
                f"sampler must be None or an object with fresh(seed) and "
                f"draw(state, population, size, count) methods, got {sampler!r}"
            )
        initial = None
        if window is not None:
            initial = np.asarray(window, dtype=np.float64)
            if initial.ndim != 1:
                raise ValueError(f"window must be a 1-D sequence of numbers, got shape {initial.shape}")
            initial = initial[np.isfinite(initial)][-int(window_size) :]
        self.alpha = float(alpha)
        self.window_size = int(window_size)
        self.stat_size = int(stat_size)
        self.seed = None if seed is None else int(seed)
        self.window = None if initial is None else tuple(initial.tolist())
        self.sampler = sampler
        self._draws: Sampler = sampler if sampler is not None else NumpySampler()
        statistic, p_value = ks_table(self.stat_size)
        self._drift_at = (p_value <= self.alpha) & (statistic > 0.1)
        self.reset()
        if initial is not None:
            self._window = initial

    def reset(self) -> None:
        """Forget everything seen (river's ``_reset``); the initial ``window`` is not
        restored, as in river."""
        self._reset_columns()
        self._p_value = 0.0
        self._statistic = 0.0
        self._restart()

    def _restart(self) -> None:
        self._window = np.empty(0, dtype=np.float64)
        self._n = 0
        self._rng_state = self._draws.fresh(self.seed)

    def _stream_started(self) -> bool:
        return self._n > 0

    @property
    def p_value(self) -> float:
        """p-value of the last KS test performed (0.0 before any)."""
        return self._p_value

    @property
    def statistic(self) -> float:
        """KS statistic of the last test performed (0.0 before any)."""
        return self._statistic

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        drifts, _ = scan_with_restarts(x, self._scan, self._restart, pace=self._pace())
        return drifts, EMPTY_INDEX

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        size, stat_size = self.window_size, self.stat_size
        held = self._window.size
        values = np.concatenate((self._window, x))
        # Sample j of x sits at values[held + j]; it is tested once the window is full.
        first_test = max(held, size - 1)
        ends = np.arange(first_test, values.size, dtype=np.int64)
        if ends.size:
            distinct, ranks = np.unique(values, return_inverse=True)
            ranks = ranks.astype(np.int32)
            ties = distinct.size < values.size
            recent_offsets = np.arange(1 - stat_size, 1)
            statistic, p_value = ks_table(stat_size)
            rng_state = self._rng_state
            # Tests go in blocks: temporaries stay small (in cache) and a drift stops
            # the work early.
            rows = max(1, _BLOCK_CELLS // (2 * stat_size))
            for start in range(0, ends.size, rows):
                block = ends[start : start + rows]
                draws, rng_state = self._draws.draw(rng_state, size - stat_size, stat_size, block.size)
                older = ranks[(block - size + 1)[:, None] + draws]
                recent = ranks[block[:, None] + recent_offsets]
                distances = ks_distances(older, recent, ties)
                hit = first_index(self._drift_at[distances])
                last = distances[hit] if hit >= 0 else distances[-1]
                self._statistic = float(statistic[last])
                self._p_value = float(p_value[last])
                if hit >= 0:
                    return int(block[hit] - held), EMPTY_INDEX
            self._rng_state = rng_state
        self._window = values[-size:].copy()
        self._n += x.size
        return -1, EMPTY_INDEX
