"""Kafka equals replay under production orderings.

``driftline replay`` merges the prediction and feedback files by event time; over Kafka
the service sees the two topics in whatever order the broker and the fetcher interleave
them. Here the stream is produced as production would produce it:

- predictions and feedback from two producer threads at once;
- several models per partition (five models on two partitions, co-partitioned: a
  model's predictions and labels on the same partition number);
- labels arriving before their predictions (the first labels of two models are produced
  before any prediction);

with and without the consumer process. The alarms must equal those of a replay of the
same events: every kind, labelled ones (performance, concept drift, regression) included.

The canary-versus-stable alarm (``regression``) once depended on where batches were cut,
which a replay and a Kafka run never share (a replay reads 5,000 records per batch, the
service what a poll returns): :func:`test_replay_alarms_do_not_depend_on_the_batch_size`
holds it without a broker.
"""

from __future__ import annotations

import threading

import orjson
import pytest
from kafka import KafkaProducer

from tests.monitor.streams import feedback_for, prediction_events
from tests.monitor.test_kafka import Running, settings_for
from tests.support.runs import alarm_set, describe, read_alarms, replay, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

DEFAULTS = {"reference": {"size": 1000}, "window": {"size": 500}, "performance": {"window": 250}}
EARLY = 600
"""Labels of ``fraud`` and ``ads`` produced before any prediction."""


def canary_events(n: int, *, model: str, seed: int, canary_share: float = 0.3) -> tuple[list[dict], list[dict]]:
    """A model with a stable ``v1`` and, from the middle on, a canary ``v2`` taking
    ``canary_share`` of the traffic whose labels disagree with its scores more often."""
    events = prediction_events(n, model=model, seed=seed)
    rng = __import__("numpy").random.default_rng(seed + 100)
    canary = [i >= n // 2 and rng.random() < canary_share for i in range(n)]
    for e, c in zip(events, canary):
        e["version"] = "v2" if c else "v1"
    labels = feedback_for(events, seed=seed + 1)
    for lab, c in zip(labels, canary):
        if c and rng.random() < 0.3:
            lab["label"] = 1 - lab["label"]
    return events, labels


def production_stream() -> tuple[dict[str, int], list[dict], list[dict]]:
    """Five models on one clock; returns (partition of each model, predictions, labels),
    both in event-time order."""
    fraud = prediction_events(5_000, model="fraud", seed=41, shift_at=3_000, shift=1.0)
    churn = prediction_events(4_000, model="churn", seed=42)
    ads, ads_labels = canary_events(4_000, model="ads", seed=43)
    risk = prediction_events(3_000, model="risk", seed=44, shift_at=2_000, shift=0.8)
    spam = prediction_events(2_500, model="spam", seed=45)
    labels = (
        feedback_for(fraud, seed=51, flip_after=3_500)
        + feedback_for(churn, seed=52, flip_after=2_500)
        + ads_labels
        + feedback_for(risk, seed=54)
        + feedback_for(spam, seed=55)
    )
    preds = sorted(fraud + churn + ads + risk + spam, key=lambda e: (e["ts"], e["model"]))
    labels.sort(key=lambda e: (e["ts"], e["model"]))
    # several models per partition, the same partition in both topics
    partition = {"fraud": 0, "churn": 1, "ads": 0, "risk": 1, "spam": 0}
    return partition, preds, labels


def produce(broker, topic, events, partition, errors):
    try:
        p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
        for e in events:
            p.send(topic, key=e["model"].encode(), value=orjson.dumps(e), partition=partition[e["model"]])
        p.flush()
        p.close()
    except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
        errors.append(exc)


def produce_in_production_order(broker, topics, partition, preds, labels) -> None:
    """Some labels first, then predictions and the other labels from two threads at once."""
    early_ids = {e["id"] for m in ("fraud", "ads") for e in [x for x in preds if x["model"] == m][:EARLY]}
    early = [lab for lab in labels if lab["id"] in early_ids]
    rest = [lab for lab in labels if lab["id"] not in early_ids]
    errors: list[BaseException] = []
    produce(broker, topics["feedback"], early, partition, errors)
    threads = [
        threading.Thread(target=produce, args=(broker, topics["predictions"], preds, partition, errors)),
        threading.Thread(target=produce, args=(broker, topics["feedback"], rest, partition, errors)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors


@pytest.fixture(scope="module")
def stream_and_replay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orderings-replay")
    partition, preds, labels = production_stream()
    cfg = tmp / "replay.yml"
    cfg.write_text(orjson.dumps({"defaults": DEFAULTS}).decode())  # JSON is YAML
    return partition, preds, labels, replay(tmp, preds, labels, cfg)


@pytest.fixture(scope="module", params=[True, False], ids=["consumer-process", "in-process"])
def kafka_run(request, broker, tmp_path_factory, stream_and_replay):
    """The stream produced in production order while the service consumes it; returns
    its alarms and its (events, labelled) per (model, version)."""
    partition, preds, labels, _ = stream_and_replay
    tmp = tmp_path_factory.mktemp("orderings-kafka")
    suffix = tmp.name
    topics = {"predictions": f"op-{suffix}", "feedback": f"of-{suffix}", "dead_letter": f"od-{suffix}"}
    broker.create_topics(list(topics.values()), partitions=2)
    settings = settings_for(broker, topics, tmp, defaults=DEFAULTS)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"consumer_process": request.param, "max_poll_records": 500})}
    )
    running = Running(settings)  # consuming while the producers run
    try:
        svc = running.service
        # consuming before anything is produced: the labels produced first are read
        # before their predictions exist
        wait_for(lambda: svc.readiness().get("consuming"), 60, "the service consuming")
        produce_in_production_order(broker, topics, partition, preds, labels)
        wait_for(
            lambda: svc.stats.predictions >= len(preds) and svc.stats.feedback >= len(labels),
            150,
            "every event consumed",
        )
        invalid = svc.stats.invalid
    finally:
        assert running.stop() == 0
    counts = {(v.model, v.version): (v.events, v.labelled) for v in svc.engine.snapshot()}
    return {"alarms": read_alarms(tmp / "alarms.jsonl"), "counts": counts, "invalid": invalid}


