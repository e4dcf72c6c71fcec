"""Every change detector against river on drift-heavy streams (issue 16).

A stream that drifts every few hundred to two thousand samples makes the restart after a
drift, not the per-sample arithmetic, the detectors' main work: many drifts per batch,
drifts at batch boundaries, and the restart loop's chunk-size hint
(``_kernels.Pace``) carried from one batch to the next. The drift indices must be
river's whatever the batch sizes.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift as river_drift

from driftline.detectors import _kernels as kernels
from driftline.detectors.adwin import ADWIN
from driftline.detectors.ddm import DDM, EDDM
from driftline.detectors.fhddm import FHDDM
from driftline.detectors.hddm import HDDMA, HDDMW
from driftline.detectors.kswin import KSWIN
from driftline.detectors.page_hinkley import PageHinkley
from tests.detectors.oracle import feed, feed_both, river_both, river_indices
from tests.detectors.test_kswin import RiverDraws


def heavy_stream(kind: str, n: int, seed: int, segment: int) -> np.ndarray:
    """Alternating segments: N(0, 1) and N(0.3, 1) (real), or error rates 0.1 and 0.4
    (binary), as ``benchmarks/bench_detectors.py``'s drift-heavy stream."""
    rng = np.random.default_rng(seed)
    if kind == "binary":
        rates = np.resize(np.repeat([0.1, 0.4], segment), n)
        return (rng.random(n) < rates).astype(np.float64)
    return np.resize(np.repeat([0.0, 0.3], segment), n) + rng.normal(0.0, 1.0, n)


