"""Two-sample drift statistics against scipy and straightforward reference code."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from driftline.detectors import _ks, statistics
from driftline.detectors.homogeneity import chi2_homogeneity
from driftline.detectors.statistics import (
    PROPORTION_EPSILON,
    CategoricalReference,
    NumericReference,
    categorical_drift,
    numeric_drift,
)

# ---- reference code written independently of the module ---------------------------


def smoothed(counts):
    counts = np.asarray(counts, dtype=float)
    p = counts / counts.sum()
    return (p + PROPORTION_EPSILON) / (1 + len(p) * PROPORTION_EPSILON)


def reference_bins(values, n_bins):
    """Interior edges by the documented rule, one feature, plain Python."""
    values = sorted(values)
    m = len(values)
    edges = []
    for k in range(1, n_bins):
        edge = values[math.ceil(k * m / n_bins) - 1]
        if edge < values[-1] and (not edges or edge != edges[-1]):
            edges.append(edge)
    return edges


def right_closed_counts(values, edges):
    bins = np.searchsorted(np.asarray(edges, dtype=float), values, side="left")
    return np.bincount(bins, minlength=len(edges) + 1)


def psi_formula(p, q):
    return float(sum((qi - pi) * math.log(qi / pi) for pi, qi in zip(p, q)))


def check_numeric(ref, win, n_bins=10):
    reference = NumericReference.fit(ref, n_bins=n_bins)
    drift = numeric_drift(reference, win)
    for j in range(ref.shape[1]):
        a = ref[:, j][np.isfinite(ref[:, j])]
        b = win[:, j][np.isfinite(win[:, j])]
        assert drift.n[j] == b.size
        assert drift.skipped[j] == win.shape[0] - b.size
        if a.size == 0 or b.size == 0:
            assert math.isnan(drift.ks_statistic[j]) and math.isnan(drift.psi[j])
            assert math.isnan(drift.wasserstein[j]) and math.isnan(drift.js[j])
            continue
        if a.size == b.size == 1:  # no asymptotic p-value (documented NaN)
            assert drift.ks_statistic[j] == abs(a[0] != b[0]) and math.isnan(drift.ks_p_value[j])
        else:
            ks = stats.ks_2samp(b, a, method="asymp")
            assert drift.ks_statistic[j] == ks.statistic
            assert drift.ks_p_value[j] == pytest.approx(ks.pvalue, abs=1e-9)
        scale = max(1.0, float(np.abs(np.concatenate([a, b])).max()))
        assert drift.wasserstein[j] == pytest.approx(stats.wasserstein_distance(a, b), abs=1e-9 * scale)
        edges = reference_bins(a, n_bins)
        assert reference.n_edges[j] == len(edges)
        np.testing.assert_array_equal(reference.edges[j, : len(edges)], edges)
        p = smoothed(right_closed_counts(a, edges))
        q = smoothed(right_closed_counts(b, edges))
        assert drift.psi[j] == pytest.approx(psi_formula(p, q), abs=1e-9)
        assert drift.js[j] == pytest.approx(jensenshannon(p, q), abs=1e-9)
        outside = np.mean((b < a.min()) | (b > a.max()))
        assert drift.out_of_range_rate[j] == pytest.approx(outside, abs=1e-12)
        assert drift.missing_rate[j] == pytest.approx(1 - b.size / win.shape[0])
    return reference, drift


# ---- numeric ---------------------------------------------------------------------------


def test_numeric_matches_scipy_with_ragged_nans_and_ties():
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(3000, 5))
    win = rng.normal(0.3, 1.2, size=(700, 5))
    ref[rng.random(ref.shape) < np.array([0, 0.05, 0.3, 0.0, 0.1])] = np.nan
    win[rng.random(win.shape) < np.array([0.5, 0, 0.1, 0.0, 0.2])] = np.inf
    ref[:, 3] = np.round(ref[:, 3] * 2)  # heavy ties: collapsed edges
    win[:, 3] = np.round(win[:, 3] * 2)
    ref[:, 4] = 1e6 + ref[:, 4]  # large offset
    win[:, 4] = 1e6 + win[:, 4]
    reference, drift = check_numeric(ref, win)
    assert reference.n_edges[3] < 9


finite_floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)
values_or_missing = st.one_of(finite_floats, finite_floats.map(lambda v: float(round(v))), st.just(math.nan))


@settings(deadline=None, max_examples=150)
@given(
    st.integers(1, 3).flatmap(
        lambda d: st.tuples(
            st.lists(st.lists(values_or_missing, min_size=d, max_size=d), min_size=0, max_size=60),
            st.lists(st.lists(values_or_missing, min_size=d, max_size=d), min_size=0, max_size=40),
            st.just(d),
        )
    ),
    st.integers(1, 12),
)
def test_numeric_property_against_scipy(data, n_bins):
    ref, win, d = data
    ref = np.array(ref, dtype=float).reshape(-1, d)
    win = np.array(win, dtype=float).reshape(-1, d)
    check_numeric(ref, win, n_bins=n_bins)


def test_numeric_edge_cases():
    ref = NumericReference.fit(np.column_stack([np.full(50, 3.0), np.arange(50.0)]))
    # constant reference: a single bin, PSI = JS = 0
    assert ref.n_edges[0] == 0
    drift = numeric_drift(ref, np.column_stack([np.full(10, 3.0), np.arange(10.0)]))
    assert drift.psi[0] == pytest.approx(0.0) and drift.js[0] == pytest.approx(0.0)
    assert drift.ks_statistic[0] == 0.0 and drift.wasserstein[0] == 0.0
    empty = numeric_drift(ref, np.empty((0, 2)))
    assert np.isnan(empty.ks_statistic).all() and np.isnan(empty.missing_rate).all()
    assert (empty.n == 0).all() and (empty.skipped == 0).all()
    no_ref = NumericReference.fit(np.full((5, 1), np.nan))
    assert no_ref.missing_rate[0] == 1.0
    assert np.isnan(numeric_drift(no_ref, np.ones((4, 1))).ks_statistic).all()
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        numeric_drift(ref, np.ones((4, 3)))
    with pytest.raises(ValueError, match="2-D"):
        NumericReference.fit(np.ones(4))
    with pytest.raises(ValueError, match="n_bins"):
        NumericReference.fit(np.ones((4, 1)), n_bins=0)
    with pytest.raises(ValueError, match="real numbers"):
        numeric_drift(ref, np.array([["a", "b"]]))


def test_numeric_reference_is_immutable_and_round_trips():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(500, 3))
    ref = NumericReference.fit(data)
    with pytest.raises(ValueError):
        ref.sorted_values[0, 0] = 1.0
    with pytest.raises(AttributeError):
        ref.n_bins = 3
    copy = NumericReference.from_state(ref.to_state())
    win = rng.normal(size=(100, 3))
    a, b = numeric_drift(ref, win), numeric_drift(copy, win)
    for name in ("ks_statistic", "psi", "js", "wasserstein"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    before = win.copy()
    numeric_drift(ref, win)
    np.testing.assert_array_equal(win, before)  # the caller's array is untouched


# ---- categorical -----------------------------------------------------------------------


def check_categorical(ref_codes, win_codes, sizes):
    reference = CategoricalReference.fit(ref_codes, sizes)
    drift = categorical_drift(reference, win_codes)
    for j, k in enumerate(sizes):
        a = ref_codes[:, j][ref_codes[:, j] >= 0]
        b = win_codes[:, j][win_codes[:, j] >= 0]
        assert drift.n[j] == b.size and drift.skipped[j] == (win_codes[:, j] == -1).sum()
        if a.size == 0 or b.size == 0:
            assert math.isnan(drift.psi[j])
            assert drift.chi2_statistic[j] == 0.0 and drift.chi2_p_value[j] == 1.0  # nothing to test
            continue
        ref_counts = np.bincount(a, minlength=k + 1)
        obs = np.bincount(b, minlength=k + 1)
        p = smoothed(ref_counts)
        q = smoothed(obs)
        assert drift.psi[j] == pytest.approx(psi_formula(p, q), abs=1e-9)
        tv = 0.5 * np.abs(obs / obs.sum() - ref_counts / ref_counts.sum()).sum()
        assert drift.tv[j] == pytest.approx(tv, abs=1e-12)
        assert drift.unseen_rate[j] == pytest.approx(obs[k] / b.size)
        # Pearson's test of homogeneity of the two samples (the monitor's test), as
        # scipy's chi2_contingency without continuity correction on the buckets seen
        table = np.array([ref_counts, obs])[:, (ref_counts + obs) > 0]
        if table.shape[1] < 2:
            assert drift.chi2_statistic[j] == 0.0 and drift.chi2_p_value[j] == 1.0  # nothing to test
            continue
        chi = stats.chi2_contingency(table, correction=False)
        assert drift.chi2_statistic[j] == pytest.approx(chi.statistic, rel=1e-9, abs=1e-9)
        assert drift.chi2_p_value[j] == pytest.approx(chi.pvalue, abs=1e-9)
        # one categorical test: the same numbers as chi2_homogeneity on the two samples' counts
        stat, p_value = chi2_homogeneity(ref_counts[None, :].astype(float), obs[None, :].astype(float))
        assert (drift.chi2_statistic[j], drift.chi2_p_value[j]) == (stat[0], p_value[0])
    return drift


def test_categorical_matches_scipy():
    rng = np.random.default_rng(11)
    sizes = [2, 5, 1, 12, 3]
    ref = np.column_stack([rng.integers(-1, k, size=4000) for k in sizes])
    win = np.column_stack([rng.integers(-1, k + 1, size=600) for k in sizes])  # with "other"
    drift = check_categorical(ref, win, sizes)
    assert (drift.unseen_rate > 0).all()
    assert (drift.chi2_p_value[[0, 1, 3, 4]] < 1e-3).all()  # a window with unseen values drifts


@settings(deadline=None, max_examples=120)
@given(
    st.lists(st.integers(0, 6), min_size=1, max_size=4).flatmap(
        lambda sizes: st.tuples(
            st.just(sizes),
            st.lists(st.tuples(*[st.integers(-1, k) for k in sizes]), max_size=50),
            st.lists(st.tuples(*[st.integers(-1, k) for k in sizes]), max_size=30),
        )
    )
)
def test_categorical_property(data):
    sizes, ref, win = data
    ref = np.array(ref, dtype=np.int64).reshape(-1, len(sizes))
    win = np.array(win, dtype=np.int64).reshape(-1, len(sizes))
    check_categorical(ref, win, sizes)


def test_categorical_validation_and_state():
    ref = CategoricalReference.fit(np.array([[0, 1], [1, 2]]), [2, 3])
    with pytest.raises(ValueError, match="must lie in -1"):
        categorical_drift(ref, np.array([[3, 0]]))
    with pytest.raises(ValueError, match="integer array"):
        categorical_drift(ref, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="n_categories"):
        CategoricalReference.fit(np.array([[0]]), [-1])
    copy = CategoricalReference.from_state(ref.to_state())
    win = np.array([[0, 2], [2, -1]])
    np.testing.assert_array_equal(categorical_drift(ref, win).psi, categorical_drift(copy, win).psi)


def test_docstring_examples():
    assert doctest.testmod(statistics).failed == 0


def test_kstwo_sf_matches_scipy_on_every_branch():
    # every branch of scipy's _kolmogn for the sf, including the vectorized Smirnov one
    sizes = [1.0, 50.0, 140.0, 141.0, 909.0, 1014.0, 3000.0, 20_000.0, 25_000.0]
    n = np.repeat(sizes, 60)
    squared = np.tile(np.r_[np.linspace(0.01, 2.3, 30), np.linspace(2.19, 400.0, 30)], len(sizes))
    x = np.minimum(np.sqrt(squared / n), 0.999)
    large_n = 150_000.0  # Pelz-Good without the n <= 100000 Durbin-matrix exception
    x = np.r_[x, 0.0, 1.0, 0.6, 0.3, np.sqrt(np.linspace(0.01, 2.1, 10) / large_n)]
    n = np.r_[n, 909.0, 909.0, 909.0, 4.0, np.full(10, large_n)]
    expected = stats.kstwo.sf(x, n)
    np.testing.assert_allclose(_ks.kstwo_sf(x, n), expected, rtol=1e-9, atol=1e-12)


def test_ks_p_value_of_drifting_features_matches_scipy():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(10_000, 8))
    win = rng.normal(np.linspace(0.05, 0.4, 8), 1.0, size=(1_000, 8))
    drift = numeric_drift(NumericReference.fit(ref), win)
    for j in range(8):
        expected = stats.ks_2samp(win[:, j], ref[:, j], method="asymp").pvalue
        assert drift.ks_p_value[j] == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ---- several windows at once (issue 16) --------------------------------------------------


def _fields(result):
    return {name: getattr(result, name) for name in result.__dataclass_fields__}


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([1, 7, 60, 100, 150, 1_000]),
    w=st.integers(1, 9),
    d=st.integers(1, 5),
    missing=st.sampled_from([0.0, 0.1, 1.0]),
    ties=st.booleans(),
)
def test_numeric_drift_windows_equals_each_window_alone_bit_for_bit(seed, n, w, d, missing, ties):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(int(rng.integers(20, 3_000)), d))
    windows = rng.normal(rng.choice([0.0, 0.3, 1.5]), 1.0, size=(w, n, d))
    if ties:
        ref, windows = np.round(ref, 1), np.round(windows, 1)
    windows[rng.random(windows.shape) < missing * rng.random()] = np.nan
    reference = NumericReference.fit(ref, n_bins=int(rng.integers(1, 12)))
    together = statistics.numeric_drift_windows(reference, windows)
    for i in range(w):
        for name, value in _fields(numeric_drift(reference, windows[i])).items():
            assert getattr(together, name).shape == (w, d)
            assert getattr(together, name)[i].tobytes() == value.tobytes(), (i, name)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([1, 5, 100, 400]),
    w=st.integers(1, 9),
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=4),
)
def test_categorical_drift_windows_equals_each_window_alone_bit_for_bit(seed, n, w, sizes):
    rng = np.random.default_rng(seed)
    reference = CategoricalReference.fit(np.stack([rng.integers(-1, k + 1, size=300) for k in sizes], axis=1), sizes)
    codes = np.stack([np.stack([rng.integers(-1, k + 1, size=n) for k in sizes], axis=1) for _ in range(w)])
    together = statistics.categorical_drift_windows(reference, codes)
    for i in range(w):
        for name, value in _fields(categorical_drift(reference, codes[i])).items():
            assert getattr(together, name)[i].tobytes() == value.tobytes(), (i, name)


def test_drift_windows_reject_arrays_of_the_wrong_shape():
    reference = NumericReference.fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r"shape \(w, n, 2\)"):
        statistics.numeric_drift_windows(reference, np.zeros((5, 2)))
    cat = CategoricalReference.fit(np.zeros((10, 1), dtype=np.int64), [2])
    with pytest.raises(ValueError, match=r"shape \(w, n, 1\)"):
        statistics.categorical_drift_windows(cat, np.zeros((3, 4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="must lie in -1"):
        statistics.categorical_drift_windows(cat, np.full((3, 4, 1), 7))


def test_scipy_side_of_the_ks_p_value_is_memoized_bit_for_bit(monkeypatch):
    # windows of at most 140 values: scipy's Durbin matrix (n x^2 <= 0.754693) and its
    # x >= 0.5 branch, evaluated one by one; the memo returns scipy's own values, and
    # stays bounded
    monkeypatch.setattr(_ks, "_memo", {})
    monkeypatch.setattr(_ks, "MEMO_SIZE", 50)
    rng = np.random.default_rng(9)
    n = rng.choice([5.0, 50.0, 98.0, 140.0], size=40)

    def scipy_side(digits):
        durbin = rng.uniform(1.0, 0.99 * np.sqrt(0.754693 * n)) / n
        return np.round(np.where(rng.random(40) < 0.5, durbin, rng.uniform(0.5, 0.99, size=40)), digits)

    x = scipy_side(3)
    expected = np.array([stats.kstwo.sf(a, b) for a, b in zip(x, n, strict=True)])
    first = _ks.kstwo_sf(x, n)
    again = _ks.kstwo_sf(x, n)  # from the memo
    assert first.tobytes() == expected.tobytes() and again.tobytes() == expected.tobytes()
    more = scipy_side(4)
    assert (
        _ks.kstwo_sf(more, n).tobytes()
        == np.array([stats.kstwo.sf(a, b) for a, b in zip(more, n, strict=True)]).tobytes()
    )
    assert len(_ks._memo) == 50


# ---- small windows: Pomeranz's recursion, vectorized (issue 16) ------------------------


def _pomeranz_grid(n):
    """x across scipy's Pomeranz branch at n: evenly, on the lattice k / n and beside it."""
    low, high = max(np.sqrt(0.754693 / n), 1.0 / n), min(np.sqrt(4.0 / n), 0.5)
    lattice = np.arange(n) / n
    x = np.r_[np.linspace(low, high, 25), lattice, np.nextafter(lattice, 1.0), np.nextafter(lattice, 0.0)]
    t = n * x
    return x[(t * x > 0.754693) & (t * x <= 4.0) & (t > 1.0) & (t < n - 1) & (x < 0.5)]


