"""Lifecycle events at catch-up over Kafka: a consumer that starts on a backlog reads a
newly assigned lifecycle partition up to its end before it hands over that partition's
predictions (``LifecycleCatchUp``), so each event takes effect at its event time, as in
``driftline replay --lifecycle`` of the same streams, and not when it happens to be read.

- a backlog at start: a canary deployed with its own reference (``from_stream``) and
  promoted, inside the time range of the predictions and labels already in the topics
  when the service starts; the alarms equal the replay's (both clients);
- a restart: the service stopped, the release plan (lifecycle events) and the traffic
  it governs produced while it is down, the service restarted on the backlog; the
  alarms of both runs equal the replay's;
- at the source (both clients): the lifecycle backlog comes in a batch no later than
  the first records of its partition, each record once, its offsets are committed with
  the batch, and a consumer of the group after that commit reads ahead only the events
  produced since.

Without the catch-up the predictions of the backlog come first (the topics are fetched
independently) and the canary is measured against the stable version's reference until
its ``deployed`` event is read: a ``feature_drift`` of v2 the replay does not have.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from driftline.monitor.config import load_settings
from tests.monitor.streams import feedback_for, prediction_events, to_jsonl
from tests.support.runs import QUICK_SESSION_MS, wait_for

T0 = 1_700_000_000.0
N = 3_000
CANARY_AT, PROMOTE_AT = 600, 1_800
"""Event times (seconds after T0, one prediction a second): v2 serves every other
prediction from CANARY_AT and all of them from PROMOTE_AT."""
DEFAULTS = {"reference": {"size": 500}, "window": {"size": 200}, "performance": {"window": 200}}
LABEL_FREE = ("feature_drift", "prediction_drift", "data_quality")
"""The alarm kinds a run's interleaving of the predictions and feedback topics cannot
change (label alarms depend on when a label is read relative to its prediction)."""


def _streams(canary_at: int = CANARY_AT, promote_at: int = PROMOTE_AT) -> tuple[list, list, list]:
    """fraud's predictions and labels over [T0, T0 + N) and its lifecycle events: v1
    deployed as the stable version before; v2 (x0 shifted by 1.5: drifted against v1's
    reference, not against its own) deployed as a canary with its own reference (its
    first 200 events) at ``canary_at``, promoted at ``promote_at``."""
    v1 = prediction_events(N, model="fraud", version="v1", seed=11, t0=T0)
    v2 = prediction_events(N, model="fraud", version="v2", seed=12, shift_at=0, shift=1.5, t0=T0, id_prefix="q")
    preds = [v2[i] if i >= promote_at or (i >= canary_at and i % 2 == 0) else v1[i] for i in range(N)]
    # the history before the release: v1 deployed as the stable version (a CI job run
    # again and again), each event with long notes (an ignored field) bigger than one
    # fetch of a partition (max_partition_fetch_bytes): the lifecycle partition's backlog
    # takes more fetches than the predictions', as a topic with months of events does
    history = {"model": "fraud", "version": "v1", "event": "deployed", "role": "stable", "ts": T0 - 3_600.0}
    events = [{**history, "actor": f"ci (run {i})", "notes": "x" * 70_000} for i in range(12)]
    events += [
        {
            "model": "fraud",
            "version": "v2",
            "event": "deployed",
            "role": "canary",
            "traffic_share": 0.5,
            "ts": T0 + canary_at,
            "reference": {"from_stream": 200},
            "actor": "ci",
        },
        {"model": "fraud", "version": "v2", "event": "promoted", "ts": T0 + promote_at, "actor": "ci"},
    ]
    return preds, feedback_for(preds, seed=13), events


@pytest.fixture
def lc_topics(broker, topics):
    """The test's topics and a lifecycle topic co-partitioned with them (2 partitions)."""
    names = {**topics, "lifecycle": f"lifecycle-{topics['predictions']}"}
    broker.create_topics([names["lifecycle"]], partitions=2)
    return names


def _produce(broker, topic: str, events: list[dict[str, Any]]) -> None:
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5, max_request_size=2_000_000)
    for e in events:
        p.send(topic, key=e["model"].encode(), value=orjson.dumps(e))
    p.flush()
    p.close()


