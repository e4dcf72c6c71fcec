"""Faster parsing of Kafka record batches for driftline's consumer.

kafka-python parses every record of a fetch in Python through several layers (a
``DefaultRecord``, a ``ConsumerRecord`` with header sizes, deserializer calls): about
5 us per record here, nearly all of a bare consumer's time. Driftline needs only the
offset, timestamp, key and value of each record, so :func:`install` gives one consumer's
fetcher a ``PartitionRecords`` class that parses each v2 record batch (Kafka >= 0.11)
into a list of :class:`~driftline.monitor.contract.Record` tuples at once (:func:`parse_batch`: one
Python loop over the record lengths, numpy for every other field) and serves the
fetcher's ``take(n)`` as slices of it: about 4x less CPU per record. Everything else
stays kafka-python's: group membership, fetch requests, positions, batch CRC checks,
decompression, skipping control batches.

It applies only where it is exact: no key or value deserializer and the
``read_uncommitted`` isolation level (driftline's consumer). Legacy (v0/v1) batches are
read through kafka-python's own record classes. It relies on kafka-python 3.0's
``Fetcher.PartitionRecords`` (pinned in pyproject.toml); the tests compare it with
kafka-python's parser on generated batches (keys, nulls, headers, compression, large
deltas, the position after every ``take``) and through a real broker.
"""

from __future__ import annotations

import logging
from itertools import repeat
from typing import Any

import numpy as np

from driftline.monitor.contract import Record

__all__ = ["install", "parse_batch"]

log = logging.getLogger(__name__)


class CorruptBatch(ValueError):
    """A record batch whose records do not parse (kafka-python raises
    ``CorruptRecordError`` for the same bytes)."""


_SHIFTS = 7 * np.arange(10, dtype=np.uint64)
_TEN = np.arange(10)


