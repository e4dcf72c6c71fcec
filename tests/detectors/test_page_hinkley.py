"""PageHinkley against river 0.26's per-sample loop (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river import drift

from driftline.detectors.page_hinkley import PageHinkley
from tests.detectors.firing import firing_share


def river_drifts(params: dict, x: np.ndarray) -> list[int]:
    detector = drift.PageHinkley(**params)
    found = []
    for i, value in enumerate(x.tolist()):
        detector.update(value)
        if detector.drift_detected:
            found.append(i)
    return found


def ours(params: dict, x: np.ndarray, cuts=()) -> list[int]:
    detector = PageHinkley(**params)
    found, start = [], 0
    for part in np.split(x, sorted(cuts)):
        found += (detector.update(part).drifts + start).tolist()
        start += part.size
    return found


def shifting_stream(seed: int, n: int, gradual: bool, rounded: bool) -> np.ndarray:
    """Gaussian noise around a mean that jumps (or ramps) a few times."""
    rng = np.random.default_rng(seed)
    level = np.zeros(n)
    for _ in range(rng.integers(1, 5)):
        at, size = int(rng.integers(0, n)), rng.normal(0, 3)
        if gradual:
            ramp = min(int(rng.integers(50, 500)), n - at)
            level[at : at + ramp] += np.linspace(0, size, ramp)
            level[at + ramp :] += size
        else:
            level[at:] += size
    x = level + rng.normal(0, rng.uniform(0.2, 2), n)
    return np.round(x) if rounded else x


params_strategy = st.fixed_dictionaries(
    {
        "min_instances": st.integers(1, 80),
        "delta": st.sampled_from([0.0, 0.005, 0.05, 0.3]),
        "threshold": st.floats(1, 80),
        "alpha": st.sampled_from([1.0, 1 - 0.0001, 0.999, 0.99, 0.9]),
        "mode": st.sampled_from(["up", "down", "both"]),
    }
)


def stream_with_change(seed: int, n: int, at: int, size: float, gradual: bool, rounded: bool) -> np.ndarray:
    """Gaussian noise whose mean moves by ``size`` noise units at ``at`` (abruptly, or
    along a ramp of 50 to 500 samples)."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0.2, 2.0)
    t = np.arange(n)
    ramp = float(rng.integers(50, 500)) if gradual else 1.0
    x = size * noise * np.clip((t - at + 1) / ramp, 0.0, 1.0) + rng.normal(0.0, noise, n)
    return np.round(x) if rounded else x


@st.composite
def parity_cases(draw: st.DrawFn) -> tuple[np.ndarray, dict]:
    """Parameters and a stream with one change, in a direction the drawn ``mode``
    watches, that river's PageHinkley detects in most draws: 300 to 4,000 samples, the
    change between a fifth and seven tenths of the way, 1 to 5 noise units
    (tests/detectors/firing.py checks the share)."""
    params = draw(params_strategy)
    n = draw(st.integers(300, 4000))
    at = int(n * draw(st.floats(0.2, 0.7)))
    sign = {"up": 1.0, "down": -1.0}.get(params["mode"]) or draw(st.sampled_from([-1.0, 1.0]))
    size = sign * draw(st.floats(1.0, 5.0))
    x = stream_with_change(draw(st.integers(0, 2**32 - 1)), n, at, size, draw(st.booleans()), draw(st.booleans()))
    return x, params


@settings(deadline=None, max_examples=60)
@given(case=parity_cases(), cuts=st.lists(st.integers(0, 4000), max_size=5))
def test_parity_with_river(case, cuts):
    x, params = case
    expected = river_drifts(params, x)
    event("river fires" if expected else "river is silent")
    assert ours(params, x, cuts) == expected


def test_the_parity_streams_mostly_hold_a_drift_river_detects():
    share = firing_share(parity_cases(), lambda case: river_drifts(case[1], case[0]), examples=60)
    assert share >= 0.6, f"river fires on only {share:.0%} of the parity examples"


def river_statistics(params: dict, x: np.ndarray) -> np.ndarray:
    """river's test statistic after every judged sample, on a detector that never
    fires: max(increase - min, max - decrease) as the mode looks at them."""
    detector = drift.PageHinkley(**{**params, "threshold": 1e300})
    found = []
    for value in x.tolist():
        detector.update(value)
        if detector._x_mean.n >= detector.min_instances:
            up = detector._sum_increase - detector._min_increase
            down = detector._max_decrease - detector._sum_decrease
            found.append({"up": up, "down": down, "both": max(up, down)}[detector.mode])
    return np.array(found)


@settings(deadline=None, max_examples=60)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(50, 3000),
    rounded=st.booleans(),
    params=params_strategy,
    quantile=st.floats(0.5, 1.0),
    side=st.sampled_from([-1e-9, 1e-9]),
)
def test_parity_with_river_near_the_threshold(seed, n, rounded, params, quantile, side):
    # the threshold a hair (1e-9 relative) below or above a value river's statistic
    # actually takes: the closed-form decrease sum and the prefix-sum mean must not
    # move an alarm across it
    x = shifting_stream(seed, n, False, rounded)
    statistics = river_statistics(params, x)
    statistics = statistics[statistics > 0]
    if statistics.size == 0:
        return
    params = {**params, "threshold": float(np.quantile(statistics, quantile, method="lower")) * (1 + side)}
    assert ours(params, x) == river_drifts(params, x)


@pytest.mark.parametrize("seed", range(4))
def test_long_seeded_streams_with_several_drifts(seed):
    x = shifting_stream(seed, 20_000, gradual=seed % 2 == 1, rounded=False)
    expected = river_drifts({}, x)
    assert len(expected) >= 2
    assert ours({}, x) == expected
    assert ours({}, x, cuts=range(7, 20_000, 7)) == expected


@pytest.mark.parametrize("alpha", [0.9, 0.5, 0.05])
@pytest.mark.parametrize("mode", ["up", "down", "both"])
def test_fast_forgetting_parity(alpha, mode):
    """Small alpha: the faded sums restart in blocks (alpha 0.9: ~1,100 samples; the
    scans here are longer) or are filtered (0.5, 0.05); the thresholds are low enough
    for river to fire often."""
    rng = np.random.default_rng(int(alpha * 100))
    x = np.resize(np.repeat([0.0, 1.5], 2500), 20_000) + rng.normal(0.0, 1.0, 20_000)
    params = {"alpha": alpha, "mode": mode, "threshold": {0.9: 8.0, 0.5: 3.0, 0.05: 2.0}[alpha]}
    expected = river_drifts(params, x)
    assert len(expected) >= 2
    assert ours(params, x) == expected
    assert ours(params, x, cuts=range(333, 20_000, 333)) == expected


def test_constant_stream_never_drifts_like_river():
    x = np.full(5000, 0.1)
    params = {"delta": 0.0, "threshold": 1e-9}
    assert ours(params, x) == river_drifts(params, x) == []


def test_river_docstring_example():
    # river's own example: drift at index 1006 with random.Random(12345) data
    import random

    rng = random.Random(12345)
    stream = np.array(rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000), dtype=float)
    assert PageHinkley().update(stream).drifts.tolist() == [1006]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("min_instances", 0),
        ("min_instances", 2.5),
        ("delta", -1.0),
        ("threshold", 0.0),
        ("alpha", 0.0),
        ("alpha", 1.5),
        ("mode", "sideways"),
    ],
)
def test_invalid_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        PageHinkley(**{name: value})
