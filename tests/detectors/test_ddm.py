"""DDM and EDDM against river 0.26's per-sample loop (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river import drift

from driftline.detectors.ddm import DDM, EDDM
from tests.detectors.firing import firing_share
from tests.detectors.oracle import feed_both as ours
from tests.detectors.oracle import river_both as river_run


def rising_error_stream(seed: int, n: int, at: int, before: float, rise: float, ramp: int, later: bool) -> np.ndarray:
    """0/1 errors at rate ``before`` until ``at``, then ``rise`` higher (along ``ramp``
    samples); with ``later``, the rate moves again, up or down, later on (as
    :func:`tests.detectors.oracle.error_stream` does)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    rate = before + rise * np.clip((t - at + 1) / ramp, 0.0, 1.0)
    if later:
        rate[(at + n) // 2 :] = rng.uniform(0.0, 1.0)
    return (rng.random(n) < np.clip(rate, 0.0, 1.0)).astype(np.float64)


@st.composite
def rising_streams(draw: st.DrawFn) -> np.ndarray:
    """An error stream whose rate rises enough for river's DDM and EDDM to fire in most
    draws: 500 to 4,000 samples, a rise of 0.2 to 0.6 between a fifth and three fifths of
    the way (tests/detectors/firing.py checks the share)."""
    n = draw(st.integers(500, 4000))
    return rising_error_stream(
        draw(st.integers(0, 2**32 - 1)),
        n,
        int(n * draw(st.floats(0.2, 0.6))),
        draw(st.floats(0.0, 0.3)),
        draw(st.floats(0.2, 0.6)),
        draw(st.integers(1, 300)),
        draw(st.booleans()),
    )


streams = rising_streams()
cut_lists = st.lists(st.integers(0, 4000), max_size=5)
ddm_params = st.builds(
    lambda warm_start, warning, extra: dict(
        warm_start=warm_start, warning_threshold=warning, drift_threshold=warning + extra
    ),
    st.integers(0, 80),
    st.floats(0.5, 3.0),
    st.floats(0.0, 2.0),
)
eddm_params = st.builds(
    lambda warm_start, beta, gap: dict(warm_start=warm_start, alpha=min(beta + gap, 0.99), beta=beta),
    st.integers(0, 80),
    st.floats(0.3, 0.97),
    st.floats(0.0, 0.3),
)


@settings(deadline=None, max_examples=60)
@given(x=streams, params=ddm_params, cuts=cut_lists)
def test_ddm_parity_with_river(x, params, cuts):
    expected = river_run(drift.binary.DDM(**params), x)
    event("river fires" if expected[0] else "river is silent")
    assert ours(DDM(**params), x, cuts) == expected


@settings(deadline=None, max_examples=60)
@given(x=streams, params=eddm_params, cuts=cut_lists)
def test_eddm_parity_with_river(x, params, cuts):
    expected = river_run(drift.binary.EDDM(**params), x)
    event("river fires" if expected[0] else "river is silent")
    assert ours(EDDM(**params), x, cuts) == expected


@pytest.mark.parametrize(("cls", "params"), [("DDM", ddm_params), ("EDDM", eddm_params)])
def test_the_parity_streams_mostly_hold_a_drift_river_detects(cls, params):
    detector = getattr(drift.binary, cls)
    share = firing_share(
        st.tuples(streams, params), lambda case: river_run(detector(**case[1]), case[0])[0], examples=60
    )
    assert share >= 0.6, f"river's {cls} fires on only {share:.0%} of the parity examples"


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