def _varints(data: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The zigzag varints starting at each of ``pos`` in ``data`` (uint8), at once:
    (values, positions after them)."""
    idx = pos[:, None] + _TEN
    np.minimum(idx, len(data) - 1, out=idx)
    window = data[idx]
    more = window >= 0x80
    nbytes = np.argmin(more, axis=1) + 1
    if more[np.arange(len(pos)), nbytes - 1].any():
        raise CorruptBatch("a varint runs past 10 bytes")
    raw = (((window & 0x7F).astype(np.uint64) << _SHIFTS) * (_TEN < nbytes[:, None])).sum(axis=1, dtype=np.uint64)
    values = (raw >> np.uint64(1)).astype(np.int64) ^ -(raw & np.uint64(1)).astype(np.int64)
    return values, pos + nbytes


def parse_batch(
    buf: Any,
    pos: int,
    count: int,
    base_offset: int,
    first_timestamp: int,
    append_time: int | None,
    topic: str,
    partition: int,
) -> list[Record]:
    """The ``count`` records of one uncompressed v2 batch whose records start at ``pos``
    of ``buf``: offset, timestamp (``append_time`` when the batch carries log-append
    time), key and value. Headers are skipped.

    Only the chain of record lengths is walked in Python (each record's start depends on
    the previous length); every other field is read for all records at once.
    """
    data = bytes(buf)  # one copy: slices of bytes are the keys and values, no second copy
    size = len(data)
    starts: list[int] = []
    ends: list[int] = []
    add_start, add_end = starts.append, ends.append
    for _ in range(count):  # Length: a varint, two bytes for records under 8 KiB
        if pos >= size:
            raise CorruptBatch("the batch ends before its last record")
        b = data[pos]
        if b < 0x80:
            n, pos = b, pos + 1
        else:
            b2 = data[pos + 1] if pos + 1 < size else 0x80
            if b2 < 0x80:
                n, pos = (b & 0x7F) | (b2 << 7), pos + 2
            else:
                n, pos = _uvarint(data, pos)
        add_start(pos)
        pos += (n >> 1) ^ -(n & 1)
        add_end(pos)
    if pos != size:
        raise CorruptBatch(f"{size - pos} bytes after the batch's {count} records, or a record runs past it")
    if not count:
        return []
    array = np.frombuffer(data, dtype=np.uint8)
    end = np.array(ends, dtype=np.int64)
    at = np.array(starts, dtype=np.int64)
    if (end < at).any():
        raise CorruptBatch("a negative record length")
    ts_delta, at = _varints(array, at + 1)  # after Attributes (int8, unused)
    offset_delta, at = _varints(array, at)
    key_len, at = _varints(array, at)
    key_start = at
    at = at + np.maximum(key_len, 0)
    value_len, at = _varints(array, np.minimum(at, size - 1))
    value_end = at + np.maximum(value_len, 0)
    if (value_end > end).any():
        raise CorruptBatch("a record's fields run past its length")  # headers follow, skipped
    offsets = (offset_delta + base_offset).tolist()
    if append_time is None:
        timestamps = (ts_delta + first_timestamp).tolist()
    else:
        timestamps = [append_time] * count
    values = [data[a:b] if b >= a else None for a, b in zip(at.tolist(), (at + value_len).tolist(), strict=False)]
    if (key_len < 0).all():
        keys: list[bytes | None] = [None] * count
    else:
        keys = [
            data[a:b] if b >= a else None
            for a, b in zip(key_start.tolist(), (key_start + key_len).tolist(), strict=False)
        ]
    return list(
        map(tuple.__new__, repeat(Record), zip(repeat(topic), repeat(partition), offsets, timestamps, keys, values))
    )


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint at ``pos`` (zigzag undone by the caller): (raw, next position)."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CorruptBatch("a varint runs past the batch")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise CorruptBatch("a varint runs past 10 bytes")


def install(consumer: Any) -> bool:
    """Give ``consumer`` (a kafka-python ``KafkaConsumer`` without deserializers)
    driftline's record parser. Returns False, changing nothing, when this kafka-python does
    not have the internals it relies on."""
    fetcher = getattr(consumer, "_fetcher", None)
    base = getattr(fetcher, "PartitionRecords", None)
    needed = ("take", "drain", "_maybe_raise_next_inline_exception")  # what FastPartitionRecords builds on
    if fetcher is None or base is None or not all(callable(getattr(base, name, None)) for name in needed):
        log.info("this kafka-python's PartitionRecords is not the one expected; using its own record parser")
        return False
    if getattr(base, "_driftline_fast", False):
        return True
    fetcher.PartitionRecords = _fast_class(base)
    return True


def _fast_class(base: type) -> type:
    from kafka import errors
    from kafka.record.default_records import DefaultRecordBatch

    try:
        from kafka.consumer.fetcher import IsolationLevel

        committed = IsolationLevel.READ_COMMITTED
    except ImportError:  # older kafka-python: read_uncommitted only
        committed = object()

    class FastPartitionRecords(base):
        """Records of one partition's fetch: parsed a batch at a time into lists, and
        taken as slices of them (no per-record generator step)."""

        _driftline_fast = True

        def __init__(self, fetch_offset, tp, records, key_deserializer=None, value_deserializer=None, **kwargs):
            super().__init__(
                fetch_offset,
                tp,
                records,
                key_deserializer=key_deserializer,
                value_deserializer=value_deserializer,
                **kwargs,
            )
            self._fast = key_deserializer is None and value_deserializer is None and self.isolation_level != committed
            if self._fast:  # replaces kafka-python's record iterator (not started yet)
                self.record_iterator = self._blocks(tp, records)
                self._block: list = []
                self._at = 0
                self._skipping = True

        def take(self, n=None):
            if not self._fast:
                return super().take(n)
            self._maybe_raise_next_inline_exception()
            out: list = []
            try:
                while n is None or len(out) < n:
                    block, at = self._block, self._at
                    if at >= len(block):
                        block = next(self.record_iterator, None) if self.record_iterator is not None else None
                        if block is None:
                            break
                        at = 0
                        if self._skipping:  # from inside a compressed batch: start at the fetch offset
                            while at < len(block) and block[at].offset < self.fetch_offset:
                                at += 1
                            self._skipping = at == len(block)
                        self._block, self._at = block, at
                        continue
                    end = len(block) if n is None else min(len(block), at + n - len(out))
                    out += block[at:end]
                    self._at = end
                    self.next_fetch_offset = block[end - 1].offset + 1
            except Exception as exc:  # as kafka-python: records first, the error on the next take
                if not out:
                    raise
                self._next_inline_exception = exc
            return out

        def _blocks(self, tp, records):
            """Each batch's records as a list; at the end, kafka-python's bookkeeping."""
            topic, partition = tp.topic, tp.partition
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise errors.CorruptRecordError(
                        f"Record batch for partition {tp} at offset {batch.base_offset} failed crc check"
                    )
                if batch.magic == 2:
                    self.leader_epoch = batch.leader_epoch
                    if batch.is_control_batch:
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                    batch._maybe_uncompress()
                    append_time = (
                        batch.max_timestamp if batch.timestamp_type == DefaultRecordBatch.LOG_APPEND_TIME else None
                    )
                    try:
                        parsed = parse_batch(
                            batch._buffer,
                            batch._pos,
                            batch.records_count,
                            batch.base_offset,
                            batch.first_timestamp,
                            append_time,
                            topic,
                            partition,
                        )
                    except (CorruptBatch, IndexError) as exc:
                        raise errors.CorruptRecordError(
                            f"Found invalid record structure in {tp} at offset {batch.base_offset}: {exc!r}"
                        ) from exc
                    self.bytes_read += batch.size_in_bytes
                else:  # legacy message format: kafka-python's records
                    parsed = []
                    for record in batch:
                        if self.check_crcs and not record.validate_crc():
                            raise errors.CorruptRecordError(
                                f"Record for partition {tp} at offset {record.offset} failed crc check"
                            )
                        self.bytes_read += record.size_in_bytes
                        parsed.append(
                            Record(topic, partition, record.offset, record.timestamp, record.key, record.value)
                        )
                self.records_read += len(parsed)
                if parsed:
                    yield parsed
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

    FastPartitionRecords.__name__ = FastPartitionRecords.__qualname__ = "FastPartitionRecords"
    return FastPartitionRecords