def _exact_pomeranz_sf(n, x):
    """scipy's ``_kolmogn_Pomeranz`` in rational arithmetic (its float64 weight ratios)."""
    from fractions import Fraction

    from scipy.stats._ksstats import _pomeranz_compute_j1j2

    t = n * x
    ll = math.floor(t)
    f = t - ll
    g = min(f, 1.0 - f)
    ceilf, roundf = int(f > 0), int(f > 0.5)
    npwrs = 2 * (ll + 1)
    powers = []
    for ratio in (g / n, 2 * g / n, (1 - 2 * g) / n):
        sequence = [Fraction(1)]
        for m in range(1, npwrs):
            sequence.append(sequence[-1] * Fraction(ratio) / m)
        powers.append(sequence)
    row = {0: Fraction(1)}
    for i in range(1, 2 * n + 2):
        j1, j2 = _pomeranz_compute_j1j2(i, n, ll, ceilf, roundf)
        weights = powers[0] if i in (1, 2 * n + 1) else powers[1 if i % 2 else 2]
        row = {
            j: sum((v * weights[j - k] for k, v in row.items() if 0 <= j - k < npwrs), Fraction(0))
            for j in range(j1, j2 + 1)
        }
    return float(1 - row.get(n, Fraction(0)) * math.factorial(n))


