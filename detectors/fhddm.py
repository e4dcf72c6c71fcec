"""Fast Hoeffding Drift Detection Method, batch-vectorized (river-exact)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import first_rise, prefix_sums, restart_loop

__all__ = ["FHDDM"]


class FHDDM(ChangeDetector):
    """Fast Hoeffding Drift Detection Method on a 0/1 stream (Pesaranghader & Viktor, 2016).

    Same parameters, defaults and drifts as river 0.26's ``river.drift.binary.FHDDM``:
    once ``sliding_window_size`` samples have been seen since the last reset, ``u`` is
    the mean of the last ``sliding_window_size`` inputs, ``u_max`` its running maximum,
    and a drift is signalled when ``u_max - u > epsilon`` with
    ``epsilon = sqrt(ln(1 / confidence_level) / (2 * sliding_window_size))``. With
    ``short_window_size`` (the stacking variant), the same test also runs on the mean
    of the last ``short_window_size`` inputs. After a drift it restarts from the next
    sample. No warning zone.

    Parameters
    ----------
    sliding_window_size
        Samples in the window; int >= 1.
    confidence_level
        Confidence of the Hoeffding bound; float in (0, 1).
    short_window_size
        None, or the short window of the stacking variant; int in [1, sliding_window_size].

    Notes
    -----
    Window sums are differences of one prefix sum per batch: exact for 0/1 (and
    boolean) input, as river's integer counts are, so the comparisons are bit for bit
    river's. The state carried between batches is the last ``sliding_window_size - 1``
    inputs (bounded).

    Examples
    --------
    >>> import numpy as np
    >>> from driftline.detectors.fhddm import FHDDM
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.random(1000) < 0.6, rng.random(1000) < 0.2])
    >>> FHDDM().update(stream).drifts.tolist()[:1]
    [1037]

    References
    ----------
    Ali Pesaranghader, Herna L. Viktor. Fast Hoeffding Drift Detection Method for
    Evolving Data Streams. ECML-PKDD 2016, 96-111.
    """

    _PARAMS: ClassVar[tuple[str, ...]] = ("sliding_window_size", "confidence_level", "short_window_size")
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ("_tail", "_u_max", "_u_short_max")

    def __init__(
        self,
        sliding_window_size: int = 100,
        confidence_level: float = 0.000001,
        short_window_size: int | None = None,
    ) -> None:
        self.sliding_window_size: int = check_param("sliding_window_size", sliding_window_size, low=1, integer=True)
        self.confidence_level: float = check_param(
            "confidence_level", confidence_level, low=0, high=1, low_open=True, high_open=True
        )
        short_window_size = check_param(
            "short_window_size",
            short_window_size,
            low=1,
            high=self.sliding_window_size,
            integer=True,
            optional=True,
            why="at most sliding_window_size",
        )
        self.short_window_size: int | None = short_window_size
        log_inverse = math.log(1 / self.confidence_level)
        self._epsilon = math.sqrt(log_inverse / (2 * self.sliding_window_size))
        self._epsilon_short = (
            math.sqrt(log_inverse / (2 * short_window_size)) if short_window_size is not None else math.inf
        )
        self.reset()

    def reset(self) -> None:
        """Forget everything seen: back to the state of a new detector."""
        self._reset_columns()
        self._tail = np.empty(0, dtype=np.float64)  # the last (at most) window - 1 inputs
        self._u_max = 0.0
        self._u_short_max = 0.0

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch = _FHDDMBatch(self, x)
        drifts, _ = restart_loop(x.size, batch.scan, batch.reset, pace=self._pace())
        batch.finish()
        return drifts, EMPTY_INDEX


class _FHDDMBatch:
    """FHDDM over one batch: ``scan(a, b)`` runs rows ``a .. b-1`` from the detector's
    state (see :func:`~driftline.detectors._kernels.restart_loop`).

    The window means do not depend on where the detector restarted, only on whether
    its window has filled since: they are computed once per batch from one prefix sum
    over the carried inputs and the batch (``u[i]`` is the mean of the window ending at
    row ``i``). A scan is then the running maximum test on a slice of them
    (:func:`~driftline.detectors._kernels.first_rise` on the negated means), and a
    restart only moves the row from which the window is full.
    """

    __slots__ = ("det", "size", "z", "u", "u_short", "full_from", "last_drift")

    def __init__(self, det: FHDDM, x: np.ndarray) -> None:
        self.det, self.size = det, x.size
        n, k = det.sliding_window_size, det._tail.size
        z = np.concatenate((det._tail, x)) if k else x
        self.z = z
        prefix = prefix_sums(z)
        # rows before full_from cannot have a full window (nor be read): from the first
        # row whose window ends inside z, u holds minus the window mean
        first = max(n - 1 - k, 0)
        self.full_from = first
        self.u = self._means(prefix, n, k, first)
        self.u_short = None
        if det.short_window_size is not None:
            self.u_short = self._means(prefix, det.short_window_size, k, first)
        self.last_drift = -1

    def _means(self, prefix: np.ndarray, width: int, k: int, first: int) -> np.ndarray:
        """Minus the mean of the ``width`` inputs up to each row (rows from ``first``)."""
        u = np.empty(self.size)
        if first >= self.size:
            return u
        ends = prefix[k + first + 1 :]
        # river's n_one / window: a difference of exact integer counts for 0/1 input
        np.subtract(ends, prefix[k + first + 1 - width : prefix.size - width], out=u[first:])
        u[first:] /= -width
        return u

    def reset(self) -> None:
        self.det.reset()
        # river's window restarts empty after the drift
        self.full_from = self.last_drift + self.det.sliding_window_size

    def scan(self, a: int, b: int) -> tuple[int, np.ndarray]:
        det = self.det
        v = max(a, self.full_from)
        if v >= b:
            return -1, EMPTY_INDEX
        # u_max - u > epsilon is a rise of -u above its running minimum, -u_max
        drift, low = first_rise(self.u[v:b], -det._u_max, det._epsilon)
        low_short = 0.0
        if self.u_short is not None:
            end = drift if drift >= 0 else b - v
            short, low_short = first_rise(self.u_short[v : v + end], -det._u_short_max, det._epsilon_short)
            if short >= 0:
                drift = short
        if drift >= 0:
            self.last_drift = v + drift
            return v + drift, EMPTY_INDEX
        det._u_max = -low
        if self.u_short is not None:
            det._u_short_max = -low_short
        return -1, EMPTY_INDEX

    def finish(self) -> None:
        """Carry the last ``window - 1`` inputs since the last reset."""
        det = self.det
        keep = det.sliding_window_size - 1
        since = self.size - 1 - self.last_drift if self.last_drift >= 0 else self.z.size
        keep = min(keep, since)
        det._tail = self.z[self.z.size - keep :].copy() if keep > 0 else np.empty(0, dtype=np.float64)
