"""Data-quality checks of a window: the missing rate against the reference's, the
share of values outside the reference range, the share of unseen categories (the rates
come from :func:`~driftline.monitor.drift.feature_drift`).

A check alarms when its rate exceeds the configured limit **and** the window's count is
more than chance explains under no change (one-sided tail probability at most
``quality.alpha``). The limit alone fires by chance on sparse features, small windows
and small or long-tailed references: a new value from the very distribution of k
reference values falls outside their range with probability 2 / (k + 1), so a
feature with 250 reference values and 50 values a window exceeds a 5 % limit about one
window in a hundred. What chance explains, per check:

* **missing**: Fisher's exact test (one-sided) of the window's missing count against
  the reference's (hypergeometric tail): exact whatever the missing probability.
* **out of range**: exact and distribution-free. Of the n values of a window
  exchangeable with the m reference values, the count outside the reference's
  [min, max] is beta-binomial(n, 2, m - 1) (ties only make it smaller), whose tail is
  ``P(X >= x) = (n - x + m + x m) / x * B(n - x + m, x + 1) / B(n - x + 1, x)``.
* **unseen**: approximate. The probability that a value is a category the reference
  never saw is estimated by Good-Turing, (n1 + o + 1) / (N + 1) with n1 the
  reference's singletons, o its values outside the vocabulary (0 unless the reference
  was coded with another reference's vocabulary) and N its non-missing count; its
  uncertainty by Esty's variance (n1 + 2 n2 + o + 1) / (N + 1)^2 (n2: categories seen
  twice). The window's unseen count is beta-binomial with a beta of that mean and
  variance (a Beta(n1 + 1, N - n1) when n2 = 0): a reference that saw the tail's
  mass as smaller than it is does not make every later window alarm.

The tail probabilities are computed only where a rate exceeds its limit (rarely, under
no change), for every window and feature of a batch at once.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, get_args

import numpy as np
from scipy.special import betaln, gammaln

from driftline.detectors.statistics import CategoricalReference, NumericReference
from driftline.monitor.alarms import Alarm, AlarmFactory, QualityCheck
from driftline.monitor.config import QualitySettings
from driftline.monitor.edges import AlarmStates

__all__ = [
    "QualityBaseline",
    "QualityVerdicts",
    "out_of_range_tail",
    "quality_alarms",
    "quality_baseline",
    "quality_limits",
    "quality_verdicts",
    "unseen_tail",
]

CHECKS: tuple[QualityCheck, ...] = get_args(QualityCheck)
"""The checks, in the order of the rates' last axis: missing, out-of-range, unseen."""

_GRID_VALUES = 1 << 20
"""Terms of the beta-binomial sums computed together at most (bounds the temporaries)."""


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


@dataclass(frozen=True, eq=False)
class QualityBaseline:
    """What the windows of the f features (numeric ones first) are compared with.

    Attributes
    ----------
    limits
        (f, 3) rate limits (:func:`quality_limits`).
    alpha
        The tail probability at most which an excess over a limit alarms.
    rows
        Reference events (rows), the missing test's reference sample size.
    ref_missing
        (f,) missing values of each feature in the reference.
    range_count
        (f,) finite reference values of the numeric features (0 for categorical ones).
    unseen_a, unseen_b
        (f,) parameters of the beta distribution of a categorical feature's unseen
        probability (NaN for numeric features).
    """

    limits: np.ndarray
    alpha: float
    rows: int
    ref_missing: np.ndarray
    range_count: np.ndarray
    unseen_a: np.ndarray
    unseen_b: np.ndarray


_memo: weakref.WeakKeyDictionary[NumericReference, tuple[tuple[object, ...], QualityBaseline]] = (
    weakref.WeakKeyDictionary()
)
"""The last baseline of each live numeric reference, with what else it was computed
from: a pure function's cache (the references are immutable and live as long as the
model's or version's reference does; the entry goes with them)."""


def quality_baseline(
    features: Sequence[str],
    ref_missing: dict[str, float],
    num_ref: NumericReference,
    cat_ref: CategoricalReference | None,
    cat_counts: np.ndarray | None,
    cfg: QualitySettings,
) -> QualityBaseline:
    """The baseline of the checks of ``features`` (the numeric features of ``num_ref``,
    then the categorical ones of ``cat_ref``, as :meth:`FeatureDrift.rates
    <driftline.monitor.drift.FeatureDrift.rates>` orders them).

    ``cat_counts`` is the reference's (d_cat, K_max + 1) count per category code (the
    last real column of feature j, K_j, its values outside the vocabulary).

    Memoized on the identity of the references, ``ref_missing`` and ``cfg`` (and the
    features): it is computed once per reference, not once per batch of windows.
    """
    inputs = (tuple(features), ref_missing, cat_ref, cat_counts, cfg)
    hit = _memo.get(num_ref)
    if hit is not None and hit[0][0] == inputs[0] and all(a is b for a, b in zip(hit[0][1:], inputs[1:], strict=True)):
        return hit[1]
    baseline = _baseline(features, ref_missing, num_ref, cat_ref, cat_counts, cfg)
    _memo[num_ref] = (inputs, baseline)
    return baseline


