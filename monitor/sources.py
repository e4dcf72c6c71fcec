"""Sources: where batches of raw records come from.

Sources give batches of records (objects with ``topic``, ``partition``, ``offset``,
``timestamp`` (ms), ``key``, ``value``), or batches they decoded themselves
(:class:`~monitor.decode.DecodedBatch`), and take commits of the offsets after
everything a batch caused is durable:

* :class:`KafkaSource`: a kafka-python consumer in a consumer group, subscribed to the
  prediction and feedback topics, auto-commit off, batch polling, manual commits.
* :class:`ProcessKafkaSource`: the same in a child process that also decodes.
* :class:`JsonlSource`: one or two JSONL files (predictions, feedback) replayed in
  event-time order, for ``driftline replay``.
"""

from __future__ import annotations

import heapq
import logging
import os
import queue
import re
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Protocol, Sequence

from monitor.config import KafkaSettings
from monitor.decode import BatchDecoder, DecodedBatch, RawRecord, Record
from monitor.exceptions import SourceError
from monitor.kafka_records import install as install_fast_parser
from monitor.runtime import tune_gc

__all__ = ["Source", "KafkaSource", "ProcessKafkaSource", "JsonlSource", "kafka_client_options"]

log = logging.getLogger(__name__)


class Source(Protocol):
    exhausted: bool
    """True once a finite source has nothing more to give."""

    def poll(self) -> Sequence[RawRecord] | DecodedBatch:
        """The next batch: records (possibly none), or a batch the source decoded."""

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
        self._to_seek: list = []  # assigned partitions whose checkpoint seek is due
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
        if settings.fast_record_parser:
            install_fast_parser(self._consumer)
        self._consumer.subscribe([settings.predictions_topic, settings.feedback_topic],
                                 listener=_rebalance_listener(self))

    @property
    def connected(self) -> bool:
        return bool(self._consumer.assignment())

    def poll(self) -> list[RawRecord]:
        batches = self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms,
                                      max_records=self.settings.max_poll_records)
        if self._to_seek:  # partitions assigned with a checkpoint offset waiting
            for tp in self._apply_seeks(self._to_seek):
                batches.pop(tp, None)  # fetched from before the seek: fetched again after it
            self._to_seek = []
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

    def _apply_seeks(self, assigned) -> list:
        """Seek assigned partitions to their checkpoint offsets, unless the group has
        committed further since (another instance owned the partition meanwhile: its
        commit wins, and this instance's state for it is older than the stream).
        Returns the partitions it moved. Not callable from the rebalance callback
        (kafka-python runs that on its IO thread, where blocking calls are refused)."""
        moved = []
        for tp in assigned:
            off = self._pending_seek.pop((tp.topic, tp.partition), None)
            if off is None:
                continue
            committed = self._consumer.committed(tp)
            if committed is not None and committed > off:
                log.warning("%s/%d: the group committed offset %d, past this instance's checkpoint "
                            "(%d); resuming from the commit", tp.topic, tp.partition, committed, off)
                off = committed
            self._consumer.seek(tp, off)
            self._positions[(tp.topic, tp.partition)] = off
            moved.append(tp)
        return moved

    def end_offsets(self) -> dict[tuple[str, int], int]:
        """The end offset of every assigned partition (asks the broker)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        return {(tp.topic, tp.partition): end for tp, end in self._consumer.end_offsets(assigned).items()}

    def assignment(self) -> list[tuple[str, int]]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def lag(self) -> dict[tuple[str, int], int]:
        return _lag(self.end_offsets(), self._positions)

    def close(self) -> None:
        self._consumer.close(autocommit=False)


def _lag(ends: dict[tuple[str, int], int], positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    return {tp: max(0, end - positions[tp]) for tp, end in ends.items() if tp in positions}


class ProcessKafkaSource:
    """A :class:`KafkaSource` in a child process, prefetching the next batches while
    this process decodes and detects.

    Fetching, parsing and decoding take about as long as detection; in one process they
    add up. Here the consumer process polls ahead (at most ``_PREFETCH`` batches, so
    memory stays bounded) and shares the decoding with the service: while batches wait
    in the queue (the service is the busier one) it decodes each with a
    :class:`~monitor.decode.BatchDecoder` and sends a
    :class:`~monitor.decode.DecodedBatch`, with the feature columns of every model
    whose schema the engine has shared (:meth:`share_schemas`); when the queue is empty
    (the service waits) it sends the records and the service decodes them. Either way
    the result is the same (decoding is a pure function of the records and schemas),
    and the work settles where there is a free core. Offsets are still
    committed only through :meth:`commit`, which the consumer process runs for this one
    and answers; the consumer process exits when this one closes it, or when this
    process disappears.
    """

    _PREFETCH = 3
    _DECODE: str = "when-busy"
    """Where batches are decoded: "when-busy" (see above), "always" in the consumer
    process, or "never" (tests and benchmarks pin one)."""

    def __init__(self, settings: KafkaSettings) -> None:
        import multiprocessing

        self.settings = settings
        self.exhausted = False
        self._positions: dict[tuple[str, int], int] = {}
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self._data = ctx.Queue(maxsize=self._PREFETCH)
        self._commands = ctx.Queue()
        self._replies = ctx.Queue()
        self._proc = ctx.Process(target=_consumer_process, name="driftline-consumer",
                                 args=(settings, self._data, self._commands, self._replies, os.getpid(),
                                       self._DECODE),
                                 daemon=True)
        self._proc.start()
        deadline = time.monotonic() + settings.bootstrap_timeout_ms / 1000 + 60
        while True:
            try:
                kind, detail = self._replies.get(timeout=0.2)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    self._proc.join(timeout=5)  # its last reply may still be in the pipe
                    try:
                        kind, detail = self._replies.get(timeout=1)
                        break
                    except queue.Empty:
                        pass
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    self._stop()
                    raise SourceError(
                        "the Kafka consumer process did not start (a script that runs the "
                        "Service needs an `if __name__ == \"__main__\":` guard, or set "
                        "kafka.consumer_process: false)") from None
        if kind == "error":
            self._stop()
            raise SourceError(detail)

    def poll(self) -> DecodedBatch | list[Record]:
        """The next batch, decoded or not (see the class); an empty list when none came
        within the poll timeout."""
        try:
            kind, payload, assignment = self._data.get(timeout=self.settings.poll_timeout_ms / 1000)
        except queue.Empty:
            self._check_alive()
            return []
        if kind == "error":
            raise SourceError(payload)
        batch, positions = payload
        assigned = set(map(tuple, assignment))
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]  # revoked: another instance owns it now
        self._positions.update(positions)
        return batch if isinstance(batch, DecodedBatch) else list(map(Record._make, batch))

    def share_schemas(self, schemas: dict[str, dict]) -> None:
        """Give the consumer process these models' schemas (``Schema.to_state()``), so
        that it decodes their feature columns from now on."""
        self._ask("schemas", schemas, timeout=60)

    def _check_alive(self) -> None:
        if not self._proc.is_alive():
            raise SourceError(f"the Kafka consumer process exited (code {self._proc.exitcode}); see its log")

    def _ask(self, command: str, argument: object, timeout: float) -> object:
        self._check_alive()
        self._commands.put((command, argument))
        kind, detail = self._replies.get(timeout=timeout)
        if kind == "error":
            raise SourceError(f"{command} failed in the Kafka consumer process: {detail}")
        return detail

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self._positions)

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self._ask("commit", offsets, timeout=60)

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        # positions follow the records that arrive: the consumer process may resume
        # from a newer commit than the checkpoint, and offsets must never go back
        self._ask("seek", offsets, timeout=60)

    def lag(self) -> dict[tuple[str, int], int]:
        try:
            ends = self._ask("end_offsets", None, timeout=10)
        except queue.Empty:
            return {}
        return _lag(ends, self._positions)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._proc.is_alive():
            self._commands.put(("close", None))
            self._proc.join(timeout=15)
        self._stop()

    def _stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        for q in (self._data, self._commands, self._replies):
            q.cancel_join_thread()
            q.close()


def _consumer_process(settings: KafkaSettings, data, commands, replies, parent: int, decode: str) -> None:
    """The consumer process: poll ahead into ``data``; run commands from ``commands``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when to stop
    # at exit, do not wait to push buffered batches into a pipe nobody may read any more
    data.cancel_join_thread()
    try:
        source = KafkaSource(settings)
    except SourceError as exc:
        replies.put(("error", str(exc)))  # flushed at exit: the parent is waiting for it
        return
    replies.put(("ready", None))
    tune_gc()
    decoder = BatchDecoder(settings.predictions_topic, settings.feedback_topic)
    delivered: dict[tuple[str, int], int] = {}  # partition -> next offset handed over
    pending = None
    try:
        while os.getppid() == parent:
            try:
                command, argument = commands.get_nowait()
            except queue.Empty:
                command = None
            if command == "close":
                break
            if command == "schemas":
                decoder.set_schemas(argument)
                replies.put(("ok", None))
                continue
            if command is not None:
                replies.put(_run(source, command, argument))
                continue
            if pending is None:
                records = source.poll()
                assignment = source.assignment()
                records = _unseen(records, delivered, assignment) if records else records
                if records:
                    positions = {tp: delivered[tp] for tp in {(r.topic, r.partition) for r in records}}
                    # the service waits (nothing queued): hand the records over as they are
                    # and let it decode; it is busy: decode here meanwhile
                    here = decode == "always" or (decode == "when-busy" and not data.empty())
                    batch = decoder.decode(records) if here else _tuples(records)
                    pending = ("batch", (batch, positions), assignment)
                continue
            try:
                data.put(pending, timeout=0.05)  # full: the service is behind; keep serving commands
                pending = None
            except queue.Full:
                pass
    finally:
        if os.getppid() != parent:
            replies.cancel_join_thread()  # nobody will read a reply any more
        source.close()


