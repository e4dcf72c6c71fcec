"""Windows completed by one batch are computed together (monitor/drift.py): the alarms,
their statistics and p-values, and the snapshot's gauges equal, bit for bit, those of
the same stream fed one window (or less) per batch."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.monitor.config import load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from tests.monitor.streams import prediction_events, records


def _events(n: int) -> list[dict]:
    ev = prediction_events(n, seed=11, shift_at=n // 2, shift=0.6, n_numeric=4)
    rng = np.random.default_rng(12)
    for i in rng.choice(n, size=n // 40, replace=False):  # missing values: windows of unequal n
        ev[int(i)]["features"]["x1"] = None
    for i in range(n // 2 + 300, n // 2 + 420):  # unseen categories: quality alarms
        ev[i]["features"]["country"] = "ZZ"
    return ev


def _run(window: dict, recs: list, batch: int) -> tuple[list, list]:
    engine = Engine(
        load_settings(
            defaults={
                "reference": {"size": 1000},
                "window": window,
                "drift": {"correction": "bonferroni", "alpha": 0.01},
            }
        )
    )
    alarms, snaps = [], []
    for i in range(0, len(recs), batch):
        alarms += engine.process(decode_batch(recs[i : i + batch], "predictions", "feedback")).alarms
        snaps.append([(s.version, s.drift, s.quality) for s in engine.snapshot()])
    return alarms, snaps


@pytest.mark.parametrize("window", [{"size": 100}, {"size": 200, "step": 50}])
def test_windows_of_one_batch_equal_windows_one_at_a_time(window):
    recs = list(records(_events(6_000), "predictions"))
    step = window.get("step", window["size"])
    together, snaps_together = _run(window, recs, 3_000)  # up to 60 windows per batch
    alone, snaps_alone = _run(window, recs, step)  # one window per batch once the reference is in
    assert {a.kind for a in together} >= {"feature_drift", "data_quality"}
    assert together == alone  # dataclass equality: every statistic and p-value, exactly
    # the snapshot after a batch shows its last window, whichever way the windows came
    assert snaps_together[-1] == snaps_alone[-1]
    assert snaps_together[0] == snaps_alone[3_000 // step - 1]


def test_p_values_left_inexact_are_made_exact_where_read(monkeypatch):
    # 100-event windows of a mildly shifted stream: KS p-values in the range computed
    # again in long double. feature_drift leaves them in float64; the gauges and every
    # alarm made from a window show the exact values, bit for bit.
    from driftline.detectors import _ks
    from driftline.detectors.statistics import CategoricalReference, NumericReference, numeric_drift_windows
    from driftline.monitor.config import DriftSettings
    from driftline.monitor.drift import adjust, drift_alarms, feature_drift
    from driftline.monitor.edges import AlarmStates

    rng = np.random.default_rng(3)
    num_ref = NumericReference.fit(rng.normal(size=(3_000, 4)))
    cat_ref = CategoricalReference.fit(np.zeros((3_000, 0), dtype=np.int64), [])
    windows = rng.normal(0.28, 1.0, size=(40, 100, 4))
    cfg = DriftSettings(alpha=0.02, correction="bh", min_effect=0.0)
    names = ("a", "b", "c", "d")
    monkeypatch.setattr(_ks, "_memo", {})  # no exact value known beforehand
    fd = feature_drift(windows, np.zeros((40, 100, 0), dtype=np.int64), names, (), num_ref, cat_ref, cfg)
    exact = adjust(numeric_drift_windows(num_ref, windows).ks_p_value, "bh")
    assert fd.tests.inexact is not None
    inexact = np.flatnonzero(fd.tests.inexact)
    differ = np.flatnonzero((fd.tests.p_value != exact).any(axis=1))
    assert differ.size >= 3 and set(differ.tolist()) <= set(inexact.tolist())  # the case under test occurs
    np.testing.assert_allclose(fd.tests.p_value, exact, rtol=1e-9, atol=0)

    states, made = AlarmStates(), []

    def alarm(kind, detector, feature, stat, thr, p_value, first, last, ts):
        made.append((int(first), feature, p_value))
        return made[-1]

    for i in range(40):
        drift_alarms(fd.tests, i, "feature_drift", cfg, states, alarm, i, i, 0.0)
    assert {i for i, _, _ in made} & set(differ.tolist())  # some alarm needed the exact value
    for i, feature, p_value in made:
        assert p_value == exact[i, names.index(feature)]  # exactly: made exact before the alarm
    shown = int(differ[-1])
    gauges = {s.feature: s.p_value for s in fd.stats(shown) if s.detector == "ks"}
    assert [gauges[f] for f in names] == exact[shown].tolist()
