"""Label-free performance estimation (CBPE) against plain-loop oracles, and the
coverage of its bands on streams whose calibrated probabilities are known."""

from __future__ import annotations

import doctest
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import driftline.detectors.estimation
from driftline.detectors.estimation import (
    METRICS,
    IsotonicCalibrator,
    PerformanceEstimate,
    PerformanceEstimator,
    RegressionErrorEstimator,
    expected_binary_metrics,
    expected_multiclass_metrics,
    isotonic_fit,
)

Z95 = NormalDist().inv_cdf(0.975)


# ---- oracles written independently of the module ------------------------------------------


def naive_pav(values, weights):
    """Textbook pool-adjacent-violators: merge the first violating pair, rescan (O(n^2))."""
    blocks = [[v * w, w, 1] for v, w in zip(values, weights, strict=True)]  # weighted sum, weight, length
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] / blocks[i][1] > blocks[i + 1][0] / blocks[i + 1][1]:
            a, b = blocks[i], blocks.pop(i + 1)
            blocks[i] = [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
            i = 0
        else:
            i += 1
    out = []
    for total, weight, length in blocks:
        out += [total / weight] * length
    return out


def ratio(a, b):
    return a / b if b > 0 else math.nan


def oracle_binary(p, predicted, scores):
    """Expected confusion matrix and the area under the expected ROC curve, by loops."""
    n = len(p)
    tp = fp = fn = tn = 0.0
    for pj, pos in zip(p, predicted, strict=True):
        if pos:
            tp, fp = tp + pj, fp + 1 - pj
        else:
            fn, tn = fn + pj, tn + 1 - pj
    positives, negatives = sum(p), n - sum(p)
    pairs = 0.0
    for i in range(n):
        for j in range(n):
            k = 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
            pairs += p[i] * (1 - p[j]) * k
    return {
        "accuracy": (tp + tn) / n,
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": pairs / (positives * negatives) if positives > 0 and negatives > 0 else math.nan,
    }


def oracle_multiclass(probs, predicted, scores):
    """Accuracy and one-vs-rest macro averages over the classes where a metric is defined."""
    n, c = len(probs), len(probs[0])
    out = {"accuracy": sum(probs[j][predicted[j]] for j in range(n)) / n}
    per_class = [
        oracle_binary(
            [probs[j][k] for j in range(n)], [predicted[j] == k for j in range(n)], [scores[j][k] for j in range(n)]
        )
        for k in range(c)
    ]
    for name in METRICS[1:]:
        values = [m[name] for m in per_class if not math.isnan(m[name])]
        out[name] = sum(values) / len(values) if values else math.nan
    return out


def same(a, b, tol=1e-9):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


probability = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.9, 1.0])
score = st.sampled_from([0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95])


# ---- isotonic regression ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.0, 1.0, 2.0, 2.5, 3.0, -1.0]), st.sampled_from([1.0, 2.0, 0.5])),
        min_size=0,
        max_size=30,
    )
)
def test_pav_equals_naive_pav(rows):
    values = [v for v, _ in rows]
    weights = [w for _, w in rows]
    fitted = isotonic_fit(np.array(values), np.array(weights))
    assert np.allclose(fitted, naive_pav(values, weights), rtol=0, atol=1e-12)
    assert (np.diff(fitted) >= -1e-12).all()
    if rows:  # pooling keeps the weighted sum
        assert math.isclose(float(np.dot(fitted, weights)), float(np.dot(values, weights)), abs_tol=1e-9)


def test_pav_worst_case_ramp_and_input_untouched():
    values = np.r_[np.arange(300.0), -1.0]
    keep = values.copy()
    assert np.allclose(isotonic_fit(values), naive_pav(values.tolist(), [1.0] * values.size))
    assert np.array_equal(values, keep)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(score, st.integers(0, 1)), min_size=1, max_size=40),
    st.lists(st.floats(-1.0, 2.0), min_size=2, max_size=20),
)
def test_calibration_is_monotone_and_fits_pooled_ties(rows, probes):
    scores = np.array([s for s, _ in rows])
    labels = np.array([y for _, y in rows])
    cal = IsotonicCalibrator.fit(scores, labels)
    grid = np.sort(np.array(probes))
    out = cal.calibrate(grid)
    assert (np.diff(out) >= 0).all() and (out >= 0).all() and (out <= 1).all()
    # at the reference's scores: PAV of the per-score positive shares, weighted by counts
    distinct = sorted(set(scores.tolist()))
    shares = [labels[scores == s].mean() for s in distinct]
    counts = [float((scores == s).sum()) for s in distinct]
    assert np.allclose(cal.calibrate(np.array(distinct)), naive_pav(shares, counts), atol=1e-12)
    again = IsotonicCalibrator.from_state(json.loads(json.dumps(cal.state_dict())))
    assert again.calibrate(grid).tolist() == out.tolist()


