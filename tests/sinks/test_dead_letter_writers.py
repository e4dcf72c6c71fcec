"""The dead-letter writers (driftline.sinks.deadletter) and the Kafka publisher they share with
the Kafka alarm sink, against a real Kafka-protocol broker (Tansu) and a real file:
records cut to fit with their original size and hash, one refused record never holding
back the others, and nothing sent twice while it is in flight or dropped while the
broker is frozen (SIGSTOP on a private broker)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from contextlib import contextmanager

import orjson
import pytest
from kafka import KafkaProducer

from driftline.demo.embedded_broker import EmbeddedBroker
from driftline.monitor.config import KafkaSettings
from driftline.monitor.decode import DeadLetter
from driftline.sinks.deadletter import FileDeadLetters, KafkaDeadLetters
from driftline.sinks.exceptions import SinkError
from driftline.sinks.kafka import KafkaAlarmSink
from tests.support.runs import read_topic

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.timeout(300),
    # kafka-python 3.0 leaves the socket of a timed-out connection to the garbage
    # collector (its leak, not driftline's; see test_kafka_sink.py)
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
]


def letter(
    offset: int, value: bytes | None, *, key: bytes | None = b"fraud", reason: str = "invalid_json"
) -> DeadLetter:
    return DeadLetter("predictions", 0, offset, key, value, reason, f"detail of {offset}")


def by_offset(records) -> dict[int, object]:
    return {int(dict(r.headers)["driftline-source"].decode().rsplit("/", 1)[1]): r for r in records}


@contextmanager
def private_broker(tmp_path, topics):
    with EmbeddedBroker(log_path=tmp_path / "private-broker.log") as b:
        b.create_topics(topics, partitions=1)
        yield b


def counting_sends(publisher) -> list:
    """Wrap the publisher's producer's send(); returns the list of sent values."""
    producer = publisher._ensure_producer()
    sent: list = []
    send = producer.send

    def counted(topic, **kw):
        sent.append(kw.get("value"))
        return send(topic, **kw)

    producer.send = counted
    return sent


def test_values_too_large_are_cut_to_fit_with_their_size_and_hash(broker, topics) -> None:
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, dead_letter_topic=topics["dead_letter"])
    writer = KafkaDeadLetters(settings, max_bytes=20_000)
    big = os.urandom(50_000)  # not UTF-8 either
    long_key = b"k" * 15_000
    letters = [
        letter(0, big),
        letter(1, b"\xff\xfe tiny", key=b"\xc3\x28"),
        letter(2, None),
        letter(3, b"{}", key=long_key),
    ]
    try:
        writer.write(letters)
        writer.flush()
        assert writer.pending == 0
    finally:
        writer.close()
    got = by_offset(read_topic(broker.bootstrap_servers, topics["dead_letter"], len(letters)))
    assert sorted(got) == [0, 1, 2, 3]
    for r in got.values():
        assert len(r.key or b"") + len(r.value) + sum(len(k) + len(v) for k, v in r.headers) <= 20_000
    h = dict(got[0].headers)
    assert h["driftline-truncated"] == b"true" and h["driftline-original-size"] == b"50000"
    assert h["driftline-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert big.startswith(got[0].value) and 15_000 < len(got[0].value) < 20_000
    assert h["driftline-reason"] == b"invalid_json" and h["driftline-source"] == b"predictions/0/0"
    h = dict(got[1].headers)
    assert got[1].key == b"\xc3\x28" and got[1].value == b"\xff\xfe tiny" and h["driftline-truncated"] == b"false"
    assert dict(got[2].headers)["driftline-original-size"] == b"0" and got[2].value == b""
    h = dict(got[3].headers)  # a key longer than half the limit is cut, its length kept
    assert h["driftline-key-original-size"] == b"15000" and long_key.startswith(got[3].key)
    assert got[3].value == b"{}"


def test_a_record_refused_for_its_size_is_halved_until_it_fits_and_holds_back_no_other(broker, topics) -> None:
    """A producer that refuses records over 20 kB (as a topic with a low
    max.message.bytes would): the 1.5 MB dead letter is cut again until it fits, and the
    small ones around it are written by the same flush."""
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, dead_letter_topic=topics["dead_letter"])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=20_000)
    writer = KafkaDeadLetters(settings, producer=producer)
    big = b"x" * 1_500_000
    try:
        writer.write([letter(0, b"small-11-by"), letter(1, big), letter(2, b"another")])
        writer.flush()
        assert writer.pending == 0
    finally:
        writer.close()
    got = by_offset(read_topic(broker.bootstrap_servers, topics["dead_letter"], 3))
    assert got[0].value == b"small-11-by" and got[2].value == b"another"
    h = dict(got[1].headers)
    assert h["driftline-truncated"] == b"true" and h["driftline-original-size"] == b"1500000"
    assert h["driftline-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert 1024 <= len(got[1].value) < 20_000


def test_a_frozen_broker_keeps_dead_letters_in_flight_until_it_is_back(tmp_path) -> None:
    with private_broker(tmp_path, ["dlq"]) as b:
        writer = KafkaDeadLetters(
            KafkaSettings(bootstrap_servers=b.bootstrap_servers, dead_letter_topic="dlq"), flush_timeout_seconds=2.0
        )
        try:
            writer.write([letter(0, b"first")])
            flush_until_done(writer)  # connected (a loaded machine may take more than 2 s)
            sent = counting_sends(writer)
            letters = [letter(1, b"x" * 1_500_000), letter(2, b"\xff"), letter(3, b"{oops")]
            with b.frozen():
                writer.write(letters)
                for _ in range(2):  # every flush raises; the records stay, sent once
                    with pytest.raises(SinkError, match="3 dead letter"):
                        writer.flush()
                    assert writer.pending == 3
            assert len(sent) == 3
            flush_until_done(writer)  # thawed: a later flush gets the acknowledgements
        finally:
            writer.close()
        got = by_offset(read_topic(b.bootstrap_servers, "dlq", 4))
        assert sorted(got) == [0, 1, 2, 3]
        assert dict(got[1].headers)["driftline-truncated"] == b"true" and got[2].value == b"\xff"


def test_a_frozen_broker_keeps_alarms_in_flight_until_it_is_back(tmp_path, make_alarm) -> None:
    with private_broker(tmp_path, ["alarms"]) as b:
        sink = KafkaAlarmSink(
            KafkaSettings(bootstrap_servers=b.bootstrap_servers, alarms_topic="alarms"), flush_timeout_seconds=2.0
        )
        try:
            sink.write([make_alarm(index=0)])
            flush_until_done(sink)
            sent = counting_sends(sink)
            with b.frozen():
                sink.write([make_alarm(index=i) for i in (1, 2)])
                for _ in range(2):
                    with pytest.raises(SinkError, match="2 alarm"):
                        sink.flush()
                    assert sink.pending == 2
            assert len(sent) == 2
            flush_until_done(sink)  # thawed: a later flush publishes them
        finally:
            sink.close()
        got = read_topic(b.bootstrap_servers, "alarms", 3)
        assert {orjson.loads(r.value)["first_index"] for r in got} == {0, 100, 200}


def test_closing_right_after_a_failed_flush_does_not_wait_for_the_broker_again(tmp_path, make_alarm, caplog) -> None:
    """A shutdown in an outage: the service's last flush failed (its commit was held, so
    the records are produced again after a restart); close() does not wait the flush
    timeout a second time, nor for the producer's records in flight (three waits per
    Kafka sink would outlast a container's grace period)."""
    with private_broker(tmp_path, ["alarms"]) as b:
        sink = KafkaAlarmSink(
            KafkaSettings(bootstrap_servers=b.bootstrap_servers, alarms_topic="alarms"), flush_timeout_seconds=6.0
        )
        sink.write([make_alarm(index=0)])
        flush_until_done(sink)
        with b.frozen():
            sink.write([make_alarm(index=1)])
            with pytest.raises(SinkError, match="1 alarm"):
                sink.flush()
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="driftline.sinks.kafka"):
                sink.close()
            closed_in = time.monotonic() - started
    assert closed_in < 3.0, f"close() waited {closed_in:.1f} s after a failed flush (flush timeout 6 s)"
    assert "closing with 1 unpublished alarm" in caplog.text


