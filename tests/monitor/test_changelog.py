"""The per-model changelog store (driftline.monitor.changelog) on the embedded broker,
and its chunking and reassembly as pure functions (hypothesis)."""

from __future__ import annotations

import gc
import logging
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.monitor.changelog import (
    DEFAULT_MAX_CHUNK_BYTES,
    ChangelogError,
    ChangelogStore,
    Reassembler,
    changelog_topic,
    encode_payload,
    partition_for,
    plan_records,
    split_payload,
)
from driftline.monitor.config import KafkaSettings
from driftline.monitor.exceptions import ConfigError


def assert_same(a, b, path="state"):
    """Deep equality of states: arrays bit for bit with their dtype, NaN equal to NaN."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype == object:
            assert a.tolist() == b.tolist(), path
        else:
            assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert a == b and type(a) is type(b), f"{path}: {a!r} != {b!r}"


def model_state(seed: int, n: int = 50) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "events": int(seed),
        "last_ts": 1763900000.5 + seed,
        "alarming": {"psi:amount": True},
        "reference": rng.normal(size=n),
        "codes": rng.integers(0, 7, size=(n, 2), dtype=np.int32),
        "labels": np.array(["a", None, "b"], dtype=object),
        "baseline": float("nan"),
        "inf": float("-inf"),
        "detectors": {"adwin": {"width": 3, "buckets": rng.random(5).astype(np.float32)}},
        "buffer": [[{"amount": 1.5}, 0.3, ["predictions", 0, 12], "p-1", "v1", 1.0, None, 11.2]],
    }


def models_on(partitions: int, wanted: dict[int, int]) -> list[str]:
    """Model names, ``wanted[p]`` of them on each partition ``p``."""
    out, counts, i = [], dict.fromkeys(wanted, 0), 0
    while any(counts[p] < n for p, n in wanted.items()):
        name = f"model-{i}"
        p = partition_for(name, partitions)
        if p in counts and counts[p] < wanted[p]:
            out.append(name)
            counts[p] += 1
        i += 1
    return out


@pytest.fixture
def kafka(broker, topics):
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        predictions_topic=topics["predictions"],
        feedback_topic=topics["feedback"],
    )


@pytest.fixture
def store(kafka):
    s = ChangelogStore(kafka, timeout_seconds=30)
    yield s
    s.close()


def positions_for(kafka: KafkaSettings, offset: int) -> dict[tuple[str, int], int]:
    return {(t, p): offset + p for t in (kafka.predictions_topic, kafka.feedback_topic) for p in (0, 1)}


def restore(kafka: KafkaSettings, partitions, **options):
    """Restore with a fresh store (a new owner), closed afterwards."""
    with ChangelogStore(kafka, **options) as fresh:
        return fresh.restore(partitions)


def stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` is stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
        assert time.monotonic() < deadline, f"process {pid} not stopped after {timeout} s"
        time.sleep(0.01)


def raw_records(broker, topic: str):
    """Every record of ``topic`` until a poll after the end offsets returns nothing."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        got, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for records in batch.values():
                got.extend(records)
            if not batch and all(consumer.position(tp) >= ends[tp] for tp in tps):
                return got
        raise AssertionError(f"{topic} not read to its end in 60 s")
    finally:
        consumer.close()


# ---- on the broker ------------------------------------------------------------------------


@pytest.mark.kafka
def test_topic_is_compacted_and_co_partitioned_with_the_input(broker, kafka, store):
    from kafka import KafkaProducer
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    assert store.topic == changelog_topic(kafka.group_id) == f"{kafka.group_id}-state-changelog"
    assert store.partitions == 2
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, store.topic)], config_filter="all")
        assert found["topic"][store.topic]["cleanup.policy"]["value"] == "compact"
    finally:
        admin.close()
    # a model's input records land where its state goes: kafka-python's default partitioner
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    try:
        for name in models_on(2, {0: 3, 1: 3}):
            meta = producer.send(kafka.predictions_topic, key=name.encode(), value=b"{}").get(timeout=30)
            assert meta.partition == store.partition_of(name)
    finally:
        producer.close()
    # reopening finds the topic; another partition count is refused with what to do
    with ChangelogStore(kafka):
        pass
    with pytest.raises(ConfigError, match="has 2 partitions but the input topics have 3"):
        ChangelogStore(kafka, partitions=3)