def test_calibration_interpolates_between_knots_and_clips_outside():
    cal = IsotonicCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])  # pooled: 0, .5, .5, 1
    assert cal.knots_x.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert cal.calibrate([0.15, 0.35, 0.25]).tolist() == pytest.approx([0.25, 0.75, 0.5])
    assert cal.calibrate([-5.0, 5.0, np.nan]).tolist()[:2] == [0.0, 1.0]
    assert math.isnan(cal.calibrate([np.nan])[0])
    flat = IsotonicCalibrator.fit([0.1, 0.2, 0.3, 0.4, 0.5], [0, 0, 0, 0, 1])
    assert flat.knots_x.tolist() == [0.1, 0.4, 0.5]  # a flat piece keeps its two ends only


def test_calibration_edge_cases():
    assert IsotonicCalibrator.fit([0.3, 0.3, 0.3], [1, 0, 1]).calibrate([0.0, 0.3, 1.0]).tolist() == [2 / 3] * 3
    assert IsotonicCalibrator.fit([0.1, 0.9], [1, 1]).calibrate([0.5]).tolist() == [1.0]
    with pytest.raises(ValueError, match="0 or 1"):
        IsotonicCalibrator.fit([0.1, 0.9], [0, 2])
    with pytest.raises(ValueError, match="finite"):
        IsotonicCalibrator.fit([np.nan], [1])
    with pytest.raises(ValueError, match="strictly increasing"):
        IsotonicCalibrator(np.array([0.2, 0.1]), np.array([0.0, 1.0]))


# ---- expected metrics against the oracles ---------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(probability, st.booleans(), score), min_size=1, max_size=25))
def test_binary_metrics_equal_the_loop_oracle(rows):
    p, predicted, scores = (list(col) for col in zip(*rows, strict=True))
    got = expected_binary_metrics(np.array(p), np.array(predicted), np.array(scores))
    want = oracle_binary(p, predicted, scores)
    assert got.n == len(rows)
    for name in METRICS:
        band = getattr(got, name)
        assert same(band.value, want[name]), name
        if not math.isnan(band.value):
            assert band.low <= band.value <= band.high


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 4).flatmap(
        lambda c: st.lists(
            st.tuples(
                st.lists(st.sampled_from([0.0, 1.0, 2.0, 5.0]), min_size=c, max_size=c),
                st.integers(0, c - 1),
                st.lists(score, min_size=c, max_size=c),
            ),
            min_size=1,
            max_size=15,
        )
    )
)
def test_multiclass_metrics_equal_the_loop_oracle(rows):
    weights = np.array([w for w, _, _ in rows])
    weights[weights.sum(axis=1) == 0, 0] = 1.0
    probs = (weights / weights.sum(axis=1, keepdims=True)).tolist()
    predicted = [k for _, k, _ in rows]
    scores = [s for _, _, s in rows]
    got = expected_multiclass_metrics(np.array(probs), np.array(predicted), np.array(scores))
    want = oracle_multiclass(probs, predicted, scores)
    for name in METRICS:
        assert same(getattr(got, name).value, want[name]), name


def delta_half_width(metric, p, predicted, scores, categorical=False):
    """z * sqrt(sum_j Var(label_j) g_j^2), g by central differences of the loop oracle."""
    eps = 1e-6
    variance = 0.0
    if not categorical:
        for j in range(len(p)):
            up, down = list(p), list(p)
            up[j] += eps
            down[j] -= eps
            g = (oracle_binary(up, predicted, scores)[metric] - oracle_binary(down, predicted, scores)[metric]) / (
                2 * eps
            )
            variance += g * g * p[j] * (1 - p[j])
        return Z95 * math.sqrt(variance)
    c = len(p[0])
    for j in range(len(p)):
        g = []
        for k in range(c):
            up, down = [list(r) for r in p], [list(r) for r in p]
            up[j][k] += eps
            down[j][k] -= eps
            g.append(
                (oracle_multiclass(up, predicted, scores)[metric] - oracle_multiclass(down, predicted, scores)[metric])
                / (2 * eps)
            )
        mean = sum(gk * pk for gk, pk in zip(g, p[j], strict=True))
        variance += sum(gk * gk * pk for gk, pk in zip(g, p[j], strict=True)) - mean**2
    return Z95 * math.sqrt(max(variance, 0.0))