def cuts(n: int, batch: int | None, seed: int) -> list[int]:
    """Batch boundaries: every ``batch`` samples, or (None) irregular ones."""
    if batch is not None:
        return list(range(batch, n, batch))
    rng = np.random.default_rng(seed + 1000)
    return sorted(set(np.cumsum(rng.integers(1, 3000, n // 500)).tolist()) - {0})


# (ours, river, stream kind, segment, stream length, with warnings)
CASES = {
    "PageHinkley": (PageHinkley, river_drift.PageHinkley, "real", 1500, 30_000, False),
    "ADWIN": (ADWIN, river_drift.ADWIN, "real", 1500, 30_000, False),
    "DDM": (DDM, river_drift.binary.DDM, "binary", 1000, 30_000, True),
    "EDDM": (EDDM, river_drift.binary.EDDM, "binary", 1000, 30_000, True),
    "HDDM_A": (HDDMA, river_drift.binary.HDDMA, "binary", 1000, 30_000, True),
    "HDDM_W": (HDDMW, river_drift.binary.HDDMW, "binary", 1000, 30_000, True),
    "FHDDM": (FHDDM, river_drift.binary.FHDDM, "binary", 1000, 30_000, False),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("batch", [10_000, 1_000, 97, None])
@pytest.mark.parametrize("label", list(CASES))
def test_parity_with_river_on_a_drift_heavy_stream(label, batch, seed):
    ours_cls, river_cls, kind, segment, n, with_warnings = CASES[label]
    stream = heavy_stream(kind, n, seed, segment)
    at = cuts(n, batch, seed)
    if with_warnings:
        expected = river_both(river_cls(), stream)
        found = feed_both(ours_cls(), stream, at)
        drifts = expected[0]
    else:
        expected = drifts = river_indices(river_cls(), stream)  # type: ignore[assignment]
        found = feed(ours_cls(), stream, at)
    # drift-heavy: river drifts at least every 2,000 samples on these streams
    assert len(drifts) >= n // 2000, f"{label}: river drifts only {len(drifts)} times"
    assert found == expected


@st.composite
def heavy_cases(draw: st.DrawFn) -> tuple[str, np.ndarray, list[int]]:
    """A detector whose restart path computes from per-batch prefix sums, a drift-heavy
    stream with a drawn segment length, and drawn batch boundaries (some tiny)."""
    label = draw(st.sampled_from(["PageHinkley", "DDM", "EDDM", "FHDDM"]))
    _, _, kind, _, _, _ = CASES[label]
    n = draw(st.integers(2_000, 8_000))
    stream = heavy_stream(kind, n, draw(st.integers(0, 2**32 - 1)), draw(st.integers(150, 2_000)))
    cut_at = draw(st.lists(st.integers(1, n - 1), max_size=12))
    return label, stream, cut_at


@settings(deadline=None, max_examples=40)
@given(case=heavy_cases())
def test_parity_with_river_on_drawn_drift_heavy_streams(case):
    label, stream, cut_at = case
    ours_cls, river_cls, _, _, _, with_warnings = CASES[label]
    if with_warnings:
        assert feed_both(ours_cls(), stream, cut_at) == river_both(river_cls(), stream)
    else:
        assert feed(ours_cls(), stream, cut_at) == river_indices(river_cls(), stream)


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), short=st.integers(1, 100), cut_at=st.lists(st.integers(1, 5_999), max_size=8))
def test_fhddm_short_window_on_drift_heavy_streams(seed, short, cut_at):
    stream = heavy_stream("binary", 6_000, seed, 700)
    params = {"short_window_size": short}
    assert feed(FHDDM(**params), stream, cut_at) == river_indices(river_drift.binary.FHDDM(**params), stream)


@pytest.mark.parametrize("batch", [1_000, 61, None])
def test_kswin_parity_with_river_on_a_drift_heavy_stream(batch):
    """Same draws (RiverDraws injected); river's KSWIN is slow, so a shorter stream."""
    n = 6_000
    stream = heavy_stream("real", n, 3, 500)
    params = {"alpha": 0.005, "seed": 42}
    expected = river_indices(river_drift.KSWIN(**params), stream)
    assert len(expected) >= n // 2000
    assert feed(KSWIN(**params, sampler=RiverDraws()), stream, cuts(n, batch, 3)) == expected


def test_restart_hint_carries_across_batches_and_changes_no_result():
    """The chunk-size hint survives batches (and a state round trip starts without it):
    the same drifts either way."""
    stream = heavy_stream("real", 20_000, 5, 1500)
    one = PageHinkley()
    first = feed(one, stream[:10_000], range(1_000, 10_000, 1_000))
    assert one._pace().gap > 0  # the hint learned the distance between drifts
    restored = PageHinkley.from_state(one.state_dict())
    assert restored._pace().gap == 0  # not state: a restored detector starts without it
    rest = feed(one, stream[10_000:], range(1_000, 10_000, 1_000))
    again = feed(restored, stream[10_000:], [])
    assert rest == again
    assert first + [10_000 + i for i in rest] == river_indices(river_drift.PageHinkley(), stream)


@pytest.mark.parametrize("label", ["PageHinkley", "ADWIN", "DDM", "HDDM_A", "HDDM_W", "FHDDM"])
def test_restart_work_is_amortised_over_drifts(label, monkeypatch):
    """The work of the restarts does not grow with the drifts a batch holds: on a
    drift-heavy stream fed in batches of 10,000, each sample is scanned fewer than twice
    on average (the scan after a drift ends a little past where the next one is due,
    instead of re-reading the rest of the batch), and there are not many more scans
    than drifts and batches. Scans are counted where every detector's restart loop
    calls them (``_kernels.restart_loop``)."""
    ours_cls, _, kind, segment, _, _ = CASES[label]
    n, batch = 100_000, 10_000
    stream = heavy_stream(kind, n, 7, segment)
    scans, scanned = 0, 0
    loop = kernels.restart_loop

    def counting_loop(size, scan, *args, **kwargs):
        def counting(start, stop):
            nonlocal scans, scanned
            scans += 1
            scanned += stop - start
            return scan(start, stop)

        return loop(size, counting, *args, **kwargs)

    module = sys.modules[ours_cls.__module__]
    monkeypatch.setattr(kernels, "restart_loop", counting_loop)
    if hasattr(module, "restart_loop"):
        monkeypatch.setattr(module, "restart_loop", counting_loop)
    drifts = len(feed(ours_cls(), stream, range(batch, n, batch)))
    assert drifts >= n // 2000
    assert scans > 0
    assert scanned < 2.0 * n, f"{label}: {scanned / n:.2f} passes over the stream"
    assert scans <= 1.6 * drifts + 2 * (n // batch), f"{label}: {scans} scans for {drifts} drifts"
