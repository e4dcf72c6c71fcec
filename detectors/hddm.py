"""HDDM_A and HDDM_W change detectors (Hoeffding / McDiarmid bounds), batch-vectorized
and river-exact."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from driftline.detectors._base import ChangeDetector, check_param
from driftline.detectors._kernels import (
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
        # ibc depends only on how many samples a SampleInfo has seen: a lookup table
        self._ibc_table = recurrence_table(self._lambda_sq, self._c_lambda_sq, 1.0)
        self._eps_table: np.ndarray | None = None
        if self._ibc_table is not None:
            # the cut test's bound by sample count, and the smallest ibc a sample reaches
            self._eps_table = self._bound(self._ibc_table, self._log_drift)
            ibc_floor = float(self._ibc_table.min())
        else:
            ibc_floor = self.lambda_val / (2 - self.lambda_val) * (1 - 1e-9)
        # no test can fire while the EWMAs differ by less than this (both ibc >= floor)
        self._least_bound = float(self._bound(2 * ibc_floor, min(self._log_drift, self._log_warning)))
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        fresh: list[Any] = [0.0, 1.0, 0]  # EWMA (None: not yet filtered), ibc, count
        self._total = list(fresh)
        self._incr_cut = math.inf
        self._incr_s1 = list(fresh)
        self._incr_s2 = list(fresh)
        self._decr_cut = -math.inf
        self._decr_s1 = list(fresh)
        self._decr_s2 = list(fresh)

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scan_with_restarts(x, self._scan, self.reset, pace=self._pace())

    def _ibc(self, count: np.ndarray) -> np.ndarray:
        table = self._ibc_table
        assert table is not None  # callers look it up only when the table exists
        ibc: np.ndarray = table[np.minimum(count, table.size - 1)]
        return ibc

    def _bound(self, ibc: np.ndarray | float, log: float) -> np.ndarray:
        # river: math.sqrt(ibc * math.log(1 / confidence) / 2)
        bound: np.ndarray = np.sqrt(ibc * log / 2)
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
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One side's cut points and tests: (drift, warning, end state).

        ``bounded`` is the total EWMA plus (increase) or minus (decrease) the cut
        bound, ``before`` the total EWMA before ``x[0]`` and ``total_count0`` the
        samples the total had seen before it.

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
        # closed-form estimate of s2: the segment after a cut at c starts from x[c + 1]
        # (from the carried s2, or x[0], for the one that began before this chunk)
        carried_first = decay * ((s2[0] if s2[2] > 0 else float(x[0])) - before)
        extremum = float(bounded.min()) if increase else float(bounded.max())
        if (extremum >= cut) if increase else (extremum <= cut):
            # no cut in this chunk (common once the detector has settled): one segment
            new_cut = None
            end_cut = cut
            at = np.full(n, -1, dtype=np.int64)
            s1_ewma = np.broadcast_to(np.float64(s1[0]), (n,))
            estimate = powers(decay, n) * carried_first
        else:
            if increase:
                cuts = running_min(bounded, cut)
                new_cut = np.empty(n, dtype=bool)
                new_cut[0] = bounded[0] < cut
                np.less(bounded[1:], cuts[:-1], out=new_cut[1:])
            else:
                cuts = running_max(bounded, cut)
                new_cut = np.empty(n, dtype=bool)
                new_cut[0] = bounded[0] > cut
                np.greater(bounded[1:], cuts[:-1], out=new_cut[1:])
            end_cut = float(cuts[-1])
            # the segments between cuts: 0 is the one carried in, k starts after the k-th
            # cut of the chunk; per-segment values are gathered by segment number
            segment = np.cumsum(new_cut)
            cut_rows = np.flatnonzero(new_cut)
            seg_at = np.empty(cut_rows.size + 1, dtype=np.int64)
            seg_at[0] = -1
            seg_at[1:] = cut_rows
            at = seg_at[segment]  # the last cut (-1: from before this chunk)
            # s1 after each row: the total at the last cut (or the carried s1)
            seg_s1 = np.empty(cut_rows.size + 1)
            seg_s1[0] = s1[0]
            np.take(total_ewma, cut_rows, out=seg_s1[1:])
            s1_ewma = seg_s1[segment]
            seg_first = np.empty(cut_rows.size + 1)
            seg_first[0] = carried_first
            # a cut at the last row starts no segment in this chunk: any value will do
            np.subtract(x[np.minimum(cut_rows + 1, n - 1)], seg_s1[1:], out=seg_first[1:])
            seg_first[1:] *= decay
            age = np.arange(-1, n - 1) - at
            np.maximum(age, 0, out=age)  # -1 at a cut row, where s2 is not initialised
            estimate = seg_first[segment]
            estimate *= powers(decay, n)[age]
        estimate += total_ewma
        if increase:
            diff = np.subtract(estimate, s1_ewma, out=estimate)
        else:
            diff = np.subtract(s1_ewma, estimate, out=estimate)
        scale = max(1.0, float(np.abs(x).max()), abs(before), abs(s1[0]), abs(s2[0]))
        # the estimate is within `margin` of river's s2 (far above its rounding error)
        margin = scale * self._MARGIN / self.lambda_val
        close = diff > self._least_bound - margin
        if new_cut is not None:
            close &= ~new_cut  # s2 is initialised
        if s1[2] == 0:
            close &= at >= 0  # s1 is initialised
        candidates = np.flatnonzero(close)
        drift = np.zeros(n, dtype=bool)
        warning = np.zeros(n, dtype=bool)
        if candidates.size:
            # the tests on the estimate, with their bounds; only a row within `margin` of a
            # bound needs river's s2 exactly, and no row after the first sure drift matters
            if new_cut is None:  # one segment, carried in
                s1_ibc, s2_ibc = s1[1], self._s2_ibc(candidates + 1, s2, False)
            else:
                cand_at = at[candidates]
                s1_ibc = np.where(cand_at >= 0, self._total_ibc(total_count0 + 1 + cand_at), s1[1])
                s2_ibc = self._s2_ibc(candidates - cand_at, s2, cand_at >= 0)
            ibc_sum = s1_ibc + s2_ibc
            drift_bound = self._bound(ibc_sum, self._log_drift)
            warning_bound = self._bound(ibc_sum, self._log_warning)
            sub = diff[candidates]
            sure = first_index(sub > drift_bound + margin)
            if sure >= 0:
                k = sure + 1
                candidates, sub, drift_bound, warning_bound = (
                    candidates[:k],
                    sub[:k],
                    drift_bound[:k],
                    warning_bound[:k],
                )
            is_drift = sub > drift_bound
            is_warning = sub > warning_bound
            unsure = np.flatnonzero((np.abs(sub - drift_bound) <= margin) | (np.abs(sub - warning_bound) <= margin))
            if unsure.size:
                exact = self._s2_exact(x, candidates[unsure], at, s2)
                exact_sub = exact - s1_ewma[candidates[unsure]] if increase else s1_ewma[candidates[unsure]] - exact
                is_drift[unsure] = exact_sub > drift_bound[unsure]
                is_warning[unsure] = exact_sub > warning_bound[unsure]
            drift[candidates] = is_drift
            warning[candidates] = is_warning
        last_at = int(at[-1])
        if last_at >= 0:
            count_at = total_count0 + 1 + last_at
            s1_end: list[Any] = [float(total_ewma[last_at]), float(self._total_ibc(np.array([count_at]))[0]), count_at]
        else:
            s1_end = list(s1)
        if new_cut is not None and new_cut[-1]:
            s2_end: list[Any] = [0.0, 1.0, 0]
        else:
            since = n - 1 - last_at
            s2_ibc_end = float(self._s2_ibc(np.array([since]), s2, np.array([last_at >= 0]))[0])
            s2_end = [None, s2_ibc_end, since if last_at >= 0 else s2[2] + n]
        return (
            drift,
            warning,
            {
                "cut": end_cut,
                "s1": s1_end,
                "s2": s2_end,
                "at": last_at,
                "x": x,
                "s2_in": s2,
                "before": before,
                "total": float(total_ewma[-1]),
            },
        )

    def _s2_exact(self, x: np.ndarray, wanted: np.ndarray, at: np.ndarray, s2: list[Any]) -> np.ndarray:
        """river's s2 EWMA at the rows ``wanted`` (sorted), each filtered in the loop's
        order from the start of its segment (the row after its cut ``at[row]``)."""
        seg_start = at[wanted] + 1
        head = np.flatnonzero(np.diff(seg_start, prepend=-1))  # first wanted row of each segment
        seg_first = seg_start[head]
        seg_stop = np.append(wanted[head[1:] - 1], wanted[-1]) + 1
        lengths = seg_stop - seg_first
        offsets = np.cumsum(lengths) - lengths
        carried = (seg_first == 0) & (s2[2] > 0)
        exact = ewma(x[ranges(seg_first, seg_stop)], offsets, np.where(carried, s2[0], 0.0), ~carried, self.lambda_val)
        values: np.ndarray = exact[np.repeat(offsets - seg_first, np.diff(np.append(head, wanted.size))) + wanted]
        return values

    def _s2_at_end(self, end: dict[str, Any]) -> list[Any]:
        """The side's s2 after the chunk, once it is known to be kept: its EWMA is
        filtered exactly over the segment after the chunk's last cut only."""
        s2: list[Any] = end["s2"]
        if s2[0] is not None:
            return s2
        x, at, s2_in = end["x"], end["at"], end["s2_in"]
        if at < 0 and s2_in[2] > 0 and s2_in[0] == end["before"]:
            # s2 and the total are the same EWMA of the same samples from the same value:
            # once they have met they are equal for ever (the usual case for a segment
            # that has lasted a few hundred samples)
            value = end["total"]
        elif at < 0 and s2_in[2] > 0:
            value = linear_recurrence(x, self.lambda_val, 1.0 - self.lambda_val, s2_in[0])[-1]
        else:
            segment = x[at + 1 :]
            value = linear_recurrence(segment[1:], self.lambda_val, 1.0 - self.lambda_val, float(segment[0]))
            value = value[-1] if value.size else segment[0]
        return [float(value), s2[1], s2[2]]

    def _total_ibc(self, count: np.ndarray) -> np.ndarray:
        """ibc of a sample that has seen ``count`` values (``count >= 1``)."""
        if self._ibc_table is not None:
            return self._ibc(count)
        return self._ibc_steps(1.0, count)

    def _s2_ibc(self, since: np.ndarray, s2: list[Any], cut_in_chunk: np.ndarray | bool) -> np.ndarray:
        """ibc of s2 ``since`` samples after its cut in this chunk, or, for the segment
        carried in, after ``since`` more samples from the carried one."""
        if self._ibc_table is not None:
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

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        n = x.size
        ewma0, ibc0, count0 = self._total
        decay = 1.0 - self.lambda_val
        if count0 == 0:  # river's EWMean takes its first value as is
            total_ewma = np.empty(n)
            total_ewma[0] = x[0]
            total_ewma[1:] = linear_recurrence(x[1:], self.lambda_val, decay, float(x[0]))
        else:
            total_ewma = linear_recurrence(x, self.lambda_val, decay, ewma0)
        if self._eps_table is not None and self._ibc_table is not None:
            if count0 + 1 >= self._eps_table.size - 1:
                eps = self._eps_table[-1]  # settled: the same bound for every row
            else:
                eps = self._eps_table[np.minimum(np.arange(count0 + 1, count0 + 1 + n), self._eps_table.size - 1)]
            total_ibc_end = float(self._ibc_table[min(count0 + n, self._ibc_table.size - 1)])
        else:
            total_ibc = linear_recurrence(np.ones(n), self._lambda_sq, self._c_lambda_sq, ibc0)
            eps = self._bound(total_ibc, self._log_drift)
            total_ibc_end = float(total_ibc[-1])
        incr_drift, incr_warning, incr_end = self._side(
            x, total_ewma, count0, total_ewma + eps, ewma0, self._incr_cut, self._incr_s1, self._incr_s2, True
        )
        decr_drift = decr_warning = None
        if self.two_sided_test:
            decr_drift, decr_warning, decr_end = self._side(
                x, total_ewma, count0, total_ewma - eps, ewma0, self._decr_cut, self._decr_s1, self._decr_s2, False
            )
        drift_zone, warning_zone = _alarms(incr_drift, incr_warning, decr_drift, decr_warning)
        drift = first_index(drift_zone)
        if drift >= 0:
            return drift, np.flatnonzero(warning_zone[: drift + 1])
        self._total = [float(total_ewma[-1]), total_ibc_end, count0 + n]
        self._incr_cut, self._incr_s1, self._incr_s2 = incr_end["cut"], incr_end["s1"], self._s2_at_end(incr_end)
        if self.two_sided_test:
            self._decr_cut, self._decr_s1, self._decr_s2 = decr_end["cut"], decr_end["s1"], self._s2_at_end(decr_end)
        return drift, np.flatnonzero(warning_zone)
