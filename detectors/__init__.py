"""driftline's numerical core: pure numpy/scipy, no I/O.

Change detectors (river-exact, batch-vectorized), two-sample drift statistics against
a reference, count windows, multiple-testing corrections, windowed performance
metrics, and the sequential canary-versus-stable test.

Examples
--------
>>> import numpy as np
>>> from detectors import PageHinkley
>>> ph = PageHinkley()
>>> stream = np.r_[np.zeros(500), np.full(500, 5.0)]
>>> ph.update(stream).drifts.tolist()  # doctest: +SKIP
[521]
"""

from driftline.detectors._base import ChangeDetector, Detection
from driftline.detectors.adwin import ADWIN
from driftline.detectors.ddm import DDM, EDDM
from driftline.detectors.fhddm import FHDDM
from driftline.detectors.hddm import HDDMA, HDDMW
from driftline.detectors.kswin import KSWIN
from driftline.detectors.metrics import classification_metrics, multiclass_metrics, regression_metrics
from driftline.detectors.multiple_testing import benjamini_hochberg, bonferroni, reject
from driftline.detectors.page_hinkley import PageHinkley
from driftline.detectors.sequential import SequentialResult, TwoSampleMSPRT
from driftline.detectors.statistics import (
    CategoricalDrift,
    CategoricalReference,
    NumericDrift,
    NumericReference,
    categorical_drift,
    numeric_drift,
)
from driftline.detectors.windows import CompletedWindow, SlidingWindow, TumblingWindow

__all__ = [
    "ADWIN",
    "DDM",
    "EDDM",
    "FHDDM",
    "HDDMA",
    "HDDMW",
    "KSWIN",
    "PageHinkley",
    "ChangeDetector",
    "Detection",
    "NumericReference",
    "NumericDrift",
    "numeric_drift",
    "CategoricalReference",
    "CategoricalDrift",
    "categorical_drift",
    "bonferroni",
    "benjamini_hochberg",
    "reject",
    "classification_metrics",
    "multiclass_metrics",
    "regression_metrics",
    "TwoSampleMSPRT",
    "SequentialResult",
    "SlidingWindow",
    "TumblingWindow",
    "CompletedWindow",
]