def test_bands_are_the_delta_method_of_the_oracle():
    rng = np.random.default_rng(3)
    p = rng.uniform(0.2, 0.8, size=30)
    scores = np.round(rng.uniform(size=30), 1)  # with ties
    predicted = p >= 0.5
    got = expected_binary_metrics(p, predicted, scores)
    for name in METRICS:
        want = delta_half_width(name, p.tolist(), predicted.tolist(), scores.tolist())
        assert unclipped_half_width(getattr(got, name)) == pytest.approx(want, rel=1e-4), name
    probs = rng.dirichlet([2.0, 2.0, 2.0], size=20)
    scores3 = np.round(rng.uniform(size=(20, 3)), 1)
    codes = probs.argmax(axis=1)
    got = expected_multiclass_metrics(probs, codes, scores3)
    for name in METRICS:
        want = delta_half_width(name, probs.tolist(), codes.tolist(), scores3.tolist(), categorical=True)
        assert unclipped_half_width(getattr(got, name)) == pytest.approx(want, rel=1e-4), name


def unclipped_half_width(band):
    """The band's half-width from an end not clipped to [0, 1]."""
    assert band.low > 0 or band.high < 1
    return band.high - band.value if band.high < 1 else band.value - band.low


def realized_loops(labels, predicted, scores):
    """Realized binary metrics by counting."""
    tp = sum(1 for y, q in zip(labels, predicted, strict=True) if y == 1 and q)
    fp = sum(1 for y, q in zip(labels, predicted, strict=True) if y == 0 and q)
    fn = sum(1 for y, q in zip(labels, predicted, strict=True) if y == 1 and not q)
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return {
        "accuracy": sum(1 for y, q in zip(labels, predicted, strict=True) if y == int(q)) / len(labels),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": wins / (len(pos) * len(neg)) if pos and neg else math.nan,
    }


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), score), min_size=2, max_size=30))
def test_realized_metrics_are_counts_with_zero_width_bands(rows):
    labels = [y for y, _ in rows]
    scores = [s for _, s in rows]
    if len(set(labels)) < 2:
        labels[0] = 1 - labels[1]
    est = PerformanceEstimator(threshold=0.5).fit(np.array(scores), np.array(labels))
    got = est.realized(np.array(scores), np.array(labels))
    want = realized_loops(labels, [s >= 0.5 for s in scores], scores)
    for name in METRICS:
        band = getattr(got, name)
        assert same(band.value, want[name]), name
        assert same(band.low, band.value) and same(band.high, band.value)
    assert est.reference == got


# ---- coverage on streams with known probabilities -------------------------------------------


def calibrated_windows(rng, a, b, size, count):
    """Windows of perfectly calibrated scores (Beta(a, b)) with labels drawn from them."""
    p = rng.beta(a, b, size=(count, size))
    return p, (rng.uniform(size=p.shape) < p).astype(float)


@settings(max_examples=12, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.floats(0.3, 3.0), st.floats(0.3, 3.0), st.sampled_from([200, 500, 2000]))
def test_estimate_band_covers_realized_accuracy_on_calibrated_scores(seed, a, b, size):
    """Calibration 'none' on perfectly calibrated scores: the expected accuracy is exact
    (mean of max(p, 1 - p)) and its 95% band holds the realized accuracy in >= 90% of windows."""
    rng = np.random.default_rng(seed)
    ref_p, ref_y = calibrated_windows(rng, 1.0, 1.0, 4000, 1)
    est = PerformanceEstimator(calibration="none").fit(ref_p[0], ref_y[0])
    p, y = calibrated_windows(rng, a, b, size, 200)
    inside = 0
    for window, labels in zip(p, y, strict=True):
        e = est.estimate(window)
        assert e.accuracy.value == pytest.approx(np.maximum(window, 1 - window).mean(), abs=1e-12)
        inside += e.accuracy.low <= est.realized(window, labels).accuracy.value <= e.accuracy.high
    assert inside >= 0.9 * len(p)


