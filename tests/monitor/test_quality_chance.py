"""Data-quality checks do not fire by chance on a stream without change, whatever the
reference's size and the window's count of values, and still catch real problems at the
first window.

The rate limits alone (``max_out_of_range_rate`` 0.05 ...) fired by chance: a sparse
feature's reference holds a few hundred values, and a value of the very same
distribution falls outside the range of k of them with probability 2 / (k + 1); small
windows and long-tailed categorical features did the same for the missing and unseen
rates. Each reproduction below runs the stream twice through the engine: with
``quality.alpha`` near 1 (a rate over its limit alarms whatever chance says: the old
rule) it alarms, with the defaults it does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy.stats import betabinom, hypergeom

from driftline.detectors.homogeneity import bucket_counts
from driftline.detectors.statistics import (
    CategoricalReference,
    NumericReference,
    categorical_drift_windows,
    numeric_drift_windows,
)
from driftline.monitor.config import QualitySettings, load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from driftline.monitor.quality import out_of_range_tail, quality_baseline, quality_verdicts, unseen_tail
from tests.monitor.streams import records

OLD_RULE = 0.999999
"""``quality.alpha`` at which any rate over its limit alarms (the rule before the
chance test): every tail probability of a count over a limit is below it."""

TAIL = 20_000
"""Rare categories of the long-tailed feature (each seen about once in a reference)."""


def _events(
    n: int, seed: int, *, sparse: float = 0.95, missing: float = 0.3, tail: float = 0.04
) -> list[dict[str, Any]]:
    """A stream without change: ``dense`` (normal), ``sparse`` (normal, ``sparse``
    missing), ``holey`` (normal, ``missing`` missing), ``cat`` (three categories) and
    ``tailed`` (two common categories and a share ``tail`` spread over ``TAIL`` rare ones)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    sparse_gone = rng.random(n) < sparse
    holey_gone = rng.random(n) < missing
    cat = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    common = rng.choice(["x", "y"], size=n)
    rare = rng.random(n) < tail
    rare_value = rng.integers(0, TAIL, size=n)
    events = []
    for i in range(n):
        events.append(
            {
                "model": "m",
                "version": "v1",
                "id": f"p{seed}-{i}",
                "ts": 1_700_000_000.0 + i,
                "features": {
                    "dense": float(x[i, 0]),
                    "sparse": None if sparse_gone[i] else float(x[i, 1]),
                    "holey": None if holey_gone[i] else float(x[i, 2]),
                    "cat": str(cat[i]),
                    "tailed": f"r{rare_value[i]}" if rare[i] else str(common[i]),
                },
            }
        )
    return events


def _quality_alarms(events: list[dict[str, Any]], window: int, reference: int = 5000, **quality: float) -> list[Any]:
    settings_ = load_settings(
        defaults={
            "reference": {"size": reference},
            "window": {"size": window},
            "drift": {"prediction": False},
            "quality": quality,
        }
    )
    engine = Engine(settings_)
    recs = list(records(events, "predictions"))
    alarms = []
    for i in range(0, len(recs), 20_000):
        alarms += engine.process(decode_batch(recs[i : i + 20_000], "predictions", "feedback")).alarms
    return [a for a in alarms if a.kind == "data_quality"]


def _keys(alarms: list[Any]) -> set[tuple[str, str | None]]:
    return {(a.detector, a.feature) for a in alarms}


# ---- reproductions: the old rule fires on these streams, the new one does not --------


def test_sparse_feature_is_not_out_of_range_by_chance():
    """95 % missing, a reference of 5,000 events (about 250 values), windows of 1,000
    (about 50 values): a window exceeds 5 % out of range (3 values of 50) with
    probability about 0.015 on average over references (4 windows of these 100)."""
    events = _events(5000 + 100 * 1000, seed=3)
    old = _quality_alarms(events, 1000, alpha=OLD_RULE)
    assert ("out_of_range_rate", "sparse") in _keys(old)
    assert _quality_alarms(events, 1000) == []


def test_long_tail_and_small_windows_do_not_alarm_by_chance():
    """Windows of 100 events: a feature 30 % missing exceeds the reference's rate by
    0.1 (41 of 100) with probability about 0.012 a window; a categorical feature whose
    rare categories take 4 % of the values (about 200 singletons in the reference: a
    new value is unseen with probability about 0.04) exceeds 5 % unseen (6 of 100) with
    probability about 0.2; the sparse feature has 5 values a window, and one outside
    the range is 20 %."""
    events = _events(5000 + 200 * 100, seed=2)
    old = _keys(_quality_alarms(events, 100, alpha=OLD_RULE))
    assert {("missing_rate", "holey"), ("unseen_rate", "tailed"), ("out_of_range_rate", "sparse")} <= old
    assert _quality_alarms(events, 100) == []


