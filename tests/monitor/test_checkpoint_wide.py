"""Checkpoints of a wide model while its stream reference fills: each one costs what was
added since the last (segments, driftline.monitor.checkpoint), in the checkpoint file
and in the changelog; a format-1 checkpoint (written before segments) still loads; a
crash at any step of a save leaves a checkpoint that loads."""

from __future__ import annotations

import os
import uuid

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.monitor.changelog import ChangelogStore, Reassembler, encode_payload, partition_for, plan_records
from driftline.monitor.checkpoint import CheckpointStore, StateEncoder, decode_state, encode_state
from driftline.monitor.config import load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from driftline.monitor.exceptions import CheckpointError
from driftline.monitor.reference import AppendLog
from tests.monitor import test_changelog
from tests.monitor.streams import prediction_events, records
from tests.monitor.test_changelog import assert_same, raw_records

REFERENCE = 1000
BATCH = 200
SETTINGS = load_settings(defaults={"reference": {"size": REFERENCE}, "window": {"size": 500}})
EVENTS = prediction_events(2 * REFERENCE, n_numeric=250, seed=11, shift_at=1500, shift=1.0)  # 251 features
RECORDS = list(records(EVENTS, "predictions"))


def batches(recs=RECORDS, size=BATCH):
    for i in range(0, len(recs), size):
        yield decode_batch(recs[i : i + size], "predictions", "feedback")


def run(engine: Engine, recs) -> list:
    alarms = []
    for b in batches(recs):
        alarms += engine.process(b).alarms
    return alarms


def alarm_keys(alarms) -> list[tuple]:
    return [(a.kind, a.feature, a.detector, a.first_index, a.last_index) for a in alarms]


class Killed(BaseException):
    """What a SIGKILL at this point leaves: nothing after it runs."""


def head_checkpoint_bytes(state: dict) -> bytes:
    """What the code before segments wrote to checkpoint-<group>.json: the encoded state
    itself, with each pending reference event as a list (not an AppendLog)."""
    state = dict(state)
    state["engine"] = {
        **state["engine"],
        "models": {
            name: {
                **mm,
                "buffer": [
                    [b.features, b.prediction, list(b.source), b.id, b.version, b.ts, b.scores, b.latency]
                    for b in mm["buffer"]
                ],
            }
            for name, mm in state["engine"]["models"].items()
        },
    }
    return orjson.dumps(encode_state(state), option=orjson.OPT_SERIALIZE_NUMPY)


def test_a_filling_reference_costs_each_checkpoint_what_was_added(tmp_path):
    whole = run(Engine(SETTINGS), RECORDS)
    assert any(a.kind == "feature_drift" for a in whole)
    engine, store = Engine(SETTINGS), CheckpointStore(tmp_path, "g")
    written, saved_at = [], []
    for i, b in enumerate(batches(RECORDS[: REFERENCE - BATCH])):
        engine.process(b)
        state = {"version": 1, "offsets": {("predictions", 0): (i + 1) * BATCH}, "engine": engine.state_dict()}
        store.save(state)
        written.append(store.last_save.bytes)
        if i == 2:
            saved_at = [state, head_checkpoint_bytes(state)]
    assert not engine.models["fraud"].reference_ready  # the last save is still inside the reference
    # each save writes about one batch's events (plus the open segment and the rest of
    # the state), not the reference so far: the fourth writes no more than the first
    full = len(head_checkpoint_bytes(state))
    assert max(written) < 1.5 * written[0] and written[-1] < full / 3, (written, full)
    assert store.last_save.segments_kept > 0
    # what a restart reads back is the state bit for bit, and continues as the whole run did
    back = store.load()
    assert_same(decode_state(orjson.loads(head_checkpoint_bytes(state))), back)
    restarted = Engine(SETTINGS)
    restarted.load_state(back["engine"])
    assert alarm_keys(run(restarted, RECORDS[REFERENCE - BATCH :])) == alarm_keys(whole)
    # a format-1 checkpoint (the encoded state itself), as the code before segments wrote it
    old_state, old_bytes = saved_at
    assert orjson.dumps(encode_state(old_state), option=orjson.OPT_SERIALIZE_NUMPY) == old_bytes  # same JSON
    store.path.write_bytes(old_bytes)
    old = CheckpointStore(tmp_path, "g").load()
    assert_same(decode_state(orjson.loads(old_bytes)), old)
    resumed = Engine(SETTINGS)
    resumed.load_state(old["engine"])
    assert alarm_keys(run(resumed, RECORDS[3 * BATCH :])) == alarm_keys(whole)
    # and the next save of the new format replaces it, its segments written again
    fresh = CheckpointStore(tmp_path, "g")
    fresh.save({"engine": resumed.state_dict()})
    assert_same(decode_state(orjson.loads(orjson.dumps(encode_state({"engine": resumed.state_dict()})))), fresh.load())


