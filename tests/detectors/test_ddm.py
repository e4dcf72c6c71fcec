"""DDM and EDDM against river 0.26's per-sample loop (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift

from detectors.ddm import DDM, EDDM
from tests.detectors.oracle import feed_both as ours
from tests.detectors.oracle import error_stream
from tests.detectors.oracle import river_both as river_run


streams = st.builds(error_stream, st.integers(0, 2**32 - 1), st.integers(1, 4000))
cut_lists = st.lists(st.integers(0, 4000), max_size=5)


@settings(deadline=None, max_examples=60)
@given(
    x=streams,
    warm_start=st.integers(0, 80),
    warning_threshold=st.floats(0.5, 3.0),
    extra=st.floats(0.0, 2.0),
    cuts=cut_lists,
)
def test_ddm_parity_with_river(x, warm_start, warning_threshold, extra, cuts):
    params = dict(warm_start=warm_start, warning_threshold=warning_threshold, drift_threshold=warning_threshold + extra)
    assert ours(DDM(**params), x, cuts) == river_run(drift.binary.DDM(**params), x)


@settings(deadline=None, max_examples=60)
@given(
    x=streams,
    warm_start=st.integers(0, 80),
    beta=st.floats(0.3, 0.97),
    gap=st.floats(0.0, 0.3),
    cuts=cut_lists,
)
def test_eddm_parity_with_river(x, warm_start, beta, gap, cuts):
    params = dict(warm_start=warm_start, alpha=min(beta + gap, 0.99), beta=beta)
    assert ours(EDDM(**params), x, cuts) == river_run(drift.binary.EDDM(**params), x)


@settings(deadline=None, max_examples=30)
@given(distances=st.lists(st.integers(1, 5), min_size=1, max_size=400), warm_start=st.integers(0, 20))
def test_eddm_parity_on_small_integer_distances(distances, warm_start):
    # small repeated distances make equal means and variances likely: the tie cases
    x = np.zeros(sum(distances))
    x[np.cumsum(distances) - 1] = 1.0
    params = dict(warm_start=warm_start, alpha=0.95, beta=0.9)
    assert ours(EDDM(**params), x) == river_run(drift.binary.EDDM(**params), x)


@pytest.mark.parametrize("cls", [DDM, EDDM])
@pytest.mark.parametrize("seed", range(3))
def test_long_seeded_streams_with_several_drifts(cls, seed):
    rng = np.random.default_rng(seed)
    rates = np.repeat(rng.uniform(0.05, 0.6, 8), 5000)
    x = (rng.random(rates.size) < rates).astype(np.float64)
    river_cls = drift.binary.DDM if cls is DDM else drift.binary.EDDM
    expected = river_run(river_cls(), x)
    assert len(expected[0]) >= 2
    assert ours(cls(), x) == expected
    assert ours(cls(), x, cuts=range(7, x.size, 7)) == expected


def test_booleans_are_errors():
    rng = np.random.default_rng(0)
    x = rng.random(3000) < np.repeat([0.1, 0.6], 1500)
    assert ours(DDM(), x) == ours(DDM(), x.astype(float))
    assert ours(EDDM(), x) == ours(EDDM(), x.astype(float))


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (DDM, "warm_start", -1),
        (DDM, "warning_threshold", 0.0),
        (DDM, "drift_threshold", float("nan")),
        (EDDM, "warm_start", 1.5),
        (EDDM, "alpha", 1.5),
        (EDDM, "beta", 0.0),
        (EDDM, "alpha", 0.5),  # alpha < beta
    ],
)
def test_invalid_parameters(cls, name, value):
    with pytest.raises(ValueError, match=name):
        cls(**{name: value})
