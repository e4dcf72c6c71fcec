"""Topics in tests: :func:`produce` writes records fast (librdkafka), :func:`read_topic`
reads every record of every partition back from the beginning, with a plain consumer
outside any group (what a test needs to see what was produced)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def read_topic(
    bootstrap: str,
    topic: str,
    count: int,
    timeout: float = 30.0,
    decode: Callable[[bytes], Any] | None = None,
) -> list[tuple[bytes | None, Any]]:
    """The ``(key, value)`` of ``topic``'s records (all partitions, from the beginning)
    until ``count`` arrived or ``timeout`` seconds passed; values passed through
    ``decode`` (e.g. ``json.loads``) when given, else raw bytes."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        got: list[tuple[bytes | None, Any]] = []
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend((r.key, r.value if decode is None else decode(r.value)) for r in records)
        return got
    finally:
        consumer.close()


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]], timeout: float = 120.0) -> int:
    """Produce ``(key, value)`` records to ``topic`` in their order; returns how many.

    Through librdkafka (confluent-kafka), which produces tens of megabytes in a second
    where kafka-python, a pure-Python client, takes many (the stream is what a test
    needs, not which client wrote it). Partitioned as kafka-python and Java partition
    by default (murmur2 of the key: a key's records in one partition, in order, with an
    idempotent producer's retries); every record acknowledged before it returns, or
    AssertionError."""
    from confluent_kafka import Producer

    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "linger.ms": 20,
        }
    )
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.05)
        n += 1
    left = producer.flush(timeout)
    assert left == 0 and not errors, f"{left} of {n} records not acknowledged within {timeout}s; errors {errors[:5]}"
    return n