@pytest.mark.kafka
def test_round_trip_of_several_models(kafka, store):
    names = models_on(2, {0: 3, 1: 3})
    states = {name: model_state(i) for i, name in enumerate(names)}
    store.write(states, positions_for(kafka, 100))
    assert store.last_write.models == 6 and store.last_write.records == 6 and store.last_write.chunks == 0
    payload = sum(len(encode_payload(s)) for s in states.values())
    assert payload < store.last_write.bytes < payload + 6 * 300  # the state, plus key and headers

    restored = restore(kafka, [0, 1])
    assert set(restored) == set(names)
    for name in names:
        assert_same(states[name], restored[name].state)
        p = partition_for(name, 2)
        # each model keeps the positions of its own partition number
        assert restored[name].positions == {(kafka.predictions_topic, p): 100 + p, (kafka.feedback_topic, p): 100 + p}


@pytest.mark.kafka
def test_restore_reads_only_the_requested_partitions(kafka, store):
    names = models_on(2, {0: 2, 1: 2})
    store.write({name: {"n": i} for i, name in enumerate(names)}, positions_for(kafka, 5))
    fresh = ChangelogStore(kafka)
    try:
        for p in (0, 1):
            got = fresh.restore([p])
            assert set(got) == {n for n in names if partition_for(n, 2) == p}
        assert fresh.restore([]) == {}
        with pytest.raises(ValueError, match="partitions 0..1"):
            fresh.restore([2])
    finally:
        fresh.close()