def test_kstwo_sf_pomeranz_branch_matches_scipy_on_a_grid():
    # scipy's own float64 rows are off by up to ~6e-12 relative at the branch's smallest
    # p-values (~6e-4, where 1 - CDF loses three digits); this one is within ~1e-14
    sizes = [*range(3, 16), 20, 37, 50, 64, 98, 99, 116, 123, 140]
    x = np.concatenate([_pomeranz_grid(n) for n in sizes])
    n = np.concatenate([np.full(len(_pomeranz_grid(n)), float(n)) for n in sizes])
    expected = stats.kstwo.sf(x, n)
    got = _ks.kstwo_sf(x, n)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=0)
    np.testing.assert_array_equal(_ks.pomeranz_sf(n, x), got)
    # an element's value does not depend on its group (the memo relies on it)
    some = np.flatnonzero(n == 98.0)
    alone = np.array([_ks.pomeranz_sf(n[i : i + 1], x[i : i + 1])[0] for i in some])
    assert alone.tobytes() == got[some].tobytes()


def test_kstwo_sf_pomeranz_branch_is_exact_where_scipy_rounds():
    # the worst points of their n on the grid (scipy off by 1e-12 and 3e-12 relative), in
    # longdouble, and one in float64 (p = 0.043 >= 20e-4)
    points = [(20, 0.4446584489412322), (58, 0.2581115645501236), (20, 0.3)]
    rtol = 1e-13 if np.finfo(np.longdouble).eps < 1e-18 else 3e-11  # 80-bit or double
    for n, x in points:
        got = _ks.kstwo_sf(np.array([x]), np.array([float(n)]))[0]
        assert got == pytest.approx(_exact_pomeranz_sf(n, x), rel=rtol, abs=0), (n, x)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 140), u=st.floats(0.0, 1.0), others=st.integers(0, 4))
