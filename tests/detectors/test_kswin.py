"""KSWIN: parity with river 0.26's per-sample loop given the same random draws,
batch-split invariance, state round trips (random state included), the KS kernel
against scipy, and the handling of odd input.

river draws its samples with ``random.Random(seed).sample``; this package draws with
numpy by default. The parity tests inject :class:`RiverDraws`, a sampler that makes
exactly river's calls on a ``random.Random`` seeded as river seeds it (at construction
and again after every drift), so that both implementations see the same draws: parity is
proven GIVEN THE SAME DRAWS. Expected drift indices always come from river itself.
"""

from __future__ import annotations

import doctest
import json
import random
import warnings

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from river import drift as river_drift
from scipy import stats

import driftline.detectors.kswin
from driftline.detectors.kswin import KSWIN, NumpySampler, ks_distances, ks_table
from tests.detectors.firing import firing_share
from tests.detectors.oracle import feed, river_indices


class RiverDraws:
    """river's draws: ``random.Random(seed)``, then one ``sample(range(population),
    size)`` per test, in order. The state is ``Random.getstate()``."""

    def fresh(self, seed):
        return random.Random(seed).getstate()

    def draw(self, state, population, size, count):
        rng = random.Random()
        rng.setstate(state)
        rows = [rng.sample(range(population), size) for _ in range(count)]
        return np.array(rows, dtype=np.int64).reshape(count, size), rng.getstate()


def river_drifts(stream: np.ndarray, **params) -> list[int]:
    """Indices where river's KSWIN, fed one sample at a time, signals a drift."""
    return river_indices(river_drift.KSWIN(**params), stream)


def make_stream(kind: str, n: int, seed: int) -> np.ndarray:
    """A stream of one of the shapes the parity tests cover."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    change = int(rng.integers(0, max(n, 1)))
    if kind == "sudden":
        return rng.normal(0.0, 1.0, n) + rng.normal(0.0, 2.0) * (t >= change)
    if kind == "gradual":
        return rng.normal(0.0, 1.0, n) + np.linspace(0.0, rng.normal(0.0, 4.0), n)
    if kind == "variance":
        return rng.normal(0.0, 1.0, n) * np.where(t < change, 1.0, 5.0)
    if kind == "binary":
        rate = np.where(t < change, rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.95))
        return (rng.random(n) < rate).astype(np.float64)
    # Rounded values: many ties between the two samples of a test.
    return np.round(rng.normal(0.0, 1.5, n) + 2.0 * (t >= change))


@st.composite
def kswin_params(draw):
    stat_size = draw(st.integers(1, 40))
    return {
        "alpha": draw(st.sampled_from([0.0, 1e-4, 0.005, 0.05, 0.3, 1.0])),
        "stat_size": stat_size,
        "window_size": draw(st.integers(2 * stat_size, 2 * stat_size + 60)),
        "seed": draw(st.integers(0, 1000)),
    }


stream_kinds = st.sampled_from(["sudden", "gradual", "variance", "binary", "rounded"])


def stream_with_change(kind: str, n: int, at: int, size: float, seed: int) -> np.ndarray:
    """``n`` samples of a drawn shape whose distribution moves at ``at`` by ``size``
    noise units: abruptly, along a short ramp, in variance, as a 0/1 rate, rounded."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    after = (t >= at).astype(np.float64)
    if kind == "sudden":
        return rng.normal(0.0, 1.0, n) + size * after
    if kind == "gradual":
        return rng.normal(0.0, 1.0, n) + size * np.clip((t - at) / 20.0, 0.0, 1.0)
    if kind == "variance":
        return rng.normal(0.0, 1.0, n) * (1.0 + 2.0 * abs(size) * after)
    if kind == "binary":
        before = rng.uniform(0.05, 0.3)
        return (rng.random(n) < before + 0.55 * after).astype(np.float64)
    return np.round(rng.normal(0.0, 1.5, n) + 2.0 * size * after)


@st.composite
def parity_cases(draw: st.DrawFn) -> tuple[np.ndarray, dict]:
    """KSWIN parameters and a stream with one change river's KSWIN detects in most
    draws: at least a window and a few hundred samples after the change, 1.5 to 4 noise
    units up or down (tests/detectors/firing.py checks the share)."""
    # Mostly statistic samples of 10 or more (fewer can never reach a small p-value) and
    # a significance level above 0 (alpha=0 never fires); the rest keeps the odd sizes.
    stat_size = draw(st.sampled_from([(10, 40)] * 4 + [(1, 9)]))
    stat_size = draw(st.integers(*stat_size))
    params = {
        "alpha": draw(st.sampled_from([1e-4, 0.005, 0.05, 0.3, 1.0])),
        "stat_size": stat_size,
        "window_size": draw(st.integers(2 * stat_size, 2 * stat_size + 60)),
        "seed": draw(st.integers(0, 1000)),
    }
    window = params["window_size"]
    at = window + draw(st.integers(0, 150))
    n = at + draw(st.integers(window + 50, window + 300))
    size = draw(st.floats(1.5, 4.0)) * draw(st.sampled_from([-1.0, 1.0]))
    stream = stream_with_change(draw(stream_kinds), n, at, size, draw(st.integers(0, 2**32 - 1)))
    return stream, params


