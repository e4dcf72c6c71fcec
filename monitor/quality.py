"""Data-quality checks of a window: the missing rate against the reference's, the
share of values outside the reference range, the share of unseen categories (the rates
come from :func:`~driftline.monitor.drift.feature_drift`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np

from driftline.monitor.alarms import Alarm, AlarmFactory, QualityCheck
from driftline.monitor.config import QualitySettings
from driftline.monitor.edges import AlarmStates

__all__ = ["quality_alarms", "quality_limits"]

CHECKS: tuple[QualityCheck, ...] = get_args(QualityCheck)
"""The checks, in the order of the rates' last axis: missing, out-of-range, unseen."""


def quality_limits(features: Sequence[str], ref_missing: dict[str, float], cfg: QualitySettings) -> np.ndarray:
    """(f, 3) limits of the checks per feature: the reference's missing rate plus
    ``max_missing_rate_increase``, ``max_out_of_range_rate``, ``max_unseen_rate``."""
    return np.array(
        [
            [ref_missing.get(name, 0.0) + cfg.max_missing_rate_increase, cfg.max_out_of_range_rate, cfg.max_unseen_rate]
            for name in features
        ],
        dtype=np.float64,
    ).reshape(len(features), 3)


def quality_alarms(
    features: Sequence[str],
    rates: np.ndarray,
    limits: np.ndarray,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
) -> list[Alarm]:
    """The features whose window rates enter the alarming state: missing rate above
    the reference's by ``max_missing_rate_increase``, out-of-range or unseen rate above
    their limits.

    Parameters
    ----------
    features
        The f features.
    rates
        (f, 3) rates of the window: missing, out-of-range, unseen (0.0 where a rate
        does not apply; NaN never alarms).
    limits
        (f, 3) limits (:func:`quality_limits`).

    Only the checks that alarm in this window or are in the alarming state go through
    the edge trigger: for the others it would change nothing.
    """
    with np.errstate(invalid="ignore"):
        over = (rates > limits).tolist()
    runs = states.runs
    alarms = []
    for j, name in enumerate(features):
        for k, check in enumerate(CHECKS):
            key = f"quality:{check}:{name}"
            if not over[j][k] and key not in runs:
                continue
            if states.edge(key, over[j][k]):
                alarms.append(
                    alarm("data_quality", check, name, float(rates[j, k]), float(limits[j, k]), None, first, last, ts)
                )
    return alarms
