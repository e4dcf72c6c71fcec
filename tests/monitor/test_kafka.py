"""The service against a real Kafka-protocol broker (Tansu, started by conftest)."""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from driftline.app import Service
from driftline.cli import main
from driftline.monitor.config import load_settings
from driftline.monitor.decode import DecodedBatch
from tests.monitor.streams import feedback_for, prediction_events, to_jsonl
from tests.support.runs import QUICK_SESSION_MS
from tests.support.topics import produce as fast_produce

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def produce(broker, topic, events, raw=()):
    """``events`` (keyed by model), then the ``raw`` (key, value) records, to ``topic``."""
    records = [(e["model"].encode(), orjson.dumps(e)) for e in events]
    fast_produce(broker.bootstrap_servers, topic, [*records, *raw])


def settings_for(broker, topics, tmp_path, **extra):
    base = dict(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{topics['predictions']}",
            "predictions_topic": topics["predictions"],
            "feedback_topic": topics["feedback"],
            "dead_letter_topic": topics["dead_letter"],
            "session_timeout_ms": QUICK_SESSION_MS,
            "poll_timeout_ms": 200,
        },
        defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}},
        prometheus={"enabled": False},
        state_dir=tmp_path / "state",
        alarms_jsonl=tmp_path / "alarms.jsonl",
        checkpoint_interval_seconds=0,
    )
    return load_settings(**{**base, **extra})


class Running:
    """A Service in a thread; stop() joins it and returns its exit code.

    ``start=False`` builds the service without starting it, so that a spy can be
    installed before its first batch; start() then starts it. Other keyword arguments go
    to :class:`Service`."""

    def __init__(self, settings, *, start=True, **service_kwargs):
        self.service = Service(settings, **service_kwargs)
        self.stop_event = threading.Event()
        self.code = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        if start:
            self.start()

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        self.code = self.service.run(self.stop_event)

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.code


