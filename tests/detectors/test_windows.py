"""Count-based windows: reference slicing, batch-split invariance, bounded memory, state."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.detectors import windows
from driftline.detectors.windows import SlidingWindow, TumblingWindow


def expected_windows(stream, indices, size, step):
    """Straightforward reference: slice the whole stream."""
    out = []
    start = 0
    while start + size <= len(stream):
        out.append((stream[start : start + size], indices[start], indices[start + size - 1]))
        start += step
    return out


@settings(deadline=None, max_examples=150)
@given(
    size=st.integers(1, 8),
    step=st.integers(1, 10),
    n=st.integers(0, 60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    gaps=st.lists(st.integers(0, 3), min_size=60, max_size=60),
    round_trip_at=st.integers(0, 8),
)
def test_windows_match_slicing_whatever_the_batches(size, step, n, cuts, gaps, round_trip_at):
    stream = np.arange(n * 2, dtype=float).reshape(n, 2)
    cuts = sorted(c for c in cuts if c <= n)
    bounds = [0, *cuts, n]
    # positions are consecutive within a batch; a batch may start after a gap
    batch_of_row = np.searchsorted(np.array(bounds[1:-1], dtype=int), np.arange(n), side="right")
    indices = 5 + np.arange(n) + np.cumsum(np.array(gaps[:9]))[batch_of_row]
    expected = expected_windows(stream, indices, size, step)
    window = SlidingWindow(size=size, step=step, n_columns=2)
    got = []
    for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b == round_trip_at:
            window = SlidingWindow.from_state(window.state_dict())
        if hi > lo:
            got.extend(window.extend(stream[lo:hi], int(indices[lo])))
        assert window.state_dict()["values"].shape[0] <= size
    assert len(got) == len(expected)
    for (values, first, last), (e_values, e_first, e_last) in zip(got, expected):
        np.testing.assert_array_equal(values, e_values)
        assert (first, last) == (e_first, e_last)


def test_tumbling_is_sliding_with_step_size_and_copies():
    stream = np.arange(40, dtype=np.int64).reshape(20, 2)
    tumbling = TumblingWindow(size=6, n_columns=2, dtype=np.int64)
    sliding = SlidingWindow(size=6, step=6, n_columns=2, dtype=np.int64)
    a = tumbling.extend(stream, 0)
    b = sliding.extend(stream, 0)
    assert [(w.first_index, w.last_index) for w in a] == [(0, 5), (6, 11), (12, 17)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.values, y.values)
        assert x.values.dtype == np.int64
    a[0].values[0, 0] = -99  # a copy: the window's buffer and the stream are untouched
    assert stream[0, 0] == 0
    more = tumbling.extend(np.zeros((4, 2), dtype=np.int64), 20)
    assert [(w.first_index, w.last_index) for w in more] == [(18, 23)]
    np.testing.assert_array_equal(more[0].values[:2], stream[18:20])
    restored = TumblingWindow.from_state(tumbling.state_dict())
    assert repr(restored) == repr(tumbling)


def test_nan_rows_are_held_as_given():
    window = TumblingWindow(size=2, n_columns=1)
    (only,) = window.extend(np.array([[np.nan], [1.0]]), 0)
    assert np.isnan(only.values[0, 0]) and only.values[1, 0] == 1.0


def test_validation():
    with pytest.raises(ValueError, match="size"):
        SlidingWindow(size=0, step=1, n_columns=1)
    with pytest.raises(ValueError, match="step"):
        SlidingWindow(size=2, step=0, n_columns=1)
    window = SlidingWindow(size=2, step=1, n_columns=3)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        window.extend(np.zeros((2, 2)), 0)
    window.extend(np.zeros((2, 3)), 10)
    with pytest.raises(ValueError, match="first_index must be >= 12"):
        window.extend(np.zeros((1, 3)), 11)
    with pytest.raises(ValueError, match="integers"):
        SlidingWindow(size=2, step=1, n_columns=1, dtype=np.int64).extend(np.zeros((1, 1)), 0)
    with pytest.raises(ValueError, match="expected a SlidingWindow"):
        SlidingWindow.from_state(TumblingWindow(2, 1).state_dict())
    assert window.extend(np.zeros((0, 3)), 12) == []


def test_docstring_examples():
    assert doctest.testmod(windows).failed == 0