def test_a_crash_at_any_step_of_a_save_leaves_a_checkpoint_that_loads(tmp_path, monkeypatch):
    engine, store = Engine(SETTINGS), CheckpointStore(tmp_path, "g", segment_bytes=100_000)
    feed = batches(RECORDS[:REFERENCE])
    engine.process(next(feed))
    first = {"engine": engine.state_dict()}
    store.save(first)
    want_first = decode_state(orjson.loads(orjson.dumps(encode_state(first))))
    engine.process(next(feed))
    second = {"engine": engine.state_dict()}
    want_second = decode_state(orjson.loads(orjson.dumps(encode_state(second))))

    # 1. killed after the new segments, before the checkpoint file's rename: the old one
    real_replace = os.replace

    def dies_on_the_checkpoint(src, dst):
        if str(dst) == str(store.path):
            raise Killed  # the rename never happened
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_on_the_checkpoint)
    with pytest.raises(Killed):
        CheckpointStore(tmp_path, "g", segment_bytes=100_000).save(second)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_same(want_first, CheckpointStore(tmp_path, "g").load())

    # 2. killed after the rename, before the old segments were deleted: the new one
    real_unlink = os.unlink

    def dies(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(os, "unlink", dies)
    with pytest.raises(Killed):
        CheckpointStore(tmp_path, "g", segment_bytes=100_000).save(second)
    monkeypatch.setattr(os, "unlink", real_unlink)
    leftovers = len(list(store.segments_dir.iterdir()))
    assert_same(want_second, CheckpointStore(tmp_path, "g").load())
    # the next save deletes what no checkpoint names any more
    store.save(second)
    names = orjson.loads(store.path.read_bytes())["segments"]
    assert sorted(p.stem for p in store.segments_dir.iterdir()) == sorted(names) and len(names) < leftovers

    # 3. a segment lost or damaged: an error that says what to do, never a wrong state
    victim = store.segments_dir / f"{names[0]}.json"
    data = victim.read_bytes()
    victim.write_bytes(data[:-2] + b" ]")
    with pytest.raises(CheckpointError, match="does not match its SHA-256.*move it away"):
        CheckpointStore(tmp_path, "g").load()
    victim.unlink()
    with pytest.raises(CheckpointError, match="cannot be read.*move it away"):
        CheckpointStore(tmp_path, "g").load()


def test_segments_are_cut_where_a_fresh_encoder_cuts_them():
    """A restarted process (a fresh encoder) names the same full segments, so that the
    segments already stored are not written again; the remembered ones are not encoded
    again (only the open one is)."""
    engine = Engine(SETTINGS)
    feed = batches(RECORDS[:REFERENCE])
    kept = StateEncoder(50_000)
    for _ in range(3):
        engine.process(next(feed))
        a = kept.encode(engine.state_dict())
    b = StateEncoder(50_000).encode(engine.state_dict())
    assert a.main == b.main and a.segments == b.segments and len(a.segments) > 10
    assert all(a.segment(d) == b.segment(d) for d in a.segments)
    # the remembered encoder produced only the last batch's segments (and the open one)
    assert sum(isinstance(v, bytes) for v in a._sources.values()) < len(a.segments) / 2
    assert all(isinstance(v, bytes) for v in b._sources.values())


items = st.lists(
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.floats(allow_nan=False), st.none()),
    max_size=60,
)


@settings(max_examples=60)
@given(items=items, cuts=st.lists(st.integers(0, 60), max_size=4), size=st.integers(1, 400))
def test_an_append_log_comes_back_whole_however_it_grew(items, cuts, size):
    """Encoded after each growth by one encoder, and by a fresh one: the same bytes, and
    decoded, the list (each item as a list, as a checkpoint gives tuples back)."""
    encoder = StateEncoder(size)
    for n in [*sorted(cuts), len(items)]:
        state = {"log": AppendLog(items[:n]), "n": n}
        got = encoder.encode(state)
        stored = {d: got.segment(d) for d in got.segments}
        assert decode_state(orjson.loads(got.main), stored.__getitem__) == {"log": [list(t) for t in items[:n]], "n": n}
        assert StateEncoder(size).encode(state).main == got.main
        named = orjson.loads(got.main)["log"]
        if items[:n]:
            assert list(dict.fromkeys(named["__segments__"])) == list(got.segments)
        else:
            assert named == [] and got.segments == ()


