"""Sources: where batches of raw records come from.

Both sources give batches of records (objects with ``topic``, ``partition``,
``offset``, ``timestamp`` (ms), ``key``, ``value``) and take commits of the offsets
after everything a batch caused is durable:

* :class:`KafkaSource`: a kafka-python consumer in a consumer group, subscribed to the
  prediction and feedback topics, auto-commit off, batch polling, manual commits.
* :class:`JsonlSource`: one or two JSONL files (predictions, feedback) replayed in
  event-time order, for ``driftline replay``.
"""

from __future__ import annotations

import heapq
import logging
import re
from pathlib import Path
from typing import Iterator, Protocol, Sequence

from monitor.config import KafkaSettings
from monitor.decode import FileRecord, RawRecord
from monitor.exceptions import SourceError

__all__ = ["Source", "KafkaSource", "JsonlSource", "kafka_client_options"]

log = logging.getLogger(__name__)


class Source(Protocol):
    exhausted: bool
    """True once a finite source has nothing more to give."""

    def poll(self) -> Sequence[RawRecord]:
        """The next batch (possibly empty)."""

    def offsets(self) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition), after the records polled so far."""

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Record that everything before ``offsets`` is processed and durable."""

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        """Start reading at these offsets (from a checkpoint) where partitions are ours."""

    def lag(self) -> dict[tuple[str, int], int]:
        """Records behind the end of each assigned partition."""

    def close(self) -> None: ...


def kafka_client_options(settings: KafkaSettings) -> dict[str, object]:
    """Connection options shared by consumer, producer and admin (incl. SASL/SSL)."""
    opts: dict[str, object] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism:
        opts["sasl_mechanism"] = settings.sasl_mechanism
        opts["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            opts["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return opts


class KafkaSource:
    """Consume predictions and feedback with a kafka-python consumer group.

    Offsets are committed only through :meth:`commit`, which the service calls after
    sinks flushed and the checkpoint was written.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.settings = settings
        self.exhausted = False
        self._pending_seek: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}
        try:
            self._consumer = KafkaConsumer(
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset=settings.auto_offset_reset,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 3),
                max_poll_records=settings.max_poll_records,
                bootstrap_timeout_ms=settings.bootstrap_timeout_ms,
                **kafka_client_options(settings),
            )
        except KafkaError as exc:
            raise SourceError(f"cannot connect to Kafka at {settings.bootstrap_servers}: {exc}") from None
        self._consumer.subscribe([settings.predictions_topic, settings.feedback_topic],
                                 listener=_rebalance_listener(self))

    @property
    def connected(self) -> bool:
        return bool(self._consumer.assignment())

    def poll(self) -> list[RawRecord]:
        batches = self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                      max_records=self.settings.max_poll_records)
        records: list[RawRecord] = []
        for tp, recs in batches.items():
            if recs:
                records.extend(recs)
                self._positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
        return records

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self._positions)

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        assigned = self._consumer.assignment()
        mine = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                for (t, p), o in offsets.items() if TopicPartition(t, p) in assigned}
        if mine:
            self._consumer.commit(offsets=mine)

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        self._pending_seek.update(offsets)
        self._apply_seeks(self._consumer.assignment())

    def _apply_seeks(self, assigned) -> None:
        for tp in assigned:
            off = self._pending_seek.pop((tp.topic, tp.partition), None)
            if off is not None:
                self._consumer.seek(tp, off)
                self._positions[(tp.topic, tp.partition)] = off

    def lag(self) -> dict[tuple[str, int], int]:
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned)
        out = {}
        for tp in assigned:
            pos = self._positions.get((tp.topic, tp.partition))
            if pos is None:
                continue
            out[(tp.topic, tp.partition)] = max(0, ends.get(tp, pos) - pos)
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def _rebalance_listener(source: "KafkaSource"):
    from kafka import ConsumerRebalanceListener

    class _Listener(_Rebalance, ConsumerRebalanceListener):
        pass

    return _Listener(source)


class _Rebalance:
    """Applies checkpoint seeks when partitions are assigned; forgets positions of
    revoked partitions (the service commits after every checkpoint, so nothing
    processed is left uncommitted beyond the last checkpoint)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.source._positions.pop((tp.topic, tp.partition), None)

    def on_partitions_assigned(self, assigned) -> None:
        self.source._apply_seeks(assigned)


# ---- files -----------------------------------------------------------------------------

_TS = re.compile(rb'"ts"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def _lines(path: Path, topic: str) -> Iterator[tuple[float, int, FileRecord]]:
    """(ts, order, record) per non-empty line; a line without a readable ts keeps the
    previous line's ts so that file order is kept."""
    last_ts = float("-inf")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        for n, line in enumerate(fh):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            m = _TS.search(line)
            if m is not None:
                try:
                    last_ts = float(m.group(1))
                except ValueError:
                    pass
            yield last_ts, n, FileRecord(topic, 0, n, -1, None, line)


class JsonlSource:
    """Replay JSONL files: predictions and (optionally) feedback, merged by event time.

    Lines are merged on their ``ts`` (ties: predictions first, then file order), as
    they would have arrived live; each file's own order is kept. Offsets are line
    numbers.
    """

    def __init__(self, predictions: Path, feedback: Path | None, *, predictions_topic: str,
                 feedback_topic: str, batch_size: int = 5000) -> None:
        for p in (predictions, feedback):
            if p is not None and not Path(p).is_file():
                raise SourceError(f"{p} does not exist or is not a file")
        # generators all the way: memory does not grow with the files' length
        preds = (((ts, 0, n), rec) for ts, n, rec in _lines(Path(predictions), predictions_topic))
        self._merged: Iterator
        if feedback is not None:
            fb = (((ts, 1, n), rec) for ts, n, rec in _lines(Path(feedback), feedback_topic))
            self._merged = heapq.merge(preds, fb, key=lambda kv: kv[0])
        else:
            self._merged = preds
        self.batch_size = batch_size
        self.exhausted = False
        self._positions: dict[tuple[str, int], int] = {}
        self.records_read = 0

    def poll(self) -> list[FileRecord]:
        out = []
        for _, rec in self._merged:
            out.append(rec)
            self._positions[(rec.topic, 0)] = rec.offset + 1
            if len(out) >= self.batch_size:
                break
        else:
            self.exhausted = True
        self.records_read += len(out)
        return out

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self._positions)

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        pass  # a replay starts from the beginning every time

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        pass

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def close(self) -> None:
        pass
