"""Newer versions (canaries) against the stable one.

* error rate: one mixture SPRT per newer version (:class:`~driftline.detectors.sequential.
  TwoSampleMSPRT`), always valid, on its labelled errors against the stable version's
  over the same traffic period; a version found worse is reported once (a rollback is
  due, not a stream of alarms);
* latency: each window's mean latency against the model's latency baseline (the stable
  version's first window), with a tolerance.

Both raise ``regression`` alarms (action ``rollback``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from driftline.detectors.sequential import TwoSampleMSPRT
from driftline.monitor.alarms import Alarm, AlarmFactory
from driftline.monitor.config import RegressionSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import L_ERR, L_IDX, L_TS

__all__ = ["ErrorRegression", "latency_regression"]


def latency_regression(latency_ms: float | None, is_stable: bool, baseline: float | None, cfg: RegressionSettings,
                       states: AlarmStates, alarm: AlarmFactory, first: int, last: int, ts: float
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


class ErrorRegression:
    """One mixture SPRT per newer version on its errors against the stable version's.

    The stable side is its labels of predictions made since the newer version's first
    prediction (the same traffic period), fed in join order whatever the batches' cuts,
    so a replay and a Kafka run agree.
    """

    def __init__(self) -> None:
        self.tests: dict[str, TwoSampleMSPRT] = {}
        self.start: dict[str, float] = {}  # evidence start of each version's test
        self.regressed: set[str] = set()  # versions already found worse than the stable one

    def update(self, rows: np.ndarray, versions: np.ndarray, stable: str | None, version_first: Mapping[str, int],
               cfg: RegressionSettings, alarm_of: Callable[[str], AlarmFactory]) -> list[Alarm]:
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
            sel = is_canary | (is_stable & (index >= since))
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
                alarms.append(alarm_of(canary)(
                    "regression", "msprt", "error_rate", diff, cfg.alpha, None,
                    int(min(start, sub[: i + 1, L_IDX].min())), int(sub[i, L_IDX]), float(sub[i, L_TS])))
        return alarms

    def forget(self, version: str) -> None:
        """Drop a version's test (it is no longer tracked)."""
        self.tests.pop(version, None)
        self.start.pop(version, None)
        self.regressed.discard(version)

    def state_dict(self) -> dict[str, Any]:
        return {"regression": {name: t.state_dict() for name, t in self.tests.items()},
                "regression_start": dict(self.start), "regressed": sorted(self.regressed)}

    def load_state(self, s: Mapping[str, Any]) -> None:
        self.tests = {k: TwoSampleMSPRT.from_state(v) for k, v in s["regression"].items()}
        self.start = {k: float(v) for k, v in s["regression_start"].items()}
        self.regressed = set(s["regressed"])
