"""ADWIN: parity with river 0.26's per-sample loop, batch-split invariance, state round
trips, 2-D fan-out and the handling of odd input.

river is the oracle throughout: expected drift indices always come from feeding
``river.drift.ADWIN`` one sample at a time, never from this implementation.
"""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river import drift as river_drift

import driftline.detectors.adwin
from driftline.detectors.adwin import ADWIN
from tests.detectors.firing import firing_share
from tests.detectors.oracle import feed, river_indices


def river_drifts(stream: np.ndarray, **params) -> list[int]:
    """Indices where river's ADWIN, fed one sample at a time, signals a drift."""
    return river_indices(river_drift.ADWIN(**params), stream)


def make_stream(kind: str, n: int, seed: int) -> np.ndarray:
    """A stream of one of the shapes the parity tests cover."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    change_points = np.sort(rng.integers(0, n, size=3))
    level = sum(rng.normal(0.0, 2.0) * (t >= c) for c in change_points)
    if kind == "sudden":
        return rng.normal(0.0, 1.0, n) + level
    if kind == "gradual":
        return rng.normal(0.0, 1.0, n) + np.linspace(0.0, rng.normal(0.0, 4.0), n)
    if kind == "variance":
        return rng.normal(0.0, 1.0, n) * np.where(t < change_points[0], 1.0, 6.0)
    if kind == "binary":
        rate = np.where(t < change_points[1], rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.95))
        return (rng.random(n) < rate).astype(np.float64)
    # Rounded values: many ties and exact zeros.
    return np.round(rng.normal(0.0, 2.0, n) + level)


params_strategy = st.fixed_dictionaries(
    {
        "delta": st.sampled_from([1e-5, 0.002, 0.05, 0.3, 1.0]),
        "clock": st.sampled_from([1, 2, 3, 8, 32]),
        # river 0.26's core panics when max_buckets=1 meets a drift (an empty level is
        # deleted), so parity is checked from 2 up.
        "max_buckets": st.integers(2, 9),
        "min_window_length": st.integers(1, 12),
        "grace_period": st.integers(0, 50),
    }
)

stream_kinds = st.sampled_from(["sudden", "gradual", "variance", "binary", "rounded"])


def stream_with_change(kind: str, n: int, at: int, size: float, seed: int) -> np.ndarray:
    """``n`` samples of a drawn shape whose mean moves by ``size`` (in noise units) at
    ``at``: abruptly, along a ramp of a tenth of the stream, with its variance, as a
    0/1 rate, or rounded to integers (ties and exact zeros)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    after = (t >= at).astype(np.float64)
    if kind == "sudden":
        return rng.normal(0.0, 1.0, n) + size * after
    if kind == "gradual":
        ramp = max(n // 10, 1)
        return rng.normal(0.0, 1.0, n) + size * np.clip((t - at) / ramp, 0.0, 1.0)
    if kind == "variance":
        return rng.normal(0.0, 1.0, n) * (1.0 + 2.0 * abs(size) * after) + size * after
    if kind == "binary":
        before = rng.uniform(0.05, 0.45)
        rate = before + np.sign(size) * min(0.12 * abs(size) + 0.2, 0.5) * after
        return (rng.random(n) < np.clip(rate, 0.0, 1.0)).astype(np.float64)
    return np.round(rng.normal(0.0, 2.0, n) + 2.0 * size * after)


@st.composite
def drifting_streams(draw: st.DrawFn) -> np.ndarray:
    """A stream with one change river's ADWIN detects in most draws: 300 to 3,000
    samples, the change between a fifth and four fifths of the way, 1 to 4 noise units
    up or down (tests/detectors/firing.py checks the share)."""
    n = draw(st.integers(300, 3000))
    at = int(n * draw(st.floats(0.2, 0.8)))
    size = draw(st.floats(1.0, 4.0)) * draw(st.sampled_from([-1.0, 1.0]))
    return stream_with_change(draw(stream_kinds), n, at, size, draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=60, deadline=None)
@given(stream=drifting_streams(), params=params_strategy, cuts=st.lists(st.integers(0, 3000), max_size=8))
def test_parity_with_river_on_shaped_streams(stream, params, cuts):
    expected = river_drifts(stream, **params)
    event("river fires" if expected else "river is silent")
    assert feed(ADWIN(**params), stream, cuts) == expected


def test_the_parity_streams_mostly_hold_a_drift_river_detects():
    share = firing_share(
        st.tuples(drifting_streams(), params_strategy), lambda case: river_drifts(case[0], **case[1]), examples=60
    )
    assert share >= 0.7, f"river fires on only {share:.0%} of the parity examples"


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64), min_size=1, max_size=400),
    params=params_strategy,
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_parity_with_river_on_arbitrary_values(values, params, cuts):
    stream = np.array(values)
    assert feed(ADWIN(**params), stream, cuts) == river_drifts(stream, **params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_on_long_stream_with_several_drifts(seed):
    rng = np.random.default_rng(seed)
    segments = [rng.normal(mean, 1.0, 4000) for mean in (0.0, 1.5, -1.0, 0.5, 3.0)]
    stream = np.concatenate(segments)
    expected = river_drifts(stream)
    assert len(expected) >= 4
    assert feed(ADWIN(), stream, list(range(0, stream.size, 1234))) == expected


def test_same_indices_whatever_the_batch_cuts():
    stream = make_stream("sudden", 3000, 11)
    one_at_a_time = feed(ADWIN(clock=4), stream, list(range(stream.size)))
    seven_at_a_time = feed(ADWIN(clock=4), stream, list(range(0, stream.size, 7)))
    all_at_once = feed(ADWIN(clock=4), stream, [])
    assert one_at_a_time == seven_at_a_time == all_at_once
    assert len(all_at_once) >= 1


@settings(max_examples=30, deadline=None)
@given(
    kind=stream_kinds,
    seed=st.integers(0, 2**32 - 1),
    params=params_strategy,
    split=st.integers(0, 2000),
)
def test_state_round_trip_continues_as_uninterrupted(kind, seed, params, split):
    stream = make_stream(kind, 2000, seed)
    uninterrupted = ADWIN(**params)
    expected = feed(uninterrupted, stream, [split])

    first = ADWIN(**params)
    found = feed(first, stream[:split], [])
    # the state survives a trip through JSON (arrays as lists)
    state = json.loads(json.dumps(first.state_dict(), default=lambda a: a.tolist()))
    restored = ADWIN.from_state(state)
    found += [split + i for i in feed(restored, stream[split:], [])]
    assert found == expected
    assert restored.width == uninterrupted.width


def test_two_dimensional_batch_runs_one_detector_per_column():
    columns = [make_stream(kind, 1500, 5) for kind in ("sudden", "binary", "variance")]
    batch = np.stack(columns, axis=1)
    found = ADWIN(clock=8).update(batch)
    assert isinstance(found.drifts, tuple) and len(found.drifts) == 3
    for column, drifts in zip(columns, found.drifts):
        assert drifts.tolist() == river_drifts(column, clock=8)


def test_non_finite_values_are_skipped_and_counted():
    stream = make_stream("sudden", 2000, 3)
    with_gaps = stream.copy()
    holes = np.arange(5, 2000, 97)
    with_gaps[holes] = np.nan
    with_gaps[holes[::2]] = np.inf
    finite_rows = np.flatnonzero(np.isfinite(with_gaps))

    found = ADWIN().update(with_gaps)
    assert found.skipped == holes.size
    expected = finite_rows[river_drifts(with_gaps[finite_rows])]
    assert found.drifts.tolist() == expected.tolist()


@pytest.mark.parametrize(
    "pattern",
    [[1e308, 1e308, -1e308, 5e307], [5e-324, 0.0, -5e-324, 1e-310], [0.0, -0.0, 1e-300, 3.0]],
)
def test_extreme_values_match_river_without_warnings(pattern):
    stream = np.array(pattern * 150)
    stream[300:] *= 0.5
    for clock in (1, 32):
        assert ADWIN(clock=clock).update(stream).drifts.tolist() == river_drifts(stream, clock=clock)


def test_empty_batch_and_caller_array_untouched():
    detector = ADWIN()
    assert detector.update(np.empty(0)).drifts.size == 0
    stream = make_stream("sudden", 500, 4)
    before = stream.copy()
    detector.update(stream)
    assert np.array_equal(stream, before)


def test_boolean_input_is_read_as_zero_and_one():
    rng = np.random.default_rng(9)
    flags = np.concatenate([rng.random(2000) < 0.1, rng.random(2000) < 0.7])
    assert ADWIN().update(flags).drifts.tolist() == river_drifts(flags.astype(np.float64))


def test_window_restarts_after_a_drift():
    stream = np.concatenate([np.zeros(500), np.full(200, 5.0)])
    detector = ADWIN(clock=1)
    first = detector.update(stream).drifts
    assert first.size == 1
    assert detector.width == stream.size - 1 - first[0]


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.5}, "delta"),
        ({"clock": 0}, "clock"),
        ({"clock": 2.5}, "clock"),
        ({"max_buckets": 0}, "max_buckets"),
        ({"min_window_length": 0}, "min_window_length"),
        ({"grace_period": -1}, "grace_period"),
    ],
)
def test_invalid_parameters_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        ADWIN(**params)