# ---- the changelog ------------------------------------------------------------------------------

kafka = test_changelog.kafka  # the fixture: Kafka settings with a fresh group on the test broker


@pytest.mark.kafka
def test_changelog_writes_of_a_filling_reference_send_what_was_added(broker, kafka):
    engine = Engine(SETTINGS)
    store = ChangelogStore(kafka, timeout_seconds=30)
    try:
        p = partition_for("fraud", store.partitions)
        sent, states = [], []
        for i, b in enumerate(batches(RECORDS[: 3 * BATCH])):
            engine.process(b)
            state = {"engine": engine.model_state("fraud"), "sinks": {}}
            store.write({"fraud": state}, {("predictions", p): (i + 1) * BATCH})
            sent.append(store.last_write.bytes)
            states.append(state)
        full = len(encode_payload(states[-1]))
        assert max(sent) < 1.5 * sent[0] and sent[-1] < full / 2, (sent, full)
        assert store.written.tombstones >= 1  # an open segment a newer state no longer names

        # a new owner restores it bit for bit, then writes its own segments and
        # tombstones those of the writer before it
        with ChangelogStore(kafka, timeout_seconds=30) as owner:
            got = owner.restore([p])["fraud"]
            assert_same(decode_state(orjson.loads(encode_payload(states[-1]))), got.state)
            assert got.positions == {("predictions", p): 3 * BATCH}
            again = Engine(SETTINGS)
            again.restore_model("fraud", got.state["engine"])
            again.process(next(batches(RECORDS[3 * BATCH : 4 * BATCH])))
            assert not again.models["fraud"].reference_ready
            state = {"engine": again.model_state("fraud"), "sinks": {}}
            owner.write({"fraud": state}, {("predictions", p): 4 * BATCH})
            # its own copy of every segment, then the first writer's tombstoned
            assert owner.last_write.segments > 0 and owner.last_write.tombstones > 0
            owner_id = owner.writer_id.encode()
        with ChangelogStore(kafka, timeout_seconds=30) as third:
            assert_same(decode_state(orjson.loads(encode_payload(state))), third.restore([p])["fraud"].state)
        live = {}
        for r in raw_records(broker, store.topic):
            live[r.key] = r.value
        segments = [k for k, v in live.items() if v is not None and len(k.split(b"\x00")[-1]) == 64]
        assert segments and all(k.split(b"\x00")[1] == owner_id for k in segments)
    finally:
        store.close()


def test_a_state_whose_segment_is_missing_is_not_restored():
    """Segments written but the state not (a crash): the state before stays; a segment
    tombstoned or damaged under a newer state: the one before it is restored."""
    engine = Engine(SETTINGS)
    feed = batches(RECORDS[:REFERENCE])
    encoder, writer = StateEncoder(50_000), uuid.uuid4().hex
    written = []
    for i in range(3):
        engine.process(next(feed))
        state = {"engine": engine.model_state("fraud")}
        enc = encoder.encode(state)
        recs = plan_records(
            "fraud",
            enc.main,
            {("p", 0): i},
            state_id=uuid.uuid4().hex,
            writer=writer,
            segments=[(d, enc.segment(d)) for d in enc.segments],
        )
        written.append((decode_state(orjson.loads(encode_payload(state))), recs))

    def restored(feeds):
        r = Reassembler()
        for key, value, headers in feeds:
            r.feed(key, value, headers)
        return r.result().get("fraud")

    log = [(r.key, r.value, r.headers) for _, recs in written[:2] for r in recs]
    assert_same(written[1][0], restored(log).state)
    crashed = [(r.key, r.value, r.headers) for r in written[2][1][:-1]]  # its segments, not its state
    assert restored(log + crashed).positions == {("p", 0): 1}
    newest = [(r.key, r.value, r.headers) for r in written[2][1]]
    assert restored(log + newest).positions == {("p", 0): 2}
    # a segment of the newest state (one of its own, not shared with the state before) tombstoned
    own = [r for r in written[2][1] if r.key not in {x.key for x in written[1][1]} and r.key != b"fraud"]
    gone = log + newest + [(own[0].key, None, [])]
    got = restored(gone)
    assert_same(written[1][0], got.state)
    assert got.positions == {("p", 0): 1}
    damaged = log + [(k, (v[:-1] + b" ") if k == own[0].key else v, h) for k, v, h in newest]
    assert restored(damaged).positions == {("p", 0): 1}
