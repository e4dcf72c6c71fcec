"""Window metrics against river.metrics and plain reference code."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import metrics as river_metrics

from driftline.detectors import metrics
from driftline.detectors.metrics import classification_metrics, regression_metrics


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


# ---- multi-class metrics (issue 10, item 8) ------------------------------------------------

from collections import Counter  # noqa: E402

from driftline.detectors.metrics import multiclass_metrics  # noqa: E402


@st.composite
def multiclass_windows(draw):
    """A window of k classes: codes with missing values, and a (w, k) score matrix with
    ties and missing entries."""
    k = draw(st.integers(2, 5))
    w = draw(st.integers(0, 40))
    code = st.one_of(*[st.integers(0, k - 1).map(float)] * 6, st.just(math.nan))
    y_true = np.array(draw(st.lists(code, min_size=w, max_size=w)), dtype=float)
    y_pred = np.array(draw(st.lists(code, min_size=w, max_size=w)), dtype=float)
    entry = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0, 1), st.floats(0, 1), st.just(math.nan))
    scores = np.array(
        draw(st.lists(st.lists(entry, min_size=k, max_size=k), min_size=w, max_size=w)), dtype=float
    ).reshape(w, k)
    return k, y_true, y_pred, scores


def brute_force_ovr_auc(y_true, scores, k):
    """Mean pairwise one-vs-rest AUC over the classes with a positive and a negative,
    on the rows with a label and every score finite."""
    rows = np.isfinite(y_true) & np.isfinite(scores).all(axis=1)
    aucs = [pairwise_auc(y_true[rows] == c, scores[rows, c]) for c in range(k)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return (sum(aucs) / len(aucs) if aucs else math.nan), len(aucs), int(rows.sum())


@settings(deadline=None, max_examples=200)
@given(multiclass_windows(), st.integers(0, 4))
def test_multiclass_against_river_and_pairwise_auc(window, max_classes):
    k, y_true, y_pred, scores = window
    got = multiclass_metrics(y_true, y_pred, scores, max_classes=max_classes)
    valid = np.isfinite(y_true) & np.isfinite(y_pred)
    t, p = y_true[valid].astype(int), y_pred[valid].astype(int)
    assert got["n"] == valid.sum() and got["skipped"] == (~valid).sum()
    assert got["classes"] == len(set(t) | set(p))
    river_names = {
        "macro_precision": "MacroPrecision",
        "macro_recall": "MacroRecall",
        "macro_f1": "MacroF1",
        "micro_precision": "MicroPrecision",
        "micro_recall": "MicroRecall",
        "micro_f1": "MicroF1",
    }
    references = {name: getattr(river_metrics, cls)() for name, cls in river_names.items()}
    for a, b in zip(t.tolist(), p.tolist()):
        for metric in references.values():
            metric.update(a, b)
    for name, metric in references.items():
        if valid.any():
            assert got[name] == pytest.approx(metric.get(), abs=1e-12), name
        else:  # river says 0.0 for no evidence; driftline says NaN, as classification_metrics does
            assert math.isnan(got[name]), name

    auc, n_classes_auc, n_rows = brute_force_ovr_auc(y_true, scores, k)
    assert got["roc_auc_classes"] == n_classes_auc and got["roc_auc_n"] == n_rows
    assert got["roc_auc_skipped"] == int((np.isfinite(y_true) & ~np.isfinite(scores).all(axis=1)).sum())
    assert got["roc_auc"] == pytest.approx(auc, abs=1e-12, nan_ok=True)

    support = Counter(t.tolist())
    top = sorted(support, key=lambda c: (-support[c], c))[:max_classes]
    assert list(got["class_support"].items()) == [(c, support[c]) for c in top]
    hits = Counter(a for a, b in zip(t.tolist(), p.tolist()) if a == b)
    assert list(got["class_recall"]) == top
    assert all(got["class_recall"][c] == pytest.approx(hits[c] / support[c]) for c in top)


def test_multiclass_without_scores_and_edge_cases():
    no_scores = multiclass_metrics([0, 1, 2], [0, 2, 2])
    assert math.isnan(no_scores["roc_auc"]) and no_scores["roc_auc_n"] == 0 and no_scores["classes"] == 3
    assert no_scores["micro_f1"] == pytest.approx(2 / 3)
    empty = multiclass_metrics(np.empty(0), np.empty(0), np.empty((0, 3)))
    assert empty["n"] == 0 and math.isnan(empty["macro_f1"]) and math.isnan(empty["roc_auc"])
    assert empty["class_recall"] == {}
    one_class = multiclass_metrics([1, 1], [1, 0], [[0.2, 0.8], [0.6, 0.4]])
    assert math.isnan(one_class["roc_auc"]) and one_class["roc_auc_classes"] == 0
    # a label present only in y_pred counts in the macro average with recall 0 (river, scikit-learn)
    assert multiclass_metrics([0, 0], [0, 1])["macro_recall"] == pytest.approx((1 / 2 + 0) / 2)
    # a score row with a missing entry is skipped for ROC AUC only
    partial = multiclass_metrics([0, 1, 1], [0, 1, 0], [[0.9, 0.1], [0.2, np.nan], [0.3, 0.7]])
    assert partial["roc_auc_skipped"] == 1 and partial["roc_auc_n"] == 2 and partial["n"] == 3
    assert partial["roc_auc"] == 1.0


def test_multiclass_many_classes_is_bounded_and_exact():
    """200 classes, 3,000 rows: per-class recall is bounded by max_classes, and ROC AUC
    equals the pairwise count."""
    rng = np.random.default_rng(3)
    k, w = 200, 3_000
    y_true = rng.zipf(1.6, size=w).clip(max=k) - 1.0
    y_pred = np.where(rng.random(w) < 0.7, y_true, rng.integers(0, k, size=w)).astype(float)
    scores = np.round(rng.random((w, k)), 2)
    scores[np.arange(w), y_true.astype(int)] += 0.3
    got = multiclass_metrics(y_true, y_pred, scores, max_classes=5)
    assert len(got["class_recall"]) == 5
    assert list(got["class_support"].values()) == sorted(Counter(y_true.tolist()).values(), reverse=True)[:5]
    aucs = []
    for c in np.unique(y_true).astype(int):  # every pair compared, with numpy (3,000 rows)
        pos, neg = scores[y_true == c, c], scores[y_true != c, c]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        aucs.append(wins / (len(pos) * len(neg)))
    expected = np.mean(aucs)
    assert got["roc_auc"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y_true=[0, -1], y_pred=[0, 0]), "class codes"),
        (dict(y_true=[0, 1.5], y_pred=[0, 0]), "class codes"),
        (dict(y_true=[0, 1], y_pred=[0]), "shape of y_true"),
        (dict(y_true=[0, 3], y_pred=[0, 0], n_classes=3), "n_classes"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[0.5, 0.5]]), "scores"),
        (dict(y_true=[0, 1], y_pred=[0, 1], scores=[[0.5], [0.5]], n_classes=2), "columns"),
        (dict(y_true=[0, 1], y_pred=[0, 1], max_classes=-1), "max_classes"),
        (dict(y_true=["a"], y_pred=["b"]), "class codes"),
    ],
)
def test_multiclass_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        multiclass_metrics(**kwargs)
