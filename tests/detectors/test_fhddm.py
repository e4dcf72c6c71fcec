from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.drift.binary import FHDDM as RiverFHDDM

from detectors.fhddm import FHDDM
from tests.detectors.oracle import feed, river_indices


def error_stream(seed: int, n: int) -> np.ndarray:
    """0/1 errors whose rate moves between a few levels (up and down)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n, 4))
    rates = rng.uniform(0.02, 0.9, cuts.size + 1)
    return (rng.random(n) < np.repeat(rates, np.diff(np.concatenate(([0], cuts, [n]))))).astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 3000), window=st.integers(1, 150),
       short=st.one_of(st.none(), st.integers(1, 150)), confidence=st.sampled_from([1e-6, 1e-3, 0.05, 0.3]),
       cuts=st.lists(st.integers(0, 3000), max_size=6))
def test_drifts_equal_rivers(seed, n, window, short, confidence, cuts):
    if short is not None:
        short = min(short, window)
    x = error_stream(seed, n)
    params = dict(sliding_window_size=window, confidence_level=confidence, short_window_size=short)
    expected = river_indices(RiverFHDDM(**params), x.astype(int))
    assert feed(FHDDM(**params), x, [c for c in cuts if c < n]) == expected


def test_seeded_streams_with_several_drifts():
    for seed in range(5):
        x = error_stream(seed, 20_000)
        expected = river_indices(RiverFHDDM(short_window_size=20), x.astype(int))
        assert len(expected) >= 2
        assert feed(FHDDM(short_window_size=20), x, [7, 999, 5000]) == expected


@pytest.mark.parametrize("kwargs, name", [
    ({"sliding_window_size": 0}, "sliding_window_size"),
    ({"confidence_level": 1.0}, "confidence_level"),
    ({"short_window_size": 101}, "short_window_size"),
])
def test_invalid_parameters_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FHDDM(**kwargs)


def test_docstring_example_runs():
    import doctest

    import detectors.fhddm

    assert doctest.testmod(detectors.fhddm).failed == 0
