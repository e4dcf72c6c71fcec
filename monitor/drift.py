"""Drift checks: windows of a version's predictions against the model's reference.

Feature drift (KS / PSI / JS / Wasserstein for numeric features, chi-squared / PSI for
categorical ones, with a multiple-testing correction across the model's features) and
prediction drift. The functions take the columns of the consecutive windows a batch
completed and the reference, and compute every window's statistics at once (a window's
values equal those of the window computed alone, bit for bit): the per-call cost of
the vectorized statistics is paid once per batch, not once per window, so small
windows and sliding windows with a small step cost little more per event than large
ones. They return the tests as arrays, :func:`drift_alarms` turns one window's tests
into alarms through the edge trigger, and the gauges (``FeatureStatistic`` objects) are
built only for the window the snapshot keeps. The windows' data-quality rates come out
of the same computation; :mod:`~driftline.monitor.quality` checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from driftline.detectors.multiple_testing import benjamini_hochberg, bonferroni
from driftline.detectors.statistics import (
    CategoricalDrift,
    CategoricalReference,
    NumericDrift,
    NumericReference,
    categorical_drift_windows,
    numeric_drift_windows,
    unextended_p_values,
)
from driftline.monitor.alarms import Alarm, AlarmFactory, AlarmKind, DriftStatistic
from driftline.monitor.config import DriftSettings
from driftline.monitor.edges import AlarmStates
from driftline.monitor.encoding import FIXED, IDX, PRED, TS
from driftline.monitor.quality import quality_alarms, quality_baseline, quality_verdicts
from driftline.monitor.snapshot import FeatureStatistic

if TYPE_CHECKING:
    from driftline.monitor.config import ModelSettings
    from driftline.monitor.decode import Schema
    from driftline.monitor.reference import FittedReference

__all__ = [
    "WINDOW_CHUNK_VALUES",
    "Candidate",
    "DriftTests",
    "FeatureDrift",
    "PredictionDrift",
    "adjust",
    "feature_drift",
    "prediction_drift",
    "drift_alarms",
]


WINDOW_CHUNK_VALUES = 1 << 18
"""Values (windows x rows x columns) of the windows computed together at most: bounds
the temporaries of one computation (tens of MB) when a batch completes many windows."""


class Candidate(NamedTuple):
    """One drift test of a window: what an alarm would say, and the PSI (for
    ``alarm_on: psi``)."""

    feature: str
    detector: DriftStatistic
    statistic: float
    p_value: float
    psi: float


def adjust(p_values: Sequence[float] | np.ndarray, correction: str) -> np.ndarray:
    """p-values corrected for testing several features at once (NaN: no test); a 2-D
    array is one family per row (one row per window)."""
    p = np.asarray(p_values, dtype=np.float64)
    if correction == "bh" and p.size:
        return benjamini_hochberg(p)
    if correction == "bonferroni" and p.size:
        return bonferroni(p)
    return p


EXACT_MARGIN = 1e-9
"""Relative distance from ``alpha`` within which a p-value that may be inexact (see
:class:`DriftTests`) is made exact before the alarm decision: its error is ~1e-11."""


@dataclass(frozen=True, eq=False)
class DriftTests:
    """The drift tests of w consecutive windows, one per feature: (w, f) arrays.

    ``p_value`` is corrected across the features of each window (what the gauges show
    and what the alarms and the alert rules compare with ``alpha``); ``statistic`` is
    the effect compared with ``min_effect`` (KS, or total variation for chi-squared).

    The rows of the windows listed in ``inexact`` may differ from the exact p-values by
    ~1e-11 relative (the KS p-values of small windows that are exact only in long
    double, ~3 ms each: ``numeric_drift_windows(..., extended=False)``); ``exact(i)``
    computes window i's row exactly. :meth:`make_exact` puts it in place: the gauges
    (:meth:`FeatureDrift.stats`) and :func:`drift_alarms` call it wherever a value is
    shown or written, or a decision lies within :data:`EXACT_MARGIN` of ``alpha``, so
    that everything the monitor reports equals, bit for bit, the exact computation.
    """

    features: tuple[str, ...]
    detectors: tuple[DriftStatistic, ...]
    statistic: np.ndarray
    p_value: np.ndarray
    psi: np.ndarray
    inexact: np.ndarray | None = field(default=None, repr=False)
    exact: Callable[[int], np.ndarray] | None = field(default=None, repr=False)

    def make_exact(self, i: int) -> None:
        """Make window i's p-values exact (once; a no-op for an exact row)."""
        if self.inexact is not None and self.exact is not None and self.inexact[i]:
            self.p_value[i] = self.exact(i)
            self.inexact[i] = False

    def candidates(self, i: int) -> list[Candidate]:
        """Window i's tests as :class:`Candidate` values."""
        self.make_exact(i)
        return [
            Candidate(f, d, float(s), float(p), float(q))
            for f, d, s, p, q in zip(
                self.features, self.detectors, self.statistic[i], self.p_value[i], self.psi[i], strict=True
            )
        ]


