from __future__ import annotations

import numpy as np

from monitor.decode import Feedback
from monitor.join import LabelJoin


def _add(join, ids, ts, version="v1"):
    return join.add_predictions(ids, [version] * len(ids), np.arange(len(ids)), [0.5] * len(ids),
                                [None] * len(ids), ts)


def _fb(ids, ts, prediction=None):
    return Feedback("m", ids=list(ids), ts=list(ts), labels=[1] * len(ids),
                    prediction=[prediction] * len(ids), versions=[None] * len(ids), scores=[None] * len(ids))


def test_match_self_contained_and_early_labels():
    j = LabelJoin(ttl_seconds=100, max_pending=10)
    _add(j, ["a", "b"], [0.0, 1.0])
    lab, counts = j.match(_fb(["b", "zz"], [2.0, 2.0]))
    assert counts == {"matched": 1}  # "zz" waits for its prediction
    assert lab.index == [1] and lab.versions == ["v1"]
    lab, counts = j.match(_fb(["q"], [3.0], prediction=0.9))
    assert counts == {"self_contained": 1} and lab.index == [-1] and lab.prediction == [0.9]
    assert len(j) == 2  # "a" waits for a label, "zz" for a prediction
    lab, counts = j.add_predictions(["c", "zz"], ["v2", "v2"], np.array([7, 8]), [0.1, 0.2], [None, None], [4.0, 4.0])
    assert counts == {"matched": 1} and lab.index == [8] and lab.versions == ["v2"] and lab.prediction == [0.2]
    assert lab.labels == [1] and lab.ts == [4.0]


def test_early_label_that_never_meets_its_prediction_is_unmatched():
    j = LabelJoin(ttl_seconds=10, max_pending=10)
    j.match(_fb(["ghost"], [0.0]))
    _, counts = _add(j, ["x"], [50.0])
    assert counts["unmatched"] == 1 and len(j) == 1


def test_ttl_in_event_time_and_eviction_bound():
    j = LabelJoin(ttl_seconds=10, max_pending=3)
    _, counts = _add(j, ["a", "b", "c", "d"], [0.0, 1.0, 2.0, 3.0])
    assert counts["evicted"] == 1 and len(j) == 3
    lab, counts = j.match(_fb(["b"], [12.5]))  # clock 12.5: b (1.0) expired before matching? no: matched first
    assert counts["matched"] == 1
    assert counts["expired"] == 1  # c (2.0) is older than 12.5 - 10; d (3.0) is not
    assert len(j) == 1


def test_memory_bounded_over_long_stream():
    j = LabelJoin(ttl_seconds=1e9, max_pending=100)
    for k in range(50):
        ids = [f"{k}-{i}" for i in range(100)]
        _add(j, ids, [float(k)] * 100)
        assert len(j) <= 100


def test_state_round_trip():
    j = LabelJoin(ttl_seconds=10, max_pending=5)
    _add(j, ["a", "b"], [0.0, 1.0])
    k = LabelJoin.from_state(j.state_dict())
    lab1, c1 = j.match(_fb(["a", "x"], [5.0, 5.0]))
    lab2, c2 = k.match(_fb(["a", "x"], [5.0, 5.0]))
    assert c1 == c2 and lab1 == lab2