@pytest.mark.kafka
def test_a_state_larger_than_a_record_is_chunked_and_reassembled(broker, kafka, store):
    """A 2.4 MB state at the default chunk size (under the broker's 1 MiB default)."""
    [name] = models_on(2, {1: 1})
    state = {"reference": np.random.default_rng(0).normal(size=300_000), "events": 7}
    size = len(encode_payload(state))
    assert size > 2 * DEFAULT_MAX_CHUNK_BYTES
    store.write({name: state}, positions_for(kafka, 9))
    chunks = -(-size // DEFAULT_MAX_CHUNK_BYTES)
    assert store.last_write.chunks == chunks and store.last_write.records == chunks + 1
    records = raw_records(broker, store.topic)
    assert all(r.partition == 1 and len(r.value) <= DEFAULT_MAX_CHUNK_BYTES for r in records)
    assert records[-1].key == name.encode()  # the manifest comes last
    assert dict(records[-1].headers)["driftline.kind"] == b"manifest"

    restored = restore(kafka, [1])
    assert_same(state, restored[name].state)


@pytest.mark.kafka
def test_a_crash_between_chunks_restores_the_previous_complete_state(broker, kafka):
    """Chunks of a new state written without their manifest (the writer died) never
    replace the state before; the next write tombstones the orphans."""
    from kafka import KafkaProducer

    store = ChangelogStore(kafka, max_chunk_bytes=2048)
    [name] = models_on(2, {0: 1})
    old = model_state(1, n=1000)
    store.write({name: old}, positions_for(kafka, 10))
    new = model_state(2, n=1000)
    planned = plan_records(
        name, encode_payload(new), {(kafka.predictions_topic, 0): 20}, state_id=uuid.uuid4().hex, max_chunk_bytes=2048
    )
    orphans = [r for r in planned[:-1]][: len(planned) // 2]  # half the chunks, no manifest
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    try:
        for r in orphans:
            producer.send(store.topic, key=r.key, value=r.value, headers=list(r.headers), partition=0)
        producer.flush(timeout=30)
    finally:
        producer.close()
    store.close()

    successor = ChangelogStore(kafka, max_chunk_bytes=2048)
    try:
        restored = successor.restore([0])
        assert_same(old, restored[name].state)
        assert restored[name].positions[(kafka.predictions_topic, 0)] == 10
        # the successor's first write tombstones the orphans and the old state's chunks
        successor.write({name: new}, positions_for(kafka, 30))
        assert successor.last_write.tombstones >= len(orphans)
        assert_same(new, restore(kafka, [0])[name].state)
    finally:
        successor.close()
    last = {}
    for r in raw_records(broker, store.topic):
        last[r.key] = r.value
    assert all(last[r.key] is None for r in orphans)
    live_chunks = [k for k, v in last.items() if v is not None and b"\x00" in k]
    assert len(live_chunks) == successor.last_write.chunks  # only the current state's chunks remain


@pytest.mark.kafka
def test_a_tombstone_deletes_a_model(kafka):
    store = ChangelogStore(kafka, max_chunk_bytes=2048)
    try:
        small, large = models_on(2, {0: 2})
        store.write({small: {"n": 1}, large: model_state(3, n=2000)}, positions_for(kafka, 1))
        store.delete(small)
        store.delete(large)
        assert store.restore([0]) == {}
        # written again after the deletion: back
        store.write({small: {"n": 2}}, positions_for(kafka, 2))
        assert restore(kafka, [0])[small].state == {"n": 2}
    finally:
        store.close()


@pytest.mark.kafka
def test_the_newest_state_of_a_model_written_twice_wins(broker, kafka):
    store = ChangelogStore(kafka, max_chunk_bytes=4096)
    try:
        a, b = models_on(2, {1: 2})
        store.write({a: model_state(1, n=2000), b: {"n": 1}}, positions_for(kafka, 10))
        first_chunks = store.last_write.chunks
        store.write({a: model_state(2, n=2000), b: {"n": 2}}, positions_for(kafka, 20))
        assert store.last_write.tombstones == first_chunks  # the first state's chunks, after the second's manifest
        got = restore(kafka, [1], max_chunk_bytes=4096)
        assert_same(model_state(2, n=2000), got[a].state)
        assert got[b].state == {"n": 2}
        assert got[a].positions[(kafka.feedback_topic, 1)] == 21
    finally:
        store.close()


@pytest.mark.kafka
def test_a_broker_that_does_not_answer_fails_writes_and_restores_then_they_succeed(broker, kafka):
    store = ChangelogStore(kafka, timeout_seconds=3)
    try:
        [name] = models_on(2, {0: 1})
        store.write({name: {"n": 1}}, positions_for(kafka, 1))
        assert store.restore([0])[name].state == {"n": 1}
        with broker.frozen():
            stopped(broker.pid)
            with pytest.raises(ChangelogError, match="hold the commit"):
                store.write({name: {"n": 2}}, positions_for(kafka, 2))
            with pytest.raises(ChangelogError, match="the states are unknown"):
                store.restore([0], timeout_seconds=3)
        deadline = time.monotonic() + 60
        while True:  # the producer reconnects by itself
            try:
                store.write({name: {"n": 3}}, positions_for(kafka, 3))
                break
            except ChangelogError:
                assert time.monotonic() < deadline, "no write succeeded within 60 s of the thaw"
        assert restore(kafka, [0])[name].state == {"n": 3}
        assert store.restore([0])[name].state == {"n": 3}  # its restore consumer recovered too
    finally:
        store.close()


# kafka-python 3.0 does not close a socket whose connect() was refused (see
# tests/sinks/test_kafka_sink.py): those are collected here, with that warning ignored.
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_no_broker_is_a_changelog_error(caplog):
    from driftline.demo.embedded_broker import free_port

    caplog.set_level(logging.CRITICAL + 1, logger="kafka")
    nowhere = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(ChangelogError, match="cannot connect to Kafka .* to open the changelog"):
        ChangelogStore(nowhere, timeout_seconds=1)
    gc.collect()


# ---- pure: chunking and reassembly ----------------------------------------------------------

states = st.fixed_dictionaries(
    {
        "events": st.integers(0, 10**9),
        "values": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=200).map(np.array),
        "name": st.text(max_size=30),
    }
)


@settings(max_examples=60)
@given(payload=st.binary(max_size=5000), size=st.integers(1, 700))
def test_split_payload_joins_back(payload, size):
    pieces = split_payload(payload, size)
    assert b"".join(pieces) == payload
    assert all(0 < len(p) <= size for p in pieces) or pieces == [b""]


@settings(max_examples=80)
@given(
    generations=st.lists(states, min_size=1, max_size=4),
    chunk=st.integers(16, 400),
    crashed=st.one_of(st.none(), states),
    kept=st.floats(0, 1),
    data=st.data(),
    model=st.text(min_size=1, max_size=12),
)
def test_reassembly_gives_the_newest_complete_state(generations, chunk, crashed, kept, data, model):
    """Writes in log order (chunks in any order, then the manifest, then tombstones of the
    superseded chunks), optionally followed by a crashed write (some chunks, no
    manifest): the newest complete write comes back, whatever the chunk size."""
    records, previous = [], []
    for i, state in enumerate(generations):
        planned = plan_records(model, encode_payload(state), {("p", 0): i}, state_id=f"{i:032x}", max_chunk_bytes=chunk)
        body = planned[:-1] if len(planned) > 1 else []
        records += data.draw(st.permutations(body)) + [planned[-1]]
        records += [(k, None) for k in previous]
        previous = [r.key for r in body]
    if crashed is not None:
        planned = plan_records(model, encode_payload(crashed), {("p", 0): 99}, state_id="f" * 32, max_chunk_bytes=chunk)
        records += planned[: int(kept * (len(planned) - 1))]  # never the manifest
    r = Reassembler()
    for rec in records:
        if isinstance(rec, tuple):
            r.feed(rec[0], None, [])
        else:
            r.feed(rec.key, rec.value, rec.headers)
    got = r.result()[model]
    assert_same(generations[-1], got.state)
    assert got.positions == {("p", 0): len(generations) - 1}


@settings(max_examples=40)
@given(state=states, newer=states, chunk=st.integers(16, 64), victim=st.integers(0, 10**6))
def test_reassembly_refuses_a_corrupt_or_incomplete_set(state, newer, chunk, victim):
    """A newer state whose chunk is corrupted or tombstoned is not restored: the one
    before it is; a tombstone under the model key deletes the model."""
    old = plan_records("m", encode_payload(state), {("p", 0): 1}, state_id="a" * 32, max_chunk_bytes=chunk)
    new = plan_records("m", encode_payload(newer), {("p", 0): 2}, state_id="b" * 32, max_chunk_bytes=chunk)
    assert len(new) > 2  # every state's encoding is longer than 64 bytes: always chunked
    i = victim % (len(new) - 1)
    for corrupt in (True, False):
        r = Reassembler()
        for rec in old:
            r.feed(rec.key, rec.value, rec.headers)
        for j, rec in enumerate(new):
            if j == i:
                if corrupt:
                    r.feed(rec.key, bytes([rec.value[0] ^ 1]) + rec.value[1:], rec.headers)
                continue  # the tombstoned case: the chunk is missing
            r.feed(rec.key, rec.value, rec.headers)
        if not corrupt:
            r.feed(new[i].key, None, [])  # a tombstone after the manifest
        got = r.result()["m"]
        assert_same(state, got.state)
        assert got.positions == {("p", 0): 1}
    r.feed(b"m", None, [])
    assert r.result() == {}


# ---- what follows a model to its partition's next owner (no broker) ---------------------


def test_the_gate_applies_each_models_records_from_its_own_position():
    """After a restore, the source reads again from the lowest position: a record is
    applied only from its model's state position on, a record of a model without a
    state (or an unreadable one) only from the group's commit on."""
    import orjson

    from driftline.monitor.contract import Record
    from driftline.monitor.sources import _Gate

    models = ["a", "b", "c", None]  # c: no state; None: an unreadable record
    records = [
        Record("p", 0, o, -1, None, b"{not json" if m is None else orjson.dumps({"model": m}))
        for o in range(16)
        for m in models
    ]
    gate = _Gate(floor=10, states={"a": 5, "b": 12})
    kept = {(r.offset, models[i % 4]) for i, r in enumerate(records) if r in gate.admit(records)}
    start = {"a": 5, "b": 12, "c": 10, None: 10}
    assert kept == {(o, m) for o in range(16) for m in models if o >= start[m]}
    assert gate.until == 12


def test_outbox_rows_of_a_model_move_with_their_keys(tmp_path):
    from driftline.sinks.outbox import Outbox, OutboxEntry

    old, new = Outbox(tmp_path / "old.sqlite3"), Outbox(tmp_path / "new.sqlite3")
    try:
        old.add(
            [
                OutboxEntry("ci", "k1", "a", "retrain", {"n": 1}),
                OutboxEntry("ci", "k2", "b", "retrain", {"n": 2}),
                OutboxEntry("ops", "k1", "a", "retrain", {"n": 1}),
            ]
        )
        old.mark_delivered("ops", "k1", 1)
        rows = old.pending_for(["a"])
        assert [(r["target"], r["idempotency_key"], r["payload"]) for r in rows] == [("ci", "k1", {"n": 1})]
        assert new.adopt(rows) == 1 and new.adopt(rows) == 0  # adopted twice: once
        assert [(r.target, r.idempotency_key, r.model, r.payload) for r in new.due()] == [("ci", "k1", "a", {"n": 1})]
        assert old.drop(["a"]) == 1
        assert {(r.target, r.idempotency_key) for r in old.rows()} == {("ci", "k2"), ("ops", "k1")}
    finally:
        old.close()
        new.close()


def test_trigger_policy_evidence_of_a_model_moves_alone():
    from driftline.monitor.alarms import Alarm
    from driftline.monitor.config import TriggerPolicySettings
    from driftline.sinks.policy import TriggerPolicy

    cfg = TriggerPolicySettings(min_alarms=2, cooldown_seconds=0)

    def alarm(model, ts):
        return Alarm(
            model=model,
            version="v1",
            kind="feature_drift",
            detector="ks",
            feature="x0",
            statistic=0.5,
            threshold=0.1,
            p_value=0.001,
            first_index=int(ts),
            last_index=int(ts) + 9,
            ts=ts,
            action="retrain",
        )

    old = TriggerPolicy(cfg)
    assert old.observe([alarm("a", 1.0), alarm("b", 1.0)]) == []
    moved = old.state_for(["a"])
    assert [r["model"] for r in moved["routes"]] == ["a"]
    new = TriggerPolicy(cfg)
    new.adopt(moved)
    old.drop(["a"])
    assert [t.model for t in new.observe([alarm("a", 2.0)])] == ["a"]  # the evidence came along
    assert old.observe([alarm("a", 2.0)]) == []  # and left the old owner
    assert [t.model for t in old.observe([alarm("b", 2.0)])] == ["b"]