def test_defaults_match_river():
    ours = ADWIN().params()
    theirs = river_drift.ADWIN()
    assert ours == {name: getattr(theirs, name) for name in ours}


def test_docstring_examples_run():
    failures, _ = doctest.testmod(driftline.detectors.adwin, verbose=False)
    assert failures == 0


@st.composite
def batch_cuts(draw: st.DrawFn, n: int, largest: int) -> list[int]:
    """Batch boundaries over ``n`` samples: batches of 1 to ``largest`` samples."""
    sizes = draw(st.lists(st.integers(1, largest), min_size=1, max_size=n))
    return [int(c) for c in np.cumsum(sizes) if c < n]


@settings(max_examples=40, deadline=None)
@given(data=st.data(), stream=drifting_streams(), params=params_strategy)
def test_tiny_batches_match_river(data, stream, params):
    """Batches of 1 to 50 samples (the service's concept detector sees a few labels per
    model and batch): below the per-sample threshold each sample goes through river's
    insertion in Python; above it the vectorized path; both, interleaved, give river's
    drifts."""
    cuts = data.draw(batch_cuts(stream.size, 50))
    assert feed(ADWIN(**params), stream, cuts) == river_drifts(stream, **params)


def test_tiny_batches_then_a_state_round_trip_continue_as_uninterrupted():
    stream = make_stream("sudden", 3000, 21)
    uninterrupted = feed(ADWIN(), stream, list(range(0, stream.size, 7)))
    first = ADWIN()
    found = feed(first, stream[:1500], list(range(0, 1500, 7)))
    restored = ADWIN.from_state(json.loads(json.dumps(first.state_dict(), default=lambda a: a.tolist())))
    assert restored.width == first.width and restored.estimation == first.estimation
    found += [1500 + i for i in feed(restored, stream[1500:], list(range(0, 1500, 10)))]
    assert found == uninterrupted == river_drifts(stream)


