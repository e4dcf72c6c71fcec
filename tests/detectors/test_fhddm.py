from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river.drift.binary import FHDDM as RiverFHDDM

from driftline.detectors.fhddm import FHDDM
from tests.detectors.firing import firing_share
from tests.detectors.oracle import feed, river_indices


def error_stream(seed: int, n: int) -> np.ndarray:
    """0/1 errors whose rate moves between a few levels (up and down)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n, 4))
    rates = rng.uniform(0.02, 0.9, cuts.size + 1)
    return (rng.random(n) < np.repeat(rates, np.diff(np.concatenate(([0], cuts, [n]))))).astype(np.float64)


def falling_stream(seed: int, n: int, at: int, before: float, drop: float) -> np.ndarray:
    """0/1 outcomes at rate ``before`` until ``at``, ``drop`` lower after (an accuracy
    drop, what FHDDM detects)."""
    rng = np.random.default_rng(seed)
    rate = np.where(np.arange(n) < at, before, max(before - drop, 0.0))
    return (rng.random(n) < rate).astype(np.float64)


@st.composite
def parity_cases(draw: st.DrawFn) -> tuple[np.ndarray, dict]:
    """Parameters and a stream river's FHDDM fires on in most draws: mostly windows of 25
    or more (a shorter one's bound can exceed 1 and never fire), 1,000 to 3,000 samples,
    a drop of 0.25 to 0.5 between three tenths and seven tenths of the way; or, one draw
    in five, the rates moving between levels as :func:`error_stream` makes them
    (tests/detectors/firing.py checks the share)."""
    window = draw(st.integers(*draw(st.sampled_from([(25, 150)] * 4 + [(1, 24)]))))
    short = draw(st.one_of(st.none(), st.integers(1, 150)))
    params = dict(
        sliding_window_size=window,
        confidence_level=draw(st.sampled_from([1e-6, 1e-3, 0.05, 0.3])),
        short_window_size=None if short is None else min(short, window),
    )
    n = draw(st.integers(1000, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.sampled_from([True] * 4 + [False])):
        x = falling_stream(
            seed, n, int(n * draw(st.floats(0.3, 0.7))), draw(st.floats(0.6, 0.95)), draw(st.floats(0.25, 0.5))
        )
    else:
        x = error_stream(seed, n)
    return x, params


@settings(max_examples=60, deadline=None)
@given(case=parity_cases(), cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_drifts_equal_rivers(case, cuts):
    x, params = case
    expected = river_indices(RiverFHDDM(**params), x.astype(int))
    event("river fires" if expected else "river is silent")
    assert feed(FHDDM(**params), x, [c for c in cuts if c < x.size]) == expected


def test_the_parity_streams_mostly_hold_a_drift_river_detects():
    share = firing_share(
        parity_cases(), lambda case: river_indices(RiverFHDDM(**case[1]), case[0].astype(int)), examples=60
    )
    assert share >= 0.6, f"river fires on only {share:.0%} of the parity examples"


def test_seeded_streams_with_several_drifts():
    for seed in range(5):
        x = error_stream(seed, 20_000)
        expected = river_indices(RiverFHDDM(short_window_size=20), x.astype(int))
        assert len(expected) >= 2
        assert feed(FHDDM(short_window_size=20), x, [7, 999, 5000]) == expected


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sliding_window_size": 0}, "sliding_window_size"),
        ({"confidence_level": 1.0}, "confidence_level"),
        ({"short_window_size": 101}, "short_window_size"),
    ],
)
def test_invalid_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FHDDM(**kwargs)


def test_docstring_example_runs():
    import doctest

    import driftline.detectors.fhddm

    assert doctest.testmod(driftline.detectors.fhddm).failed == 0
