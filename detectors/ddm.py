"""DDM and EDDM error-rate change detectors, batch-vectorized and river-exact."""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import (
    MAX_CHUNK,
    Pace,
    counts,
    first_index,
    prefix_sums,
    restart_loop,
)

__all__ = ["DDM", "EDDM"]


class DDM(ChangeDetector):
    """Drift Detection Method on an error stream (Gama et al., 2004).

    Same parameters, defaults, warnings and drifts as river 0.26's
    ``river.drift.binary.DDM``: with ``p`` the running error rate and
    ``s = sqrt(p (1 - p) / n)``, after ``warm_start`` samples the detector records
    ``p_min, s_min`` where ``p + s`` is smallest, warns while
    ``p + s > p_min + warning_threshold * s_min`` and signals a drift (and no warning)
    when ``p + s > p_min + drift_threshold * s_min``. After a drift it restarts from
    the next sample.

    Parameters
    ----------
    warm_start
        Samples since the last reset before warnings or drifts; int >= 0.
    warning_threshold
        Warning level, in standard deviations; float > 0.
    drift_threshold
        Drift level, in standard deviations; float > 0.

    Notes
    -----
    Input is 1 for an error and 0 for a correct prediction (booleans work; other
    real values are averaged as they come, like river does). The error rate is a
    prefix sum over the count, correctly rounded for 0/1 input; river's incremental
    mean differs from it by a few units in the last place, which could change an
    alarm only at an exact tie of ``p + s`` values (none seen in the parity tests).

    Examples
    --------
    >>> import numpy as np
    >>> from driftline.detectors.ddm import DDM
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.6])
    >>> result = DDM().update(stream)
    >>> result.drifts
    array([1303])

    References
    ----------
    João Gama, Pedro Medas, Gladys Castillo, Pedro Rodrigues. Learning with Drift
    Detection. SBIA 2004, 286-295.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("warm_start", "warning_threshold", "drift_threshold")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ("_n", "_errors", "_p_min", "_s_min", "_ps_min")

    def __init__(self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0) -> None:
        self.warm_start: int = check_param("warm_start", warm_start, low=0, integer=True)
        self.warning_threshold: float = check_param("warning_threshold", warning_threshold, low=0, low_open=True)
        self.drift_threshold: float = check_param("drift_threshold", drift_threshold, low=0, low_open=True)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        self._n = 0.0
        self._errors = 0.0  # sum of the inputs since the reset
        self._p_min = 0.0
        self._s_min = 0.0
        self._ps_min = math.inf

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = _DDMBatch(self, x)
        return restart_loop(x.size, batch.scan, self.reset, pace=self._pace())


class _DDMBatch:
    """DDM over one batch: ``scan(a, b)`` runs rows ``a .. b-1`` from the detector's
    state (see :func:`~driftline.detectors._kernels.restart_loop`).

    The error count since a reset at row ``r`` is ``e[t + 1] - e[r]`` with ``e`` one
    prefix sum per batch (exact for 0/1 input), so a scan starts from the error rate
    without a pass of its own over the samples, and works on the rows after the warm-up
    only. When no row of a scan makes a new minimum of ``p + s`` (the common case once
    the minimum has settled) the levels are constants; otherwise the row of the last
    minimum so far is carried forward with one ``maximum.accumulate``.
    """

    __slots__ = ("det", "e", "offset", "work", "levels", "index", "rows")

    def __init__(self, det: DDM, x: np.ndarray) -> None:
        self.det = det
        size = x.size
        self.e = prefix_sums(x)
        self.offset = -det._errors  # errors since the reset: e[t + 1] - offset
        # rows: p, s, p + s, running minimum; levels: the drift and warning levels of
        # each row as a minimum, after a leading cell for the carried minimum's
        self.work = np.empty((4, size))
        self.levels = np.empty((2, size + 1))
        self.index = np.empty(size, dtype=np.int64)
        self.rows = np.arange(1, size + 1)

    def scan(self, a: int, b: int) -> tuple[int, np.ndarray]:
        det = self.det
        n0 = int(det._n)
        if n0 == 0:
            self.offset = float(self.e[a])
        # rows before `lo` have n <= warm_start: they only count
        lo = a + max(0, det.warm_start - n0)
        if lo >= b:
            det._n = float(n0 + b - a)
            det._errors = float(self.e[b]) - self.offset
            return -1, EMPTY_INDEX
        size = b - lo
        n = counts(n0 + lo - a + 1, size)
        p, s, ps, low = (row[:size] for row in self.work)
        np.subtract(self.e[lo + 1 : b + 1], self.offset, out=p)
        p /= n
        # s = sqrt(p * (1 - p) / n), rounded as river computes it
        np.subtract(1.0, p, out=s)
        s *= p
        s /= n
        np.sqrt(s, out=s)
        np.add(p, s, out=ps)
        lowest = int(ps.argmin())
        drift_level, warning_level = self.levels[0, : size + 1], self.levels[1, : size + 1]
        record = -1
        if ps[lowest] > det._ps_min:
            # no new minimum: both levels are the carried minimum's
            drift_at: float | np.ndarray = det._p_min + det.drift_threshold * det._s_min
            warning_at: float | np.ndarray = det._p_min + det.warning_threshold * det._s_min
        else:
            # river's test ps <= ps_min makes a row the new minimum: it equals the running
            # minimum that includes it (and the carried one)
            np.minimum.accumulate(ps, out=low)
            np.minimum(low, det._ps_min, out=low)
            at = self.index[:size]
            np.multiply(ps == low, self.rows[:size], out=at)  # row + 1 where a minimum, else 0
            np.maximum.accumulate(at, out=at)
            record = int(at[-1]) - 1
            # level of each row if it is the minimum: p + threshold * s, as river rounds it
            np.multiply(s, det.drift_threshold, out=drift_level[1:])
            drift_level[1:] += p
            drift_level[0] = det._p_min + det.drift_threshold * det._s_min
            np.multiply(s, det.warning_threshold, out=warning_level[1:])
            warning_level[1:] += p
            warning_level[0] = det._p_min + det.warning_threshold * det._s_min
            drift_at = drift_level[at]
            warning_at = warning_level[at]
        above = ps > drift_at
        drift = int(above.argmax())
        if not above[drift]:
            drift = -1
        stop = drift if drift >= 0 else size
        warn = ps[:stop] > (warning_at[:stop] if isinstance(warning_at, np.ndarray) else warning_at)
        warnings = warn.nonzero()[0]
        if len(warnings):
            warnings += lo
        if drift >= 0:
            return lo + drift, warnings
        det._n = float(n0 + b - a)
        det._errors = float(self.e[b]) - self.offset
        if record >= 0:
            det._p_min = float(p[record])
            det._s_min = float(s[record])
            det._ps_min = det._p_min + det._s_min
        return -1, warnings


class EDDM(ChangeDetector):
    """Early Drift Detection Method on an error stream (Baena-García et al., 2006).

    Same parameters, defaults, warnings and drifts as river 0.26's
    ``river.drift.binary.EDDM``: it tracks the mean ``p'`` and standard deviation
    ``s'`` of the distances between consecutive errors, and the maximum of
    ``p' + 2 s'``. At each error, once more than ``warm_start`` samples and errors
    were seen, the ratio ``(p' + 2 s') / max`` below ``beta`` is a drift, below
    ``alpha`` a warning. As in river, the warning flag only changes at errors: it
    stays on over the correct predictions in between (and on a drift sample).

    Parameters
    ----------
    warm_start
        Samples and errors since the last reset before warnings or drifts; int >= 0.
    alpha
        Warning ratio; 0 < alpha < 1 and alpha >= beta.
    beta
        Drift ratio; 0 < beta < 1.

    Notes
    -----
    Only inputs equal to 1 are errors (as river's ``x == 1``). The distance
    statistics are prefix sums of integer distances, shifted by the first distance,
    which is exact for integer sums below 2**53; river's Welford updates and its
    ``var ** 0.5`` (``pow``, not ``sqrt``) differ by a few units in the last place,
    which could change an alarm only at an exact tie (none seen in the parity tests).

    The work is done in error space: the gaps between errors and their prefix sums
    are computed once per batch, and a restart after a drift only re-runs the
    arithmetic over the errors that follow it (no per-restart pass over the samples).

    Examples
    --------
    >>> import numpy as np
    >>> from driftline.detectors.ddm import EDDM
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.random(1000) < 0.2, rng.random(1000) < 0.6])
    >>> EDDM(alpha=0.8, beta=0.75).update(stream).drifts
    array([1314])

    References
    ----------
    Manuel Baena-García, José del Campo-Ávila, Raúl Fidalgo, Albert Bifet, Ricard
    Gavaldà, Rafael Morales-Bueno. Early Drift Detection Method. Fourth International
    Workshop on Knowledge Discovery from Data Streams, 2006.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("warm_start", "alpha", "beta")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "_n",
        "_last_error",
        "_n_errors",
        "_reference",
        "_distance_sum",
        "_distance_squares",
        "_p2s_max",
        "_warning",
    )

    def __init__(self, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        self.warm_start: int = check_param("warm_start", warm_start, low=0, integer=True)
        self.beta: float = check_param("beta", beta, low=0, high=1, low_open=True, high_open=True)
        self.alpha: float = check_param("alpha", alpha, low=self.beta, high=1, high_open=True, why="beta <= alpha")
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        self._n = 0  # samples since the reset
        self._last_error = 0  # sample number of the last error
        self._n_errors = 0
        self._reference = 0  # first distance since the reset: the shift of the sums
        self._distance_sum = 0  # sum of (distance - reference)
        self._distance_squares = 0  # sum of (distance - reference) ** 2
        self._p2s_max = -1.0
        self._warning = False  # river's warning flag persists between errors

    def _pace(self) -> Pace:
        # the gaps between EDDM's drifts (in errors) have a long tail: chunks sized from
        # their median, doubling on a miss, waste less than from the longest
        pace: Pace | None = self.__dict__.get("_restart_pace")
        if pace is None:
            pace = self._restart_pace = Pace(median=True, factor=1.5, growth=2.0)
        return pace

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        errors = np.flatnonzero(x == 1)
        if errors.size == 0:
            self._n += x.size
            return EMPTY_INDEX, (np.arange(x.size) if self._warning else EMPTY_INDEX)
        # Everything that does not depend on where the detector restarts is computed once
        # per batch: the distances between consecutive errors (after a restart at an
        # error, the next distance is the same gap) and a table of prefix sums, exact
        # integers in float64 (below 2**53): rows sum(gap), sum(gap ** 2), count, 1.
        first_gap = self._n + 1 + int(errors[0]) - self._last_error
        table = np.empty((4, errors.size + 1))
        table[:2, 0] = 0.0
        # the prefix sums of the gaps telescope: first gap + errors[k] - errors[0]
        np.add(errors, float(first_gap - int(errors[0])), out=table[0, 1:])
        gaps = np.empty(errors.size, dtype=np.int64 if first_gap < 2**31 else np.float64)
        gaps[0] = first_gap
        np.subtract(errors[1:], errors[:-1], out=gaps[1:])
        np.square(gaps, out=gaps)
        table[1, 1:] = np.cumsum(gaps)  # in int64 (when squares cannot overflow): faster
        table[2] = np.arange(errors.size + 1.0)
        table[3] = 1.0
        batch = _EDDMBatch(self, x.size, errors, table)
        drift_errors, warnings = restart_loop(errors.size, batch.scan, batch.reset, pace=self._pace())
        batch.finish()
        return errors[drift_errors], warnings


@functools.lru_cache(maxsize=1)
def _quarter_table() -> np.ndarray:
    table = counts(0, MAX_CHUNK + 2) / 4.0
    table.setflags(write=False)
    return table


def _quarters(start: int, size: int) -> np.ndarray:
    """``arange(start, start + size) / 4`` (exact), from a shared table when it fits."""
    if start + size <= MAX_CHUNK + 2:
        return _quarter_table()[start : start + size]
    return np.arange(start, start + size, dtype=np.float64) / 4.0


class _EDDMBatch:
    """EDDM over one batch, in error space: ``scan(a, b)`` runs errors ``a .. b-1``
    from the detector's state; the sample rows between errors carry the warning flag.

    River numbers the samples since its last reset from 1; row ``i`` of the batch is
    sample ``i - origin``.
    """

    __slots__ = ("det", "size", "errors", "table", "coef", "origin", "row", "p2s")

    def __init__(self, det: EDDM, size: int, errors: np.ndarray, table: np.ndarray) -> None:
        self.det, self.size, self.errors, self.table = det, size, errors, table
        # the table's rows to the shifted sums and squares (see scan)
        self.coef = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        self.p2s = np.empty(errors.size + 1)  # scratch of every scan
        self.origin = -(det._n + 1)
        self.row = 0  # first row not yet covered by a scan

    def reset(self) -> None:
        # called after a drift at row self.row - 1: river restarts its count after it
        self.det.reset()
        self.origin = self.row - 1

    def scan(self, a: int, b: int) -> tuple[int, np.ndarray]:
        det, errors, table = self.det, self.errors, self.table
        if det._n_errors == 0:
            # the first distance since the reset (the gaps were squared in the table)
            det._reference = int(table[0, a + 1] - table[0, a])
        ref = float(det._reference)
        # sums of (distance - reference) and of its square since the reset: integers,
        # exact in float64 whatever the order of the operations, so one product with the
        # table gives both, equal to a left-to-right sum of the shifted distances
        p1, p2 = float(table[0, a]), float(table[1, a])
        s0, q0 = det._distance_sum, det._distance_squares
        coef = self.coef
        coef[0, 2], coef[0, 3] = -ref, ref * a - p1 + s0
        coef[1, 0], coef[1, 2] = -2.0 * ref, ref * ref
        coef[1, 3] = 2.0 * ref * p1 - p2 - ref * ref * a + q0
        sums, squares = coef @ table[:, a + 1 : b + 1]
        size = b - a
        n_errors = det._n_errors
        count = counts(n_errors + 1, size)  # errors since the reset
        # p2s = mean + 2 * std, computed after a free leading cell (see `extended` below)
        p2s_ext = self.p2s[: size + 1]
        p2s = p2s_ext[1:]
        np.divide(sums, count, out=p2s)
        p2s += ref
        variance = sums * sums
        variance /= count
        np.subtract(squares, variance, out=variance)
        # 4 * variance / (count - 1): dividing by the exact (count - 1) / 4 scales the
        # correctly rounded quotient by 4 exactly, so that sqrt gives 2 * std exactly.
        # count - 1 is 0 only for the first error since a reset, whose sums are 0: its
        # variance is 0 (river's Var returns 0 for one value)
        if n_errors == 0:
            variance[0] = 0.0
            variance[1:] /= _quarters(n_errors + 1, size - 1)
        else:
            variance /= _quarters(n_errors, size)
        if abs(s0) + (float(table[0, b]) - p1) + ref * (b - a) >= 2.0**26:
            # sums * sums may round: then cancellation can leave -tiny for a constant
            # (when it is exact, squares >= sums * sums / count holds after rounding too)
            np.maximum(variance, 0.0, out=variance)
        np.sqrt(variance, out=variance)
        p2s += variance
        # errors are judged once sample > warm_start (a suffix: samples increase), and
        # compared with the maximum once count > warm_start (a suffix too)
        limit = det.warm_start + self.origin
        active = 0 if errors[a] > limit else int(errors[a:b].searchsorted(limit, side="right"))
        judged_from = max(active, det.warm_start - det._n_errors)
        # the maximum each active error is compared with: a running maximum that starts
        # from the carried one, in the cell before the first active error; it is
        # constant from the largest value on, which is often the carried one
        extended = p2s_ext[active:]
        extended[0] = det._p2s_max
        top = int(extended.argmax())
        largest = float(extended[top])
        tail = extended[1:]
        before: float | np.ndarray = largest
        if top > 0:
            running = np.empty(tail.size)
            np.maximum.accumulate(extended[:top], out=running[:top])
            running[top:] = largest
            before = running
        level = tail / before
        judged = tail <= before
        if judged_from > active:
            judged[: judged_from - active] = False
        low = level < det.alpha  # judged errors that set the warning flag (beta <= alpha)
        low &= judged
        drift = -1
        some_low = low.size > 0 and bool(low[low.argmax()])
        if some_low:
            drift = first_index(judged & (level < det.beta))
            if drift >= 0:
                # the drift error does not touch the flag
                judged[drift:] = False
                low[drift:] = False
        first = a + active  # the error at tail[0]
        if drift >= 0:
            end = int(errors[first + drift]) + 1
        else:
            end = int(errors[b]) if b < errors.size else self.size
        if some_low and drift >= 0:
            some_low = bool(low[low.argmax()])
        if some_low:
            # the flag changes only at judged errors, and persists on the rows between:
            # the warnings are the runs between the errors where it turns on and off
            setter = judged.nonzero()[0]
            values = np.empty(setter.size + 1, dtype=bool)
            values[0] = det._warning
            np.take(low, setter, out=values[1:])
            toggles = errors[setter[(values[1:] != values[:-1]).nonzero()[0]] + first].tolist()
            if values[0]:
                toggles.insert(0, self.row)
            if values[-1]:
                toggles.append(end)
            warnings = np.concatenate([np.arange(on, off) for on, off in zip(toggles[::2], toggles[1::2], strict=True)])
            flag = bool(values[-1])
        elif det._warning:
            # on until the first judged error turns it off
            off = first_index(judged)
            warnings = np.arange(self.row, end if off < 0 else int(errors[first + off]))
            flag = off < 0
        else:
            warnings, flag = EMPTY_INDEX, False
        self.row = end
        if drift >= 0:
            return first + drift, warnings
        det._last_error = int(errors[b - 1]) - self.origin
        det._n_errors += b - a
        det._distance_sum = int(sums[-1])
        det._distance_squares = int(squares[-1])
        det._p2s_max = largest
        det._warning = flag
        return -1, warnings

    def finish(self) -> None:
        """The rows after the last error, and the sample count."""
        # the last scan covered the rows up to the end (or up to a drift after which no
        # error came: the fresh detector has no warning there)
        self.det._n = self.size - 1 - self.origin