def test_small_reference_does_not_alarm_by_chance():
    """A reference of 500 events: 25 values of the sparse feature (a new value outside
    their range with probability 1/13: over 5 % of a window's 50 values are outside in
    each of these 100 windows), about 20 singletons of the tailed feature."""
    events = _events(500 + 100 * 1000, seed=6, sparse=0.95)
    old = _keys(_quality_alarms(events, 1000, reference=500, alpha=OLD_RULE))
    assert ("out_of_range_rate", "sparse") in old
    assert _quality_alarms(events, 1000, reference=500) == []


# ---- detection kept: real problems alarm at the first window --------------------------


@pytest.mark.parametrize("window", [1000, 100])
def test_real_problems_alarm_at_the_first_window(window):
    """From event 5,000 + 3 windows on: 20 % of ``dense`` far outside the reference
    range, ``cat`` 50 % missing, a new category taking 20 % of ``tailed``."""
    events = _events(5000 + 6 * window, seed=4)
    start = 5000 + 3 * window
    rng = np.random.default_rng(5)
    for e in events[start:]:
        f = e["features"]
        if rng.random() < 0.2:
            f["dense"] = 1e6
        if rng.random() < 0.5:
            f["cat"] = None
        if rng.random() < 0.2:
            f["tailed"] = "brand-new"
    alarms = _quality_alarms(events, window)
    found = {(a.detector, a.feature): a for a in alarms}
    assert set(found) == {("out_of_range_rate", "dense"), ("missing_rate", "cat"), ("unseen_rate", "tailed")}
    for a in found.values():
        assert a.first_index == start and a.p_value is not None and a.p_value <= 1e-6
        assert a.statistic > a.threshold


def test_sparse_feature_still_alarms_on_a_real_range_problem():
    """The sparse feature (about 50 values a window of 1,000 against about 250 reference
    values): a fifth of its values far outside the range alarm at the first window."""
    events = _events(5000 + 4 * 1000, seed=6)
    start = 5000 + 2 * 1000
    present = [e for e in events[start:] if e["features"]["sparse"] is not None]
    for e in present[::5]:
        e["features"]["sparse"] = -1e6
    alarms = _quality_alarms(events, 1000)
    assert [(a.detector, a.feature, a.first_index) for a in alarms] == [("out_of_range_rate", "sparse", start)]


# ---- the tail probabilities -----------------------------------------------------------