def test_a_dead_letter_file_that_cannot_be_written_keeps_them_and_keeps_the_bytes(tmp_path) -> None:
    path = tmp_path / "dead.jsonl"
    path.mkdir()  # a directory where the file should be
    writer = FileDeadLetters(path)
    letters = [letter(0, b"\xff\xfe\x00raw", key=b"\xc3\x28"), letter(1, b"{oops")]
    writer.write(letters)
    with pytest.raises(SinkError, match="2 dead letter"):
        writer.flush()
    assert writer.pending == 2
    path.rmdir()
    writer.flush()
    writer.close()
    rows = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert [r["offset"] for r in rows] == [0, 1]
    assert base64.b64decode(rows[0]["value_base64"]) == b"\xff\xfe\x00raw" and rows[0]["value"] is None
    assert base64.b64decode(rows[0]["key_base64"]) == b"\xc3\x28" and rows[0]["key"] is None
    assert rows[0]["size"] == 6 and rows[0]["sha256"] == hashlib.sha256(b"\xff\xfe\x00raw").hexdigest()
    assert rows[1]["value"] == "{oops" and rows[1]["key"] == "fraud" and rows[1]["key_base64"] is None


def flush_until_done(target, timeout: float = 120.0) -> None:
    """Flush until nothing is pending (each flush waits at most its own timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            target.flush()
        except SinkError:
            assert time.monotonic() < deadline, f"{type(target).__name__} still holds {target.pending} record(s)"
            continue
        if not target.pending:
            return
