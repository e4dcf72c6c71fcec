from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftline.detectors.homogeneity import bucket_counts, chi2_homogeneity


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_matches_scipy_chi2_contingency(d, k, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 30, size=(d, k)).astype(float)
    b = rng.integers(0, 30, size=(d, k)).astype(float)
    a[:, -1] = 0  # a bucket only the window may see ("other")
    stat, p = chi2_homogeneity(a, b)
    for j in range(d):
        table = np.array([a[j], b[j]])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
            assert stat[j] == 0 and p[j] == 1
            continue
        ref = stats.chi2_contingency(table, correction=False)
        np.testing.assert_allclose(stat[j], ref.statistic, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(p[j], ref.pvalue, rtol=1e-9, atol=1e-300)


def test_bucket_counts_ignores_missing_and_pads():
    codes = np.array([[0, 1], [0, -1], [2, 1], [1, 0]])
    counts = bucket_counts(codes, np.array([3, 2]))
    assert counts.tolist() == [[2, 1, 1], [1, 2, 0]]


def test_same_distribution_is_not_significant_often():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5))
    pvals = []
    for _ in range(300):
        a = rng.multinomial(5000, p)[None, :]
        b = rng.multinomial(1000, p)[None, :]
        pvals.append(chi2_homogeneity(a, b)[1][0])
    assert 0.02 < np.mean(np.array(pvals) < 0.05) < 0.09