def _baseline(
    features: Sequence[str],
    ref_missing: dict[str, float],
    num_ref: NumericReference | None,
    cat_ref: CategoricalReference | None,
    cat_counts: np.ndarray | None,
    cfg: QualitySettings,
) -> QualityBaseline:
    """:func:`quality_baseline`, computed."""
    d_num = 0 if num_ref is None else num_ref.n_features
    d_cat = 0 if cat_ref is None else cat_ref.n_features
    count = np.zeros(d_num + d_cat)
    missing_rate = np.full(d_num + d_cat, np.nan)
    if num_ref is not None:
        count[:d_num], missing_rate[:d_num] = num_ref.count, num_ref.missing_rate
    if cat_ref is not None:
        count[d_num:], missing_rate[d_num:] = cat_ref.count, cat_ref.missing_rate
    # Every feature has the reference's rows; a feature with a value on any of them tells
    # how many (an all-missing one cannot: its missing limit is above 1, never exceeded).
    with np.errstate(invalid="ignore", divide="ignore"):
        rows_of = np.where(missing_rate < 1.0, np.rint(count / (1.0 - missing_rate)), 0.0)
    rows = int(rows_of.max(initial=0.0))
    ref_missing_count = np.where(np.isfinite(missing_rate), rows - count, 0.0)

    range_count = np.zeros(d_num + d_cat)
    range_count[:d_num] = count[:d_num]
    unseen_a = np.full(d_num + d_cat, np.nan)
    unseen_b = np.full(d_num + d_cat, np.nan)
    if cat_ref is not None and d_cat:
        counts = np.zeros((d_cat, 1)) if cat_counts is None or cat_counts.size == 0 else np.asarray(cat_counts)
        known = np.arange(counts.shape[1]) < cat_ref.n_categories[:, None]
        n1 = ((counts == 1) & known).sum(axis=1)
        n2 = ((counts == 2) & known).sum(axis=1)
        at_other = np.minimum(cat_ref.n_categories, counts.shape[1] - 1)
        other = np.where(cat_ref.n_categories < counts.shape[1], counts[np.arange(d_cat), at_other], 0.0)
        unseen_a[d_num:], unseen_b[d_num:] = _unseen_beta(n1, n2, other, cat_ref.count.astype(np.float64))
    limits = quality_limits(features, ref_missing, cfg)
    return QualityBaseline(limits, cfg.alpha, rows, ref_missing_count, range_count, unseen_a, unseen_b)


