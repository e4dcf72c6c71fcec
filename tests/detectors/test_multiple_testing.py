"""Multiple-testing corrections against scipy and plain reference code."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftline.detectors import multiple_testing
from driftline.detectors.multiple_testing import benjamini_hochberg, bonferroni, reject

p_or_nan = st.one_of(st.floats(0, 1), st.just(0.0), st.just(1.0), st.just(float("nan")))


@settings(deadline=None, max_examples=200)
@given(st.lists(p_or_nan, min_size=0, max_size=30))
def test_against_scipy_and_reference(p):
    p = np.array(p, dtype=float)
    tested = ~np.isnan(p)
    bh, bonf = benjamini_hochberg(p), bonferroni(p)
    assert (np.isnan(bh) == ~tested).all() and (np.isnan(bonf) == ~tested).all()
    if tested.any():
        np.testing.assert_allclose(
            bh[tested], stats.false_discovery_control(p[tested], method="bh"), rtol=1e-12, atol=0
        )
        np.testing.assert_allclose(bonf[tested], np.minimum(p[tested] * tested.sum(), 1.0))
    for alpha in (0.01, 0.05, 0.2):
        mask = reject(p, alpha=alpha, method="bh")
        # step-up reference: reject the k smallest, k = max{i : p_(i) <= i alpha / m}
        m = tested.sum()
        ranked = np.sort(p[tested])
        # (p_(i) m / i <= alpha, the same inequality in the rounding of adjusted p-values)
        ok = np.flatnonzero(ranked * m / np.arange(1, m + 1) <= alpha)
        k = ok[-1] + 1 if ok.size else 0
        assert mask.sum() == k and not mask[~tested].any()
        if k:
            assert (p[mask] <= ranked[k - 1]).all()
        assert (reject(p, alpha, "bonferroni") == (tested & (p * m <= alpha))).all()


def test_two_dimensional_families_are_rowwise():
    rng = np.random.default_rng(0)
    p = rng.random((4, 6))
    p[1, :3] = np.nan
    p[3, :] = np.nan
    bh = benjamini_hochberg(p)
    for row in range(4):
        np.testing.assert_array_equal(bh[row], benjamini_hochberg(p[row]))
    assert not reject(p)[3].any()


def test_validation():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bonferroni([0.5, 1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        benjamini_hochberg([float("inf")])
    with pytest.raises(ValueError, match="method"):
        reject([0.1], method="holm")
    with pytest.raises(ValueError, match="alpha"):
        reject([0.1], alpha=0)
    assert benjamini_hochberg([]).shape == (0,)


def test_docstring_examples():
    assert doctest.testmod(multiple_testing).failed == 0