def test_kstwo_sf_small_n_branches_match_scipy(n, u, others):
    # u spans n x^2 from the Durbin matrix's end to past Pomeranz's (0.5 .. 6): scipy's
    # x >= 0.5, Durbin, Pomeranz and special.smirnov branches, in one call with others;
    # alone afterwards (from the memo) the same bits
    x0 = min(np.sqrt((0.5 + 5.5 * u) / n), 0.75)
    rng = np.random.default_rng(n)
    x = np.r_[x0, rng.uniform(0.0, 0.6, size=others)]
    sizes = np.r_[float(n), rng.integers(2, 141, size=others).astype(float)]
    expected = stats.kstwo.sf(x, sizes)
    got = _ks.kstwo_sf(x, sizes)
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=0)
    t = sizes * x
    scipy_or_smirnov = (t * x <= 0.754693) | (t * x > 4.0) | (t <= 1.0) | (t >= sizes - 1) | (x >= 0.5)
    assert got[scipy_or_smirnov].tobytes() == expected[scipy_or_smirnov].tobytes()
    alone = np.array([_ks.kstwo_sf(x[i : i + 1], sizes[i : i + 1])[0] for i in range(len(x))])
    assert alone.tobytes() == got.tobytes()


# ---- small windows at the batch's cost: the Durbin matrix, blocks, deferral (issue 16) --