def read_alarms(path):
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_kafka_run_equals_replay_and_dead_letters_bad_records(broker, topics, tmp_path):
    fraud = prediction_events(6_000, model="fraud", seed=1, shift_at=4_000, shift=0.8)
    churn = prediction_events(4_000, model="churn", seed=2)
    preds = [e for pair in zip(fraud, churn, strict=False) for e in pair] + fraud[len(churn) :]
    fb = feedback_for(fraud, seed=3, flip_after=4_500)
    bad = [
        (b"fraud", b"{oops"),
        (b"fraud", orjson.dumps({"model": "fraud", "features": {}})),
        (b"churn", orjson.dumps({"model": "churn", "id": "z", "features": []})),
    ]
    produce(broker, topics["predictions"], preds, raw=bad)
    running = Running(settings_for(broker, topics, tmp_path))
    svc = running.service
    wait_for(lambda: svc.stats.predictions + svc.stats.invalid >= len(preds) + len(bad), 90, "predictions consumed")
    produce(broker, topics["feedback"], fb)  # labels arrive after their predictions, as in life
    wait_for(lambda: svc.stats.feedback >= len(fb), 60, "feedback consumed")
    assert running.stop() == 0
    kafka_alarms = read_alarms(tmp_path / "alarms.jsonl")

    # the same events through `driftline replay`
    (tmp_path / "p.jsonl").write_bytes(to_jsonl(preds) + b"".join(v + b"\n" for _, v in bad))
    (tmp_path / "f.jsonl").write_bytes(to_jsonl(fb))
    cfg = tmp_path / "replay.yml"
    cfg.write_text("defaults:\n  reference: {size: 2000}\n  window: {size: 1000}\n  performance: {window: 500}\n")
    out = tmp_path / "replay-alarms.jsonl"
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(tmp_path / "p.jsonl"),
                "--feedback",
                str(tmp_path / "f.jsonl"),
                "--config",
                str(cfg),
                "--alarms",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    replay_alarms = read_alarms(out)
    key = lambda a: (a["model"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])  # noqa: E731
    assert sorted(kafka_alarms, key=key) == sorted(replay_alarms, key=key)
    kinds = {(a["model"], a["kind"]) for a in kafka_alarms}
    assert ("fraud", "feature_drift") in kinds and ("fraud", "concept_drift") in kinds
    assert not [a for a in kafka_alarms if a["model"] == "churn"]
    drift = [a for a in kafka_alarms if a["kind"] == "feature_drift"]
    assert drift[0]["feature"] == "x0" and drift[0]["first_index"] == 4000

    # malformed records: in the dead-letter topic with their reasons, original bytes kept
    consumer = KafkaConsumer(
        topics["dead_letter"],
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = {m.value: dict(m.headers)["driftline-reason"].decode() for m in consumer}
    consumer.close()
    assert letters == {b"{oops": "invalid_json", bad[1][1]: "missing_field", bad[2][1]: "wrong_type"}
    replay_dead = (tmp_path / "replay-alarms.jsonl.dead-letters.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(x)["reason"] for x in replay_dead) == ["invalid_json", "missing_field", "wrong_type"]


@pytest.mark.parametrize("decode, fast_parser", [("always", True), ("never", False)])
def test_decoded_columns_once_the_schema_is_shared(broker, topics, tmp_path, monkeypatch, decode, fast_parser):
    """After a model's reference is built, its features arrive as columns, decoded by the
    consumer process (the engine's schema is shared with it) or by the service; the
    alarms stay those of a replay either way."""
    from driftline.monitor.sources import ProcessKafkaSource

    monkeypatch.setattr(ProcessKafkaSource, "_DECODE", decode)
    polled = {"decoded": 0, "records": 0}  # batches that arrived decoded, or as records
    decoded = ProcessKafkaSource._decoded

    def counting_decoded(self, batch):
        if batch or isinstance(batch, DecodedBatch):
            polled["decoded" if isinstance(batch, DecodedBatch) else "records"] += 1
        out = decoded(self, batch)
        assert isinstance(out, DecodedBatch)  # the service gets a decoded batch either way
        return out

    monkeypatch.setattr(ProcessKafkaSource, "_decoded", counting_decoded)
    events = prediction_events(9_000, model="fraud", seed=8, shift_at=6_000, shift=0.8)
    produce(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    settings = settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"max_poll_records": 500, "fast_record_parser": fast_parser})}
    )
    running = Running(settings, start=False)
    svc = running.service
    seen = {"columns": 0, "raw": 0}
    process = svc.engine.process

    def counting(batch, result=None):
        for p in batch.predictions.values():
            seen["columns" if p.columns is not None else "raw"] += len(p)
        return process(batch, result)

    svc.engine.process = counting  # before the first batch: every event is seen
    running.start()
    wait_for(lambda: svc.stats.predictions >= len(events), 90, "predictions consumed")
    assert running.stop() == 0
    assert seen["columns"] + seen["raw"] == len(events)
    assert seen["columns"] >= 2_000 and seen["raw"] >= 2_000  # the reference came raw
    assert (
        polled["decoded" if decode == "always" else "records"] >= 18
        and not polled["records" if decode == "always" else "decoded"]
    )
    (tmp_path / "p.jsonl").write_bytes(to_jsonl(events))
    cfg = tmp_path / "replay.yml"
    cfg.write_text("defaults:\n  reference: {size: 2000}\n  window: {size: 1000}\n  performance: {window: 500}\n")
    out = tmp_path / "replay-alarms.jsonl"
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(tmp_path / "p.jsonl"),
                "--config",
                str(cfg),
                "--alarms",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    key = lambda a: (a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])  # noqa: E731
    alarms = sorted(read_alarms(tmp_path / "alarms.jsonl"), key=key)
    assert alarms == sorted(read_alarms(out), key=key)
    assert [(a["feature"], a["first_index"]) for a in alarms if a["kind"] == "feature_drift"] == [("x0", 6000)]


class PauseAfter:
    """An ``on_batch`` hook that holds the service once it has consumed ``count``
    predictions, until released: the test stops it there, mid-stream by construction
    rather than by speed."""

    def __init__(self, count):
        self.count = count
        self.paused = threading.Event()
        self.release = threading.Event()

    def __call__(self, stats):
        if stats.predictions >= self.count and not self.paused.is_set():
            self.paused.set()
            assert self.release.wait(120), "the test never released the service"

    def stop(self, running):
        """Stop ``running`` while it is held here: it finishes no further batch."""
        assert self.paused.wait(90), f"the service never reached {self.count} predictions"
        running.stop_event.set()
        self.release.set()
        return running.stop()


def committed_total(broker, group, topic):
    """The group's committed offsets on ``topic``'s two partitions, summed."""
    from kafka import TopicPartition

    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        return sum(probe.committed(TopicPartition(topic, p)) or 0 for p in (0, 1))
    finally:
        probe.close()


