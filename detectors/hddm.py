"""HDDM_A and HDDM_W change detectors (Hoeffding / McDiarmid bounds), batch-vectorized
and river-exact."""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import numpy as np

from driftline.detectors._base import ChangeDetector, check_param
from driftline.detectors._kernels import (
    MAX_CHUNK,
    ewma,
    first_index,
    last_index,
    linear_recurrence,
    powers,
    previous,
    ranges,
    recurrence_table,
    running_max,
    running_mean,
    running_min,
    scan_with_restarts,
)

__all__ = ["HDDMA", "HDDMW"]

# a side of HDDMW with no row that could fire
_NO_ROWS = np.empty(0, dtype=np.intp)
_NO_ROWS.setflags(write=False)
_NO_FLAGS = np.empty(0, dtype=bool)
_NO_FLAGS.setflags(write=False)

#: HDDM_W's tables by sample count are kept this far past where they settle: the values
#: of most chunks' rows are then a slice (128 KiB per table, shared by the detectors
#: with the same parameters).
_EPS_PADDING = 1 << 14


@functools.lru_cache(maxsize=32)
def _hddm_w_tables(
    lambda_val: float, log_drift: float
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """HDDM_W's tables by sample count (read-only; all None if ibc has not settled within
    :func:`recurrence_table`'s limit): ibc (river's ``ibc = lambda**2 + (1 - lambda)**2
    * ibc`` from 1), the cut test's bound ``sqrt(ibc * log / 2)``, and both continued
    with their settled value for ``_EPS_PADDING`` more counts, so that the values of a
    chunk's rows are a slice, or a gather without clamping."""
    ibc = recurrence_table(lambda_val * lambda_val, (1 - lambda_val) ** 2, 1.0)
    if ibc is None:
        return None, None, None, None
    eps = np.sqrt(ibc * (log_drift / 2))  # as HDDMW._bound
    ibc_padded = np.concatenate((ibc, np.full(_EPS_PADDING, ibc[-1])))
    eps_padded = np.concatenate((eps, np.full(_EPS_PADDING, eps[-1])))
    for table in (ibc, eps, ibc_padded, eps_padded):
        table.setflags(write=False)
    return ibc, eps, ibc_padded, eps_padded


#: HDDM_W's closed-form s2 estimate scales a segment's first value by ``decay ** -k``
#: (:func:`_estimate_tables`): only for values up to this magnitude, so that no product
#: overflows.
_SCALE_LIMIT = 1e10


@functools.lru_cache(maxsize=8)
def _estimate_tables(decay: float) -> tuple[np.ndarray, np.ndarray, int]:
    """``(decay ** k, decay ** -k, limit)`` for ``k < limit`` (read-only), ``decay ** -k``
    kept under 1e280 (and ``limit`` under a chunk and a half): the factors of
    ``decay ** (t - c) = decay ** t * decay ** -c`` in HDDM_W's s2 estimate, exact to a
    few units in the last place (far inside its safety margin; :func:`decay_tables`
    keeps ``decay ** -k`` under 1e50 for prefix sums, too short for whole chunks)."""
    limit = int(min(MAX_CHUNK + MAX_CHUNK // 2 + 2, math.log(1e280) / -math.log(decay)))
    up = np.power(decay, np.arange(limit, dtype=np.float64))
    down = 1.0 / up
    up.setflags(write=False)
    down.setflags(write=False)
    return up, down, limit


def _alarms(
    incr_drift: np.ndarray,
    incr_warning: np.ndarray,
    decr_drift: np.ndarray | None,
    decr_warning: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """river's flag logic: the increase test sets both flags; the decrease test (two
    sided only) can then raise either flag, never lower one."""
    drift = incr_drift.copy()
    warning = incr_warning & ~incr_drift
    if decr_drift is not None and decr_warning is not None:
        drift |= decr_drift
        warning |= decr_warning & ~decr_drift
    return drift, warning


class HDDMA(ChangeDetector):
    """Drift detection with Hoeffding's bounds on moving averages, HDDM_A
    (Frías-Blanco et al., 2014).

    Same parameters, defaults, warnings and drifts as river 0.26's
    ``river.drift.binary.HDDM_A``: the global mean is compared with the mean up to a
    cut point, the point where ``mean + bound`` was smallest (``mean - bound``
    largest for decreases); a difference larger than Hoeffding's bound at
    ``drift_confidence`` is a drift, at ``warning_confidence`` a warning.

    Parameters
    ----------
    drift_confidence
        Confidence of the drift test; 0 < drift_confidence < 1.
    warning_confidence
        Confidence of the warning test; 0 < warning_confidence < 1.
    two_sided_test
        Also monitor decreases of the mean (by default only increases).

    Notes
    -----
    Input is 1 for an error and 0 for a correct prediction, or any value in [0, 1].
    The cut points are running extrema (``np.minimum.accumulate``) of the bounded
    means; the means are prefix sums over counts, river's are incremental, equal to
    a few units in the last place. In the two-sided test, a sample can be both a
    warning and a drift (river's flags do the same).

    Examples
    --------
    >>> import numpy as np
    >>> from driftline.detectors.hddm import HDDMA
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.6])
    >>> HDDMA().update(stream).drifts
    array([1030])

    References
    ----------
    Isvani Frías-Blanco, José del Campo-Ávila, Gonzalo Ramos-Jiménez, Rafael
    Morales-Bueno, Agustín Ortiz-Díaz, Yailé Caballero-Mota. Online and Non-Parametric
    Drift Detection Methods Based on Hoeffding's Bounds. IEEE TKDE 27(3), 810-823, 2014.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("drift_confidence", "warning_confidence", "two_sided_test")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "_n",
        "_total",
        "_min_n",
        "_min_mean",
        "_max_n",
        "_max_mean",
    )

    def __init__(
        self, drift_confidence: float = 0.001, warning_confidence: float = 0.005, two_sided_test: bool = False
    ) -> None:
        self.drift_confidence: float = check_param(
            "drift_confidence", drift_confidence, low=0, high=1, low_open=True, high_open=True
        )
        self.warning_confidence: float = check_param(
            "warning_confidence", warning_confidence, low=0, high=1, low_open=True, high_open=True
        )
        self.two_sided_test: bool = check_param("two_sided_test", two_sided_test, choices=(True, False))
        self._log_drift = math.log(1.0 / self.drift_confidence)
        self._log2_drift = math.log(2.0 / self.drift_confidence)
        self._log2_warning = math.log(2.0 / self.warning_confidence)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        self._n = 0.0
        self._total = 0.0
        self._min_n = 0.0  # count and mean at the cut point for increases
        self._min_mean = 0.0
        self._max_n = 0.0  # ... and for decreases
        self._max_mean = 0.0

    def _bound(self, n: np.ndarray | float) -> np.ndarray | float:
        # river: math.sqrt(1.0 / (2 * n) * math.log(1.0 / drift_confidence))
        return np.sqrt(1.0 / (2 * n) * self._log_drift)

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scan_with_restarts(x, self._scan, self.reset, pace=self._pace())

    def _cut(
        self, n: np.ndarray, mean: np.ndarray, bounded: np.ndarray, cut_n: float, cut_mean: float, lower: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count and mean at the cut point after each sample (a new cut where the
        bounded mean reaches its running extremum, ties included, as river's >=)."""
        if lower:
            start = cut_mean + float(self._bound(cut_n)) if cut_n else math.inf
            new = bounded <= previous(running_min(bounded, start), start)
        else:
            start = cut_mean - float(self._bound(cut_n)) if cut_n else -math.inf
            new = bounded >= previous(running_max(bounded, start), start)
        at = last_index(new)
        return np.where(at >= 0, n[at], cut_n), np.where(at >= 0, mean[at], cut_mean), at

    def _changed(self, n: np.ndarray, mean_diff: np.ndarray, cut_n: np.ndarray, log2: float) -> np.ndarray:
        # river: m = (n - n_cut) / n_cut * (1.0 / n); eps = sqrt(m / 2 * log(2 / confidence))
        m = (n - cut_n) / cut_n * (1.0 / n)
        changed: np.ndarray = (cut_n != n) & (mean_diff >= np.sqrt(m / 2 * log2))
        return changed

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        n, mean, total = running_mean(x, self._n, self._total)
        bound = self._bound(n)
        min_n, min_mean, min_at = self._cut(n, mean, mean + bound, self._min_n, self._min_mean, True)
        incr = mean - min_mean
        incr_drift = self._changed(n, incr, min_n, self._log2_drift)
        incr_warning = self._changed(n, incr, min_n, self._log2_warning)
        decr_drift = decr_warning = None
        if self.two_sided_test:
            max_n, max_mean, max_at = self._cut(n, mean, mean - bound, self._max_n, self._max_mean, False)
            decr = max_mean - mean
            decr_drift = self._changed(n, decr, max_n, self._log2_drift)
            decr_warning = self._changed(n, decr, max_n, self._log2_warning)
        drift_zone, warning_zone = _alarms(incr_drift, incr_warning, decr_drift, decr_warning)
        drift = first_index(drift_zone)
        if drift >= 0:
            return drift, np.flatnonzero(warning_zone[: drift + 1])
        self._n = float(n[-1])
        self._total = total
        self._min_n, self._min_mean = float(min_n[-1]), float(min_mean[-1])
        if self.two_sided_test:
            self._max_n, self._max_mean = float(max_n[-1]), float(max_mean[-1])
        return drift, np.flatnonzero(warning_zone)


class HDDMW(ChangeDetector):
    """Drift detection with McDiarmid's bounds on exponentially weighted moving
    averages, HDDM_W (Frías-Blanco et al., 2014).

    Same parameters, defaults, warnings and drifts as river 0.26's
    ``river.drift.binary.HDDM_W``: the EWMA of the whole stream is cut where
    ``ewma + bound`` was smallest; the EWMA of the samples after the cut is compared
    with the EWMA up to it, with McDiarmid's bound at ``drift_confidence`` (drift) and
    ``warning_confidence`` (warning).

    Parameters
    ----------
    drift_confidence
        Confidence of the drift test; 0 < drift_confidence < 1.
    warning_confidence
        Confidence of the warning test; 0 < warning_confidence < 1.
    lambda_val
        Weight of the newest sample in the EWMAs; 0 < lambda_val < 1.
    two_sided_test
        Also monitor decreases (by default only increases).

    Notes
    -----
    Input is 1 for an error and 0 for a correct prediction, or any value in [0, 1].
    The EWMAs (river's ``stats.EWMean``: the first value is taken as is, then
    ``m = lambda * x + (1 - lambda) * m``) and the bound terms
    ``ibc = lambda**2 + (1 - lambda)**2 * ibc`` are evaluated by ``lfilter`` (or a
    table by sample count), in the loop's floating-point order: bit-identical to
    river's. The EWMA after the cut point, restarted at every cut, is first estimated
    in closed form (see ``_side``) and filtered exactly only where a test could fire.

    Examples
    --------
    >>> import numpy as np
    >>> from driftline.detectors.hddm import HDDMW
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.6])
    >>> HDDMW().update(stream).drifts
    array([1034])

    References
    ----------
    Isvani Frías-Blanco, José del Campo-Ávila, Gonzalo Ramos-Jiménez, Rafael
    Morales-Bueno, Agustín Ortiz-Díaz, Yailé Caballero-Mota. Online and Non-Parametric
    Drift Detection Methods Based on Hoeffding's Bounds. IEEE TKDE 27(3), 810-823, 2014.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("drift_confidence", "warning_confidence", "lambda_val", "two_sided_test")
    #: relative safety margin of the closed-form s2 estimate (its error is ~1e-16 / lambda)
    _MARGIN: ClassVar[float] = 1e-10
    # a "sample" (river's SampleInfo) is (ewma, ibc, count); count 0 is "not init"
    _STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "_total",
        "_incr_cut",
        "_incr_s1",
        "_incr_s2",
        "_decr_cut",
        "_decr_s1",
        "_decr_s2",
    )

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
        two_sided_test: bool = False,
    ) -> None:
        self.drift_confidence: float = check_param(
            "drift_confidence", drift_confidence, low=0, high=1, low_open=True, high_open=True
        )
        self.warning_confidence: float = check_param(
            "warning_confidence", warning_confidence, low=0, high=1, low_open=True, high_open=True
        )
        self.lambda_val: float = check_param("lambda_val", lambda_val, low=0, high=1, low_open=True, high_open=True)
        self.two_sided_test: bool = check_param("two_sided_test", two_sided_test, choices=(True, False))
        # the constants exactly as river computes them
        self._lambda_sq = self.lambda_val * self.lambda_val
        self._c_lambda_sq = (1 - self.lambda_val) ** 2
        self._log_drift = math.log(1 / self.drift_confidence)
        self._log_warning = math.log(1 / self.warning_confidence)
        self._warning_ratio = math.sqrt(self._log_warning / self._log_drift)
        # ibc depends only on how many samples a SampleInfo has seen: lookup tables (by
        # sample count, shared by the detectors with the same parameters)
        self._ibc_table, self._eps_table, self._ibc_padded, self._eps_padded = _hddm_w_tables(
            self.lambda_val, self._log_drift
        )
        if self._ibc_table is not None:
            ibc_floor = float(self._ibc_table.min())
        else:
            ibc_floor = self.lambda_val / (2 - self.lambda_val) * (1 - 1e-9)
        # no test can fire while the EWMAs differ by less than this (both ibc >= floor)
        self._least_bound = float(self._bound(2 * ibc_floor, min(self._log_drift, self._log_warning)))
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        fresh: list[Any] = [0.0, 1.0, 0]  # EWMA, ibc, count
        self._total = list(fresh)
        self._incr_cut = math.inf
        self._incr_s1 = list(fresh)
        self._incr_s2 = list(fresh)
        self._decr_cut = -math.inf
        self._decr_s1 = list(fresh)
        self._decr_s2 = list(fresh)

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the safety margins scale with max(1, |x|): once per batch (larger than any
        # chunk's: a wider margin is as safe)
        scale = max(1.0, float(x.max()), -float(x.min())) if x.size else 1.0
        return scan_with_restarts(x, lambda chunk: self._scan(chunk, scale), self.reset, pace=self._pace())

    def _ibc(self, count: np.ndarray) -> np.ndarray:
        table = self._ibc_table
        assert table is not None  # callers look it up only when the table exists
        ibc: np.ndarray = table[np.minimum(count, table.size - 1)]
        return ibc

    def _bound(self, ibc: np.ndarray | float, log: float) -> np.ndarray:
        # river: math.sqrt(ibc * math.log(1 / confidence) / 2); halving is exact (short of
        # subnormals), so ibc * (log / 2) is the same number, in one numpy call fewer
        bound: np.ndarray = np.sqrt(ibc * (log / 2))
        return bound

    def _side(
        self,
        x: np.ndarray,
        total_ewma: np.ndarray,
        total_count0: int,
        bounded: np.ndarray,
        before: float,
        cut: float,
        s1: list[Any],
        s2: list[Any],
        increase: bool,
        scale: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[Any, ...]]:
        """One side's cut points and tests: ``(rows, drift, warning, end)``, the rows
        where a test could fire (sorted), whether each is a drift, whether each is a
        warning and not a drift, and what :meth:`_side_end` makes the side's end state
        of (only for a chunk that is kept: most chunks end at a drift).

        ``bounded`` is the total EWMA plus (increase) or minus (decrease) the cut
        bound, ``before`` the total EWMA before ``x[0]``, ``total_count0`` the samples
        the total had seen before it and ``scale`` ``max(1, |x|)``.

        The EWMA ``s2`` of the samples after the last cut restarts at every cut;
        filtering it exactly over every segment is what costs, so it is first
        estimated in closed form: an EWMA restarted after a cut at ``c`` differs from
        the total EWMA by ``(1 - lambda) ** (t - c) * (x[c + 1] - total[c])``. Only
        where that estimate comes within a safety margin (far above its rounding
        error) of the smallest bound any test can have is ``s2`` filtered exactly, by
        the loop's recurrence; the tests there are river's, on river's values.
        """
        n = x.size
        decay = 1.0 - self.lambda_val
        # every value below (x, the EWMAs, their differences) is within 2 * scale
        scale = max(scale, abs(before), abs(s1[0]), abs(s2[0]))
        # closed-form estimate of s2: the segment after a cut at c starts from x[c + 1]
        # (from the carried s2, or x[0], for the one that began before this chunk)
        carried_first = decay * ((s2[0] if s2[2] > 0 else float(x[0])) - before)
        new_cut: np.ndarray | None = None
        last_at = -1  # the chunk's last cut (-1: none, the segment is carried in)
        s1_ewma: np.ndarray | float
        # (after a reset the cut point is infinite: the chunk's first row is a cut)
        if math.isfinite(cut) and (float(bounded.min()) >= cut if increase else float(bounded.max()) <= cut):
            # no cut in this chunk (common once the detector has settled): one segment
            end_cut = cut
            s1_ewma = float(s1[0])
            estimate = powers(decay, n) * carried_first
        else:
            new_cut = np.empty(n, dtype=bool)
            if increase:
                cuts = np.minimum.accumulate(bounded)
                if cut != math.inf:  # after a reset the carried cut point is no bound
                    np.minimum(cuts, cut, out=cuts)
                new_cut[0] = bounded[0] < cut
                np.less(bounded[1:], cuts[:-1], out=new_cut[1:])
            else:
                cuts = np.maximum.accumulate(bounded)
                if cut != -math.inf:
                    np.maximum(cuts, cut, out=cuts)
                new_cut[0] = bounded[0] > cut
                np.greater(bounded[1:], cuts[:-1], out=new_cut[1:])
            end_cut = float(cuts[-1])
            # the segments between cuts: 0 is the one carried in, k starts after the k-th
            # cut of the chunk; per-segment values are gathered by segment number
            segment = np.cumsum(new_cut)
            cut_rows = new_cut.nonzero()[0]
            seg_at = np.empty(cut_rows.size + 1, dtype=np.int64)
            seg_at[0] = -1
            seg_at[1:] = cut_rows
            last_at = int(seg_at[-1])
            # s1 after each row: the total at the last cut (or the carried s1)
            seg_s1 = np.empty(cut_rows.size + 1)
            seg_s1[0] = s1[0]
            np.take(total_ewma, cut_rows, out=seg_s1[1:])
            s1_ewma = seg_s1[segment]
            seg_first = np.empty(cut_rows.size + 1)
            seg_first[0] = carried_first
            # a cut at the last row starts no segment in this chunk: any value will do
            np.subtract(x[np.minimum(cut_rows + 1, n - 1)], seg_s1[1:], out=seg_first[1:])
            up, down, limit = _estimate_tables(decay)
            if n < limit and scale <= _SCALE_LIMIT:
                # decay * decay ** (t - c - 1) as decay ** t * decay ** -c: the segment's
                # first value scaled once, then one product per row (no row's age)
                seg_first[1:] *= down[cut_rows]
                estimate = seg_first[segment]
                estimate *= up[:n]
            else:
                seg_first[1:] *= decay
                age = np.arange(-1, n - 1) - seg_at[segment]
                np.maximum(age, 0, out=age)  # -1 at a cut row, where s2 is not initialised
                estimate = seg_first[segment]
                estimate *= powers(decay, n)[age]
        estimate += total_ewma
        if increase:
            diff = np.subtract(estimate, s1_ewma, out=estimate)
        else:
            diff = np.subtract(s1_ewma, estimate, out=estimate)
        # the estimate is within `margin` of river's s2 (far above its rounding error)
        margin = scale * self._MARGIN / self.lambda_val
        close = diff > self._least_bound - margin
        if new_cut is not None:
            close[cut_rows] = False  # s2 is not initialised at a cut row
            if s1[2] == 0:  # s1 is initialised from the chunk's first cut on
                close[: cut_rows[0] if cut_rows.size else n] = False
            candidates = close.nonzero()[0]
        else:
            candidates = close.nonzero()[0] if s1[2] > 0 else _NO_ROWS
        end = (x, last_at, new_cut, end_cut, total_ewma, total_count0, s1, s2, before)
        if not candidates.size:
            return _NO_ROWS, _NO_FLAGS, _NO_FLAGS, end
        # the tests on the estimate, with their bounds; only a row within `margin` of a
        # bound needs river's s2 exactly, and no row after the first sure drift matters
        if new_cut is None:  # one segment, carried in
            cand_at = None
            s1_ibc: np.ndarray | float = s1[1]
            s2_ibc = self._s2_ibc(candidates + 1, s2, False)
        else:
            cand_at = seg_at[segment[candidates]]  # the last cut before each row
            padded = self._ibc_padded
            if cut_rows.size and candidates[0] > cut_rows[0]:
                # every candidate follows a cut of this chunk (always, after a reset)
                if padded is not None and total_count0 + 1 + n <= padded.size:
                    # every count is below total_count0 + 1 + n: no clamping
                    s1_ibc = padded[cand_at + (total_count0 + 1)]
                    s2_ibc = padded[candidates - cand_at]
                else:
                    s1_ibc = self._total_ibc(cand_at + (total_count0 + 1))
                    s2_ibc = self._s2_ibc(candidates - cand_at, s2, True)
            else:
                s1_ibc = np.where(cand_at >= 0, self._total_ibc(total_count0 + 1 + cand_at), s1[1])
                s2_ibc = self._s2_ibc(candidates - cand_at, s2, cand_at >= 0)
        ibc_sum = s1_ibc + s2_ibc
        drift_bound = self._bound(ibc_sum, self._log_drift)
        # river's warning bound within a few units in the last place (far inside the
        # margin); exactly, by river's formula, where a row is within the margin of it
        warning_bound = drift_bound * self._warning_ratio
        sub = diff[candidates]
        over = sub - drift_bound  # (river's test: over > 0)
        sure = first_index(over > margin)
        if sure >= 0:
            k = sure + 1
            candidates, sub, over, warning_bound = candidates[:k], sub[:k], over[:k], warning_bound[:k]
            if cand_at is not None:
                cand_at = cand_at[:k]
        is_drift = over > 0.0
        over_warning = sub - warning_bound
        is_warning = over_warning > 0.0
        np.abs(over, out=over)
        np.abs(over_warning, out=over_warning)
        np.minimum(over, over_warning, out=over)
        unsure = (over <= margin).nonzero()[0]
        if unsure.size:
            rows = candidates[unsure]
            rows_at = cand_at[unsure] if cand_at is not None else np.full(rows.size, -1, dtype=np.int64)
            exact = self._s2_exact(x, rows, rows_at, s2)
            s1_rows = s1_ewma[rows] if isinstance(s1_ewma, np.ndarray) else s1_ewma
            exact_sub = exact - s1_rows if increase else s1_rows - exact
            is_drift[unsure] = exact_sub > drift_bound[unsure]
            is_warning[unsure] = exact_sub > self._bound(ibc_sum[unsure], self._log_warning)
        if self.two_sided_test:
            # river's flags: a drift is not also a warning of the same test (one-sided,
            # _scan keeps the warnings before the first drift only)
            is_warning &= ~is_drift
        return candidates, is_drift, is_warning, end

    def _side_end(self, end: tuple[Any, ...]) -> tuple[float, list[Any], list[Any]]:
        """The side's cut point, s1 and s2 after a chunk that is kept (see :meth:`_side`):
        s2's EWMA is filtered exactly over the segment after the chunk's last cut only."""
        x, last_at, new_cut, end_cut, total_ewma, total_count0, s1, s2, before = end
        n = x.size
        if last_at >= 0:
            count_at = total_count0 + 1 + last_at
            s1_end: list[Any] = [float(total_ewma[last_at]), self._ibc_at(1.0, 0, count_at), count_at]
        else:
            s1_end = list(s1)
        if new_cut is not None and new_cut[-1]:
            return end_cut, s1_end, [0.0, 1.0, 0]
        if last_at >= 0:
            since = n - 1 - last_at
            s2_ibc, s2_count = self._ibc_at(1.0, 0, since), since
        else:
            s2_ibc, s2_count = self._ibc_at(s2[1], s2[2], n), s2[2] + n
        if last_at < 0 and s2[2] > 0 and s2[0] == before:
            # s2 and the total are the same EWMA of the same samples from the same value:
            # once they have met they are equal for ever (the usual case for a segment
            # that has lasted a few hundred samples)
            value = float(total_ewma[-1])
        elif last_at < 0 and s2[2] > 0:
            value = float(linear_recurrence(x, self.lambda_val, 1.0 - self.lambda_val, s2[0])[-1])
        else:
            segment = x[last_at + 1 :]
            rest = linear_recurrence(segment[1:], self.lambda_val, 1.0 - self.lambda_val, float(segment[0]))
            value = float(rest[-1] if rest.size else segment[0])
        return end_cut, s1_end, [value, s2_ibc, s2_count]

    def _s2_exact(self, x: np.ndarray, wanted: np.ndarray, wanted_at: np.ndarray, s2: list[Any]) -> np.ndarray:
        """river's s2 EWMA at the rows ``wanted`` (sorted), each filtered in the loop's
        order from the start of its segment (the row after its cut ``wanted_at``)."""
        seg_start = wanted_at + 1
        head = np.flatnonzero(np.diff(seg_start, prepend=-1))  # first wanted row of each segment
        seg_first = seg_start[head]
        seg_stop = np.append(wanted[head[1:] - 1], wanted[-1]) + 1
        lengths = seg_stop - seg_first
        offsets = np.cumsum(lengths) - lengths
        carried = (seg_first == 0) & (s2[2] > 0)
        exact = ewma(x[ranges(seg_first, seg_stop)], offsets, np.where(carried, s2[0], 0.0), ~carried, self.lambda_val)
        values: np.ndarray = exact[np.repeat(offsets - seg_first, np.diff(np.append(head, wanted.size))) + wanted]
        return values

    def _ibc_at(self, ibc: float, count: int, steps: int) -> float:
        """ibc of a sample that had seen ``count`` values (ibc ``ibc``) after ``steps``
        more (one value, where :meth:`_total_ibc` and :meth:`_s2_ibc` take arrays)."""
        table = self._ibc_table
        if table is not None:
            return float(table[min(count + steps, table.size - 1)])
        return float(self._ibc_steps(ibc, np.array([steps]))[0])

    def _total_ibc(self, count: np.ndarray) -> np.ndarray:
        """ibc of a sample that has seen ``count`` values (``count >= 1``)."""
        if self._ibc_table is not None:
            return self._ibc(count)
        return self._ibc_steps(1.0, count)

    def _s2_ibc(self, since: np.ndarray, s2: list[Any], cut_in_chunk: np.ndarray | bool) -> np.ndarray:
        """ibc of s2 ``since`` samples after its cut in this chunk, or, for the segment
        carried in, after ``since`` more samples from the carried one."""
        if self._ibc_table is not None:
            if cut_in_chunk is True or cut_in_chunk is False:
                return self._ibc(since if cut_in_chunk else since + s2[2])
            return self._ibc(np.where(cut_in_chunk, since, s2[2] + since))
        ibc: np.ndarray = np.where(cut_in_chunk, self._ibc_steps(1.0, since), self._ibc_steps(s2[1], since))
        return ibc

    def _ibc_steps(self, ibc: float, steps: np.ndarray) -> np.ndarray:
        """ibc after ``steps`` updates from ``ibc`` (no settled table: lambda tiny)."""
        steps = np.asarray(steps, dtype=np.int64)
        path = np.empty(int(steps.max()) + 1 if steps.size else 1)
        path[0] = ibc
        path[1:] = linear_recurrence(np.ones(path.size - 1), self._lambda_sq, self._c_lambda_sq, ibc)
        ibc_after: np.ndarray = path[steps]
        return ibc_after

    def _scan(self, x: np.ndarray, scale: float | None = None) -> tuple[int, np.ndarray]:
        """One chunk from the current state: the first drift (-1 if none) and the
        warnings up to it; with no drift, the state after the chunk. ``scale`` is at least
        ``max(1, |x|)`` (computed if None)."""
        n = x.size
        ewma0, ibc0, count0 = self._total
        decay = 1.0 - self.lambda_val
        if count0 == 0:  # river's EWMean takes its first value as is
            total_ewma = np.empty(n)
            total_ewma[0] = x[0]
            total_ewma[1:] = linear_recurrence(x[1:], self.lambda_val, decay, float(x[0]))
        else:
            total_ewma = linear_recurrence(x, self.lambda_val, decay, ewma0)
        eps: np.ndarray | float
        table, padded = self._eps_table, self._eps_padded
        if table is not None and padded is not None and self._ibc_table is not None:
            first = count0 + 1  # the total's sample count at x[0]
            if first >= table.size - 1:
                eps = float(table[-1])  # settled: the same bound for every row
            elif first + n <= padded.size:
                eps = padded[first : first + n]  # (the common case after a reset)
            else:
                # the table up to where it settles, then its last value
                eps = np.empty(n)
                head = min(n, table.size - first)
                eps[:head] = table[first : first + head]
                eps[head:] = table[-1]
            total_ibc_end = float(self._ibc_table[min(count0 + n, self._ibc_table.size - 1)])
        else:
            total_ibc = linear_recurrence(np.ones(n), self._lambda_sq, self._c_lambda_sq, ibc0)
            eps = self._bound(total_ibc, self._log_drift)
            total_ibc_end = float(total_ibc[-1])
        if scale is None:
            scale = max(1.0, float(x.max()), -float(x.min()))
        rows, is_drift, is_warning, incr_end = self._side(
            x, total_ewma, count0, total_ewma + eps, ewma0, self._incr_cut, self._incr_s1, self._incr_s2, True, scale
        )
        # the alarms from the rows that could fire only (river's flag logic, see _alarms)
        hit = first_index(is_drift)
        if hit >= 0 and not self.two_sided_test:
            return int(rows[hit]), rows[:hit][is_warning[:hit]]
        drift = int(rows[hit]) if hit >= 0 else -1
        warnings = rows[is_warning]
        if self.two_sided_test:
            rows, is_drift, is_warning, decr_end = self._side(
                x,
                total_ewma,
                count0,
                total_ewma - eps,
                ewma0,
                self._decr_cut,
                self._decr_s1,
                self._decr_s2,
                False,
                scale,
            )
            hit = first_index(is_drift)
            if hit >= 0 and (drift < 0 or rows[hit] < drift):
                drift = int(rows[hit])
            warnings = np.union1d(warnings, rows[is_warning])
        if drift >= 0:
            return drift, warnings[: int(np.searchsorted(warnings, drift, side="right"))]
        self._total = [float(total_ewma[-1]), total_ibc_end, count0 + n]
        self._incr_cut, self._incr_s1, self._incr_s2 = self._side_end(incr_end)
        if self.two_sided_test:
            self._decr_cut, self._decr_s1, self._decr_s2 = self._side_end(decr_end)
        return drift, warnings
