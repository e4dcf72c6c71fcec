"""Fast Hoeffding Drift Detection Method, batch-vectorized (river-exact)."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from driftline.detectors._base import EMPTY_INDEX, ChangeDetector, check_param
from driftline.detectors._kernels import first_index, running_max, scan_with_restarts

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
        return scan_with_restarts(x, self._scan, self.reset, pace=self._pace())

    def _scan(self, x: np.ndarray) -> tuple[int, np.ndarray]:
        n = self.sliding_window_size
        k = self._tail.size
        z = np.concatenate((self._tail, x))
        prefix = np.concatenate(([0.0], np.cumsum(z)))
        ends = np.arange(k + 1, z.size + 1)  # prefix index just after each input of x
        full = ends >= n
        u = np.where(full, (prefix[ends] - prefix[np.maximum(ends - n, 0)]) / n, -math.inf)
        u_max = running_max(u, self._u_max)
        alarm = full & (u_max - u > self._epsilon)
        if self.short_window_size is not None:
            s = self.short_window_size
            u_short = np.where(full, (prefix[ends] - prefix[np.maximum(ends - s, 0)]) / s, -math.inf)
            u_short_max = running_max(u_short, self._u_short_max)
            alarm |= full & (u_short_max - u_short > self._epsilon_short)
        drift = first_index(alarm)
        if drift < 0:
            self._tail = z[max(z.size - (n - 1), 0) :].copy()
            self._u_max = float(u_max[-1])
            if self.short_window_size is not None:
                self._u_short_max = float(u_short_max[-1])
        return drift, EMPTY_INDEX