def test_kstwo_sf_durbin_branch_is_scipys_bit_for_bit():
    # every n from 2 to 140 across scipy's Durbin-matrix branch (1 < n x, n x^2 <=
    # 0.754693), its ends included, all in one call: scipy's own arithmetic, stacked
    rng = np.random.default_rng(5)
    xs, ns = [], []
    for n in range(2, 141):
        low, high = 1.0 / n, np.sqrt(0.754693 / n)
        if high <= low:
            continue
        x = np.r_[rng.uniform(low, high, 12), np.nextafter(low, 1.0), high, np.arange(2, n) / n]
        x = x[(n * x > 1.0) & (n * x * x <= 0.754693) & (x < 0.5)]
        xs.append(x)
        ns.append(np.full(len(x), float(n)))
    x, n = np.concatenate(xs), np.concatenate(ns)
    expected = stats.kstwo.sf(x, n)
    assert _ks.durbin_sf(n, x).tobytes() == expected.tobytes()
    assert _ks.kstwo_sf(x, n).tobytes() == expected.tobytes()
    some = rng.choice(len(x), size=20, replace=False)
    alone = np.array([_ks.durbin_sf(n[i : i + 1], x[i : i + 1])[0] for i in some])
    assert alone.tobytes() == expected[some].tobytes()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), blocks=st.integers(1, 6))