def test_isotonic_estimates_track_known_probabilities_under_covariate_shift():
    """A miscalibrated model (score = p**2) calibrated on a labelled reference: the
    estimates follow the realized metrics when the traffic moves, and the bands hold
    them in >= 90% of windows for every metric."""
    rng = np.random.default_rng(11)
    ref_p, ref_y = calibrated_windows(rng, 1.0, 1.0, 20_000, 1)
    est = PerformanceEstimator(threshold=0.25).fit(ref_p[0] ** 2, ref_y[0])
    assert est.reference.accuracy.value == pytest.approx(0.75, abs=0.01)
    for a, b in ((1.0, 1.0), (3.0, 3.0), (0.5, 0.5)):  # none, less confident, more confident
        p, y = calibrated_windows(rng, a, b, 1000, 100)
        inside = dict.fromkeys(METRICS, 0)
        errors = []
        for window, labels in zip(p, y, strict=True):
            e = est.estimate(window**2)
            real = est.realized(window**2, labels)
            errors.append(abs(e.accuracy.value - real.accuracy.value))
            assert e.accuracy.value == pytest.approx(np.maximum(window, 1 - window).mean(), abs=0.02)
            for name in METRICS:
                band = getattr(e, name)
                inside[name] += band.low <= getattr(real, name).value <= band.high
        assert np.mean(errors) < 0.02
        assert all(v >= 90 for v in inside.values()), (a, b, inside)


def test_multiclass_bands_cover_realized_metrics():
    rng = np.random.default_rng(7)
    c = 3

    def draw(size, concentration):
        probs = rng.dirichlet([concentration] * c, size=size)
        labels = (rng.uniform(size=(size, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
        return probs, labels

    ref_probs, ref_labels = draw(20_000, 0.7)
    est = PerformanceEstimator().fit(np.sqrt(ref_probs), ref_labels)  # miscalibrated, argmax unchanged
    calibrated = est.calibrate(np.sqrt(ref_probs[:5]))
    assert np.allclose(calibrated.sum(axis=1), 1.0)
    inside = dict.fromkeys(METRICS, 0)
    for _ in range(100):
        probs, labels = draw(800, 1.5)
        e = est.estimate(np.sqrt(probs))
        real = est.realized(np.sqrt(probs), labels)
        for name in METRICS:
            band = getattr(e, name)
            inside[name] += band.low <= getattr(real, name).value <= band.high
    assert all(v >= 90 for v in inside.values()), inside


# ---- the estimator: edge cases and state ------------------------------------------------------


def test_single_class_reference_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="at least two classes"):
        PerformanceEstimator().fit([0.2, 0.7, 0.9], [1, 1, 1])
    with pytest.raises(ValueError, match="at least two classes"):
        PerformanceEstimator().fit([[0.2, 0.8], [0.6, 0.4]], [1, np.nan])


def test_constant_scores():
    est = PerformanceEstimator().fit(np.full(100, 0.7), np.r_[np.ones(70), np.zeros(30)])
    e = est.estimate(np.full(50, 0.7))
    assert e.accuracy.value == pytest.approx(0.7)
    assert e.precision.value == pytest.approx(0.7)
    assert e.recall.value == pytest.approx(1.0)
    assert e.roc_auc.value == pytest.approx(0.5)  # every pair tied
    assert est.estimate(np.full(10, 0.1)).accuracy.value == pytest.approx(0.3)  # all negative predictions


def test_empty_window_and_non_finite_scores():
    est = PerformanceEstimator().fit(np.linspace(0, 1, 50), np.r_[np.zeros(25), np.ones(25)])
    empty = est.estimate(np.empty(0))
    assert empty.n == 0 and all(math.isnan(v) for t in empty.as_dict().values() for v in t)
    assert not empty.below(est.reference, 0.0)
    e = est.estimate(np.array([0.9, np.nan, np.inf, 0.1]))
    assert (e.n, e.skipped) == (2, 2)
    no_positive = est.estimate(np.array([0.1, 0.2]))
    assert math.isnan(no_positive.precision.value) and no_positive.accuracy.value == 1.0
    realized = est.realized(np.array([0.9, 0.8, np.nan]), np.array([1, 2, 0]))
    assert (realized.n, realized.skipped, realized.accuracy.value) == (1, 2, 1.0)
    with pytest.raises(ValueError, match="multi-class"):
        est.estimate(np.array([0.5]), predictions=np.array([1]))


def test_multiclass_predictions_renormalisation_and_skips():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]] * 20)
    labels = np.array([0, 1, 2] * 20)
    est = PerformanceEstimator().fit(probs, labels)
    assert est.n_classes == 3
    scores = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, np.nan], [0.0, 0.0, 0.0]])
    p = est.calibrate(scores)
    assert p[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert p[2].tolist() == pytest.approx([1 / 3] * 3)  # every class calibrated to 0: uniform
    e = est.estimate(scores)
    assert (e.n, e.skipped) == (2, 1)
    given_predictions = est.estimate(scores[:1], predictions=np.array([1]))
    assert given_predictions.accuracy.value == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        est.estimate(np.zeros(3))


def test_below_compares_the_band_with_the_reference():
    ref = PerformanceEstimate(100, 0, *[driftline.detectors.estimation.Band(0.9, 0.9, 0.9)] * 5)
    low = PerformanceEstimate(100, 0, *[driftline.detectors.estimation.Band(0.7, 0.65, 0.78)] * 5)
    assert low.below(ref, 0.1) and not low.below(ref, 0.15)
    with pytest.raises(ValueError, match="metric"):
        low.below(ref, 0.1, metric="auc")


@pytest.mark.parametrize("multiclass", [False, True])
def test_state_round_trip_is_json_and_gives_the_same_estimates(multiclass):
    rng = np.random.default_rng(4)
    if multiclass:
        scores = rng.dirichlet([1.0, 1.0, 1.0], size=2000)
        labels = scores.argmax(axis=1)
        labels[:300] = rng.integers(0, 3, size=300)
    else:
        scores = rng.uniform(size=2000)
        labels = (rng.uniform(size=2000) < scores).astype(int)
    est = PerformanceEstimator(threshold=0.4, confidence=0.9).fit(scores, labels)
    keep = scores.copy()
    again = PerformanceEstimator.from_state(json.loads(json.dumps(est.state_dict())))
    assert again.estimate(scores[:700]) == est.estimate(scores[:700])
    assert again.reference == est.reference
    assert np.array_equal(scores, keep)
    fresh = PerformanceEstimator()
    assert not fresh.fitted
    with pytest.raises(RuntimeError, match="fit"):
        fresh.estimate(scores)
    assert PerformanceEstimator.from_state(fresh.state_dict()).fitted is False


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"threshold": math.nan}, "threshold"),
        ({"confidence": 1.0}, "confidence"),
        ({"calibration": "platt"}, "calibration"),
    ],
)
def test_parameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerformanceEstimator(**kwargs)


