"""Drift checks: a window of a version's predictions against the model's reference.

Feature drift (KS / PSI / JS / Wasserstein for numeric features, chi-squared / PSI for
categorical ones, with a multiple-testing correction across the model's features) and
prediction drift. The functions take a window's columns and the reference and return
the statistics for the gauges and the tests; :func:`drift_alarms` turns the tests into
alarms through the edge trigger. The window's data-quality rates come out of the same
computation; :mod:`~driftline.monitor.quality` checks them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from driftline.detectors.multiple_testing import benjamini_hochberg, bonferroni
from driftline.detectors.statistics import (
    CategoricalReference,
    NumericReference,
    categorical_drift,
    numeric_drift,
)
from driftline.monitor.alarms import Alarm, AlarmFactory, AlarmKind, DriftStatistic
from driftline.monitor.config import DriftSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.snapshot import FeatureStatistic

__all__ = ["Candidate", "adjust", "feature_drift", "prediction_drift", "drift_alarms"]


class Candidate(NamedTuple):
    """One drift test of a window: what an alarm would say, and the PSI (for
    ``alarm_on: psi``)."""

    feature: str
    detector: DriftStatistic
    statistic: float
    p_value: float
    psi: float


def adjust(p_values: Sequence[float] | np.ndarray, correction: str) -> np.ndarray:
    """p-values corrected for testing several features at once (NaN: no test)."""
    p = np.asarray(p_values, dtype=np.float64)
    if correction == "bh" and p.size:
        return benjamini_hochberg(p)
    if correction == "bonferroni" and p.size:
        return bonferroni(p)
    return p


def feature_drift(
    num: np.ndarray, codes: np.ndarray, numeric: Sequence[str], categorical: Sequence[str],
    num_ref: NumericReference, cat_ref: CategoricalReference, cat_counts: np.ndarray, cfg: DriftSettings,
) -> tuple[list[FeatureStatistic], dict[str, dict[str, float]], list[Candidate]]:
    """A window's features against the reference.

    Returns
    -------
    stats
        The statistics ``cfg.statistics`` asks for, per feature (the gauges).
    quality
        ``{feature: {rate: value}}``: missing, out-of-range (numeric) and unseen
        (categorical) rates.
    candidates
        One drift test per feature (KS for numeric, chi-squared for categorical), with
        its corrected p-value, for :func:`drift_alarms`.
    """
    d_num = len(numeric)
    stats: list[FeatureStatistic] = []
    quality: dict[str, dict[str, float]] = {}
    candidates: list[Candidate] = []
    wanted = set(cfg.statistics)
    r = numeric_drift(num_ref, num) if d_num else None
    has_cat = bool(codes.shape[1])
    chi2_p: np.ndarray | list[float] = []
    if has_cat:
        c = categorical_drift(cat_ref, codes)
        chi2, chi2_p = c.chi2_statistic, c.chi2_p_value
    # p-values corrected across the model's features: what the gauges show and what
    # the alarms (and the alert rules) compare with alpha
    adjusted = adjust(np.concatenate([r.ks_p_value if r is not None else [], chi2_p]), cfg.correction).tolist()
    if r is not None:
        for j, name in enumerate(numeric):
            p = adjusted[j]
            if "ks" in wanted:
                stats.append(FeatureStatistic(name, "ks", float(r.ks_statistic[j]), p, cfg.alpha))
            if "psi" in wanted:
                stats.append(FeatureStatistic(name, "psi", float(r.psi[j]), None, cfg.psi_threshold))
            if "js" in wanted:
                stats.append(FeatureStatistic(name, "js", float(r.js[j]), None, None))
            if "wasserstein" in wanted:
                stats.append(FeatureStatistic(name, "wasserstein", float(r.wasserstein[j]), None, None))
            quality[name] = {"missing_rate": float(r.missing_rate[j]),
                             "out_of_range_rate": float(r.out_of_range_rate[j])}
            candidates.append(Candidate(name, "ks", float(r.ks_statistic[j]), p, float(r.psi[j])))
    if has_cat:
        for j, name in enumerate(categorical):
            p = adjusted[d_num + j]
            if "chi2" in wanted:
                stats.append(FeatureStatistic(name, "chi2", float(chi2[j]), p, cfg.alpha))
            if "psi" in wanted:
                stats.append(FeatureStatistic(name, "psi", float(c.psi[j]), None, cfg.psi_threshold))
            quality[name] = {"missing_rate": float(c.missing_rate[j]),
                             "unseen_rate": float(c.unseen_rate[j])}
            candidates.append(Candidate(name, "chi2", float(c.tv[j]), p, float(c.psi[j])))
    return stats, quality, candidates


def prediction_drift(
    pred: np.ndarray, kind: str, pred_ref: NumericReference | CategoricalReference,
    pred_counts: np.ndarray | None, cfg: DriftSettings,
) -> tuple[list[FeatureStatistic], Candidate]:
    """A window's predictions (numbers, or category codes when ``kind`` is
    ``categorical``) against the reference's: the gauges and the drift test."""
    stats: list[FeatureStatistic] = []
    det: DriftStatistic
    if kind == "numeric":
        assert isinstance(pred_ref, NumericReference)
        r = numeric_drift(pred_ref, pred[:, None])
        stat, p, psi, det = float(r.ks_statistic[0]), float(r.ks_p_value[0]), float(r.psi[0]), "ks"
    else:
        assert isinstance(pred_ref, CategoricalReference) and pred_counts is not None
        codes = pred[:, None].astype(np.int64)
        c = categorical_drift(pred_ref, codes)
        chi2, chi2_p = c.chi2_statistic, c.chi2_p_value
        stat, p, psi, det = float(c.tv[0]), float(chi2_p[0]), float(c.psi[0]), "chi2"
        stats.append(FeatureStatistic("prediction", "chi2", float(chi2[0]), p, cfg.alpha, "prediction_drift"))
    if det == "ks":
        stats.append(FeatureStatistic("prediction", "ks", stat, p, cfg.alpha, "prediction_drift"))
    stats.append(FeatureStatistic("prediction", "psi", psi, None, cfg.psi_threshold, "prediction_drift"))
    return stats, Candidate("prediction", det, stat, p, psi)


def drift_alarms(candidates: Sequence[Candidate], kind: AlarmKind, cfg: DriftSettings, states: AlarmStates,
                 alarm: AlarmFactory, first: int, last: int, ts: float) -> list[Alarm]:
    """The candidates that enter the drifting state: a corrected p-value at most
    ``alpha`` with an effect of at least ``min_effect`` (or, with ``alarm_on: psi``, a
    PSI above ``psi_threshold``)."""
    if not candidates:
        return []
    p = np.array([c.p_value for c in candidates], dtype=np.float64)  # already corrected
    if cfg.alarm_on == "p_value":
        with np.errstate(invalid="ignore"):
            significant = p <= cfg.alpha  # NaN (no test) is never significant
        effect = np.array([c.statistic for c in candidates]) >= cfg.min_effect
        hit = significant & effect
    else:
        hit = np.array([c.psi for c in candidates]) > cfg.psi_threshold
    alarms = []
    for (feature, det, stat, pv, psi), h in zip(candidates, hit, strict=True):
        if states.edge(f"{kind}:{feature}", bool(h)):
            thr: float
            p_value: float | None
            detector: DriftStatistic
            if cfg.alarm_on == "psi":
                detector, stat, thr, p_value = "psi", psi, cfg.psi_threshold, None
            else:
                detector, thr, p_value = det, cfg.alpha, pv
            alarms.append(alarm(kind, detector, feature, stat, thr, p_value, first, last, ts))
    return alarms
