"""driftline's record-batch parser against kafka-python's, on generated batches and
through a real broker."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

from driftline.monitor.config import KafkaSettings
from driftline.monitor.kafka_records import _fast_class, parse_batch
from driftline.monitor.sources import KafkaSource
from tests.support.runs import QUICK_SESSION_MS

TP = TopicPartition("t", 3)
FAST = _fast_class(Fetcher.PartitionRecords)

_BYTES = st.one_of(st.none(), st.binary(max_size=40), st.integers(8200, 8300).map(lambda n: b"v" * n))
_RECORD = st.tuples(
    st.integers(0, 2**40),  # timestamp delta, up to a varlong of 6 bytes
    st.one_of(st.none(), st.binary(max_size=20)),  # key
    _BYTES,  # value, sometimes over 8 KiB (a three-byte length)
    st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=10))), max_size=3),
)


def _buffer(batches: list[list[tuple]], codec: int, base: int) -> bytes:
    """Record batches as a broker sends them, one after another."""
    out = b""
    offset = base
    for records in batches:
        b = MemoryRecordsBuilder(magic=2, compression_type=codec, batch_size=1 << 24, offset=0)
        for ts, key, value, headers in records:
            b.append(timestamp=1_600_000_000_000 + ts, key=key, value=value, headers=headers)
        b.close()
        # the base offset is the broker's to set (outside the CRC), as a 64-bit field
        out += struct.pack(">q", offset) + bytes(b.buffer())[8:]
        offset += len(records)
    return out


def _take(cls, buf: bytes, fetch_offset: int, check_crcs: bool = True) -> list[tuple]:
    part = cls(fetch_offset, TP, MemoryRecords(buf), check_crcs=check_crcs)
    takes = []
    while part:  # until drained, in pieces, as poll's max_records cuts them; the position after each
        got = part.take(7)
        takes.append(
            ([(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in got], part.next_fetch_offset)
        )
    return takes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.lists(_RECORD, min_size=1, max_size=12), min_size=1, max_size=3),
    codec=st.sampled_from([0, 1]),  # none, gzip
    base=st.integers(0, 2**40),
    skip=st.integers(0, 5),
)
def test_fast_records_equal_kafka_pythons(batches, codec, base, skip):
    """Same records (offset, timestamp, key, value), same next fetch offset, whatever the
    keys, null values, headers, lengths, compression and fetch offset inside a batch."""
    buf = _buffer(batches, codec, base)
    assert _take(FAST, buf, base + skip) == _take(Fetcher.PartitionRecords, buf, base + skip)


def test_corrupt_record_is_an_error_not_garbage():
    buf = bytearray(_buffer([[(0, b"k", b'{"a":1}', [])] * 3], 0, 0))
    # the first record's length (a varint right after the 61-byte batch header) claims more
    buf[61] = 0x7E
    with pytest.raises(CorruptRecordError):
        _take(FAST, bytes(buf), 0, check_crcs=False)
    with pytest.raises(CorruptRecordError):  # and the batch CRC catches it when checked
        _take(FAST, bytes(buf), 0, check_crcs=True)


def test_log_append_time_replaces_every_timestamp():
    buf = _buffer([[(5, None, b"a", []), (9, None, b"b", [])]], 0, 10)
    header = 61
    (base,) = struct.unpack_from(">q", buf, 0)
    assert base == 10
    (count,) = struct.unpack_from(">i", buf, header - 4)
    recs = parse_batch(bytearray(buf), header, count, base, 1_600_000_000_000, 42, "t", 0)
    assert [(r.offset, r.timestamp, r.value) for r in recs] == [(10, 42, b"a"), (11, 42, b"b")]


def _consume(broker, topic: str, fast: bool, n: int) -> list[tuple]:
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=f"g-{topic}-{fast}",
        predictions_topic=topic,
        feedback_topic=topic + "-none",
        session_timeout_ms=QUICK_SESSION_MS,
        fast_record_parser=fast,
    )
    source = KafkaSource(settings)
    got: list[tuple] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += [(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in source.poll_records()]
    finally:
        source.close()
    return sorted(got)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_kafka_source_reads_the_same_through_a_broker(broker, topics, compression):
    """Keys, null values, headers and large values through Tansu: the same records with
    driftline's parser as with kafka-python's."""
    topic = topics["predictions"]
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, compression_type=compression, linger_ms=5)
    n = 300
    for i in range(n):
        value = None if i % 37 == 0 else (b"x" * 9000 if i % 50 == 1 else b'{"i": %d}' % i)
        key = b"k%d" % i if value is None or i % 3 == 0 else None
        p.send(topic, key=key, value=value, partition=i % 2, headers=[("h", b"v")] if i % 5 == 0 else None)
    p.flush()
    p.close()
    fast = _consume(broker, topic, True, n)
    assert len(fast) == n
    assert fast == _consume(broker, topic, False, n)