@pytest.mark.parametrize("consumer_process", [True, False], ids=["consumer-process", "in-process"])
def test_shutdown_mid_stream_commits_and_resumes_without_loss(broker, topics, tmp_path, consumer_process):
    events = prediction_events(20_000, model="fraud", seed=5, shift_at=15_000, shift=0.8)
    produce(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"consumer_process": consumer_process, "max_poll_records": 500})
        }
    )
    pause = PauseAfter(3_000)
    first = Running(settings, on_batch=pause)
    assert pause.stop(first) == 0  # held after its batch that reached 3,000: mid-stream
    consumed_first = first.service.stats.predictions
    assert 3_000 <= consumed_first < len(events)
    assert committed_total(broker, settings.kafka.group_id, topics["predictions"]) == consumed_first

    second = Running(settings)  # resumes from the committed offsets and the checkpoint
    # Once the group's commit is at the end of both partitions, the second instance has
    # read every record it would ever read: a record counted twice would have shown.
    wait_for(
        lambda: committed_total(broker, settings.kafka.group_id, topics["predictions"]) >= len(events),
        90,
        "the rest consumed and committed",
    )
    assert second.stop() == 0
    assert first.service.stats.predictions + second.service.stats.predictions == len(events)
    alarms = read_alarms(tmp_path / "alarms.jsonl")
    assert [(a["feature"], a["first_index"]) for a in alarms if a["kind"] == "feature_drift"] == [("x0", 15000)]


def test_consumer_process_exits_when_the_service_process_dies(broker, topics, tmp_path):
    """A killed service must not leave its consumer process behind (it would hold a
    group membership and a core)."""
    import os
    import subprocess
    import sys

    events = prediction_events(30_000, model="fraud", seed=7)
    produce(broker, topics["predictions"], events)  # enough that the consumer is busy prefetching
    script = tmp_path / "die.py"
    script.write_text(
        "import os, sys, time\n"
        "from driftline.monitor.config import KafkaSettings\n"
        "from driftline.monitor.sources import ProcessKafkaSource\n"
        "if __name__ == '__main__':\n"
        f"    s = KafkaSettings(bootstrap_servers={broker.bootstrap_servers!r}, group_id='die',\n"
        f"                      predictions_topic={topics['predictions']!r}, feedback_topic={topics['feedback']!r},\n"
        "                      session_timeout_ms=6000, max_poll_records=500)\n"
        "    src = ProcessKafkaSource(s)\n"
        "    while not src.poll():\n"
        "        pass\n"
        "    print(src._proc.pid, flush=True)\n"
        "    os._exit(0)  # no close(): the process just disappears\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=os.getcwd())
    child = int(out.stdout.split()[0])

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/status") as fh:
                return "State:\tZ" in fh.read()
        except FileNotFoundError:
            return True

    try:
        wait_for(gone, 30, f"consumer process {child} to exit")
    finally:
        if not gone():
            os.kill(child, 9)  # clean up what the test started, even when it fails


@pytest.mark.parametrize("consumer_process", [True, False], ids=["consumer-process", "in-process"])
def test_a_stale_checkpoint_does_not_rewind_past_the_groups_commit(broker, topics, tmp_path, consumer_process):
    """Instance A checkpoints at X and stops; instance B (its own state) goes on and
    commits Y > X; A restarts: it resumes from Y (its checkpoint is older than the
    stream), counts nothing twice and never moves the commit back."""
    events = prediction_events(12_000, model="fraud", seed=9)
    produce(broker, topics["predictions"], events[:4_000])

    def settings(state):
        s = settings_for(broker, topics, tmp_path / state)
        return s.model_copy(update={"kafka": s.kafka.model_copy(update={"consumer_process": consumer_process})})

    a = Running(settings("a"))
    wait_for(lambda: a.service.stats.predictions >= 4_000, 60, "A consumed the first part")
    assert a.stop() == 0
    produce(broker, topics["predictions"], events[4_000:])
    b = Running(settings("b"))
    wait_for(lambda: b.service.stats.predictions >= 8_000, 60, "B consumed the rest")
    assert b.stop() == 0

    again = Running(settings("a"))
    # One more record at the end of each partition: once A has counted both, it has read
    # past everything it could have rewound to (a partition is read in order), so a
    # rewind would have been counted too.
    sentinels = prediction_events(2, model="fraud", seed=10)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for partition, event in enumerate(sentinels):
        producer.send(topics["predictions"], key=b"fraud", value=orjson.dumps(event), partition=partition)
    producer.flush()
    producer.close()
    wait_for(lambda: again.service.stats.predictions >= 2, 60, "A read the two new records")
    group = settings("a").kafka.group_id
    wait_for(lambda: committed_total(broker, group, topics["predictions"]) >= len(events) + 2, 30, "A committed them")
    assert again.stop() == 0
    assert again.service.stats.predictions == 2
    assert committed_total(broker, group, topics["predictions"]) == len(events) + 2
