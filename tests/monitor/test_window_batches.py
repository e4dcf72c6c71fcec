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