def _settings(broker, t, tmp_path: Path, **kafka: Any):
    return load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{t['predictions']}",
            "predictions_topic": t["predictions"],
            "feedback_topic": t["feedback"],
            "dead_letter_topic": t["dead_letter"],
            "session_timeout_ms": QUICK_SESSION_MS,
            "poll_timeout_ms": 200,
            "max_poll_records": 500,
            "max_partition_fetch_bytes": 65_536,
            **kafka,
        },
        lifecycle={"topic": t["lifecycle"]},
        audit={"kafka_topic": None},
        defaults=DEFAULTS,
        prometheus={"enabled": False},
        state_dir=tmp_path / "state",
        alarms_jsonl=tmp_path / "alarms.jsonl",
        checkpoint_interval_seconds=0,
    )


def _run_until(settings, predictions: int, feedback: int, lifecycle: int) -> None:
    """A service until it consumed this many events (in all, over its runs: the counts
    restart at zero, so ``predictions`` etc. are this run's), then stopped (its offsets
    committed and its state checkpointed)."""
    from tests.monitor.test_kafka import Running

    running = Running(settings)
    svc = running.service
    wait_for(
        lambda: (
            svc.stats.predictions >= predictions
            and svc.stats.feedback >= feedback
            and svc.stats.records >= predictions + feedback + lifecycle
        ),
        90,
        f"{predictions} predictions, {feedback} labels and {lifecycle} lifecycle events consumed",
    )
    assert running.stop() == 0
    assert svc.stats.invalid == 0


def _label_free(path: Path) -> list[tuple]:
    alarms = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []
    return sorted(
        (a["kind"], a["version"], a["feature"] or "", a["detector"], a["first_index"], a["last_index"])
        for a in alarms
        if a["kind"] in LABEL_FREE
    )


def _replayed(tmp_path: Path, preds: list, labels: list, events: list) -> list[tuple]:
    """The label-free alarms of ``driftline replay --lifecycle`` of the same streams."""
    from driftline.cli import main

    d = tmp_path / "replay"
    d.mkdir()
    for name, rows in (("p", preds), ("f", labels), ("l", events)):
        (d / f"{name}.jsonl").write_bytes(to_jsonl(rows))
    config = d / "replay.yml"
    config.write_text(
        orjson.dumps(
            {"state_dir": str(d / "state"), "defaults": DEFAULTS, "audit": {"kafka_topic": None}}
        ).decode()  # JSON is YAML
    )
    argv = ["replay", "--predictions", str(d / "p.jsonl"), "--feedback", str(d / "f.jsonl")]
    argv += ["--lifecycle", str(d / "l.jsonl"), "--config", str(config), "--alarms", str(d / "alarms.jsonl"), "--quiet"]
    assert main(argv) == 0
    return _label_free(d / "alarms.jsonl")


@pytest.mark.kafka
@pytest.mark.timeout(180)
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_a_backlog_at_start_applies_lifecycle_events_at_their_event_time(broker, lc_topics, tmp_path, client):
    """Everything is in the topics when the service starts: the canary's ``deployed`` and
    ``promoted`` (event times inside the backlog) take effect where the replay applies
    them, so the alarms are the replay's (the canary is never measured against v1's
    reference: no ``feature_drift`` of v2)."""
    t = lc_topics
    preds, labels, events = _streams()
    _produce(broker, t["predictions"], preds)
    _produce(broker, t["feedback"], labels)
    _produce(broker, t["lifecycle"], events)
    # kafka-python in its consumer process (the default); confluent-kafka in the service's
    extra = {"client": "confluent", "consumer_process": False} if client == "confluent" else {}
    _run_until(_settings(broker, t, tmp_path, **extra), len(preds), len(labels), len(events))

    expected = _replayed(tmp_path, preds, labels, events)
    assert not [a for a in expected if a[0] == "feature_drift" and a[1] == "v2"]  # the scenario's point
    assert _label_free(tmp_path / "alarms.jsonl") == expected


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_a_release_planned_while_the_service_was_down_applies_at_its_event_time(broker, lc_topics, tmp_path):
    """The service consumed the first third and stopped; meanwhile CI produced the
    canary's release plan and the traffic went on; restarted, the service catches up on
    the backlog with the lifecycle events first: its alarms over both runs are the
    replay's."""
    t = lc_topics
    canary_at, promote_at = 1_200, 2_200
    preds, labels, events = _streams(canary_at, promote_at)
    cut = 1_000
    _produce(broker, t["predictions"], preds[:cut])
    _produce(broker, t["feedback"], labels[:cut])
    settings = _settings(broker, t, tmp_path)
    _run_until(settings, cut, cut, 0)
    # down: the release plan, then the traffic it governs
    _produce(broker, t["lifecycle"], events)
    _produce(broker, t["predictions"], preds[cut:])
    _produce(broker, t["feedback"], labels[cut:])
    _run_until(settings, len(preds) - cut, len(labels) - cut, len(events))

    expected = _replayed(tmp_path, preds, labels, events)
    assert not [a for a in expected if a[0] == "feature_drift" and a[1] == "v2"]
    assert _label_free(tmp_path / "alarms.jsonl") == expected


