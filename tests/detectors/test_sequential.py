"""Two-sample mSPRT: parity with a per-event loop, batch-split invariance, error control."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.detectors import sequential
from driftline.detectors.sequential import TwoSampleMSPRT


def loop_msprt(values, is_candidate, alpha, tau, min_samples):
    """The definition, one event at a time, in plain Python floats."""
    n = [0, 0]
    total = [0.0, 0.0]
    total_sq = [0.0, 0.0]
    shift = None
    best = -math.inf
    alarms = []
    for row, (x, g) in enumerate(zip(values, is_candidate)):
        if not math.isfinite(x):
            continue
        if shift is None:
            shift = x
        y = x - shift
        g = int(g)
        n[g] += 1
        total[g] += y
        total_sq[g] += y * y
        if min(n) < min_samples:
            continue
        mean = [total[k] / n[k] for k in (0, 1)]
        var = [max(total_sq[k] - total[k] * mean[k], 0.0) / (n[k] - 1) for k in (0, 1)]
        diff = mean[1] - mean[0]
        v = var[1] / n[1] + var[0] / n[0]
        if diff <= 0:
            continue
        if v > 0:
            t2 = tau * tau
            log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * diff * diff / (2 * v * (v + t2))
        else:
            log_lambda = math.inf
        best = max(best, log_lambda)
        if log_lambda >= -math.log(alpha):
            alarms.append(row)
            n, total, total_sq, best = [0, 0], [0.0, 0.0], [0.0, 0.0], -math.inf
    return alarms, min(1.0, math.exp(-best)), n


def stream(seed, size, p_stable, p_candidate, nan_rate=0.0):
    rng = np.random.default_rng(seed)
    is_candidate = rng.random(size) < 0.5
    values = (rng.random(size) < np.where(is_candidate, p_candidate, p_stable)).astype(float)
    values[rng.random(size) < nan_rate] = np.nan
    return values, is_candidate


def feed(test, values, is_candidate, cuts):
    bounds = [0, *sorted(cuts), len(values)]
    alarms, result = [], None
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        result = test.update(values[lo:hi], is_candidate[lo:hi])
        alarms.extend(lo + result.alarms)
    return alarms, result


@settings(deadline=None, max_examples=40)
@given(
    seed=st.integers(0, 10_000),
    p_candidate=st.sampled_from([0.1, 0.2, 0.35]),
    cuts=st.lists(st.integers(0, 3000), max_size=6),
    round_trip=st.booleans(),
)
def test_parity_with_loop_and_batch_split_invariance(seed, p_candidate, cuts, round_trip):
    values, is_candidate = stream(seed, 3000, 0.1, p_candidate, nan_rate=0.02)
    params = dict(alpha=0.05, tau=0.05, min_samples=50)
    expected_alarms, expected_p, expected_n = loop_msprt(values, is_candidate, **params)
    whole = TwoSampleMSPRT(**params)
    alarms, result = feed(whole, values, is_candidate, [])
    assert alarms == expected_alarms
    assert result.p_value == pytest.approx(expected_p, rel=1e-12)
    assert (result.n_stable, result.n_candidate) == tuple(expected_n)
    assert result.skipped == np.isnan(values).sum()
    split = TwoSampleMSPRT(**params)
    cuts = sorted(cuts)
    if round_trip and cuts:
        first = split.update(values[: cuts[0]], is_candidate[: cuts[0]])
        split = TwoSampleMSPRT.from_state(split.state_dict())
        rest, result_split = feed(split, values[cuts[0] :], is_candidate[cuts[0] :], [c - cuts[0] for c in cuts[1:]])
        split_alarms = list(first.alarms) + [cuts[0] + a for a in rest]
    else:
        split_alarms, result_split = feed(split, values, is_candidate, cuts)
    assert split_alarms == alarms
    assert result_split.p_value == result.p_value
    np.testing.assert_equal(result_split.diff, result.diff)  # NaN == NaN here


def test_false_alarm_rate_under_continuous_monitoring():
    alpha, runs = 0.05, 300
    false_alarms = 0
    for run in range(runs):
        values, is_candidate = stream(1000 + run, 4000, 0.1, 0.1)
        test = TwoSampleMSPRT(alpha=alpha, tau=0.05, min_samples=200)
        false_alarms += test.update(values, is_candidate).alarm  # peeks after every event
    rate = false_alarms / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_clearly_worse_candidate_is_detected_and_restarts():
    values, is_candidate = stream(7, 20_000, 0.1, 0.2)
    test = TwoSampleMSPRT(alpha=0.01, tau=0.05, min_samples=200)
    result = test.update(values, is_candidate)
    assert result.alarm and result.alarms.size >= 2  # restart after alarm: it fires again
    assert (result.alarm_diffs > 0).all()
    assert np.diff(result.alarms).min() >= 400  # both groups refill min_samples
    better, group = stream(8, 20_000, 0.2, 0.1)
    assert not TwoSampleMSPRT().update(better, group).alarm  # one-sided


def test_edge_cases_and_validation():
    test = TwoSampleMSPRT(min_samples=2)
    empty = test.update(np.empty(0), np.empty(0, dtype=bool))
    assert empty.p_value == 1.0 and math.isnan(empty.diff) and empty.alarms.size == 0
    # constant groups with different values: V = 0 and diff > 0 fire
    fired = test.update(np.array([0.0, 0.0, 1.0, 1.0]), np.array([False, False, True, True]))
    assert fired.alarms.tolist() == [3]
    # V = 0 with diff = 0: no evidence
    calm = TwoSampleMSPRT(min_samples=2).update(np.zeros(6), np.array([0, 1] * 3, dtype=bool))
    assert calm.p_value == 1.0 and not calm.alarm
    with pytest.raises(ValueError, match="alpha"):
        TwoSampleMSPRT(alpha=1.0)
    with pytest.raises(ValueError, match="tau"):
        TwoSampleMSPRT(tau=0)
    with pytest.raises(ValueError, match="min_samples"):
        TwoSampleMSPRT(min_samples=1)
    with pytest.raises(ValueError, match="boolean"):
        TwoSampleMSPRT().update(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        TwoSampleMSPRT().update(np.zeros((3, 1)), np.zeros(3, dtype=bool))


def test_docstring_examples():
    assert doctest.testmod(sequential).failed == 0