def test_the_stream_has_labelled_and_unlabelled_alarms(stream_and_replay):
    *_, alarms = stream_and_replay
    kinds = {(a["model"], a["kind"]) for a in alarms}
    assert {("fraud", "feature_drift"), ("risk", "feature_drift")} <= kinds, kinds
    assert {("fraud", "concept_drift"), ("churn", "concept_drift"), ("ads", "regression")} <= kinds, kinds


def test_every_event_counted_and_every_label_joined(kafka_run, stream_and_replay):
    _, preds, labels, _ = stream_and_replay
    counts = kafka_run["counts"]
    assert kafka_run["invalid"] == 0
    expected: dict[tuple[str, str], list[int]] = {}
    for e in preds:
        expected.setdefault((e["model"], e["version"]), [0, 0])[0] += 1
    version = {e["id"]: (e["model"], e["version"]) for e in preds}
    for lab in labels:
        expected[version[lab["id"]]][1] += 1
    assert counts == {k: tuple(v) for k, v in expected.items()}


def _only(alarms, kinds):
    return {a for a in alarm_set(alarms) if orjson.loads(a)["kind"] in kinds}


def _compare(kafka, replayed, kinds):
    got, want = _only(kafka, kinds), _only(replayed, kinds)
    assert got == want, f"only over Kafka: {describe(got - want)}\nonly in the replay: {describe(want - got)}"


def test_prediction_stream_alarms_equal_the_replay(kafka_run, stream_and_replay):
    """Feature drift, prediction and label drift, data quality: exact."""
    _compare(kafka_run["alarms"], stream_and_replay[3], {"feature_drift", "prediction_drift", "data_quality"})


def test_performance_and_concept_drift_alarms_equal_the_replay(kafka_run, stream_and_replay):
    _compare(kafka_run["alarms"], stream_and_replay[3], {"performance", "concept_drift"})


def test_regression_alarms_equal_the_replay(kafka_run, stream_and_replay):
    _compare(kafka_run["alarms"], stream_and_replay[3], {"regression"})


def test_replay_alarms_do_not_depend_on_the_batch_size(tmp_path):
    """The minimal reproduction, without a broker: one model with a canary, replayed
    with 5,000 and with 500 records per batch. On the seed below the regression alarm is
    [2485..2691] with 5,000 and [2735..2747] with 500."""
    preds, labels = canary_events(4_000, model="ads", seed=43)
    cfg = tmp_path / "replay.yml"
    cfg.write_text(orjson.dumps({"defaults": DEFAULTS}).decode())
    big = replay(tmp_path, preds, labels, cfg, batch_size=5_000, name="big")
    small = replay(tmp_path, preds, labels, cfg, batch_size=500, name="small")
    assert any(a["kind"] == "regression" for a in big)
    assert alarm_set(big) == alarm_set(small), (
        f"5,000 per batch only: {describe(alarm_set(big) - alarm_set(small))}\n"
        f"500 per batch only: {describe(alarm_set(small) - alarm_set(big))}"
    )
