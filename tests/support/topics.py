"""Reading a topic back in tests: every record of every partition from the beginning,
with a plain consumer outside any group (what a test needs to see what was produced)."""

from __future__ import annotations

import time
from collections.abc import Callable
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
