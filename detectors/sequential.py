"""Always-valid sequential comparison of a candidate (canary) model with the stable one.

The mixture sequential probability ratio test (mSPRT) of Johari, Pekelis and Walsh
(2017), "Always valid inference: continuous monitoring of A/B tests", for the
difference of two means with a normal mixing distribution N(0, tau^2). Its p-value
may be read after every event (peeking) without inflating the false-alarm rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.detectors._base import check_param

__all__ = ["SequentialResult", "TwoSampleMSPRT", "msprt_log_lambda"]


@dataclass(frozen=True)
class SequentialResult:
    """What one :meth:`TwoSampleMSPRT.update` call found.

    Attributes
    ----------
    alarms
        int64 row indices (into the batch) at which the test fired.
    alarm_diffs
        ``mean_candidate - mean_stable`` at each alarm (the evidence that fired it).
    p_value
        Current always-valid one-sided p-value, ``min(1, 1 / max Lambda)`` over the
        evidence since the last alarm (1.0 right after one).
    diff
        Current ``mean_candidate - mean_stable`` (NaN while a group is empty).
    n_candidate, n_stable
        Observations in each group since the last alarm.
    skipped
        Non-finite values skipped in this batch.
    """

    alarms: np.ndarray
    alarm_diffs: np.ndarray
    p_value: float
    diff: float
    n_candidate: int
    n_stable: int
    skipped: int

    @property
    def alarm(self) -> bool:
        """True if the test fired in this batch."""
        return self.alarms.size > 0


def msprt_log_lambda(diff: np.ndarray, variance: np.ndarray, tau: float) -> np.ndarray:
    """Log of the mSPRT mixture likelihood ratio for an estimated difference.

    ``log Lambda = 0.5 log(V / (V + tau^2)) + tau^2 diff^2 / (2 V (V + tau^2))``.

    Parameters
    ----------
    diff
        Estimated difference of means.
    variance
        Its variance V (> 0; see Notes for 0).
    tau
        Standard deviation of the normal mixing distribution.

    Notes
    -----
    With ``V == 0`` (both groups constant) the ratio has no finite value: it is taken
    as ``+inf`` when ``diff != 0`` and ``-inf`` (no evidence) when ``diff == 0``.

    Examples
    --------
    >>> float(msprt_log_lambda(np.array(0.0), np.array(1e-4), tau=0.01).round(4))
    -0.3466
    """
    diff = np.asarray(diff, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    tau2 = tau * tau
    positive = variance > 0
    safe = np.where(positive, variance, 1.0)
    value = 0.5 * np.log(safe / (safe + tau2)) + tau2 * diff * diff / (2.0 * safe * (safe + tau2))
    degenerate = np.where(diff != 0, np.inf, -np.inf)
    return np.where(positive, value, degenerate)


class TwoSampleMSPRT:
    """Sequential one-sided test that a candidate's mean exceeds the stable mean.

    Feed error indicators (0/1), absolute errors or latencies of both versions as they
    arrive; the test fires when the candidate is worse (higher mean) with always-valid
    type-I error at most ``alpha`` under continuous monitoring.

    Parameters
    ----------
    alpha
        False-alarm probability bound, in (0, 1); fires when Lambda >= 1 / alpha.
    tau
        Standard deviation of the N(0, tau^2) mixing distribution over the difference
        (in the units of the values: e.g. 0.05 = five points of error rate). The test
        is most powerful for differences of about this size.
    min_samples
        Observations each group needs before the test may fire (>= 2).

    Notes
    -----
    * Groups: a = candidate, b = stable. ``diff = mean_a - mean_b`` and
      ``V = s_a^2 / n_a + s_b^2 / n_b`` with the unbiased sample variances (ddof=1).
      For 0/1 errors this is ``n / (n - 1) p (1 - p)`` per group, the plug-in
      Bernoulli variance with Bessel's correction; no separate Bernoulli formula.
      Sums of values and squares are kept relative to the first value ever seen (the
      shifted-data algorithm) to limit cancellation.
    * ``Lambda = sqrt(V / (V + tau^2)) exp(tau^2 diff^2 / (2 V (V + tau^2)))``; it
      counts only when ``diff > 0`` and both groups have ``min_samples`` values
      (one-sided). ``V == 0``: see :func:`msprt_log_lambda`.
    * Restart after alarm: at the row that fires, all evidence is dropped (counts,
      sums, the running maximum of Lambda) and the next rows start a new test.
    * Non-finite values are skipped and counted; they do not advance the test.
    * The result is the same whatever the batch cuts: sums run left to right over the
      stream as a per-event loop would.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> test = TwoSampleMSPRT(alpha=0.01, tau=0.05, min_samples=200)
    >>> is_candidate = rng.random(20_000) < 0.5
    >>> errors = (rng.random(20_000) < np.where(is_candidate, 0.2, 0.1)).astype(float)
    >>> result = test.update(errors, is_candidate)
    >>> result.alarm, bool(result.alarms[0] < 2_000)
    (True, True)

    References
    ----------
    Johari, R., Pekelis, L., Walsh, D. (2017). Always valid inference: bringing
    sequential analysis to A/B testing. arXiv:1512.04922.
    """

    _PARAMS = ("alpha", "tau", "min_samples")
    _STATE_KEYS = ("_n", "_sum", "_sum_sq", "_shift", "_max_log_lambda")

    def __init__(self, alpha: float = 0.01, tau: float = 0.05, min_samples: int = 200) -> None:
        alpha = check_param("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
        tau = check_param("tau", tau, low=0, low_open=True)
        min_samples = check_param("min_samples", min_samples, low=2, integer=True)
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.min_samples = int(min_samples)
        self._threshold = -math.log(self.alpha)
        self._shift = math.nan  # first finite value ever seen; kept across resets
        self.reset()

    def reset(self) -> None:
        """Drop the evidence (counts, sums, running maximum); keep the shift."""
        self._n = np.zeros(2, dtype=np.int64)  # [stable, candidate]
        self._sum = np.zeros(2)
        self._sum_sq = np.zeros(2)
        self._max_log_lambda = -math.inf

    def _check(self, values: Any, is_candidate: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(values)
        group = np.asarray(is_candidate)
        if x.ndim != 1 or x.dtype.kind not in "biuf":
            raise ValueError(f"values must be a 1-D array of numbers, got dtype {x.dtype} and shape {x.shape}")
        if group.dtype != np.bool_ or group.shape != x.shape:
            raise ValueError(
                f"is_candidate must be a 1-D boolean array of shape {x.shape}, "
                f"got dtype {group.dtype} and shape {group.shape}"
            )
        return x.astype(np.float64, copy=False), group

    def _running(self, y: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, ...]:
        """Counts, means and variance of the difference after each row, carried state first
        (left-to-right sums, as a per-event loop)."""
        columns = np.stack([~group, group])  # (2, n): stable, candidate
        n = self._n[:, None] + np.cumsum(columns, axis=1)
        padded = np.zeros((2, y.size + 1))
        padded[:, 0] = self._sum
        padded[:, 1:] = np.where(columns, y, 0.0)
        total = np.cumsum(padded, axis=1)[:, 1:]
        padded[:, 0] = self._sum_sq
        padded[:, 1:] = np.where(columns, y * y, 0.0)
        total_sq = np.cumsum(padded, axis=1)[:, 1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n
            variance = np.maximum(total_sq - total * mean, 0.0) / (n - 1)
            diff = mean[1] - mean[0]
            variance_diff = variance[1] / n[1] + variance[0] / n[0]
        return n, total, total_sq, diff, variance_diff

    def update(self, values: Any, is_candidate: Any) -> SequentialResult:
        """Feed a batch of observations from both versions.

        Parameters
        ----------
        values
            1-D float array: one observation per event (error indicator, absolute
            error, latency...).
        is_candidate
            1-D bool array, same length: True for the candidate version's events.

        Returns
        -------
        SequentialResult
        """
        x, group = self._check(values, is_candidate)
        finite = np.isfinite(x)
        rows = np.flatnonzero(finite)
        y, group = x[rows], group[rows]
        if y.size and math.isnan(self._shift):
            self._shift = float(y[0])
        y = y - self._shift
        alarms: list[int] = []
        alarm_diffs: list[float] = []
        start = 0
        while start < y.size:  # one pass per alarm: alarms are rare
            n, total, total_sq, diff, variance = self._running(y[start:], group[start:])
            eligible = (n >= self.min_samples).all(axis=0) & (diff > 0)
            with np.errstate(invalid="ignore"):
                log_lambda = np.where(eligible, msprt_log_lambda(diff, variance, self.tau), -np.inf)
            fired = np.flatnonzero(log_lambda >= self._threshold)
            if fired.size:
                at = int(fired[0])
                alarms.append(int(rows[start + at]))
                alarm_diffs.append(float(diff[at]))
                self.reset()
                start += at + 1
                continue
            self._n = n[:, -1].copy()
            self._sum, self._sum_sq = total[:, -1].copy(), total_sq[:, -1].copy()
            self._max_log_lambda = max(self._max_log_lambda, float(log_lambda.max()))
            break
        return SequentialResult(
            alarms=np.array(alarms, dtype=np.int64),
            alarm_diffs=np.array(alarm_diffs, dtype=np.float64),
            p_value=self.p_value,
            diff=self.diff,
            n_candidate=int(self._n[1]),
            n_stable=int(self._n[0]),
            skipped=int(x.size - rows.size),
        )

    @property
    def p_value(self) -> float:
        """Always-valid one-sided p-value of the evidence since the last alarm."""
        return min(1.0, math.exp(-self._max_log_lambda))

    @property
    def diff(self) -> float:
        """``mean_candidate - mean_stable`` since the last alarm (NaN if a group is empty)."""
        if (self._n == 0).any():
            return math.nan
        return float(self._sum[1] / self._n[1] - self._sum[0] / self._n[0])

    # ---- state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameters and state, as plain values and arrays."""
        return {
            "type": type(self).__name__,
            "params": {name: getattr(self, name) for name in self._PARAMS},
            "fields": {
                key.lstrip("_"): (value.copy() if isinstance(value, np.ndarray) else value)
                for key in self._STATE_KEYS
                for value in (getattr(self, key),)
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TwoSampleMSPRT:
        """Rebuild a test from :meth:`state_dict` output."""
        if state.get("type") != cls.__name__:
            raise ValueError(f"state: expected a {cls.__name__} state, got {state.get('type')!r}")
        test = cls(**state["params"])
        fields = state["fields"]
        test._n = np.array(fields["n"], dtype=np.int64)
        test._sum = np.array(fields["sum"], dtype=np.float64)
        test._sum_sq = np.array(fields["sum_sq"], dtype=np.float64)
        test._shift = float(fields["shift"])
        test._max_log_lambda = float(fields["max_log_lambda"])
        return test

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._PARAMS)
        return f"{type(self).__name__}({args})"
