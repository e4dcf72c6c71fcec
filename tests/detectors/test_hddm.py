"""HDDMA and HDDMW against river 0.26's per-sample loop (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river import drift

from driftline.detectors._kernels import ewma, segmented_recurrence
from driftline.detectors.hddm import HDDMA, HDDMW, _estimate_tables
from tests.detectors.firing import firing_share
from tests.detectors.oracle import feed_both as ours
from tests.detectors.oracle import river_both as river_run


def rising_error_stream(
    seed: int, n: int, at: int, before: float, rise: float, ramp: int, real: bool, later: bool
) -> np.ndarray:
    """Errors at rate ``before`` until ``at``, then ``rise`` higher along ``ramp``
    samples: 0/1, or with ``real`` values in [0, 1] around the rate; with ``later``, the
    rate moves again, up or down, later on (as :func:`tests.detectors.oracle.error_stream`)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    rate = before + rise * np.clip((t - at + 1) / ramp, 0.0, 1.0)
    if later:
        rate[(at + n) // 2 :] = rng.uniform(0.0, 1.0)
    if real:
        return np.clip(rate + rng.normal(0.0, 0.2, n), 0.0, 1.0)
    return (rng.random(n) < np.clip(rate, 0.0, 1.0)).astype(np.float64)


@st.composite
def rising_streams(draw: st.DrawFn) -> np.ndarray:
    """An error stream whose rate rises enough for river's HDDM_A and HDDM_W to fire in
    most draws: 500 to 4,000 samples, a rise of 0.25 to 0.6 between a fifth and three
    fifths of the way (tests/detectors/firing.py checks the share)."""
    n = draw(st.integers(500, 4000))
    return rising_error_stream(
        draw(st.integers(0, 2**32 - 1)),
        n,
        int(n * draw(st.floats(0.2, 0.6))),
        draw(st.floats(0.0, 0.3)),
        draw(st.floats(0.25, 0.6)),
        draw(st.integers(1, 300)),
        draw(st.booleans()),
        draw(st.booleans()),
    )


streams = rising_streams()
cut_lists = st.lists(st.integers(0, 4000), max_size=5)
confidences = st.tuples(st.floats(1e-5, 0.05), st.floats(0.0, 0.1)).map(lambda c: (c[0], min(c[0] + c[1], 0.5)))


@settings(deadline=None, max_examples=60)
@given(x=streams, conf=confidences, two_sided=st.booleans(), cuts=cut_lists)
def test_hddm_a_parity_with_river(x, conf, two_sided, cuts):
    params = dict(drift_confidence=conf[0], warning_confidence=conf[1], two_sided_test=two_sided)
    expected = river_run(drift.binary.HDDMA(**params), x)
    event("river fires" if expected[0] else "river is silent")
    assert ours(HDDMA(**params), x, cuts) == expected


class _AlwaysExactHDDMW(HDDMW):
    # every row that could fire is within the margin: river's s2 is filtered exactly
    _MARGIN = 1e3


# Mostly EWMA weights up to 0.1 (river's default is 0.05): with heavier ones the bound
# is so wide that river's HDDM_W rarely fires; one draw in five keeps them.
lambdas = st.sampled_from([(0.005, 0.1)] * 4 + [(0.1, 0.6)]).flatmap(lambda r: st.floats(*r))


@settings(deadline=None, max_examples=80)
@given(
    x=streams,
    conf=confidences,
    lambda_val=lambdas,
    two_sided=st.booleans(),
    cuts=cut_lists,
    cls=st.sampled_from([HDDMW, _AlwaysExactHDDMW]),
)
def test_hddm_w_parity_with_river(x, conf, lambda_val, two_sided, cuts, cls):
    # the closed-form estimate decides most rows; _AlwaysExactHDDMW runs the exact path
    params = dict(drift_confidence=conf[0], warning_confidence=conf[1], lambda_val=lambda_val, two_sided_test=two_sided)
    expected = river_run(drift.binary.HDDMW(**params), x)
    event("river fires" if expected[0] else "river is silent")
    assert ours(cls(**params), x, cuts) == expected


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("offset", [0.0, 2e10])
def test_hddm_w_parity_on_one_long_batch(two_sided, offset):
    # one 40,000-sample batch: chunks longer than the s2 estimate's decay tables (the
    # per-row powers instead); with an offset of 2e10 the values are past the tables'
    # scale limit and the safety margin (relative to the values) covers most rows, so
    # that river's s2 is filtered exactly there
    rng = np.random.default_rng(11)
    rates = np.repeat([0.1, 0.15, 0.1, 0.5, 0.2, 0.6, 0.1, 0.3], 5000)
    x = (rng.random(rates.size) < rates).astype(np.float64) + offset
    expected = river_run(drift.binary.HDDMW(two_sided_test=two_sided), x)
    assert len(expected[0]) >= 2
    assert ours(HDDMW(two_sided_test=two_sided), x) == expected


@pytest.mark.parametrize("lambda_val", [0.001, 0.05, 0.3, 0.9])
def test_s2_estimate_tables_give_the_powers_of_the_decay(lambda_val):
    # decay ** (t - c) as decay ** t * decay ** -c: a few units in the last place, far
    # inside HDDM_W's safety margin (relative 1e-10 / lambda)
    decay = 1.0 - lambda_val
    up, down, limit = _estimate_tables(decay)
    assert limit > 100  # (280 for lambda 0.9: its powers underflow soonest)
    rng = np.random.default_rng(0)
    c = rng.integers(0, limit, 10_000)
    t = c + rng.integers(0, limit - c)
    exact = np.power(decay, (t - c).astype(np.float64))
    np.testing.assert_allclose(up[t] * down[c], exact, rtol=1e-13, atol=0)


hddm_a_params = st.builds(
    lambda conf, two_sided: dict(drift_confidence=conf[0], warning_confidence=conf[1], two_sided_test=two_sided),
    confidences,
    st.booleans(),
)
hddm_w_params = st.builds(
    lambda conf, lambda_val, two_sided: dict(
        drift_confidence=conf[0], warning_confidence=conf[1], lambda_val=lambda_val, two_sided_test=two_sided
    ),
    confidences,
    lambdas,
    st.booleans(),
)


@pytest.mark.parametrize(("cls", "params"), [("HDDMA", hddm_a_params), ("HDDMW", hddm_w_params)])
def test_the_parity_streams_mostly_hold_a_drift_river_detects(cls, params):
    detector = getattr(drift.binary, cls)
    share = firing_share(
        st.tuples(streams, params), lambda case: river_run(detector(**case[1]), case[0])[0], examples=60
    )
    assert share >= 0.5, f"river's {cls} fires on only {share:.0%} of the parity examples"


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize(("ours_cls", "river_cls"), [(HDDMA, drift.binary.HDDMA), (HDDMW, drift.binary.HDDMW)])
def test_long_seeded_streams_with_several_drifts(ours_cls, river_cls, two_sided):
    rng = np.random.default_rng(5)
    rates = np.repeat([0.1, 0.4, 0.05, 0.5, 0.2, 0.6, 0.1, 0.3], 5000)
    x = (rng.random(rates.size) < rates).astype(np.float64)
    expected = river_run(river_cls(two_sided_test=two_sided), x)
    assert len(expected[0]) >= 2
    assert ours(ours_cls(two_sided_test=two_sided), x) == expected
    assert ours(ours_cls(two_sided_test=two_sided), x, cuts=range(7, x.size, 7)) == expected


@settings(deadline=None, max_examples=40)
@given(
    values=st.lists(st.floats(0, 1), min_size=1, max_size=300),
    alpha=st.floats(0.001, 0.999),
    restarts=st.lists(st.integers(1, 299), max_size=10, unique=True),
)
def test_ewma_is_bit_identical_to_rivers_ewmean(values, alpha, restarts):
    from river import stats

    x = np.array(values)
    starts = np.array([0] + sorted(r for r in restarts if r < x.size))
    expected = np.empty(x.size)
    bounds = list(starts) + [x.size]
    for a, b in zip(bounds[:-1], bounds[1:]):
        mean = stats.EWMean(alpha)
        for i in range(a, b):
            mean.update(values[i])
            expected[i] = mean.get()
    got = ewma(x, starts, np.zeros(starts.size), np.ones(starts.size, dtype=bool), alpha)
    np.testing.assert_array_equal(got, expected)


def test_segmented_recurrence_matches_a_loop():
    rng = np.random.default_rng(0)
    x = rng.random(1000)
    starts = np.unique(np.concatenate(([0], rng.integers(0, 1000, 40))))
    initial = rng.random(starts.size)
    expected = np.empty(x.size)
    bounds = list(starts) + [x.size]
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        y = float(initial[k])
        for i in range(a, b):
            y = 0.3 * float(x[i]) + 0.7 * y
            expected[i] = y
    np.testing.assert_array_equal(segmented_recurrence(x, starts, initial, 0.3, 0.7), expected)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (HDDMA, "drift_confidence", 0.0),
        (HDDMA, "warning_confidence", 1.0),
        (HDDMA, "two_sided_test", "yes"),
        (HDDMW, "lambda_val", 0.0),
        (HDDMW, "lambda_val", 1.2),
        (HDDMW, "drift_confidence", -0.1),
    ],
)
def test_invalid_parameters(cls, name, value):
    with pytest.raises(ValueError, match=name):
        cls(**{name: value})