def _betabinom_tail(x: np.ndarray, n: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(X >= x) summed from scipy's pmf (its ``sf`` is 1 - cdf: imprecise in small tails)."""
    return np.array([betabinom.pmf(np.arange(k, t + 1), t, p, q).sum() for k, t, p, q in zip(x, n, a, b, strict=True)])


def test_tail_probabilities_match_scipy():
    x, n, m = np.array([1, 3, 10, 200, 7]), np.array([1, 50, 50, 1000, 7]), np.array([99, 250, 250, 5000, 2])
    assert np.allclose(out_of_range_tail(x, n, m), _betabinom_tail(x, n, 2.0 + 0 * m, m - 1.0), rtol=1e-9, atol=0)
    assert out_of_range_tail(np.array([1]), np.array([1]), np.array([99]))[0] == pytest.approx(2 / 100)
    assert out_of_range_tail(np.array([5]), np.array([5]), np.array([1]))[0] == 1.0  # one value: no range
    a, b = np.array([3.5, 1.0, 40.0]), np.array([200.0, 5000.0, 900.0])
    x, n = np.array([6, 1, 80]), np.array([100, 1000, 1000])
    assert np.allclose(unseen_tail(x, n, a, b), _betabinom_tail(x, n, a, b), rtol=1e-9, atol=0)


def test_the_missing_check_is_fishers_exact_test():
    rng = np.random.default_rng(7)
    ref = NumericReference.fit(np.where(rng.random((2000, 1)) < 0.3, np.nan, 1.0))
    cfg = QualitySettings()
    base = quality_baseline(["f"], {"f": float(ref.missing_rate[0])}, ref, None, None, cfg)
    assert base.rows == 2000
    rates = np.array([[[0.45, 0.0, 0.0]]])
    verdicts = quality_verdicts(rates, 100, base)
    a = int(base.ref_missing[0])
    assert verdicts.p_value[0, 0, 0] == pytest.approx(hypergeom.sf(44, 2100, a + 45, 100))
    assert not verdicts.alarming[0, 0, 0]  # 45 of 100 against 30 %: p about 0.001


# ---- property: no change, no alarm ----------------------------------------------------

N_WINDOWS = 30
MAX_EXAMPLES = 60


@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    reference=st.sampled_from([100, 200, 500, 1000, 5000]),
    window=st.sampled_from([50, 100, 300, 1000]),
    missing=st.sampled_from([0.0, 0.05, 0.3, 0.8, 0.95, 0.99]),
    tail_mass=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.6]),
    tail_size=st.sampled_from([10, 300, 5000, 100_000]),
    discrete=st.booleans(),
)
def test_no_change_no_quality_alarm(seed, reference, window, missing, tail_mass, tail_size, discrete):
    """Streams without change at the default settings raise no data-quality alarm.

    Each example makes at most 30 windows x 4 features x 2 checks = 240 tests, each
    alarming by chance with probability at most ``quality.alpha`` = 1e-6 (exactly so
    for the missing and out-of-range checks; the unseen check's Good-Turing
    approximation was checked by simulation to stay below it): the 60 examples (fixed
    by ``derandomize``) fail by chance with probability at most 60 x 240 x 1e-6 =
    1.4 %, by the union bound (far less in fact: most rates never reach their limits).
    """
    rng = np.random.default_rng(seed)
    total = reference + N_WINDOWS * window

    def numeric() -> np.ndarray:
        v = rng.poisson(3.0, total).astype(np.float64) if discrete else rng.lognormal(size=total)
        return np.where(rng.random(total) < missing, np.nan, v)

    def categorical() -> np.ndarray:
        head = rng.integers(0, 3, total)
        tail = 3 + rng.integers(0, tail_size, total)
        codes = np.where(rng.random(total) < tail_mass, tail, head)
        return np.where(rng.random(total) < missing, -1, codes)

    num = np.stack([numeric(), numeric()], axis=1)
    raw = np.stack([categorical(), categorical()], axis=1)
    # the vocabulary is what the reference saw, everything else is "other"
    codes = np.empty_like(raw)
    sizes = []
    for j in range(raw.shape[1]):
        seen = np.unique(raw[:reference, j][raw[:reference, j] >= 0])
        coded = np.minimum(np.searchsorted(seen, raw[:, j]), seen.size)
        known = (coded < seen.size) & (np.append(seen, -2)[coded] == raw[:, j])
        codes[:, j] = np.where(raw[:, j] < 0, -1, np.where(known, coded, seen.size))
        sizes.append(seen.size)
    num_ref = NumericReference.fit(num[:reference])
    cat_ref = CategoricalReference.fit(codes[:reference], sizes)
    cat_counts = bucket_counts(codes[:reference], cat_ref.n_categories + 1)
    features = ["n0", "n1", "c0", "c1"]
    ref_missing = dict(zip(features, np.r_[num_ref.missing_rate, cat_ref.missing_rate].tolist(), strict=True))
    base = quality_baseline(features, ref_missing, num_ref, cat_ref, cat_counts, QualitySettings())
    windows_num = num[reference:].reshape(N_WINDOWS, window, 2)
    windows_cat = codes[reference:].reshape(N_WINDOWS, window, 2)
    r = numeric_drift_windows(num_ref, windows_num)
    c = categorical_drift_windows(cat_ref, windows_cat)
    zeros = np.zeros((N_WINDOWS, 2))
    rates = np.concatenate(
        [
            np.stack([r.missing_rate, r.out_of_range_rate, zeros], axis=2),
            np.stack([c.missing_rate, zeros, c.unseen_rate], axis=2),
        ],
        axis=1,
    )
    verdicts = quality_verdicts(rates, window, base)
    # the old rule's alarms (a rate over its limit): the chance test is what stops them
    event("a rate over its limit" if np.isfinite(verdicts.p_value).any() else "no rate over its limit")
    assert not verdicts.alarming.any(), (
        f"chance alarms at (window, feature, check) {np.argwhere(verdicts.alarming).tolist()}, "
        f"p-values {verdicts.p_value[verdicts.alarming].tolist()}"
    )