def test_width_and_estimation_match_river_between_drifts():
    stream = make_stream("sudden", 2500, 8)
    river = river_drift.ADWIN()
    ours = ADWIN()
    for start in range(0, stream.size, 13):
        part = stream[start : start + 13]
        for value in part.tolist():
            river.update(value)
        ours.update(part)
        if not river.drift_detected:  # after a drift ours restarts at once (class Notes)
            assert ours.width == river.width
            assert ours.estimation == river.estimation


def test_parity_beyond_the_shared_tables(monkeypatch):
    """Windows longer than the shared tables of the check's structure and of delta'
    cover: the same drifts, computed directly."""
    monkeypatch.setattr(driftline.detectors.adwin, "_TABLE_CELLS", 600)
    monkeypatch.setattr(driftline.detectors.adwin, "_DP_TABLE_MAX", 5)
    monkeypatch.setattr(driftline.detectors.adwin, "_CHECK_TABLES", {})
    monkeypatch.setattr(driftline.detectors.adwin, "_DELTA_PRIMES", {})
    rng = np.random.default_rng(4)
    stream = np.concatenate([rng.normal(mean, 1.0, 3000) for mean in (0.0, 1.0, -0.5, 0.8)])
    expected = river_drifts(stream, clock=4)
    assert len(expected) >= 3
    assert feed(ADWIN(clock=4), stream, list(range(0, stream.size, 997))) == expected
    assert feed(ADWIN(clock=4), stream, list(range(0, stream.size, 9))) == expected


def test_a_state_saved_with_bucket_variances_still_loads():
    """States saved before bucket variances were dropped (they never change a drift,
    the width or the estimation) carry a ``bucket_variances`` field: it is ignored."""
    stream = make_stream("sudden", 3000, 12)
    first = ADWIN()
    found = feed(first, stream[:1400], [])
    state = first.state_dict()
    state["fields"]["bucket_variances"] = np.zeros_like(state["fields"]["bucket_totals"])
    restored = ADWIN.from_state(state)
    found += [1400 + i for i in feed(restored, stream[1400:], [])]
    assert found == river_drifts(stream)