def test_kstwo_sf_blocks_equal_calls_block_by_block(seed, blocks):
    # the n > 140 branches pad their series to the widest element of the block: one call
    # with blocks gives each block's own call's values, bit for bit, on every branch
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 30))
    n = rng.choice([50.0, 98.0, 141.0, 833.0, 909.0, 3000.0, 20_000.0], size=k)
    # n x^2 across Pelz-Good, Smirnov's sum and the zero branch (scipy's own Durbin
    # matrix at n > 140, n x^1.5 <= 1.4, is slow and has no series)
    squared = rng.choice([rng.uniform(0.35, 2.2), rng.uniform(2.2, 30.0), 400.0], size=k)
    x = np.minimum(np.sqrt(squared / n) * rng.uniform(0.95, 1.05, size=k), 0.7)
    block = rng.integers(0, blocks, size=k)
    together = _ks.kstwo_sf(x, n, block)
    for b in np.unique(block):
        mine = block == b
        assert together[mine].tobytes() == _ks.kstwo_sf(x[mine], n[mine]).tobytes()
    np.testing.assert_allclose(together, stats.kstwo.sf(x, n), rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([30, 60, 100, 140, 400]), w=st.integers(1, 8))
def test_numeric_drift_windows_unextended_differs_only_where_listed(seed, n, w):
    # extended=False skips the long-double recomputation: the values it lists are within
    # 1e-10 relative of the exact ones, every other attribute and value is exact, bit for bit
    rng = np.random.default_rng(seed)
    reference = NumericReference.fit(rng.normal(size=(int(rng.integers(500, 3_000)), 4)))
    windows = rng.normal(rng.choice([0.0, 0.25, 0.35]), 1.0, size=(w, n, 4))
    _ks._memo.clear()  # a cache: no exact value known beforehand
    fast = statistics.numeric_drift_windows(reference, windows, extended=False)
    exact = statistics.numeric_drift_windows(reference, windows)
    listed = statistics.unextended_p_values(reference, fast)
    assert listed.shape == (w, 4)
    for name, value in _fields(exact).items():
        if name != "ks_p_value":
            assert getattr(fast, name).tobytes() == value.tobytes(), name
    assert fast.ks_p_value[~listed].tobytes() == exact.ks_p_value[~listed].tobytes()
    np.testing.assert_allclose(fast.ks_p_value[listed], exact.ks_p_value[listed], rtol=1e-10, atol=0)
    # what extended=True recomputes is listed
    assert np.all(listed[_ks.extended_elements(exact.ks_statistic, reference.count, exact.n, exact.ks_p_value)])


def test_unextended_p_values_are_listed_and_not_memoized(monkeypatch):
    # p-values of small windows between ~4e-4 and n * 1e-4: the long-double branch
    monkeypatch.setattr(_ks, "_memo", {})
    n = np.full(6, 98.0)
    x = np.sqrt(np.linspace(3.2, 3.9, 6) / 98.0)
    fast = _ks.kstwo_sf(x, n, extended=False)
    assert not _ks._memo  # float64-only values never enter the memo
    exact = _ks.kstwo_sf(x, n)
    assert len(_ks._memo) == 6
    assert np.all(exact < 98.0 * _ks.POMERANZ_EXTENDED_BELOW) and np.any(fast != exact)
    np.testing.assert_allclose(fast, exact, rtol=1e-10, atol=0)
    np.testing.assert_allclose(exact, stats.kstwo.sf(x, n), rtol=1e-11, atol=0)
    assert _ks.kstwo_sf(x, n, extended=False).tobytes() == exact.tobytes()  # from the memo
