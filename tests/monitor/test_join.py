from __future__ import annotations

import numpy as np

from driftline.monitor.decode import Feedback
from driftline.monitor.join import LabelJoin


def _add(join, ids, ts, version="v1"):
    return join.add_predictions(ids, [version] * len(ids), np.arange(len(ids)), [0.5] * len(ids), [None] * len(ids), ts)


def _fb(ids, ts, prediction=None):
    return Feedback(
        "m",
        ids=list(ids),
        ts=list(ts),
        labels=[1] * len(ids),
        prediction=[prediction] * len(ids),
        versions=[None] * len(ids),
        scores=[None] * len(ids),
    )


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


def test_a_label_reaches_every_version_scoring_its_id():
    """Shadow and canary versions score the same request ids: each gets the label."""
    j = LabelJoin(ttl_seconds=100, max_pending=100)
    _add(j, ["a", "b"], [0.0, 0.0], version="v1")
    _add(j, ["a", "b"], [0.5, 0.5], version="shadow")
    lab, counts = j.match(_fb(["a", "b"], [1.0, 1.0]))
    assert counts == {"matched": 4}
    assert sorted(zip(lab.versions, lab.labels)) == [("shadow", 1), ("shadow", 1), ("v1", 1), ("v1", 1)]
    assert len(j) == 2  # two versions active: the labels are kept for a third one's predictions


def test_a_label_between_two_versions_predictions_reaches_both():
    j = LabelJoin(ttl_seconds=100, max_pending=100)
    _add(j, ["x"], [0.0], version="v1")
    _add(j, ["y"], [0.0], version="v2")  # two versions active
    lab, _ = j.match(_fb(["a"], [1.0]))  # no prediction of "a" yet: waits
    _add(j, ["a"], [2.0], version="v1")
    lab, counts = j.match(_fb(["x"], [3.0]))
    assert counts == {"matched": 1} and lab.versions == ["v1"]
    lab, counts = _add(j, ["x"], [4.0], version="v2")  # v2 scores "x" after its label came
    assert counts == {"matched": 1} and lab.versions == ["v2"]


def test_one_version_keeps_no_label_it_gave():
    j = LabelJoin(ttl_seconds=100, max_pending=100)
    _add(j, ["a", "b"], [0.0, 0.0])
    j.match(_fb(["a", "b"], [1.0, 1.0]))
    assert len(j) == 0


def test_an_early_label_reaches_each_version_once():
    j = LabelJoin(ttl_seconds=100, max_pending=100)
    j.match(_fb(["a"], [0.0]))
    lab, counts = _add(j, ["a"], [1.0], version="v1")
    assert counts == {"matched": 1} and lab.versions == ["v1"]
    lab, counts = _add(j, ["a"], [2.0], version="v2")
    assert counts == {"matched": 1} and lab.versions == ["v2"]
    lab, counts = _add(j, ["a"], [3.0], version="v1")  # a repeat of v1's prediction: not joined again
    assert counts == {} and len(lab) == 0


def test_an_early_label_that_was_given_is_not_counted_unmatched_when_it_leaves():
    j = LabelJoin(ttl_seconds=10, max_pending=10)
    j.match(_fb(["a", "ghost"], [0.0, 0.0]))
    _add(j, ["a"], [1.0])
    _, counts = _add(j, ["x"], [50.0])  # both early labels expire; only "ghost" was never given
    assert counts["unmatched"] == 1


def test_state_round_trip_keeps_versions_and_given_labels():
    j = LabelJoin(ttl_seconds=100, max_pending=100)
    j.match(_fb(["a"], [0.0]))
    _add(j, ["a"], [1.0], version="v1")
    _add(j, ["b"], [1.0], version="v1")
    _add(j, ["b"], [1.0], version="v2")
    k = LabelJoin.from_state(j.state_dict())
    lab, _ = k.add_predictions(["a"], ["v1"], np.array([5]), [0.5], [None], [2.0])
    assert len(lab) == 0  # v1 already had "a"'s label
    lab, counts = k.match(_fb(["b"], [3.0]))
    assert counts == {"matched": 2} and sorted(lab.versions) == ["v1", "v2"]