# ---- regression --------------------------------------------------------------------------------


def test_regression_error_estimate_against_loops_and_coverage():
    rng = np.random.default_rng(9)
    pred = rng.uniform(0, 10, size=10_000)
    target = pred + rng.normal(scale=0.2 + 0.2 * pred)
    est = RegressionErrorEstimator(n_bins=5).fit(pred, target)
    assert est.reference.mae.value == pytest.approx(np.mean(np.abs(target - pred)))
    edges = np.quantile(pred, [0.2, 0.4, 0.6, 0.8], method="inverted_cdf")
    window = rng.uniform(6, 10, size=400)
    bin_mae = []
    for k in range(5):
        lo = -math.inf if k == 0 else edges[k - 1]
        hi = math.inf if k == 4 else edges[k]
        inside = [abs(t - q) for q, t in zip(pred, target, strict=True) if lo < q <= hi]
        bin_mae.append(sum(inside) / len(inside))
    want = np.mean([bin_mae[int(np.searchsorted(edges, q, side="left"))] for q in window])
    assert est.estimate(window).mae.value == pytest.approx(want)
    covered = 0
    for _ in range(100):
        w = rng.uniform(5, 10, size=500)
        t = w + rng.normal(scale=0.2 + 0.2 * w)
        e = est.estimate(w)
        realized_mae = np.mean(np.abs(t - w))
        covered += e.mae.low <= realized_mae <= e.mae.high
        assert e.mae.value > est.reference.mae.value  # predictions moved to where errors are larger
    assert covered >= 85  # bins are coarse: the error also varies within a bin
    empty = est.estimate(np.array([np.nan]))
    assert (empty.n, empty.skipped) == (0, 1) and math.isnan(empty.mae.value)
    again = RegressionErrorEstimator.from_state(json.loads(json.dumps(est.state_dict())))
    assert again.estimate(window) == est.estimate(window) and again.reference == est.reference


def test_docstring_examples():
    assert doctest.testmod(driftline.detectors.estimation).failed == 0