@dataclass(frozen=True, eq=False)
class FeatureDrift:
    """Feature drift of w consecutive windows of one size, computed together
    (:func:`feature_drift`); per-window views on demand.

    The engine reads the tests of every window (:func:`drift_alarms`, the quality
    checks) and the gauges of the last one only: :meth:`stats` builds them when asked.
    ``num.ks_p_value`` holds the uncorrected KS p-values as
    ``numeric_drift_windows(..., extended=False)`` gives them (see :class:`DriftTests`).
    """

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    num: NumericDrift | None
    cat: CategoricalDrift | None
    tests: DriftTests
    cfg: DriftSettings

    @property
    def windows(self) -> int:
        return int(self.tests.p_value.shape[0])

    def stats(self, i: int) -> list[FeatureStatistic]:
        """The statistics ``cfg.statistics`` asks for, per feature, of window i (the gauges)."""
        self.tests.make_exact(i)
        cfg, wanted, p = self.cfg, set(self.cfg.statistics), self.tests.p_value[i].tolist()
        stats: list[FeatureStatistic] = []
        if self.num is not None:
            r = self.num
            ks, psi, js, wd = (a[i].tolist() for a in (r.ks_statistic, r.psi, r.js, r.wasserstein))
            for j, name in enumerate(self.numeric):
                if "ks" in wanted:
                    stats.append(FeatureStatistic(name, "ks", ks[j], p[j], cfg.alpha))
                if "psi" in wanted:
                    stats.append(FeatureStatistic(name, "psi", psi[j], None, cfg.psi_threshold))
                if "js" in wanted:
                    stats.append(FeatureStatistic(name, "js", js[j], None, None))
                if "wasserstein" in wanted:
                    stats.append(FeatureStatistic(name, "wasserstein", wd[j], None, None))
        if self.cat is not None:
            c, d_num = self.cat, len(self.numeric)
            chi2, psi = c.chi2_statistic[i].tolist(), c.psi[i].tolist()
            for j, name in enumerate(self.categorical):
                if "chi2" in wanted:
                    stats.append(FeatureStatistic(name, "chi2", chi2[j], p[d_num + j], cfg.alpha))
                if "psi" in wanted:
                    stats.append(FeatureStatistic(name, "psi", psi[j], None, cfg.psi_threshold))
        return stats

    def quality(self, i: int) -> dict[str, dict[str, float]]:
        """``{feature: {rate: value}}`` of window i: missing, out-of-range (numeric) and
        unseen (categorical) rates."""
        quality: dict[str, dict[str, float]] = {}
        if self.num is not None:
            missing, outside = self.num.missing_rate[i].tolist(), self.num.out_of_range_rate[i].tolist()
            for j, name in enumerate(self.numeric):
                quality[name] = {"missing_rate": missing[j], "out_of_range_rate": outside[j]}
        if self.cat is not None:
            missing, unseen = self.cat.missing_rate[i].tolist(), self.cat.unseen_rate[i].tolist()
            for j, name in enumerate(self.categorical):
                quality[name] = {"missing_rate": missing[j], "unseen_rate": unseen[j]}
        return quality

    def rates(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The features and their (w, f, 3) rates: missing, out-of-range, unseen (0.0
        where a rate does not apply), for :func:`~driftline.monitor.quality.quality_alarms`."""
        w = self.windows
        blocks = []
        if self.num is not None:
            blocks.append(
                np.stack(
                    [self.num.missing_rate, self.num.out_of_range_rate, np.zeros_like(self.num.missing_rate)], axis=2
                )
            )
        if self.cat is not None:
            blocks.append(
                np.stack([self.cat.missing_rate, np.zeros_like(self.cat.missing_rate), self.cat.unseen_rate], axis=2)
            )
        rates = np.concatenate(blocks, axis=1) if blocks else np.zeros((w, 0, 3))
        return self.numeric + self.categorical, rates


def feature_drift(
    num: np.ndarray,
    codes: np.ndarray,
    numeric: Sequence[str],
    categorical: Sequence[str],
    num_ref: NumericReference,
    cat_ref: CategoricalReference,
    cfg: DriftSettings,
) -> FeatureDrift:
    """w windows' features against the reference, in one computation.

    Parameters
    ----------
    num, codes
        (w, n, d_num) numeric values and (w, n, d_cat) category codes of w windows
        of n events.

    Returns
    -------
    FeatureDrift
        Per window: the gauges, the data-quality rates and one drift test per feature
        (KS for numeric, chi-squared for categorical) with its p-value corrected across
        the window's features. Window i's values equal, bit for bit, those of the
        window computed alone.
    """
    w = num.shape[0]
    # the few p-values exact only in long double are made exact where they are read
    r = numeric_drift_windows(num_ref, num, extended=False) if len(numeric) else None
    c = categorical_drift_windows(cat_ref, codes) if codes.shape[2] else None
    parts = [(r.ks_p_value, r.ks_statistic, r.psi)] if r is not None else []
    if c is not None:
        parts.append((c.chi2_p_value, c.tv, c.psi))
    if parts:
        raw_p, statistic, psi = (np.concatenate([part[k] for part in parts], axis=1) for k in range(3))
    else:
        raw_p = statistic = psi = np.zeros((w, 0))
    tested_num = tuple(numeric) if r is not None else ()
    tested_cat = tuple(categorical) if c is not None else ()
    ks: DriftStatistic = "ks"
    chi2: DriftStatistic = "chi2"
    detectors = (ks,) * len(tested_num) + (chi2,) * len(tested_cat)
    inexact: np.ndarray | None = None
    exact = None
    if r is not None:
        inexact = np.asarray(unextended_p_values(num_ref, r).any(axis=1))

        def exact(i: int) -> np.ndarray:
            row = raw_p[i].copy()
            row[: len(tested_num)] = numeric_drift_windows(num_ref, num[i : i + 1]).ks_p_value[0]
            exact_row: np.ndarray = adjust(row[None, :], cfg.correction)[0]
            return exact_row

    p_value = adjust(raw_p, cfg.correction)
    tests = DriftTests(tested_num + tested_cat, detectors, statistic, p_value, psi, inexact, exact)
    return FeatureDrift(tested_num, tested_cat, r, c, tests, cfg)


@dataclass(frozen=True, eq=False)
class PredictionDrift:
    """Prediction drift of w consecutive windows (:func:`prediction_drift`)."""

    tests: DriftTests
    chi2: np.ndarray | None  # (w,) chi-squared statistics (categorical predictions)
    cfg: DriftSettings

    def stats(self, i: int) -> list[FeatureStatistic]:
        """Window i's gauges: KS (numeric) or chi-squared (categorical), and PSI."""
        cfg, t = self.cfg, self.tests
        t.make_exact(i)
        p, psi = float(t.p_value[i, 0]), float(t.psi[i, 0])
        if self.chi2 is not None:
            first = FeatureStatistic("prediction", "chi2", float(self.chi2[i]), p, cfg.alpha, "prediction_drift")
        else:
            first = FeatureStatistic("prediction", "ks", float(t.statistic[i, 0]), p, cfg.alpha, "prediction_drift")
        return [first, FeatureStatistic("prediction", "psi", psi, None, cfg.psi_threshold, "prediction_drift")]


def prediction_drift(
    pred: np.ndarray,
    kind: str,
    pred_ref: NumericReference | CategoricalReference,
    cfg: DriftSettings,
) -> PredictionDrift:
    """w windows' predictions ((w, n): numbers, or category codes when ``kind`` is
    ``categorical``) against the reference's: the gauges and the drift test (not
    corrected: one test)."""
    if kind == "numeric":
        assert isinstance(pred_ref, NumericReference)
        r = numeric_drift_windows(pred_ref, pred[:, :, None], extended=False)

        def exact(i: int) -> np.ndarray:
            row: np.ndarray = numeric_drift_windows(pred_ref, pred[i : i + 1, :, None]).ks_p_value[0]
            return row

        inexact = unextended_p_values(pred_ref, r)[:, 0]
        p_value = r.ks_p_value.copy()  # made exact row by row in place
        tests = DriftTests(("prediction",), ("ks",), r.ks_statistic, p_value, r.psi, inexact, exact)
        return PredictionDrift(tests, None, cfg)
    assert isinstance(pred_ref, CategoricalReference)
    c = categorical_drift_windows(pred_ref, pred[:, :, None].astype(np.int64))
    tests = DriftTests(("prediction",), ("chi2",), c.tv, c.chi2_p_value, c.psi)
    return PredictionDrift(tests, c.chi2_statistic[:, 0], cfg)


def drift_alarms(
    tests: DriftTests,
    i: int,
    kind: AlarmKind,
    cfg: DriftSettings,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
) -> list[Alarm]:
    """Window i's tests that enter the drifting state: a corrected p-value at most
    ``alpha`` with an effect of at least ``min_effect`` (or, with ``alarm_on: psi``, a
    PSI above ``psi_threshold``).

    Only the tests that alarm in this window or are in the alarming state go through
    the edge trigger: for the others it would change nothing. A window whose p-values
    may be inexact (:class:`DriftTests`) is made exact first if it alarms, or if a
    decision lies within :data:`EXACT_MARGIN` of ``alpha``.
    """
    if not tests.features:
        return []
    if tests.inexact is not None and tests.inexact[i] and cfg.alarm_on == "p_value":
        p = tests.p_value[i]
        with np.errstate(invalid="ignore"):
            near = np.abs(p - cfg.alpha) <= EXACT_MARGIN * cfg.alpha
            maybe = (p <= cfg.alpha * (1 + EXACT_MARGIN)) & (tests.statistic[i] >= cfg.min_effect)
        fires = any(
            f"{kind}:{feature}" not in states.runs
            for feature, m in zip(tests.features, maybe.tolist(), strict=True)
            if m
        )
        if near.any() or fires:
            tests.make_exact(i)
    if cfg.alarm_on == "p_value":
        with np.errstate(invalid="ignore"):
            significant = tests.p_value[i] <= cfg.alpha  # NaN (no test) is never significant
        hit = significant & (tests.statistic[i] >= cfg.min_effect)
    else:
        hit = tests.psi[i] > cfg.psi_threshold
    hits = hit.tolist()
    runs = states.runs
    alarms = []
    for j, feature in enumerate(tests.features):
        key = f"{kind}:{feature}"
        if not hits[j] and key not in runs:
            continue
        if states.edge(key, hits[j]):
            thr: float
            p_value: float | None
            detector: DriftStatistic
            if cfg.alarm_on == "psi":
                detector, stat, thr, p_value = "psi", float(tests.psi[i, j]), cfg.psi_threshold, None
            else:
                detector, stat = tests.detectors[j], float(tests.statistic[i, j])
                thr, p_value = cfg.alpha, float(tests.p_value[i, j])
            alarms.append(alarm(kind, detector, feature, stat, thr, p_value, first, last, ts))
    return alarms


class WindowChecks(NamedTuple):
    """What :func:`window_checks` found: the alarms, and the last window's statistics
    (drift gauges and quality rates) for the snapshot."""

    alarms: list[Alarm]
    drift: tuple[FeatureStatistic, ...]
    quality: dict[str, dict[str, float]]


def window_checks(
    ws: np.ndarray,
    schema: Schema,
    ref: FittedReference,
    settings: ModelSettings,
    pred_kind: str | None,
    states: AlarmStates,
    alarm: AlarmFactory,
    also: Callable[[int, np.ndarray, int, int, float], list[Alarm]] | None = None,
) -> WindowChecks:
    """The drift and data-quality checks of consecutive windows ((w, size, columns), as
    :class:`~driftline.monitor.encoding.Encoder` lays them out) against ``ref``: their
    statistics in one computation (each window's equal to its own alone), then each
    window's alarms in order: feature drift, quality, prediction drift, then what
    ``also(i, window, first, last, ts)`` adds (the engine's latency check). A version
    and a segment run the same checks, each on its own alarm ``states``."""
    d_num = len(schema.numeric)
    fd = feature_drift(
        ws[:, :, FIXED : FIXED + d_num],
        ws[:, :, FIXED + d_num :].astype(np.int64),
        schema.numeric,
        schema.categorical,
        ref.num_ref,
        ref.cat_ref,
        settings.drift,
    )
    features, rates = fd.rates()
    baseline = quality_baseline(features, ref.ref_missing, ref.num_ref, ref.cat_ref, ref.cat_counts, settings.quality)
    limits, (alarming, p_quality) = baseline.limits, quality_verdicts(rates, ws.shape[1], baseline)
    pd = None
    if settings.drift.prediction and pred_kind is not None and ref.pred_ref is not None:
        pd = prediction_drift(ws[:, :, PRED], pred_kind, ref.pred_ref, settings.drift)
    alarms: list[Alarm] = []
    for i, w in enumerate(ws):
        first, last, ts = int(w[0, IDX]), int(w[-1, IDX]), float(w[-1, TS])
        extra = also(i, w, first, last, ts) if also is not None else []
        alarms += drift_alarms(fd.tests, i, "feature_drift", settings.drift, states, alarm, first, last, ts)
        alarms += quality_alarms(features, rates[i], limits, states, alarm, first, last, ts, alarming[i], p_quality[i])
        if pd is not None:
            alarms += drift_alarms(pd.tests, i, "prediction_drift", settings.drift, states, alarm, first, last, ts)
        alarms += extra
    last_window = len(ws) - 1
    drift = tuple(fd.stats(last_window) + ([] if pd is None else pd.stats(last_window)))
    return WindowChecks(alarms, drift, fd.quality(last_window))
