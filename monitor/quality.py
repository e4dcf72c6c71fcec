"""Data-quality checks of a window: the missing rate against the reference's, the
share of values outside the reference range, the share of unseen categories (the rates
come from :func:`~driftline.monitor.drift.feature_drift`)."""

from __future__ import annotations

from driftline.monitor.alarms import Alarm, AlarmFactory, QualityCheck
from driftline.monitor.config import QualitySettings
from driftline.monitor.edges import AlarmStates

__all__ = ["quality_alarms"]


def quality_alarms(quality: dict[str, dict[str, float]], ref_missing: dict[str, float], cfg: QualitySettings,
                   states: AlarmStates, alarm: AlarmFactory, first: int, last: int, ts: float) -> list[Alarm]:
    """The features whose window rates enter the alarming state: missing rate above
    the reference's by ``max_missing_rate_increase``, out-of-range or unseen rate above
    their limits."""
    alarms = []
    for name, rates in quality.items():
        checks: list[tuple[QualityCheck, float, float]] = [
            ("missing_rate", rates.get("missing_rate", 0.0),
             ref_missing.get(name, 0.0) + cfg.max_missing_rate_increase),
            ("out_of_range_rate", rates.get("out_of_range_rate", 0.0), cfg.max_out_of_range_rate),
            ("unseen_rate", rates.get("unseen_rate", 0.0), cfg.max_unseen_rate),
        ]
        for check, value, limit in checks:
            if states.edge(f"quality:{check}:{name}", value > limit):
                alarms.append(alarm("data_quality", check, name, value, limit, None, first, last, ts))
    return alarms
