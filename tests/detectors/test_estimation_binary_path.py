"""The binary path of the expected metrics gives the generic (one-vs-rest) path's floats.

expected_binary_metrics computes the positive class's metrics on 1-D arrays
(_binary_class_metrics) rather than through _class_metrics on (n, 1) arrays; both must
give the same floats, bit for bit, since the results feed alarm thresholds, gauges and
checkpoints.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.detectors.estimation import _binary_class_metrics, _class_metrics, _is_code


def _same(a: float, b: float) -> bool:
    """The same float, bit for bit (any NaN is NaN: the metric is undefined either way)."""
    return (np.isnan(a) and np.isnan(b)) or np.float64(a).tobytes() == np.float64(b).tobytes()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 400),  # an empty window never gets here (expected_binary_metrics returns first)
    st.integers(0, 2**32 - 1),
    st.sampled_from(["uniform", "rounded", "labels", "zeros"]),
    st.floats(0.0, 1.5),
)
def test_binary_metrics_equal_the_generic_path(n, seed, kind, threshold):
    rng = np.random.default_rng(seed)
    p = {
        "uniform": lambda: rng.uniform(size=n),
        "rounded": lambda: np.round(rng.uniform(size=n), 1),
        "labels": lambda: (rng.uniform(size=n) < 0.5).astype(np.float64),
        "zeros": lambda: np.zeros(n),
    }[kind]()
    scores = np.round(rng.uniform(size=n), 2)
    positive = scores >= threshold
    generic = _class_metrics(p[:, None], positive[:, None], scores[:, None])
    binary = _binary_class_metrics(p, positive, scores)
    bernoulli = p * (1.0 - p)
    assert list(binary) == list(generic)
    for name, (values, gradients) in generic.items():
        value, gradient = binary[name]
        assert _same(value, values[0])
        variance = np.nan if gradient is None else float(np.sum(gradient**2 * bernoulli))
        assert _same(variance, float(np.sum(gradients[:, 0] ** 2 * bernoulli)))


def test_is_code_is_isin_arange():
    values = np.array([0.0, 1.0, 2.0, -0.0, -1.0, 0.5, np.nan, np.inf, -np.inf, 3.0, 2.9999999])
    for n in (1, 2, 3, 4):
        assert _is_code(values, n).tolist() == np.isin(values, np.arange(n)).tolist()