@settings(max_examples=40, deadline=None)
@given(case=parity_cases(), cuts=st.lists(st.integers(0, 800), max_size=6))
def test_parity_with_river_given_the_same_draws(case, cuts):
    """Same draws (RiverDraws injected): same drift indices as river's loop."""
    stream, params = case
    expected = river_drifts(stream, **params)
    event("river fires" if expected else "river is silent")
    detector = KSWIN(**params, sampler=RiverDraws())
    assert feed(detector, stream, cuts) == expected


def test_the_parity_streams_mostly_hold_a_drift_river_detects():
    share = firing_share(parity_cases(), lambda case: river_drifts(case[0], **case[1]), examples=40)
    assert share >= 0.6, f"river fires on only {share:.0%} of the parity examples"


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_on_seeded_stream_with_several_drifts(seed):
    """Same draws (RiverDraws injected), a longer stream with several changes."""
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.normal(mean, 1.0, 600) for mean in (0.0, 2.0, -1.0, 1.0, 4.0)])
    params = {"alpha": 0.001, "seed": 42}
    expected = river_drifts(stream, **params)
    assert len(expected) >= 4
    found = feed(KSWIN(**params, sampler=RiverDraws()), stream, list(range(0, stream.size, 333)))
    assert found == expected


def test_parity_with_an_initial_window():
    """Same draws (RiverDraws injected), starting from river's ``window`` argument."""
    rng = np.random.default_rng(5)
    start = rng.normal(0.0, 1.0, 150).tolist()
    stream = rng.normal(3.0, 1.0, 400)
    params = {"alpha": 0.001, "seed": 7, "window": start}
    assert feed(KSWIN(**params, sampler=RiverDraws()), stream, [3, 90]) == river_drifts(stream, **params)


@settings(max_examples=15, deadline=None)
@given(kind=stream_kinds, seed=st.integers(0, 2**32 - 1), params=kswin_params())
def test_same_indices_whatever_the_batch_cuts(kind, seed, params):
    stream = make_stream(kind, 1200, seed)
    all_at_once = feed(KSWIN(**params), stream, [])
    assert feed(KSWIN(**params), stream, list(range(0, stream.size, 7))) == all_at_once
    assert feed(KSWIN(**params), stream, list(range(0, 300))) == all_at_once


def test_one_sample_at_a_time_equals_one_batch():
    stream = make_stream("sudden", 1500, 3)
    params = {"alpha": 0.001, "seed": 1}
    one_at_a_time = feed(KSWIN(**params), stream, list(range(stream.size)))
    assert one_at_a_time == feed(KSWIN(**params), stream, [])
    assert len(one_at_a_time) >= 1


@settings(max_examples=20, deadline=None)
@given(
    kind=stream_kinds,
    seed=st.integers(0, 2**32 - 1),
    params=kswin_params(),
    split=st.integers(0, 1000),
)
def test_state_round_trip_continues_as_uninterrupted(kind, seed, params, split):
    stream = make_stream(kind, 1000, seed)
    expected = feed(KSWIN(**params), stream, [split])

    first = KSWIN(**params)
    found = feed(first, stream[:split], [])
    # the state, random state included, survives a trip through JSON
    state = json.loads(json.dumps(first.state_dict(), default=lambda a: a.tolist()))
    restored = KSWIN.from_state(state)
    found += [split + i for i in feed(restored, stream[split:], [])]
    assert found == expected


def test_round_trip_with_an_injected_sampler_keeps_its_state():
    stream = make_stream("rounded", 800, 8)
    params = {"alpha": 0.01, "seed": 3}
    expected = river_drifts(stream, **params)
    first = KSWIN(**params, sampler=RiverDraws())
    found = feed(first, stream[:400], [])
    restored = KSWIN.from_state(first.state_dict())
    found += [400 + i for i in feed(restored, stream[400:], [])]
    assert found == expected


def test_default_seed_none_draws_fresh_entropy_but_round_trips():
    stream = make_stream("sudden", 900, 2)
    first = KSWIN(alpha=0.01)
    feed(first, stream[:300], [])
    twin = KSWIN.from_state(first.state_dict())
    # identical up to the next drift, after which each reseeds from fresh entropy
    assert feed(first, stream[300:], [])[:1] == feed(twin, stream[300:], [])[:1]