def _unseen_beta(n1: np.ndarray, n2: np.ndarray, other: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Beta parameters of the unseen probability: mean (n1 + o + 1) / (N + 1), variance
    (n1 + 2 n2 + o + 1) / (N + 1)^2 (see the module docstring)."""
    mean = (n1 + other + 1.0) / (total + 1.0)
    var = (n1 + 2.0 * n2 + other + 1.0) / (total + 1.0) ** 2
    # a beta needs var < mean (1 - mean); a tiny concentration is a vague beta (never alarms)
    concentration = np.maximum(mean * (1.0 - mean) / var - 1.0, 1e-3)
    mean = np.clip(mean, 1e-12, 1.0 - 1e-12)
    return mean * concentration, (1.0 - mean) * concentration


def out_of_range_tail(x: np.ndarray, n: np.ndarray, m: np.ndarray) -> np.ndarray:
    """P(X >= x) for X the count, among n window values exchangeable with m reference
    values, of those outside the reference's [min, max]: beta-binomial(n, 2, m - 1).

    Examples
    --------
    >>> round(float(out_of_range_tail(np.array([1]), np.array([1]), np.array([99]))[0]), 12)  # 2 / (m + 1)
    0.02
    """
    x, n, m = (np.asarray(a, dtype=np.float64) for a in (x, n, m))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log_tail = betaln(n - x + m, x + 1.0) - betaln(n - x + 1.0, x)
        p = (n - x + m + x * m) / x * np.exp(log_tail)
    # nothing to exceed (x <= 0), or a reference of fewer than 2 values (everything is
    # outside a single point): chance explains it all
    return np.where((x <= 0) | (m < 2), 1.0, np.minimum(p, 1.0))


def unseen_tail(x: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X >= x) for X ~ beta-binomial(n, a, b): the sum of the probabilities from x to n,
    all of them at once (a few candidates of a batch; chunked to bound the memory)."""
    x, n, a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (x, n, a, b))
    out = np.ones(x.size)
    todo = np.flatnonzero((x > 0) & (x <= n) & np.isfinite(a) & np.isfinite(b))
    if not todo.size:
        return out
    width = int((n[todo] - x[todo]).max()) + 1
    rows = max(1, _GRID_VALUES // width)
    for start in range(0, todo.size, rows):
        idx = todo[start : start + rows]
        k = x[idx, None] + np.arange(width)[None, :]
        nn, aa, bb = n[idx, None], a[idx, None], b[idx, None]
        inside = k <= nn
        k = np.where(inside, k, nn)  # past n: no term (kept finite for the log-pmf)
        log_pmf = (
            gammaln(nn + 1.0) - gammaln(k + 1.0) - gammaln(nn - k + 1.0) + betaln(k + aa, nn - k + bb) - betaln(aa, bb)
        )
        out[idx] = np.minimum(np.where(inside, np.exp(log_pmf), 0.0).sum(axis=1), 1.0)
    return out


class QualityVerdicts(NamedTuple):
    """The checks of w windows: (w, f, 3) ``alarming`` (over the limit and beyond
    chance) and the tail probability ``p_value`` (NaN where the rate is not over its
    limit: not computed)."""

    alarming: np.ndarray
    p_value: np.ndarray


def quality_verdicts(rates: np.ndarray, rows: int, baseline: QualityBaseline) -> QualityVerdicts:
    """Which of the (w, f, 3) ``rates`` of windows of ``rows`` events alarm.

    The counts come back from the rates exactly (each is a count over an integer
    number of values); the tail probabilities are computed for the rates over their
    limits only.
    """
    with np.errstate(invalid="ignore"):
        over = rates > baseline.limits[None]  # NaN (no rate) is never over
    p = np.full(rates.shape, np.nan)
    if not over.any():
        return QualityVerdicts(over, p)
    missing = np.rint(rates[:, :, 0] * rows)
    present = rows - missing  # non-missing values per window and feature
    wi, fi = np.nonzero(over[:, :, 0])
    if wi.size:
        x, a = missing[wi, fi], baseline.ref_missing[fi]
        # Fisher's exact test: of the a + x missing values among the reference's and the
        # window's rows, at least x in the window
        from scipy.stats import hypergeom  # ~0.6 s to import: only when a check is over its limit

        p[wi, fi, 0] = hypergeom.sf(x - 1, baseline.rows + rows, a + x, rows)
    wi, fi = np.nonzero(over[:, :, 1])
    if wi.size:
        n = present[wi, fi]
        p[wi, fi, 1] = out_of_range_tail(np.rint(rates[wi, fi, 1] * n), n, baseline.range_count[fi])
    wi, fi = np.nonzero(over[:, :, 2])
    if wi.size:
        n = present[wi, fi]
        p[wi, fi, 2] = unseen_tail(np.rint(rates[wi, fi, 2] * n), n, baseline.unseen_a[fi], baseline.unseen_b[fi])
    with np.errstate(invalid="ignore"):
        alarming = over & (p <= baseline.alpha)
    return QualityVerdicts(alarming, p)


def quality_alarms(
    features: Sequence[str],
    rates: np.ndarray,
    limits: np.ndarray,
    states: AlarmStates,
    alarm: AlarmFactory,
    first: int,
    last: int,
    ts: float,
    alarming: np.ndarray | None = None,
    p_value: np.ndarray | None = None,
) -> list[Alarm]:
    """The features whose window checks enter the alarming state: missing rate above
    the reference's by ``max_missing_rate_increase``, out-of-range or unseen rate above
    their limits, each beyond what chance explains (``alarming``, from
    :func:`quality_verdicts`).

    Parameters
    ----------
    features
        The f features.
    rates
        (f, 3) rates of the window: missing, out-of-range, unseen (0.0 where a rate
        does not apply; NaN never alarms).
    limits
        (f, 3) limits (:func:`quality_limits`).
    alarming, p_value
        (f, 3) verdicts and tail probabilities of the window (:func:`quality_verdicts`);
        without them a rate over its limit alarms (the rule without the chance test).

    Only the checks that alarm in this window or are in the alarming state go through
    the edge trigger: for the others it would change nothing.
    """
    if alarming is None:
        with np.errstate(invalid="ignore"):
            alarming = rates > limits
    runs = states.runs
    if not alarming.any() and not any(key.startswith("quality:") for key in runs):
        return []  # the usual window: no check to visit (no loop over the features)
    over = alarming.tolist()
    alarms = []
    for j, name in enumerate(features):
        for k, check in enumerate(CHECKS):
            key = f"quality:{check}:{name}"
            if not over[j][k] and key not in runs:
                continue
            if states.edge(key, over[j][k]):
                p = None if p_value is None or np.isnan(p_value[j, k]) else float(p_value[j, k])
                alarms.append(
                    alarm("data_quality", check, name, float(rates[j, k]), float(limits[j, k]), p, first, last, ts)
                )
    return alarms
