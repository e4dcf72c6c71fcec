"""HDDM_A and HDDM_W change detectors (Hoeffding / McDiarmid bounds), batch-vectorized
and river-exact."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from detectors._base import ChangeDetector
from detectors._kernels import (
    ewma,
    first_index,
    last_index,
    linear_recurrence,
    previous,
    running_max,
    running_mean,
    running_min,
    scan_with_restarts,
    recurrence_table,
    segmented_recurrence,
)

__all__ = ["HDDMA", "HDDMW"]


def _check_confidence(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a number with 0 < {name} < 1, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


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
    >>> from detectors.hddm import HDDMA
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
        self.drift_confidence = _check_confidence("drift_confidence", drift_confidence)
        self.warning_confidence = _check_confidence("warning_confidence", warning_confidence)
        self.two_sided_test = _check_bool("two_sided_test", two_sided_test)
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
        return scan_with_restarts(x, self._scan, self.reset)

    def _cut(
        self, n: np.ndarray, mean: np.ndarray, bounded: np.ndarray, cut_n: float, cut_mean: float, lower: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count and mean at the cut point after each sample (a new cut where the
        bounded mean reaches its running extremum, ties included, as river's >=)."""
        if lower:
            start = cut_mean + self._bound(cut_n) if cut_n else math.inf
            new = bounded <= previous(running_min(bounded, start), start)
        else:
            start = cut_mean - self._bound(cut_n) if cut_n else -math.inf
            new = bounded >= previous(running_max(bounded, start), start)
        at = last_index(new)
        return np.where(at >= 0, n[at], cut_n), np.where(at >= 0, mean[at], cut_mean), at

    def _changed(self, n: np.ndarray, mean_diff: np.ndarray, cut_n: np.ndarray, log2: float) -> np.ndarray:
        # river: m = (n - n_cut) / n_cut * (1.0 / n); eps = sqrt(m / 2 * log(2 / confidence))
        m = (n - cut_n) / cut_n * (1.0 / n)
        return (cut_n != n) & (mean_diff >= np.sqrt(m / 2 * log2))

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
    ``ibc = lambda**2 + (1 - lambda)**2 * ibc`` are evaluated by ``lfilter``, in the
    loop's floating-point order, restarting at every cut point in one bucketed 2-D
    call (:func:`detectors._kernels.segmented_recurrence`): they are bit-identical to
    river's.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.hddm import HDDMW
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
    # a "sample" (river's SampleInfo) is (ewma, ibc, count); count 0 is "not init"
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ("_total", "_incr_cut", "_incr_s1", "_incr_s2", "_decr_cut", "_decr_s1", "_decr_s2")

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
        two_sided_test: bool = False,
    ) -> None:
        self.drift_confidence = _check_confidence("drift_confidence", drift_confidence)
        self.warning_confidence = _check_confidence("warning_confidence", warning_confidence)
        self.lambda_val = _check_confidence("lambda_val", lambda_val)
        self.two_sided_test = _check_bool("two_sided_test", two_sided_test)
        # the constants exactly as river computes them
        self._lambda_sq = self.lambda_val * self.lambda_val
        self._c_lambda_sq = (1 - self.lambda_val) ** 2
        self._log_drift = math.log(1 / self.drift_confidence)
        self._log_warning = math.log(1 / self.warning_confidence)
        # ibc depends only on how many samples a SampleInfo has seen: a lookup table
        self._ibc_table = recurrence_table(self._lambda_sq, self._c_lambda_sq, 1.0)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        fresh = [0.0, 1.0, 0]
        self._total = list(fresh)
        self._incr_cut = math.inf
        self._incr_s1 = list(fresh)
        self._incr_s2 = list(fresh)
        self._decr_cut = -math.inf
        self._decr_s1 = list(fresh)
        self._decr_s2 = list(fresh)

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scan_with_restarts(x, self._scan, self.reset)

    def _ibc(self, count: np.ndarray) -> np.ndarray:
        table = self._ibc_table
        return table[np.minimum(count, table.size - 1)]

    def _bound(self, ibc: np.ndarray, log: float) -> np.ndarray:
        # river: math.sqrt(ibc * math.log(1 / confidence) / 2)
        return np.sqrt(ibc * log / 2)

    def _side(
        self,
        x: np.ndarray,
        total_ewma: np.ndarray,
        total_ibc: np.ndarray,
        total_count: np.ndarray,
        eps: np.ndarray,
        cut: float,
        s1: list,
        s2: list,
        increase: bool,
    ) -> tuple[np.ndarray, np.ndarray, dict]:
        """One side's cut points and tests: (drift, warning, end state)."""
        n = x.size
        if increase:
            bounded = total_ewma + eps
            new_cut = bounded < previous(running_min(bounded, cut), cut)
            cuts = running_min(bounded, cut)
        else:
            bounded = total_ewma - eps
            new_cut = bounded > previous(running_max(bounded, cut), cut)
            cuts = running_max(bounded, cut)
        at = last_index(new_cut)
        has = at >= 0
        s1_ewma = np.where(has, total_ewma[at], s1[0])
        s1_ibc = np.where(has, total_ibc[at], s1[1])
        s1_count = np.where(has, total_count[at], s1[2])
        # s2 restarts (fresh, not updated) at every cut, and is updated with every other sample
        cut_rows = np.flatnonzero(new_cut)
        starts = np.concatenate(([0], cut_rows + 1))
        carried = np.concatenate(([True], np.zeros(cut_rows.size, dtype=bool)))
        fresh = ~carried | (s2[2] == 0)
        initial_ewma = np.where(carried, s2[0], 0.0)
        initial_ibc = np.where(carried, s2[1], 1.0)
        s2_ewma = ewma(x, starts, initial_ewma, fresh, self.lambda_val)
        if self._ibc_table is not None:
            rows = np.arange(n)
            s2_ibc = self._ibc(np.where(has, rows - at, s2[2] + rows + 1))
        else:
            s2_ibc = segmented_recurrence(np.ones(n), starts, initial_ibc, self._lambda_sq, self._c_lambda_sq)
            s2_ibc[cut_rows] = 1.0
        s2_ewma[cut_rows] = 0.0
        s2_init = ~new_cut
        both = (s1_count > 0) & s2_init
        diff = s2_ewma - s1_ewma if increase else s1_ewma - s2_ewma
        ibc_sum = s1_ibc + s2_ibc
        drift = both & (diff > self._bound(ibc_sum, self._log_drift))
        warning = both & (diff > self._bound(ibc_sum, self._log_warning))
        since_cut = np.arange(n) - at  # samples in s2 after the last cut in this chunk
        end = {
            "cut": float(cuts[-1]),
            "s1": [float(s1_ewma[-1]), float(s1_ibc[-1]), int(s1_count[-1])],
            "s2": [
                float(s2_ewma[-1]),
                float(s2_ibc[-1]),
                int(since_cut[-1]) if has[-1] else s2[2] + n,
            ],
        }
        return drift, warning, end

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        n = x.size
        ewma0, ibc0, count0 = self._total
        total_ewma = ewma(x, np.array([0]), np.array([ewma0]), np.array([count0 == 0]), self.lambda_val)
        total_count = np.arange(count0 + 1, count0 + 1 + n)
        if self._ibc_table is not None:
            total_ibc = self._ibc(total_count)
        else:
            total_ibc = linear_recurrence(np.ones(n), self._lambda_sq, self._c_lambda_sq, ibc0)
        eps = self._bound(total_ibc, self._log_drift)
        incr_drift, incr_warning, incr_end = self._side(
            x, total_ewma, total_ibc, total_count, eps, self._incr_cut, self._incr_s1, self._incr_s2, True
        )
        decr_drift = decr_warning = None
        if self.two_sided_test:
            decr_drift, decr_warning, decr_end = self._side(
                x, total_ewma, total_ibc, total_count, eps, self._decr_cut, self._decr_s1, self._decr_s2, False
            )
        drift_zone, warning_zone = _alarms(incr_drift, incr_warning, decr_drift, decr_warning)
        drift = first_index(drift_zone)
        if drift >= 0:
            return drift, np.flatnonzero(warning_zone[: drift + 1])
        self._total = [float(total_ewma[-1]), float(total_ibc[-1]), int(total_count[-1])]
        self._incr_cut, self._incr_s1, self._incr_s2 = incr_end["cut"], incr_end["s1"], incr_end["s2"]
        if self.two_sided_test:
            self._decr_cut, self._decr_s1, self._decr_s2 = decr_end["cut"], decr_end["s1"], decr_end["s2"]
        return drift, np.flatnonzero(warning_zone)
