"""Newer versions (canaries) against the stable one.

* error rate: one mixture SPRT per newer version (:class:`~driftline.detectors.sequential.
  TwoSampleMSPRT`), always valid, on its labelled errors against the stable version's
  over the same traffic period; a version found worse is reported once (a rollback is
  due, not a stream of alarms);
* latency: each window's mean latency against the model's latency baseline (the stable
  version's first window), with a tolerance.

Both raise ``regression`` alarms (action ``rollback``).

* non-inferiority (:class:`NonInferiority`, ``canary.promote``, off by default): the same
  mSPRT with its null shifted by the margin, which says ``promote_ready`` (action
  ``promote``) once the canary's error rate is confidently less than the stable one's
  plus ``margin``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from driftline.detectors.sequential import TwoSampleMSPRT
from driftline.monitor.alarms import Alarm, AlarmFactory
from driftline.monitor.config import PromoteSettings, RegressionSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import L_ERR, L_IDX, L_TS

__all__ = ["ErrorRegression", "NonInferiority", "latency_regression", "group_moments"]


def latency_regression(
    latency_ms: float | None,
    is_stable: bool,
    baseline: float | None,
    cfg: RegressionSettings,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
) -> tuple[float | None, list[Alarm]]:
    """A newer version whose window latency exceeds the model's latency baseline (the
    stable version's first window) by more than ``latency_tolerance``. Returns the
    baseline (set by the stable version's first window) and the alarms."""
    if latency_ms is None or not cfg.enabled:
        return baseline, []
    if is_stable:
        return (latency_ms if baseline is None else baseline), []
    if baseline is None or baseline <= 0:
        return baseline, []
    limit = baseline * (1 + cfg.latency_tolerance)
    if states.edge("latency", latency_ms > limit):
        return baseline, [alarm("regression", "latency", "latency_ms", latency_ms, limit, None, first, last, ts)]
    return baseline, []


class _VersionTests:
    """The per-version bookkeeping both canary tests share: each version's test, where
    its evidence starts, the bounds of the prediction indices it may come from, and the
    versions already decided (:attr:`decided`, named by each test)."""

    def __init__(self) -> None:
        self.tests: dict[str, TwoSampleMSPRT] = {}
        self.start: dict[str, float] = {}  # evidence start of each version's test
        self.bounds: dict[str, list[int]] = {}  # version -> [first, end) prediction indices its evidence may come from

    @property
    def decided(self) -> set[str]:
        raise NotImplementedError

    def forget(self, version: str) -> None:
        """Drop a version's test (it is no longer tracked)."""
        self.tests.pop(version, None)
        self.start.pop(version, None)
        self.decided.discard(version)
        self.bounds.pop(version, None)

    def restart(self, version: str, at: int) -> None:
        """Start a version's test afresh on the evidence of predictions from index ``at``
        (a new deployment, or a new stable version to compare with)."""
        self.forget(version)
        self.bounds[version] = [at, _NO_END]

    def stop(self, version: str, at: int) -> None:
        """Stop a version's test at prediction index ``at`` (rolled back): labels of its
        earlier predictions still count, whenever they arrive, so the verdict does not
        depend on how the stream was cut into batches."""
        self.bounds[version] = [self.bounds.get(version, [0, _NO_END])[0], at]


class ErrorRegression(_VersionTests):
    """One mixture SPRT per newer version on its errors against the stable version's.

    The stable side is its labels of predictions made since the newer version's first
    prediction (the same traffic period), fed in join order whatever the batches' cuts,
    so a replay and a Kafka run agree.
    """

    def __init__(self) -> None:
        super().__init__()
        self.regressed: set[str] = set()  # versions already found worse than the stable one (or left out)

    @property
    def decided(self) -> set[str]:
        return self.regressed

    def update(
        self,
        rows: np.ndarray,
        versions: np.ndarray,
        stable: str | None,
        version_first: Mapping[str, int],
        cfg: RegressionSettings,
        alarm_of: Callable[[str], AlarmFactory],
    ) -> list[Alarm]:
        """Feed labelled rows (of every version; ``versions`` per row) to the tests.

        Parameters
        ----------
        version_first
            Each version's first prediction index (where its traffic period starts).
        alarm_of
            The alarm factory of a version.
        """
        if not cfg.enabled or stable is None or len(version_first) < 2:
            return []
        alarms = []
        is_stable = versions == stable
        index = rows[:, L_IDX]
        for canary, since in list(version_first.items()):
            if canary == stable or canary in self.regressed:
                continue  # a version found worse is reported once: a rollback is due, not a stream of alarms
            is_canary = versions == canary
            sel = _within(is_canary | (is_stable & (index >= since)), index, self.bounds.get(canary))
            if not sel.any():
                continue
            test = self.tests.get(canary)
            if test is None:
                test = self.tests[canary] = TwoSampleMSPRT(alpha=cfg.alpha, tau=cfg.tau, min_samples=cfg.min_samples)
            sub = rows[sel]
            found = test.update(sub[:, L_ERR], is_canary[sel])
            start = self.start[canary] = min(self.start.get(canary, math.inf), float(sub[:, L_IDX].min()))
            for i, diff in zip(found.alarms.tolist()[:1], found.alarm_diffs.tolist()[:1], strict=True):
                self.regressed.add(canary)
                # statistic: how much higher the canary's error is; p-value <= alpha by construction
                alarms.append(
                    alarm_of(canary)(
                        "regression",
                        "msprt",
                        "error_rate",
                        diff,
                        cfg.alpha,
                        None,
                        int(min(start, sub[: i + 1, L_IDX].min())),
                        int(sub[i, L_IDX]),
                        float(sub[i, L_TS]),
                    )
                )
        return alarms

    def exclude(self, version: str) -> None:
        """Never test a version again (the former stable one) until :meth:`forget`."""
        self.tests.pop(version, None)
        self.start.pop(version, None)
        self.regressed.add(version)

    def state_dict(self) -> dict[str, Any]:
        return {
            "regression": {name: t.state_dict() for name, t in self.tests.items()},
            "regression_start": dict(self.start),
            "regressed": sorted(self.regressed),
            "regression_bounds": {k: list(v) for k, v in self.bounds.items()},
        }

    def load_state(self, s: Mapping[str, Any]) -> None:
        self.tests = {k: TwoSampleMSPRT.from_state(v) for k, v in s["regression"].items()}
        self.start = {k: float(v) for k, v in s["regression_start"].items()}
        self.regressed = set(s["regressed"])
        bounds = s.get("regression_bounds", {})  # absent from a format-2 state
        self.bounds = {k: [int(a), int(b)] for k, (a, b) in bounds.items()}


_NO_END = 2**62
"""An open end of a test's evidence bounds (prediction indices stay far below)."""


def _within(sel: np.ndarray, index: np.ndarray, bounds: list[int] | None) -> np.ndarray:
    """``sel`` limited to rows whose prediction index lies in ``bounds`` (``[first, end)``)."""
    if bounds is None:
        return sel
    return sel & (index >= bounds[0]) & (index < bounds[1])


def group_moments(test: TwoSampleMSPRT) -> tuple[int, int, float, float, float, float] | None:
    """``(n_candidate, n_stable, mean_candidate, mean_stable, var_candidate, var_stable)``
    of a test's current evidence, in the test's own groups (read from its public
    state); None while a group has fewer than two values."""
    f = test.state_dict()["fields"]
    n = np.asarray(f["n"], dtype=np.int64)
    if (n < 2).any():
        return None
    total, total_sq = np.asarray(f["sum"], dtype=np.float64), np.asarray(f["sum_sq"], dtype=np.float64)
    mean = total / n
    var = np.maximum(total_sq - total * mean, 0.0) / (n - 1)
    mean = mean + float(f["shift"])
    return int(n[1]), int(n[0]), float(mean[1]), float(mean[0]), float(var[1]), float(var[0])


class NonInferiority(_VersionTests):
    """One always-valid test of non-inferiority per canary: its error rate is not worse
    than the stable version's by ``margin`` or more.

    Hypotheses, with ``d = p_canary - p_stable``: H0 ``d >= margin`` against H1
    ``d < margin``. It is :class:`~driftline.detectors.sequential.TwoSampleMSPRT` (the
    one-sided mixture SPRT of Johari et al., 2017) with the groups swapped and the null
    shifted: its "candidate" group is the stable version's errors plus ``margin``, its
    "stable" group the canary's errors, so its difference is ``margin - d`` and it
    fires when that is confidently positive. At ``d = margin`` the shifted data are a
    null of the mSPRT (equal means), so a false promote has probability at most
    ``alpha`` under continuous monitoring, and less when the canary is worse still
    (the test counts only a positive difference). The variance estimate is unchanged
    by the shift (Bernoulli plug-in with Bessel's correction, as for ``regression``).

    A canary found not inferior is reported once (``promote_ready``, action
    ``promote``); the stable side is, as for :class:`ErrorRegression`, its labels of
    predictions made since the canary's first prediction.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ready: set[str] = set()  # canaries already found not inferior

    @property
    def decided(self) -> set[str]:
        return self.ready

    def update(
        self,
        rows: np.ndarray,
        versions: np.ndarray,
        stable: str | None,
        canaries: Mapping[str, int],
        cfg: PromoteSettings,
        alarm_of: Callable[[str], AlarmFactory],
    ) -> list[Alarm]:
        """Feed labelled rows (every version's; ``versions`` per row) to the canaries'
        tests; ``canaries`` maps each canary to its first prediction index."""
        if not cfg.enabled or stable is None:
            return []
        alarms = []
        is_stable = versions == stable
        index = rows[:, L_IDX]
        for canary, since in canaries.items():
            if canary == stable or canary in self.ready:
                continue
            is_canary = versions == canary
            sel = _within(is_canary | (is_stable & (index >= since)), index, self.bounds.get(canary))
            if not sel.any():
                continue
            test = self.tests.get(canary)
            if test is None:
                test = self.tests[canary] = TwoSampleMSPRT(alpha=cfg.alpha, tau=cfg.tau, min_samples=cfg.min_samples)
            sub = rows[sel]
            canary_rows = is_canary[sel]
            found = test.update(sub[:, L_ERR] + np.where(canary_rows, 0.0, cfg.margin), ~canary_rows)
            start = self.start[canary] = min(self.start.get(canary, math.inf), float(sub[:, L_IDX].min()))
            for i, diff in zip(found.alarms.tolist()[:1], found.alarm_diffs.tolist()[:1], strict=True):
                self.ready.add(canary)
                # statistic: the canary's error rate minus the stable one's (below the margin, the threshold)
                alarms.append(
                    alarm_of(canary)(
                        "promote_ready",
                        "noninferiority",
                        "error_rate",
                        cfg.margin - diff,
                        cfg.margin,
                        None,
                        int(min(start, sub[: i + 1, L_IDX].min())),
                        int(sub[i, L_IDX]),
                        float(sub[i, L_TS]),
                    )
                )
        return alarms

    def state_dict(self) -> dict[str, Any]:
        return {
            "tests": {name: t.state_dict() for name, t in self.tests.items()},
            "start": dict(self.start),
            "ready": sorted(self.ready),
            "bounds": {k: list(v) for k, v in self.bounds.items()},
        }

    def load_state(self, s: Mapping[str, Any] | None) -> None:
        """Rebuild from :meth:`state_dict` output (None: a format-2 state, no tests)."""
        if s is None:
            return
        self.tests = {k: TwoSampleMSPRT.from_state(v) for k, v in s["tests"].items()}
        self.start = {k: float(v) for k, v in s["start"].items()}
        self.ready = set(s["ready"])
        self.bounds = {k: [int(a), int(b)] for k, (a, b) in s["bounds"].items()}
