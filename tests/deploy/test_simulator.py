"""The simulated production model: determinism, the contract, and the injected changes."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from scipy import stats

from driftline.demo.simulator import (
    CATEGORICAL_FEATURES,
    NUMERIC_FEATURES,
    Scenario,
    encode,
    generate,
)

SCENARIO = Scenario(seed=3, training_events=3_000).scaled(12_000)


@pytest.fixture(scope="module")
def records():
    return list(generate(SCENARIO))


@pytest.fixture(scope="module")
def predictions(records):
    return [r for r in records if r.topic == "predictions" and r.value is not None]


@pytest.fixture(scope="module")
def labels(records):
    return {r.value["id"]: r for r in records if r.topic == "feedback" and r.value is not None}


def _index(event):
    return int(event["id"].rsplit("-", 1)[1])


def _column(predictions, feature, lo, hi):
    return np.array(
        [p.value["features"][feature] for p in predictions[lo:hi] if p.value["features"][feature] is not None],
        dtype=float,
    )


def _error_rate(predictions, labels, version, lo, hi):
    errors = [
        p.value["prediction"] != labels[p.value["id"]].value["label"]
        for p in predictions[lo:hi]
        if p.value["version"] == version
    ]
    return float(np.mean(errors)), len(errors)


def test_same_seed_same_records_other_seed_other_records():
    small = Scenario(events=600, seed=11, training_events=300)
    a = [encode(r) for r in generate(small)]
    b = [encode(r) for r in generate(small)]
    c = [encode(r) for r in generate(Scenario(events=600, seed=12, training_events=300))]
    assert a == b
    assert a != c


def test_chunking_does_not_change_the_stream():
    small = Scenario(events=900, seed=5, training_events=300)
    assert [encode(r) for r in generate(small, chunk=1024)] == [encode(r) for r in generate(small, chunk=97)]


def test_prediction_events_follow_the_contract(predictions):
    assert len(predictions) == SCENARIO.events
    ids = [p.value["id"] for p in predictions]
    assert len(set(ids)) == len(ids)
    ts = [p.value["ts"] for p in predictions]
    assert ts == sorted(ts) and ts[0] == SCENARIO.start_ts
    for p in predictions[:50]:
        e = p.value
        assert p.key == e["model"] == "fraud"
        assert set(e) == {"model", "version", "id", "ts", "features", "prediction", "scores", "latency_ms"}
        assert set(e["features"]) == set(NUMERIC_FEATURES) | set(CATEGORICAL_FEATURES)
        assert e["prediction"] in (0, 1)
        assert e["scores"]["1"] == pytest.approx(1 - e["scores"]["0"], abs=1e-5)
        assert (e["scores"]["1"] >= 0.5) == (e["prediction"] == 1)
        assert e["latency_ms"] > 0
        assert json.loads(encode(p)) == e


def test_every_label_arrives_feedback_delay_events_later(records, predictions, labels):
    assert set(labels) == {p.value["id"] for p in predictions}
    seen: set[str] = set()
    for r in records:
        if r.value is None:
            continue
        if r.topic == "predictions":
            seen.add(r.value["id"])
        else:
            assert r.value["id"] in seen, "feedback before its prediction"
            i = _index(r.value)
            assert r.index == min(i + SCENARIO.feedback_delay, SCENARIO.events - 1)
            assert set(r.value) == {"model", "id", "ts", "label"}
            assert r.value["ts"] == SCENARIO.ts_of(r.index)


def test_label_rate_drops_some_feedback():
    s = Scenario(events=2000, seed=2, training_events=300, label_rate=0.5, malformed_every=0)
    n = sum(r.topic == "feedback" for r in generate(s))
    assert 850 < n < 1150


def test_malformed_records_break_the_contract(records):
    bad = [r for r in records if r.value is None]
    assert len(bad) == len(records) // (SCENARIO.malformed_every + 1)
    for r in bad:
        try:
            event = json.loads(r.raw)
        except ValueError:
            continue  # invalid JSON
        assert not isinstance(event, dict) or "id" not in event or "features" not in event


def test_feature_shift_moves_one_feature_by_one_std_then_returns(predictions):
    s = SCENARIO
    feature = s.shifted_feature
    _, scale = NUMERIC_FEATURES[feature]
    before = _column(predictions, feature, 0, s.feature_shift_at)
    during = _column(predictions, feature, s.feature_shift_at, s.feature_shift_at + s.shift_events)
    after = _column(predictions, feature, s.feature_shift_at + s.shift_events, s.events)
    assert during.mean() - before.mean() == pytest.approx(s.shift_std * scale, rel=0.15)
    assert stats.ks_2samp(before, during).pvalue < 1e-10
    assert stats.ks_2samp(before, after).pvalue > 1e-3
    for other in NUMERIC_FEATURES:
        if other != feature:
            assert (
                stats.ks_2samp(
                    _column(predictions, other, 0, s.feature_shift_at),
                    _column(predictions, other, s.feature_shift_at, s.feature_shift_at + s.shift_events),
                ).pvalue
                > 1e-4
            )


def test_concept_drift_is_silent_in_features_and_label_rate_but_not_in_errors(predictions, labels):
    s = SCENARIO
    lo, at = s.feature_shift_at + s.shift_events, s.concept_drift_at
    for feature in NUMERIC_FEATURES:
        assert (
            stats.ks_2samp(_column(predictions, feature, lo, at), _column(predictions, feature, at, s.events)).pvalue
            > 1e-4
        )
    before_pred = [p.value["prediction"] for p in predictions[lo:at] if p.value["version"] == "v1"]
    after_pred = [p.value["prediction"] for p in predictions[at:] if p.value["version"] == "v1"]
    assert abs(np.mean(before_pred) - np.mean(after_pred)) < 0.05
    rate = defaultdict(list)
    for p in predictions[lo:]:
        rate[_index(p.value) >= at].append(labels[p.value["id"]].value["label"])
    assert abs(np.mean(rate[False]) - np.mean(rate[True])) < 0.05
    err_before, _ = _error_rate(predictions, labels, "v1", lo, at)
    err_after, _ = _error_rate(predictions, labels, "v1", at, s.events)
    assert err_after > err_before + 0.1


def test_canary_takes_its_share_and_is_worse_and_slower(predictions, labels):
    s = SCENARIO
    assert all(p.value["version"] == "v1" for p in predictions[: s.canary_at])
    window = predictions[s.canary_at : s.concept_drift_at]
    share = np.mean([p.value["version"] == "v2" for p in window])
    assert share == pytest.approx(s.canary_share, abs=0.03)
    err_v1, _ = _error_rate(predictions, labels, "v1", s.canary_at, s.concept_drift_at)
    err_v2, n_v2 = _error_rate(predictions, labels, "v2", s.canary_at, s.concept_drift_at)
    assert n_v2 > 300
    assert err_v2 > err_v1 + 0.08
    latency = defaultdict(list)
    for p in window:
        latency[p.value["version"]].append(p.value["latency_ms"])
    assert np.mean(latency["v2"]) > 1.3 * np.mean(latency["v1"])


def test_injections_describe_the_scenario():
    s = Scenario()
    inj = {i.name: i for i in s.injections()}
    assert inj["feature_shift"].index == s.feature_shift_at
    assert inj["feature_shift"].end == s.feature_shift_at + s.shift_events
    assert inj["feature_shift"].feature == s.shifted_feature
    assert inj["canary"].version == "v2" and "regression" in inj["canary"].expected_kinds
    assert inj["concept_drift"].index == s.concept_drift_at
    assert [i.index for i in s.injections()] == sorted(i.index for i in s.injections())
    assert [i.name for i in Scenario(events=5000).injections()] == ["feature_shift"]
    assert Scenario(events=3000).injections() == []


def test_scaled_keeps_the_story_and_ts_index_round_trip():
    s = Scenario().scaled(10_000)
    assert (s.feature_shift_at, s.canary_at, s.concept_drift_at, s.shift_events) == (2_000, 4_000, 7_000, 1_500)
    assert Scenario().scaled(Scenario().events) == Scenario()
    for i in (0, 1, 999, 123_456):
        assert s.index_of(s.ts_of(i)) == i


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"events": 0}, "events"),
        ({"shifted_feature": "nope"}, "shifted_feature"),
        ({"canary_share": 1.5}, "canary_share"),
        ({"label_rate": -0.1}, "label_rate"),
        ({"feedback_delay": -1}, "feedback_delay"),
        ({"interval_seconds": 0}, "interval_seconds"),
    ],
)
def test_invalid_scenarios_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Scenario(**kwargs)


# kafka-python 3.0.12 loads its protocol schemas with importlib.resources.read_text,
# deprecated since Python 3.11 (pyproject's filterwarnings should ignore it suite-wide).
@pytest.mark.filterwarnings("ignore:(read|open)_text is deprecated:DeprecationWarning")
@pytest.mark.kafka
def test_produce_to_kafka_publishes_the_stream_to_kafka(tmp_path):
    import io

    from driftline.demo.embedded_broker import EmbeddedBroker
    from driftline.demo.simulator import produce_to_kafka

    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        broker.create_topics(["p", "f"], partitions=2)
        out = io.StringIO()
        assert (
            produce_to_kafka(
                broker.bootstrap_servers, events=1500, seed=4, predictions_topic="p", feedback_topic="f", stream=out
            )
            == 0
        )
        expected = list(generate(Scenario(seed=4).scaled(1500)))
        got = _read_all(broker.bootstrap_servers, ["p", "f"], partitions=2, count=len(expected), timeout=30)
    assert len(got) == len(expected)
    assert {m.key for m in got} == {b"fraud"}
    # Keyed by model: the predictions and feedback of a model share a partition number.
    assert len({m.partition for m in got}) == 1
    by_topic = defaultdict(list)
    for m in sorted(got, key=lambda m: (m.topic, m.offset)):
        by_topic[m.topic].append(m.value)
    assert by_topic["p"] == [encode(r) for r in expected if r.topic == "predictions"]
    assert by_topic["f"] == [encode(r) for r in expected if r.topic == "feedback"]
    assert "injecting feature_shift at event 300" in out.getvalue()
    assert "sent 1500 predictions" in out.getvalue()


def _read_all(bootstrap_servers, topics, *, partitions, count, timeout):
    """Every record of ``topics`` from the beginning, without a consumer group."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
        consumer.seek_to_beginning()
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
        return got
    finally:
        consumer.close()