def _tuples(records: list[RawRecord]) -> list[tuple]:
    """Records as plain tuples of :class:`~monitor.decode.Record`'s fields (cheap to pickle)."""
    if type(records[0]) is Record:  # driftline's parser made them
        return list(map(tuple, records))
    return [(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in records]


def _unseen(records: list[RawRecord], delivered: dict[tuple[str, int], int],
            assignment: list[tuple[str, int]]) -> list[RawRecord]:
    """The records not handed over before (a seek to a checkpoint can fetch again what
    was already in flight); ``delivered`` follows them."""
    assigned = set(assignment)
    for tp in [tp for tp in delivered if tp not in assigned]:
        del delivered[tp]  # revoked: another instance owns it now
    out = []
    for r in records:
        tp = (r.topic, r.partition)
        if r.offset < delivered.get(tp, -1):
            continue
        out.append(r)
        delivered[tp] = r.offset + 1
    return out


def _run(source: KafkaSource, command: str, argument) -> tuple[str, object]:
    from kafka.errors import KafkaError

    try:
        if command == "commit":
            source.commit(argument)
            return ("ok", None)
        if command == "seek":
            source.seek(argument)
            return ("ok", None)
        if command == "end_offsets":
            return ("ok", source.end_offsets())
    except KafkaError as exc:
        return ("error", f"{type(exc).__name__}: {exc}")
    return ("error", f"unknown command {command!r}")


def _rebalance_listener(source: "KafkaSource"):
    from kafka import ConsumerRebalanceListener

    class _Listener(_Rebalance, ConsumerRebalanceListener):
        pass

    return _Listener(source)


class _Rebalance:
    """Notes which newly assigned partitions have a checkpoint seek due (the next poll
    applies it); forgets positions of revoked partitions (the service commits after
    every checkpoint, so nothing processed is left uncommitted beyond the last one)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.source._positions.pop((tp.topic, tp.partition), None)

    def on_partitions_assigned(self, assigned) -> None:
        pending = self.source._pending_seek
        self.source._to_seek.extend(tp for tp in assigned if (tp.topic, tp.partition) in pending)


# ---- files -----------------------------------------------------------------------------

_TS = re.compile(rb'"ts"\s*:\s*(-?[0-9][0-9.eE+-]*)')


def _lines(path: Path, topic: str) -> Iterator[tuple[float, int, Record]]:
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
            yield last_ts, n, Record(topic, 0, n, -1, None, line)


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

    def poll(self) -> list[Record]:
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