def _source(settings, client: str):
    if client == "confluent":
        from driftline.monitor.confluent_source import ConfluentSource

        return ConfluentSource(settings.kafka, settings.lifecycle.topic)
    from driftline.monitor.sources import KafkaSource

    return KafkaSource(settings.kafka, settings.lifecycle.topic)


def _drain(source, expected: int) -> list[list[tuple[str, int, int]]]:
    """The source's non-empty batches, as (topic, partition, offset), until ``expected``
    records came (60 s at most)."""
    batches: list[list[tuple[str, int, int]]] = []
    deadline = time.monotonic() + 60
    while sum(map(len, batches)) < expected:
        got = sum(map(len, batches))
        assert time.monotonic() < deadline, f"{got} of {expected} records polled in 60 s"
        batch = source.poll_records()
        if batch:
            batches.append([(r.topic, r.partition, r.offset) for r in batch])
    return batches


def _check_lifecycle_first(batches: list[list[tuple[str, int, int]]], lifecycle: str) -> None:
    """Every lifecycle record comes in a batch no later than the first one with a
    prediction or label of its partition, and each record comes once."""
    flat = [r for b in batches for r in b]
    assert len(flat) == len(set(flat)), "a record handed over twice"
    first_traffic: dict[int, int] = {}
    for i, b in enumerate(batches):
        for topic, partition, _ in b:
            if topic != lifecycle:
                first_traffic.setdefault(partition, i)
    for i, b in enumerate(batches):
        for topic, partition, offset in b:
            if topic == lifecycle:
                assert i <= first_traffic.get(partition, i), (
                    f"lifecycle record {partition}/{offset} in batch {i}, after the first predictions "
                    f"of its partition (batch {first_traffic[partition]})"
                )


@pytest.mark.kafka
@pytest.mark.timeout(120)
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_the_source_hands_a_lifecycle_backlog_over_first_once_and_commits_it(broker, lc_topics, tmp_path, client):
    """At the source: the lifecycle backlog comes before (or with) the first records of
    its partition, each record once, and the offsets to commit cover it; a second
    consumer of the group, after the commit, reads ahead only the events produced
    since."""
    t = lc_topics
    preds, labels, events = _streams()
    half = len(preds) // 2
    _produce(broker, t["predictions"], preds[:half])
    _produce(broker, t["feedback"], labels[:half])
    _produce(broker, t["lifecycle"], events[:-1])  # all but `promoted`
    settings = _settings(broker, t, tmp_path, **({"client": "confluent"} if client == "confluent" else {}))
    source = _source(settings, client)
    try:
        batches = _drain(source, 2 * half + len(events) - 1)
        _check_lifecycle_first(batches, t["lifecycle"])
        offsets = source.offsets()
        assert sum(o for (topic, _), o in offsets.items() if topic == t["lifecycle"]) == len(events) - 1
        assert source.commit(offsets)
    finally:
        source.close()

    _produce(broker, t["lifecycle"], events[-1:])
    _produce(broker, t["predictions"], preds[half:])
    _produce(broker, t["feedback"], labels[half:])
    source = _source(settings, client)
    try:
        batches = _drain(source, 2 * (len(preds) - half) + 1)
        _check_lifecycle_first(batches, t["lifecycle"])
        again = [r for b in batches for r in b if r[0] == t["lifecycle"]]
        assert len(again) == 1, again  # only `promoted`: the others were committed
    finally:
        source.close()
