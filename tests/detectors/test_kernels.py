"""The restart-loop kernels of detectors/_kernels.py against plain Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.detectors._kernels import (
    MAX_CHUNK,
    Pace,
    counts,
    decay_tables,
    decayed_sums,
    first_rise,
    linear_recurrence,
    prefix_sums,
    restart_loop,
)


def rise_loop(values: list[float], initial: float, threshold: float, start: int) -> tuple[int, float]:
    """The first ``t >= start`` with ``values[t] - running minimum > threshold``, as
    PageHinkley's loop tests it, and the minimum of everything."""
    low, found = initial, -1
    for t, v in enumerate(values):
        low = min(low, v)
        if found < 0 and t >= start and v - low > threshold:
            found = t
    return found, min([initial, *values])


@st.composite
def walks(draw: st.DrawFn) -> np.ndarray:
    """Random walks (real or integer steps: ties), with or without a trend, so that the
    minimum falls anywhere and rises come before and after it."""
    n = draw(st.integers(0, 400))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = rng.normal(draw(st.floats(-0.5, 0.5)), 1.0, n)
    if draw(st.booleans()):
        steps = np.round(steps)
    return np.cumsum(steps)


@settings(deadline=None, max_examples=300)
@given(
    values=walks(),
    initial=st.one_of(st.just(math.inf), st.floats(-20, 20)),
    threshold=st.floats(0.1, 15),
    start=st.integers(0, 50),
)
def test_first_rise_is_the_loops_first_alarm(values, initial, threshold, start):
    assert first_rise(values, initial, threshold, start) == rise_loop(values.tolist(), initial, threshold, start)


def test_first_rise_on_a_falling_series_with_a_late_rise():
    # the minimum at the end, the rise before it: found through the running minimum
    values = np.array([0.0, -1.0, 3.5, -2.0, -3.0])
    assert first_rise(values, math.inf, 4.0, 0) == (2, -3.0)
    assert first_rise(values, math.inf, 5.0, 0) == (-1, -3.0)
    assert first_rise(values, -2.0, 5.0, 0) == (2, -3.0)  # 3.5 - (-2) > 5


@pytest.mark.parametrize("alpha", [1.0, 1 - 1e-4, 0.999, 0.99, 0.9, 0.5, 0.3])
@pytest.mark.parametrize("size", [1, 700, 3000])
def test_decayed_sums_agree_with_the_loop(alpha, size):
    """Block restarts (alpha 0.9: blocks of ~1,100) and the filter for small alpha
    included: within a few ulp of the loop's largest decayed term; bit for bit at 1."""
    y = np.random.default_rng(size).normal(0.2, 1.0, size)
    expected = linear_recurrence(y, 1.0, alpha, 3.0)
    got = decayed_sums(y.copy(), alpha, 3.0, np.empty(size))
    if alpha == 1.0:
        assert np.array_equal(got, expected)
    scale = np.abs(expected).max() / (1 - alpha) if alpha < 1 else np.abs(expected).max()
    assert np.abs(got - expected).max() <= 64 * np.finfo(float).eps * scale


def test_decay_tables_stay_finite():
    for alpha in (1 - 1e-12, 0.9999, 0.9, 0.5, 1e-3):
        up, down, limit = decay_tables(alpha)
        assert 0 < limit <= MAX_CHUNK + 1
        assert np.isfinite(down).all() and down[-1] <= 1e50
        assert up[0] == down[0] == 1.0
    with pytest.raises(ValueError, match="base"):
        decay_tables(0.0)


def test_counts_and_prefix_sums():
    assert counts(3, 2).tolist() == [3.0, 4.0]
    assert counts(MAX_CHUNK, 5).tolist() == list(map(float, range(MAX_CHUNK, MAX_CHUNK + 5)))
    assert prefix_sums(np.array([])).tolist() == [0.0]
    x = np.random.default_rng(0).random(100)
    assert np.array_equal(prefix_sums(x)[1:], np.cumsum(x))


def test_pace_sizes_chunks_from_the_longest_recent_gap_and_grows_by_half():
    pace = Pace()
    assert pace.chunk(256) == MAX_CHUNK  # no drift seen yet
    for gap in (1000, 100):
        pace.drifted(gap)
    assert pace.chunk(256) == 1000  # one short gap does not shrink the chunk
    pace.since = 1000  # scanned that far without a drift
    assert pace.chunk(256) == 500
    median = Pace(median=True, factor=1.5, growth=2.0)
    for gap in (100, 90, 5000):
        median.drifted(gap)
    assert median.chunk(10) == 150
    median.since = 150
    assert median.chunk(10) == 150  # doubles the scanned length


@settings(deadline=None, max_examples=60)
@given(
    alarms=st.lists(st.integers(0, 5000), max_size=30),
    size=st.integers(1, 5000),
    gaps=st.lists(st.integers(1, 3000), max_size=6),
)
def test_restart_loop_finds_every_drift_whatever_the_pace(alarms, size, gaps):
    """A fake detector whose drifts are fixed positions (counted from its last reset):
    the loop finds the same ones for any carried pace."""
    marks = sorted(set(alarms))

    def run(pace):
        state = {"origin": 0}

        def scan(start, stop):
            hit = [m for m in marks if start <= m < stop and m >= state["origin"]]
            return (hit[0] if hit else -1), np.empty(0, dtype=np.int64)

        def reset():
            pass

        return restart_loop(size, scan, reset, pace=pace)[0].tolist()

    pace = Pace()
    for gap in gaps:
        pace.drifted(gap)
    assert run(pace) == run(Pace()) == [m for m in marks if m < size]
