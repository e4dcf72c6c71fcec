"""Dead letters and alarms are never lost, through the real broker and a restart.

Hostile records (two values over 1 MB, raw non-UTF-8 bytes, invalid bytes inside a JSON
string, in an id and in a feature) among valid events all reach the dead-letter topic
with their reason, original size and hash, cut to fit when they are too large; offsets
are committed only after. A dead-letter writer or an alarm sink (JSONL, Kafka) that
cannot flush holds the commit; once it can again, and after a restart, nothing is lost.

Outages of the dead-letter topic and of the alarm topic are made on a private broker
frozen with SIGSTOP (the session broker keeps serving the events); the JSONL sink is
pointed at a directory, then the directory is removed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from driftline.app import Service
from driftline.cli import main
from driftline.demo.embedded_broker import EmbeddedBroker
from driftline.monitor.config import load_settings
from driftline.monitor.sources import KafkaSource
from driftline.sinks.deadletter import KafkaDeadLetters
from driftline.sinks.exceptions import SinkError
from driftline.sinks.jsonl import JsonlSink
from driftline.sinks.kafka import KafkaAlarmSink
from tests.monitor.streams import prediction_events, to_jsonl
from tests.support.runs import QUICK_SESSION_MS, read_topic

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.timeout(400),
    # kafka-python 3.0 leaves the socket of a refused or timed-out connection to
    # the garbage collector (its leak, not driftline's; see test_kafka_sink.py)
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]

REPO = Path(__file__).resolve().parents[2]
LIMIT = 1_000_000  # kafka.dead_letter_max_bytes's default
# How long a flush to a frozen broker waits for its acknowledgements before it fails
# (the broker never answers while frozen: a longer wait only makes the test wait)
FROZEN_FLUSH_S = 1.0

VALID_FEATURE = b'"features":{"x0":0.1,"x1":0.2,"x2":0.3,"country":"DE"},"prediction":0.5}'
HOSTILE = [
    # (key, value, reason)
    (b"fraud", b"<" + b"x" * 1_500_000 + b">", "invalid_json"),  # over 1 MB, not JSON
    (b"fraud", orjson.dumps({"model": "fraud", "blob": "y" * 2_500_000}), "missing_field"),  # over 1 MB, JSON
    (b"\xff\xfe-key", b"\xff\xfe\x00\x01 raw bytes \xc3\x28", "invalid_json"),  # not UTF-8 at all, key neither
    (
        b"fraud",
        b'{"model":"fraud","version":"v1","id":"p-\xff\xfe","ts":1700000000.5,' + VALID_FEATURE,
        "invalid_json",
    ),  # an invalid byte inside a JSON string
    (
        b"fraud",
        b'{"model":"fraud","version":"v1","id":"bad-feature","ts":1700000000.5,'
        b'"features":{"x0":0.1,"x1":0.2,"x2":0.3,"country":"D\xc3\x28"},"prediction":0.5}',
        "wrong_type",
    ),  # an invalid byte inside a feature's string: no Python value holds it (engine)
]


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def produce_with_hostile(broker, topic, events, hostile=HOSTILE):
    """Valid events with the hostile records spread among them; returns the hostile
    records' positions ``{(topic, partition, offset): (key, value, reason)}`` and the
    end offset of each partition."""
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=10, max_request_size=8_000_000)
    chunk = max(1, len(events) // (len(hostile) + 1))
    futures = []
    for i, h in enumerate([*hostile, None]):
        for e in events[i * chunk : (i + 1) * chunk if h is not None else len(events)]:
            futures.append((p.send(topic, key=e["model"].encode(), value=orjson.dumps(e)), None))
        if h is not None:
            futures.append((p.send(topic, key=h[0], value=h[1]), h))
    p.flush()
    p.close()
    positions, ends = {}, {}
    for future, h in futures:
        md = future.get(timeout=30)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        if h is not None:
            positions[(topic, md.partition, md.offset)] = h
    return positions, ends


def produce(broker, topic, events):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=10)
    futures = [p.send(topic, key=e["model"].encode(), value=orjson.dumps(e)) for e in events]
    p.flush()
    p.close()
    ends = {}
    for f in futures:
        md = f.get(timeout=30)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    return ends


def settings_for(broker, topics, tmp_path, **extra):
    kafka = {
        "bootstrap_servers": broker.bootstrap_servers,
        "group_id": f"g-{topics['predictions']}",
        "predictions_topic": topics["predictions"],
        "feedback_topic": topics["feedback"],
        "dead_letter_topic": topics["dead_letter"],
        "session_timeout_ms": QUICK_SESSION_MS,
        "poll_timeout_ms": 200,
        "max_poll_records": 1000,
        **extra.pop("kafka", {}),
    }
    base = dict(
        kafka=kafka,
        defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}},
        prometheus={"enabled": False},
        state_dir=tmp_path / "state",
        alarms_jsonl=tmp_path / "alarms.jsonl",
        checkpoint_interval_seconds=0,
    )
    return load_settings(**{**base, **extra})


def committed(bootstrap, group, topic, partitions=(0, 1)):
    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: probe.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        probe.close()


def at_end(broker, group, topic, ends):
    got = committed(broker.bootstrap_servers, group, topic)
    return all((got.get(p) or 0) >= end for p, end in ends.items())


def held(broker, group, topic, positions):
    """True when no committed offset has passed a hostile record of ``positions``."""
    got = committed(broker.bootstrap_servers, group, topic)
    return all((got.get(p) or 0) <= off for (_, p, off) in positions)


class Running:
    """A Service in a thread; stop() joins it and returns its exit code."""

    def __init__(self, service):
        self.service = service
        self.stop_event = threading.Event()
        self.code = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.code = self.service.run(self.stop_event)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self, timeout=120):
        self.stop_event.set()
        self.thread.join(timeout=timeout)
        assert not self.thread.is_alive(), "the service did not stop"
        if self.error is not None:
            raise self.error
        return self.code


class RecordingDeadLetters(KafkaDeadLetters):
    """Notes which dead letters the broker acknowledged (by source position) and how
    many flushes failed."""

    def __init__(self, settings, acked, **kw):
        super().__init__(settings, **kw)
        self.acked = acked
        self.failures = 0

    def flush(self):
        before = list(self._pending)
        try:
            super().flush()
        except SinkError:
            self.failures += 1
            raise
        finally:
            still = set(map(id, self._pending))
            self.acked.update((e.item.topic, e.item.partition, e.item.offset) for e in before if id(e) not in still)


class CheckedSource(KafkaSource):
    """A KafkaSource whose every commit is checked: a hostile record below the committed
    offset must have been acknowledged by the dead-letter topic first."""

    def __init__(self, settings, positions, acked):
        super().__init__(settings)
        self.positions = positions
        self.acked = acked
        self.violations = []
        self.commits = 0

    def commit(self, offsets):
        for topic, partition, offset in self.positions:
            if offsets.get((topic, partition), 0) > offset and (topic, partition, offset) not in self.acked:
                self.violations.append((topic, partition, offset, dict(offsets)))
        done = super().commit(offsets)
        self.commits += 1
        return done


@contextmanager
def private_broker(tmp_path, name, topics):
    with EmbeddedBroker(log_path=tmp_path / f"{name}.log") as b:
        b.create_topics(topics, partitions=2)
        yield b


def check_dead_letters(records, positions):
    """Every hostile record is among ``records`` with its reason, original key, size and
    hash, its value intact or cut to fit (and then marked truncated)."""
    by_source = {}
    for r in records:
        by_source.setdefault(dict(r.headers)["driftline-source"].decode(), r)
    for (topic, partition, offset), (key, value, reason) in positions.items():
        r = by_source.get(f"{topic}/{partition}/{offset}")
        assert r is not None, f"the dead letter of {topic}/{partition}/{offset} ({reason}) is missing"
        h = dict(r.headers)
        assert h["driftline-reason"].decode() == reason, (offset, h["driftline-reason"], h["driftline-detail"])
        assert r.key == key
        assert int(h["driftline-original-size"]) == len(value)
        assert h["driftline-sha256"].decode() == hashlib.sha256(value).hexdigest()
        size = len(r.key or b"") + len(r.value) + sum(len(k) + len(v) for k, v in r.headers)
        assert size <= LIMIT
        if len(value) > LIMIT:
            assert h["driftline-truncated"] == b"true"
            assert value.startswith(r.value) and len(r.value) > LIMIT - 10_000
        else:
            assert h["driftline-truncated"] == b"false"
            assert r.value == value


def replay_alarms(tmp_path, events):
    """The alarms of ``driftline replay`` over the same events (the reference)."""
    (tmp_path / "replay-p.jsonl").write_bytes(to_jsonl(events))
    cfg = tmp_path / "replay.yml"
    cfg.write_text("defaults:\n  reference: {size: 2000}\n  window: {size: 1000}\n  performance: {window: 500}\n")
    out = tmp_path / "replay-alarms.jsonl"
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(tmp_path / "replay-p.jsonl"),
                "--config",
                str(cfg),
                "--alarms",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return [orjson.loads(x) for x in out.read_bytes().splitlines() if x.strip()]


def before_first_alarm(broker, group, topic, expected):
    """True when no committed offset has passed the record that raised the first alarm
    (the events are all one model's, in one partition: an alarm's last_index is that
    record's offset). Batches before it had nothing to flush and were committed."""
    first = min(a["last_index"] for a in expected)
    return all((c or 0) <= first for c in committed(broker.bootstrap_servers, group, topic).values())


def alarm_key(a):
    return (a["model"], a["version"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])


# ---- dead letters --------------------------------------------------------------------------


def test_hostile_records_all_reach_the_dead_letter_topic_before_the_commit(broker, topics, tmp_path):
    events = prediction_events(3_000, model="fraud", seed=41)
    positions, ends = produce_with_hostile(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    acked: set = set()
    source = CheckedSource(settings.kafka, positions, acked)
    letters = RecordingDeadLetters(settings.kafka, acked)
    running = Running(Service(settings, source=source, dead_letters=letters))
    try:
        svc = running.service
        # records over 1 MB are fetched (kafka-python's max_partition_fetch_bytes is 1 MiB)
        wait_for(
            lambda: svc.stats.predictions + svc.stats.invalid >= len(events) + len(HOSTILE),
            120,
            "every record consumed",
        )
        wait_for(
            lambda: at_end(broker, settings.kafka.group_id, topics["predictions"], ends),
            60,
            "the offsets committed to the end",
        )
    finally:
        assert running.stop() == 0
    # the record with a bad feature string decodes as a prediction; the engine dead-letters it
    assert svc.stats.invalid == len(HOSTILE) and svc.stats.predictions == len(events) + 1
    assert source.violations == [], "offsets were committed past a dead letter not yet written"
    assert source.commits > 0 and letters.failures == 0
    check_dead_letters(read_topic(broker.bootstrap_servers, topics["dead_letter"], len(HOSTILE)), positions)


def test_a_dead_letter_topic_that_cannot_be_written_holds_the_commit_until_it_can(broker, topics, tmp_path):
    """The dead-letter topic lives on a private broker, frozen while the first instance
    runs: its flushes fail, the instance polls nothing more (what it holds stays
    bounded) and nothing is committed past the dead letters; the instance is stopped
    while it is still frozen. The broker is thawed and a second instance (same
    group, same state) writes every dead letter, then commits to the end."""
    events = prediction_events(3_000, model="fraud", seed=42)
    positions, ends = produce_with_hostile(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    group = settings.kafka.group_id
    with private_broker(tmp_path, "dlq", [topics["dead_letter"]]) as dlq:
        dlq_kafka = settings.kafka.model_copy(update={"bootstrap_servers": dlq.bootstrap_servers})
        acked: set = set()
        with dlq.frozen():
            source = CheckedSource(settings.kafka, positions, acked)
            letters = RecordingDeadLetters(dlq_kafka, acked, flush_timeout_seconds=FROZEN_FLUSH_S)
            running = Running(Service(settings, source=source, dead_letters=letters))
            try:
                svc = running.service
                wait_for(lambda: letters.failures >= 1, 180, "a dead-letter flush that fails")
                failed, seen = letters.failures, svc.stats.records
                # the service polls nothing more and retries the flush ...
                wait_for(lambda: letters.failures >= failed + 2, 120, "two more failed flushes")
                assert svc.stats.records == seen
                # ... and nothing was committed past a dead letter
                assert held(broker, group, topics["predictions"], positions)
            finally:
                assert running.stop() == 0
            assert held(broker, group, topics["predictions"], positions)
            assert source.violations == [] and not acked
        # thawed: a restart writes them all and commits
        source = CheckedSource(settings.kafka, positions, acked)
        letters = RecordingDeadLetters(dlq_kafka, acked, flush_timeout_seconds=10.0)
        running = Running(Service(settings, source=source, dead_letters=letters))
        try:
            wait_for(
                lambda: at_end(broker, group, topics["predictions"], ends),
                180,
                "the offsets committed to the end after the restart",
            )
        finally:
            assert running.stop() == 0
        assert source.violations == []
        assert set(positions) <= acked
        check_dead_letters(read_topic(dlq.bootstrap_servers, topics["dead_letter"], len(HOSTILE)), positions)


def test_a_dead_letter_topic_back_while_running_gets_every_dead_letter(broker, topics, tmp_path):
    """Frozen, then thawed while the same instance runs: the dead letters it kept are
    written at a later flush and the commit follows."""
    events = prediction_events(2_000, model="fraud", seed=43)
    positions, ends = produce_with_hostile(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    group = settings.kafka.group_id
    with private_broker(tmp_path, "dlq", [topics["dead_letter"]]) as dlq:
        dlq_kafka = settings.kafka.model_copy(update={"bootstrap_servers": dlq.bootstrap_servers})
        acked: set = set()
        source = CheckedSource(settings.kafka, positions, acked)
        letters = RecordingDeadLetters(dlq_kafka, acked, flush_timeout_seconds=FROZEN_FLUSH_S)
        with dlq.frozen():
            running = Running(Service(settings, source=source, dead_letters=letters))
            svc = running.service
            try:
                wait_for(lambda: letters.failures >= 1, 180, "a dead-letter flush that fails")
                failed, seen = letters.failures, svc.stats.records
                wait_for(lambda: letters.failures >= failed + 2, 120, "two more failed flushes, polling nothing")
                assert svc.stats.records == seen
                assert held(broker, group, topics["predictions"], positions)
            except BaseException:
                running.stop()
                raise
        try:
            wait_for(
                lambda: at_end(broker, group, topics["predictions"], ends),
                180,
                "the offsets committed to the end once the dead letters were written",
            )
        finally:
            assert running.stop() == 0
        assert source.violations == [] and set(positions) <= acked
        check_dead_letters(read_topic(dlq.bootstrap_servers, topics["dead_letter"], len(HOSTILE)), positions)


def test_driftline_run_dead_letters_hostile_records(broker, topics, tmp_path):
    """The same hostile records through a `driftline run` subprocess (consumer process,
    default dead-letter writer), stopped by SIGTERM."""
    events = prediction_events(3_000, model="fraud", seed=44)
    positions, ends = produce_with_hostile(broker, topics["predictions"], events)
    group = f"run-{topics['predictions']}"
    cfg = tmp_path / "driftline.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "alarms_jsonl": str(tmp_path / "alarms.jsonl"),
                "checkpoint_interval_seconds": 0,
                "prometheus": {"enabled": False},
                "defaults": {"reference": {"size": 2000}, "window": {"size": 1000}},
                "kafka": {
                    "bootstrap_servers": broker.bootstrap_servers,
                    "group_id": group,
                    "predictions_topic": topics["predictions"],
                    "feedback_topic": topics["feedback"],
                    "dead_letter_topic": topics["dead_letter"],
                    "session_timeout_ms": QUICK_SESSION_MS,
                    "poll_timeout_ms": 200,
                    "max_poll_records": 1000,
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "run", "--config", str(cfg), "--log-level", "INFO"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: at_end(broker, group, topics["predictions"], ends) or proc.poll() is not None,
                240,
                "the offsets committed to the end",
            )
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, log_path.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert "MessageSizeTooLarge" not in text and "could not flush" not in text, text[-3000:]
    check_dead_letters(read_topic(broker.bootstrap_servers, topics["dead_letter"], len(HOSTILE)), positions)


# ---- alarm sinks ------------------------------------------------------------------------


class CountingJsonl(JsonlSink):
    """A JSONL sink that counts its failed flushes."""

    def __init__(self, path):
        super().__init__(path)
        self.failures = 0

    def flush(self):
        try:
            super().flush()
        except SinkError:
            self.failures += 1
            raise


class CountingKafkaAlarms(KafkaAlarmSink):
    """A Kafka alarm sink that counts its failed flushes."""

    failures = 0

    def flush(self):
        try:
            super().flush()
        except SinkError:
            self.failures += 1
            raise


def test_a_jsonl_sink_that_cannot_write_holds_the_commit_and_nothing_is_lost_after_a_restart(broker, topics, tmp_path):
    events = prediction_events(6_000, model="fraud", seed=45, shift_at=4_000, shift=0.8)
    ends = produce(broker, topics["predictions"], events)
    assert len(ends) == 1  # one model, one partition: offsets are the model's event indices
    expected = replay_alarms(tmp_path, events)
    assert expected
    path = tmp_path / "alarms.jsonl"
    path.mkdir()  # a directory where the file should be: every flush fails
    settings = settings_for(broker, topics, tmp_path, alarms_jsonl=path)
    group = settings.kafka.group_id
    sink = CountingJsonl(path)
    running = Running(Service(settings, sinks=[sink]))
    svc = running.service
    try:
        # a flush of alarms that fails (a flush may fail before the first alarm: the file
        # cannot even be opened)
        wait_for(lambda: sink.failures >= 1 and svc.stats.alarms > 0, 180, "a flush of alarms that fails")
        assert sink.pending == svc.stats.alarms
        failed, seen = sink.failures, svc.stats.records
        wait_for(lambda: sink.failures >= failed + 2, 120, "two more failed flushes, polling nothing")
        assert svc.stats.records == seen and sink.pending == svc.stats.alarms  # held: bounded
        assert before_first_alarm(broker, group, topics["predictions"], expected)
    finally:
        assert running.stop() == 0
    assert before_first_alarm(broker, group, topics["predictions"], expected)
    path.rmdir()  # fixed: the next instance can write the file
    running = Running(Service(settings, sinks=[JsonlSink(path)]))
    try:
        wait_for(
            lambda: at_end(broker, group, topics["predictions"], ends),
            180,
            "the offsets committed to the end after the restart",
        )
    finally:
        assert running.stop() == 0
    got = [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]
    assert sorted(map(alarm_key, got)) == sorted(map(alarm_key, expected))


def test_a_kafka_alarm_sink_that_cannot_publish_holds_the_commit_and_nothing_is_lost_after_a_restart(
    broker, topics, tmp_path
):
    events = prediction_events(6_000, model="fraud", seed=46, shift_at=4_000, shift=0.8)
    ends = produce(broker, topics["predictions"], events)
    assert len(ends) == 1  # one model, one partition: offsets are the model's event indices
    expected = replay_alarms(tmp_path, events)
    assert expected
    settings = settings_for(broker, topics, tmp_path)
    group = settings.kafka.group_id
    with private_broker(tmp_path, "alarms", [topics["alarms"]]) as private:
        alarm_kafka = settings.kafka.model_copy(
            update={"bootstrap_servers": private.bootstrap_servers, "alarms_topic": topics["alarms"]}
        )
        with private.frozen():
            sink = CountingKafkaAlarms(alarm_kafka, flush_timeout_seconds=FROZEN_FLUSH_S)
            running = Running(Service(settings, sinks=[sink]))
            svc = running.service
            try:
                # a flush fails as soon as the sink has something to publish (on a loaded
                # machine an empty flush to the frozen broker may time out before any alarm)
                wait_for(lambda: sink.failures >= 1 and svc.stats.alarms > 0, 180, "a flush of alarms that fails")
                wait_for(lambda: sink.pending == svc.stats.alarms, 60, "the alarms kept")
                failed, seen = sink.failures, svc.stats.records
                wait_for(lambda: sink.failures >= failed + 2, 120, "two more failed flushes, polling nothing")
                assert svc.stats.records == seen  # held: what the sink keeps stays bounded
                assert before_first_alarm(broker, group, topics["predictions"], expected)
            finally:
                assert running.stop() == 0
            assert before_first_alarm(broker, group, topics["predictions"], expected)
        # thawed: a restart publishes every alarm and commits
        sink = KafkaAlarmSink(alarm_kafka, flush_timeout_seconds=10.0)
        running = Running(Service(settings, sinks=[sink]))
        try:
            wait_for(
                lambda: at_end(broker, group, topics["predictions"], ends),
                180,
                "the offsets committed to the end after the restart",
            )
            assert sink.pending == 0
        finally:
            assert running.stop() == 0
        got = [
            orjson.loads(r.value)
            for r in read_topic(private.bootstrap_servers, topics["alarms"], len(expected), timeout=30)
        ]
        # at least once: an alarm in flight when the first instance stopped may arrive twice
        assert set(map(alarm_key, got)) == set(map(alarm_key, expected))


# ---- decoding ---------------------------------------------------------------------------


def test_invalid_bytes_inside_strings_are_dead_lettered_never_raised():
    """msgspec checks the UTF-8 of the strings it decodes (an id: ``invalid_json`` at
    decoding) but keeps ``features`` raw: an invalid byte inside a feature's string is
    dead-lettered by the engine (``wrong_type``), before the model's schema is known
    and after, never raised out of it."""
    from driftline.monitor.decode import Record, decode_batch
    from driftline.monitor.engine import Engine

    events = prediction_events(300, model="fraud", seed=47)
    good = [Record("p", 0, i, 0, b"fraud", orjson.dumps(e)) for i, e in enumerate(events)]
    bad = {
        1000 + i: (Record("p", 0, 1000 + i, 0, key, value), reason)
        for i, (key, value, reason) in enumerate(HOSTILE[2:])
    }
    settings = load_settings(
        defaults={"reference": {"size": 100}, "window": {"size": 50}}, prometheus={"enabled": False}
    )
    engine = Engine(settings)
    # the first batch builds the reference (schema unknown), the second runs the windows
    for batch in (
        good[:50] + [r for r, _ in bad.values()] + good[50:150],
        good[150:200] + [r._replace(offset=r.offset + 100) for r, _ in bad.values()] + good[200:],
    ):
        decoded = decode_batch(batch, "p", "f")
        dead = decoded.dead_letters + engine.process(decoded).dead_letters
        shift = 0 if batch[50].offset == 1000 else 100
        assert {d.offset - shift: d.reason for d in dead} == {o: reason for o, (_, reason) in bad.items()}
