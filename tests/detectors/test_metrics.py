"""Window metrics against river.metrics and plain reference code."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics as river_metrics

from detectors import metrics
from detectors.metrics import classification_metrics, regression_metrics


def pairwise_auc(labels, scores):
    """O(n^2) Mann-Whitney reference: P(positive outscores negative), ties count 1/2."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    if not pos or not neg:
        return math.nan
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def river_classification(y_true, y_pred, y_score, positive):
    # one-vs-rest as booleans: river's pos_val only works for True/1 labels
    acc = river_metrics.Accuracy()
    prec, rec, f1 = river_metrics.Precision(), river_metrics.Recall(), river_metrics.F1()
    loss = river_metrics.LogLoss()
    for t, p, s in zip(y_true, y_pred, y_score):
        acc.update(t, p)
        for metric in (prec, rec, f1):
            metric.update(bool(t == positive), bool(p == positive))
        loss.update(bool(t == positive), s)
    return acc.get(), prec.get(), rec.get(), f1.get(), loss.get()


labels = st.integers(0, 2)
rows = st.tuples(
    st.one_of(labels.map(float), st.just(math.nan)),
    labels.map(float),
    st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0, 1), st.just(math.nan)),
)


@settings(deadline=None, max_examples=150)
@given(st.lists(rows, min_size=0, max_size=40), st.sampled_from([1, 2]))
def test_classification_against_river_and_pairwise_auc(window, positive):
    if window:
        y_true, y_pred, y_score = (np.array(c, dtype=float) for c in zip(*window))
    else:
        y_true = y_pred = y_score = np.empty(0)
    got = classification_metrics(y_true, y_pred, y_score, positive=positive)
    valid = np.isfinite(y_true) & np.isfinite(y_pred) & np.isfinite(y_score)
    t, p, s = y_true[valid], y_pred[valid], y_score[valid]
    assert got["n"] == valid.sum() and got["skipped"] == (~valid).sum()
    if not valid.any():
        assert math.isnan(got["accuracy"]) and math.isnan(got["log_loss"])
        return
    acc, prec, rec, f1, loss = river_classification(t, p, s, positive)
    tp = np.sum((t == positive) & (p == positive))
    assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
    if np.sum(p == positive):
        assert got["precision"] == pytest.approx(prec, abs=1e-12)
    else:
        assert math.isnan(got["precision"])
    if np.sum(t == positive):
        assert got["recall"] == pytest.approx(rec, abs=1e-12)
    else:
        assert math.isnan(got["recall"])
    if tp or np.sum(p == positive) or np.sum(t == positive):
        assert got["f1"] == pytest.approx(f1, abs=1e-12)
    assert got["log_loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    expected_auc = pairwise_auc(t == positive, s)
    if math.isnan(expected_auc):
        assert math.isnan(got["roc_auc"])
    else:
        assert got["roc_auc"] == pytest.approx(expected_auc, abs=1e-12)


def test_stack_of_windows_equals_one_at_a_time():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 2, size=(6, 50)).astype(float)
    y_pred = rng.integers(0, 2, size=(6, 50)).astype(float)
    y_score = np.round(rng.random((6, 50)), 1)  # ties
    y_true[2, :10] = np.nan
    y_score[4, 5] = np.inf
    stacked = classification_metrics(y_true, y_pred, y_score)
    for k in range(6):
        single = classification_metrics(y_true[k], y_pred[k], y_score[k])
        for name, value in single.items():
            assert stacked[name][k] == pytest.approx(value, nan_ok=True, abs=1e-12), name
    without_scores = classification_metrics(y_true, y_pred)
    assert np.isnan(without_scores["roc_auc"]).all() and np.isnan(without_scores["log_loss"]).all()


def test_classification_edge_cases_and_validation():
    one_class = classification_metrics([1, 1, 1], [1, 0, 1], [0.9, 0.4, 0.8])
    assert math.isnan(one_class["roc_auc"])
    clipped = classification_metrics([1, 0], [1, 0], [0.0, 1.0])
    upper = 1 - 1e-15  # the clip bound as a float
    assert clipped["log_loss"] == pytest.approx(-(math.log(1e-15) + math.log(1 - upper)) / 2)
    with pytest.raises(ValueError, match="shape of y_true"):
        classification_metrics([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="numbers"):
        classification_metrics(["a"], ["b"])


regression_rows = st.tuples(
    st.one_of(st.floats(-100, 100), st.just(0.0), st.just(math.nan)),
    st.one_of(st.floats(-100, 100), st.just(math.inf)),
)


@settings(deadline=None, max_examples=150)
@given(st.lists(regression_rows, min_size=0, max_size=40))
def test_regression_against_river(window):
    y_true = np.array([r[0] for r in window], dtype=float)
    y_pred = np.array([r[1] for r in window], dtype=float)
    got = regression_metrics(y_true, y_pred)
    valid = np.isfinite(y_true) & np.isfinite(y_pred)
    assert got["n"] == valid.sum() and got["skipped"] == (~valid).sum()
    mae, rmse = river_metrics.MAE(), river_metrics.RMSE()
    for t, p in zip(y_true[valid], y_pred[valid]):
        mae.update(t, p)
        rmse.update(t, p)
    if not valid.any():
        assert math.isnan(got["mae"]) and math.isnan(got["rmse"]) and math.isnan(got["mape"])
        return
    assert got["mae"] == pytest.approx(mae.get(), rel=1e-9, abs=1e-12)
    assert got["rmse"] == pytest.approx(rmse.get(), rel=1e-9, abs=1e-12)
    nonzero = valid & (y_true != 0)
    assert got["mape_excluded"] == (valid & (y_true == 0)).sum()
    if nonzero.any():
        with np.errstate(over="ignore"):  # a subnormal y_true: the ratio is inf
            expected = np.mean(np.abs(y_true[nonzero] - y_pred[nonzero]) / np.abs(y_true[nonzero]))
        assert got["mape"] == pytest.approx(expected, rel=1e-12)
    else:
        assert math.isnan(got["mape"])


def test_regression_stack():
    rng = np.random.default_rng(2)
    y_true, y_pred = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
    stacked = regression_metrics(y_true, y_pred)
    for k in range(3):
        single = regression_metrics(y_true[k], y_pred[k])
        for name, value in single.items():
            assert stacked[name][k] == pytest.approx(value)


def test_docstring_examples():
    assert doctest.testmod(metrics).failed == 0
