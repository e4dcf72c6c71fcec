"""Speed of the vectorized two-sample statistics against a per-feature scipy loop.

Run: ``.venv/bin/python benchmarks/bench_statistics.py`` (``--repeats N``, default 30).

Numeric: 20 features, a 1,000-event window against a 10,000-event reference, once
without drift and once with every feature shifted. Ours is one ``numeric_drift``
call (KS statistic and p-value, PSI, JS, Wasserstein, rates for all 20 features);
the loop runs, per feature, ``scipy.stats.ks_2samp(method="asymp")`` (the p-value we
reproduce; ``method="auto"`` would be the exact distribution and far slower),
``scipy.stats.wasserstein_distance``, ``np.histogram`` over the same quantile edges,
``jensenshannon`` and PSI by numpy. The KS p-value's cost depends on the statistic
(scipy picks its algorithm by ``n D^2``), hence the two windows. Categorical: 5
features with 3 to 40 categories; ours is one ``categorical_drift`` call (its
chi-square is the test of homogeneity of the two samples), the loop ``np.bincount`` +
``scipy.stats.chi2_contingency(correction=False)`` on the buckets seen + PSI by numpy
per feature. The reference side is prepared once outside the timings on both sides
(``fit`` is timed on its own line). Ours and the loop alternate within each repeat; the
table shows medians of each and the median of the per-repeat ratios.
"""

from __future__ import annotations

import os

# One BLAS thread: on a shared 2-core machine, BLAS worker threads spinning in the
# loop's small dot products (wasserstein_distance) make the baseline erratically slow.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics
import sys  # noqa: E402
import time
from collections.abc import Callable

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from driftline.detectors.statistics import (
    CategoricalReference,
    NumericReference,
    categorical_drift,
    numeric_drift,
    smooth_proportions,
)

TARGET = 10.0


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    return statistics.median(seconds(fn) for _ in range(repeats))


def compare(ours: Callable[[], object], theirs: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Medians of both and of the per-repeat ratio; the two alternate within each
    repeat so that both see the same load from other processes."""
    ours(), theirs()  # warm up
    pairs = [(seconds(ours), seconds(theirs)) for _ in range(repeats)]
    return (
        statistics.median(p[0] for p in pairs),
        statistics.median(p[1] for p in pairs),
        statistics.median(p[1] / p[0] for p in pairs),
    )


def numeric_case(repeats: int) -> list[tuple[str, float, float | None, float | None]]:
    rng = np.random.default_rng(0)
    d = 20
    reference = rng.normal(size=(10_000, d))
    windows = {
        "no drift": rng.normal(size=(1_000, d)),
        "every feature drifts": rng.normal(0.1, 1.1, size=(1_000, d)),
    }
    ref = NumericReference.fit(reference)
    # the loop's reference side, prepared once like fit(): edges and proportions
    prepared = []
    for j in range(d):
        inner = ref.edges[j, : ref.n_edges[j]]
        edges = np.concatenate([[-np.inf], inner, [np.inf]])
        counts, _ = np.histogram(reference[:, j], edges)
        prepared.append((edges, counts))

    def loop(window: np.ndarray) -> None:
        for j in range(d):
            a, b = reference[:, j], window[:, j]
            stats.ks_2samp(b, a, method="asymp")
            stats.wasserstein_distance(a, b)
            edges, ref_counts = prepared[j]
            win_counts, _ = np.histogram(b, edges)
            p = (ref_counts / ref_counts.sum() + 1e-4) / (1 + len(ref_counts) * 1e-4)
            q = (win_counts / win_counts.sum() + 1e-4) / (1 + len(win_counts) * 1e-4)
            jensenshannon(p, q)
            np.sum((q - p) * np.log(q / p))

    rows: list[tuple[str, float, float | None, float | None]] = []
    for kind, window in windows.items():
        label = f"numeric, {kind}: KS+p, PSI, JS, Wasserstein (20 features)"
        rows.append(
            (
                label,
                *compare(
                    lambda w=window: numeric_drift(ref, w),
                    lambda w=window: loop(w),
                    repeats,
                ),
            )
        )
    fit = median_seconds(lambda: NumericReference.fit(reference), repeats)
    rows.append(("numeric: NumericReference.fit (10,000 x 20, once)", fit, None, None))
    return rows


def categorical_case(repeats: int) -> list[tuple[str, float, float | None, float | None]]:
    rng = np.random.default_rng(1)
    sizes = [3, 8, 15, 25, 40]
    reference = np.column_stack([rng.integers(-1, k, size=10_000) for k in sizes])
    window = np.column_stack([rng.integers(-1, k + 1, size=1_000) for k in sizes])
    ref = CategoricalReference.fit(reference, sizes)
    ref_counts = [np.bincount(reference[:, j][reference[:, j] >= 0], minlength=k + 1) for j, k in enumerate(sizes)]

    def loop() -> None:
        for j, k in enumerate(sizes):
            codes = window[:, j]
            observed = np.bincount(codes[codes >= 0], minlength=k + 1)
            p = smooth_proportions(ref_counts[j][None, :], np.ones((1, k + 1), bool))[0]
            q = (observed / observed.sum() + 1e-4) / (1 + (k + 1) * 1e-4)
            table = np.array([ref_counts[j], observed])
            stats.chi2_contingency(table[:, table.sum(axis=0) > 0], correction=False)
            np.sum((q - p) * np.log(q / p))

    label = "categorical: chi2+p, PSI, TV, rates (5 features)"
    return [(label, *compare(lambda: categorical_drift(ref, window), loop, repeats))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a case is below the {TARGET:.0f}x target")
    args = parser.parse_args()
    rows = numeric_case(args.repeats) + categorical_case(args.repeats)
    print(f"| case | driftline (ms) | per-feature scipy loop (ms) | speed-up (target >= {TARGET:.0f}x) |")
    print("| --- | ---: | ---: | ---: |")
    for label, ours, theirs, ratio in rows:
        if theirs is None:
            print(f"| {label} | {ours * 1e3:.2f} | - | - |")
        else:
            print(f"| {label} | {ours * 1e3:.2f} | {theirs * 1e3:.2f} | {ratio:.1f}x |")
    missed = [f"{label}: {ratio:.1f}x" for label, _, theirs, ratio in rows if theirs is not None and ratio < TARGET]
    if missed:
        print(f"below the {TARGET:.0f}x target: " + "; ".join(missed), file=sys.stderr)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