@settings(max_examples=30, deadline=None)
@given(
    stat_size=st.integers(1, 25),
    rows=st.integers(1, 6),
    spread=st.integers(1, 60),
    seed=st.integers(0, 2**32 - 1),
)
def test_ks_kernel_and_table_agree_with_scipy(stat_size, rows, spread, seed):
    rng = np.random.default_rng(seed)
    first = rng.integers(0, spread, (rows, stat_size))
    second = rng.integers(0, spread, (rows, stat_size))
    distances = ks_distances(first, second)
    statistic, p_value = ks_table(stat_size)
    for row in range(rows):
        with warnings.catch_warnings():
            # as river: scipy warns when it falls back to the asymptotic p-value
            warnings.simplefilter("ignore", category=RuntimeWarning)
            expected = stats.ks_2samp(first[row].astype(float), second[row].astype(float), method="auto")
        assert statistic[distances[row]] == expected.statistic
        assert p_value[distances[row]] == expected.pvalue


def test_default_sampler_draws_distinct_indices_and_is_split_invariant():
    sampler = NumpySampler()
    rows, state = sampler.draw(sampler.fresh(4), population=20, size=8, count=50)
    assert rows.min() >= 0 and rows.max() < 20
    assert all(len(set(r)) == 8 for r in rows.tolist())
    head, mid = sampler.draw(sampler.fresh(4), 20, 8, 20)
    tail, end = sampler.draw(mid, 20, 8, 30)
    assert np.array_equal(np.concatenate([head, tail]), rows)
    assert end == state


def test_default_sampler_is_uniform_enough():
    rows, _ = NumpySampler().draw(NumpySampler().fresh(0), population=10, size=3, count=20000)
    counts = np.bincount(rows.ravel(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_two_dimensional_batch_runs_one_detector_per_column():
    columns = [make_stream(kind, 900, 6) for kind in ("sudden", "binary")]
    found = KSWIN(alpha=0.001, seed=9).update(np.stack(columns, axis=1))
    assert isinstance(found.drifts, tuple) and len(found.drifts) == 2
    for column, drifts in zip(columns, found.drifts):
        assert drifts.tolist() == KSWIN(alpha=0.001, seed=9).update(column).drifts.tolist()


def test_non_finite_values_are_skipped_and_counted():
    stream = make_stream("sudden", 900, 12)
    with_gaps = stream.copy()
    holes = np.arange(3, 900, 41)
    with_gaps[holes] = np.nan
    with_gaps[holes[1::2]] = -np.inf
    finite_rows = np.flatnonzero(np.isfinite(with_gaps))
    params = {"alpha": 0.01, "seed": 2}
    found = KSWIN(**params, sampler=RiverDraws()).update(with_gaps)
    assert found.skipped == holes.size
    expected = finite_rows[river_drifts(with_gaps[finite_rows], **params)]
    assert found.drifts.tolist() == expected.tolist()


def test_window_empties_after_a_drift_and_p_value_is_reported():
    stream = np.concatenate([np.zeros(100), np.ones(100)])
    detector = KSWIN(alpha=0.01, seed=0)
    drifts = detector.update(stream).drifts
    assert drifts.size >= 1
    assert detector.p_value <= 0.01 and detector.statistic > 0.1
    # after the last drift the window restarts empty: the next test comes with the
    # window_size-th sample after it
    held = stream.size - 1 - int(drifts[-1])
    assert detector.update(np.ones(100 - 1 - held)).drifts.size == 0
    assert detector.update(np.full(30, 9.0)).drifts.size == 1


def test_empty_batch_and_caller_array_untouched():
    detector = KSWIN(seed=1)
    assert detector.update(np.empty(0)).drifts.size == 0
    stream = make_stream("sudden", 400, 1)
    before = stream.copy()
    detector.update(stream)
    assert np.array_equal(stream, before)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"stat_size": 0}, "stat_size"),
        ({"stat_size": 20_000, "window_size": 50_000}, "stat_size"),
        ({"window_size": 50, "stat_size": 30}, "window_size"),
        ({"window_size": 100.5}, "window_size"),
        ({"seed": -3}, "seed"),
        ({"window": [[1.0, 2.0]]}, "window"),
        ({"sampler": object()}, "sampler"),
    ],
)
def test_invalid_parameters_name_the_parameter(params, name):
    with pytest.raises(ValueError, match=name):
        KSWIN(**params)


def test_defaults_match_river():
    theirs = river_drift.KSWIN()
    ours = KSWIN().params()
    assert {k: ours[k] for k in ("alpha", "window_size", "stat_size", "seed")} == {
        k: getattr(theirs, k) for k in ("alpha", "window_size", "stat_size", "seed")
    }


def test_docstring_examples_run():
    failures, _ = doctest.testmod(driftline.detectors.kswin, verbose=False)
    assert failures == 0
