"""The contract every change detector keeps, run over all of them (as river's
``river/checks/common.py`` does for its estimators)."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# (module, class, kind of stream it watches)
DETECTORS = [
    ("driftline.detectors.page_hinkley", "PageHinkley", "real"),
    ("driftline.detectors.ddm", "DDM", "binary"),
    ("driftline.detectors.ddm", "EDDM", "binary"),
    ("driftline.detectors.hddm", "HDDMA", "binary"),
    ("driftline.detectors.hddm", "HDDMW", "binary"),
    ("driftline.detectors.fhddm", "FHDDM", "binary"),
    ("driftline.detectors.adwin", "ADWIN", "real"),
    ("driftline.detectors.kswin", "KSWIN", "real"),
]


def _factory(module: str, name: str) -> Callable[[], object]:
    def make() -> object:
        cls = getattr(importlib.import_module(module), name)
        # randomized detectors (KSWIN) are seeded, so that two runs are comparable
        seeded = "seed" in inspect.signature(cls).parameters
        return cls(seed=42) if seeded else cls()

    return make


CASES = [pytest.param(_factory(m, c), kind, id=c) for m, c, kind in DETECTORS]


def make_stream(kind: str, seed: int, n: int) -> np.ndarray:
    """A stream with a few real changes, so that restarts after drifts are exercised."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, n, 3))
    if kind == "binary":
        rates = rng.uniform(0.02, 0.9, cuts.size + 1)
        return (rng.random(n) < np.repeat(rates, np.diff(np.concatenate(([0], cuts, [n]))))).astype(np.float64)
    means = rng.normal(0, 4, cuts.size + 1)
    return rng.normal(0, 1, n) + np.repeat(means, np.diff(np.concatenate(([0], cuts, [n]))))


def run(detector, x: np.ndarray, cuts=()) -> tuple[list[int], list[int]]:
    """Feed ``x`` cut at ``cuts``; return drift and warning indices into ``x``."""
    drifts: list[int] = []
    warnings: list[int] = []
    start = 0
    for part in np.split(x, sorted(cuts)):
        result = detector.update(part)
        drifts += (np.asarray(result.drifts) + start).tolist()
        warnings += (np.asarray(result.warnings) + start).tolist()
        start += part.size
    return drifts, warnings


def roundtrip(state: dict) -> dict:
    """Through JSON when the state is JSON-able (plain values), as-is otherwise."""
    try:
        text = json.dumps(state)
    except TypeError:
        return state
    return json.loads(text)


splits = st.lists(st.integers(0, 3000), max_size=6)


@pytest.mark.parametrize(("make", "kind"), CASES)
@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**16), cuts=splits)
def test_batch_split_invariance(make, kind, seed, cuts):
    x = make_stream(kind, seed, 3000)
    assert run(make(), x, cuts) == run(make(), x)


@pytest.mark.parametrize(("make", "kind"), CASES)
@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 2**16), at=st.integers(0, 3000))
def test_state_round_trip(make, kind, seed, at):
    x = make_stream(kind, seed, 3000)
    first = make()
    head = run(first, x[:at])
    rebuilt = type(first).from_state(roundtrip(first.state_dict()))
    tail = run(rebuilt, x[at:])
    whole = run(make(), x)
    assert (head[0] + [i + at for i in tail[0]], head[1] + [i + at for i in tail[1]]) == whole


@pytest.mark.parametrize(("make", "kind"), CASES)
def test_columns_equal_one_dimensional_runs(make, kind):
    columns = np.stack([make_stream(kind, seed, 2500) for seed in range(3)], axis=1)
    together = make().update(columns)
    for j in range(columns.shape[1]):
        alone = make().update(columns[:, j])
        np.testing.assert_array_equal(together.drifts[j], alone.drifts)
        np.testing.assert_array_equal(together.warnings[j], alone.warnings)
    np.testing.assert_array_equal(together.skipped, np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize(("make", "kind"), CASES)
def test_columns_continue_across_batches(make, kind):
    columns = np.stack([make_stream(kind, seed, 2500) for seed in range(2)], axis=1)
    det = make()
    first, second = det.update(columns[:1000]), det.update(columns[1000:])
    for j in range(2):
        drifts, _ = run(make(), columns[:, j], [1000])
        got = np.concatenate([first.drifts[j], second.drifts[j] + 1000]).tolist()
        assert got == drifts


@pytest.mark.parametrize(("make", "kind"), CASES)
@settings(deadline=None, max_examples=10)
@given(seed=st.integers(0, 2**16), bad=st.lists(st.integers(0, 2999), max_size=20, unique=True))
def test_non_finite_values_are_skipped_and_counted(make, kind, seed, bad):
    clean = make_stream(kind, seed, 3000)
    rows = np.setdiff1d(np.arange(3000), bad)
    dirty = np.empty(3000)
    dirty[rows] = clean[: rows.size]
    dirty[bad] = np.resize([np.nan, np.inf, -np.inf], len(bad))
    result = make().update(dirty)
    expected = make().update(clean[: rows.size])
    assert result.skipped == len(bad)
    np.testing.assert_array_equal(result.drifts, rows[expected.drifts])
    np.testing.assert_array_equal(result.warnings, rows[expected.warnings])


@pytest.mark.parametrize(("make", "kind"), CASES)
def test_empty_batch_is_a_no_op(make, kind):
    det = make()
    det.update(make_stream(kind, 1, 500))
    before = det.state_dict()
    result = det.update(np.empty(0))
    assert len(result.drifts) == 0 and len(result.warnings) == 0 and result.skipped == 0
    assert json.dumps(det.state_dict(), default=repr) == json.dumps(before, default=repr)


@pytest.mark.parametrize(("make", "kind"), CASES)
@pytest.mark.parametrize(
    "values",
    [np.zeros((2, 2, 2)), np.array(["a", "b"]), np.array([1 + 2j]), np.array([{}], dtype=object), np.float64(1.0)],
    ids=["3-D", "strings", "complex", "objects", "scalar"],
)
def test_bad_input_raises_a_useful_value_error(make, kind, values):
    with pytest.raises(ValueError, match="values"):
        make().update(values)


@pytest.mark.parametrize(("make", "kind"), CASES)
def test_reset_restores_the_fresh_state(make, kind):
    det = make()
    x = make_stream(kind, 7, 2000)
    expected = run(make(), x)
    det.update(make_stream(kind, 8, 1500))
    det.reset()
    assert json.dumps(det.state_dict(), default=repr) == json.dumps(make().state_dict(), default=repr)
    assert run(det, x) == expected


@pytest.mark.parametrize(("make", "kind"), CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, bool])
def test_callers_array_is_never_written(make, kind, dtype):
    x = make_stream(kind, 3, 2000)
    x = (x > 0.5) if dtype is bool else x.astype(dtype)
    x.setflags(write=False)  # any in-place write raises
    copy = x.copy()
    make().update(x)
    make().update(np.stack([x, x], axis=1))
    np.testing.assert_array_equal(x, copy)


@pytest.mark.parametrize(("make", "kind"), CASES)
def test_invalid_parameters_name_the_parameter(make, kind):
    det = make()
    name = det._PARAMS[0]
    with pytest.raises(ValueError, match=name):
        type(det)(**{**det.params(), name: -1})


def test_detectors_import_no_io_libraries():
    code = (
        "import sys, driftline.detectors.page_hinkley, driftline.detectors.ddm, driftline.detectors.hddm, driftline.detectors._kernels\n"
        "bad = {'kafka', 'httpx', 'prometheus_client', 'pydantic', 'river'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", code], check=True)
