"""Sources: where the service's batches come from.

Every source hands the service a :class:`~driftline.monitor.decode.DecodedBatch` per
poll (it decodes its records with a :class:`~driftline.monitor.decode.BatchDecoder`)
and takes commits of the offsets after everything a batch caused is durable; the
interface is :class:`Source`, and a source that decodes feature columns with the
engine's schemas takes them through :class:`SchemaSink`:

* :class:`KafkaSource`: a kafka-python consumer in a consumer group, subscribed to the
  prediction and feedback topics, auto-commit off, batch polling, manual commits.
* :class:`ProcessKafkaSource`: the same in a child process that also decodes; the two
  processes speak in the typed messages of this module (:class:`Request`,
  :class:`Reply`, :class:`Batch`).
* :class:`JsonlSource`: JSONL files (predictions, and optionally feedback and lifecycle
  events) replayed in event-time order, for ``driftline replay``.

Both Kafka sources also consume the lifecycle topic (``lifecycle.topic``) when it exists
at start (see :func:`_lifecycle_subscription`), and read a newly assigned lifecycle
partition up to its end before they hand over anything polled after the assignment, so
that a backlog's lifecycle events reach the engine before the predictions they precede
in event time (:class:`LifecycleCatchUp`).

Given a :class:`RebalanceHandler` (the service's, when ``kafka.changelog`` is on), the
Kafka sources hand a partition's state over when it changes owners: at a revocation the
consumer waits until the service processed the batches handed over before, wrote the
partition's models to the changelog and answered with the offsets to commit (committed
then, in the old generation); at an assignment it waits until the service restored the
partition's models, resumes at the lowest of the commit and the states' positions, and
passes a model's records on only from its own state's position (:class:`_Gate`). The
consumer process says so to the service in-band, after the batches already queued
(:class:`Handover`), and waits for its :class:`Answer`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

from driftline.monitor.config import KafkaSettings
from driftline.monitor.contract import RawRecord, Record
from driftline.monitor.decode import BatchDecoder, DecodedBatch
from driftline.monitor.exceptions import SourceError
from driftline.monitor.kafka_records import install as install_fast_parser
from driftline.monitor.runtime import tune_gc

__all__ = [
    "Source",
    "SchemaSink",
    "SourceStatus",
    "RebalanceHandler",
    "KafkaSource",
    "ProcessKafkaSource",
    "JsonlSource",
    "LifecycleCatchUp",
    "kafka_client_options",
]

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
"""Next offset per (topic, partition)."""


class Source(Protocol):
    """What the service polls. Every method is called from the service's thread."""

    exhausted: bool
    """True once a finite source has nothing more to give."""

    def poll(self) -> DecodedBatch:
        """The next batch, decoded; an empty one (``len(batch) == 0``) when no record
        came within the poll timeout."""

    def offsets(self) -> Offsets:
        """Next offset to read per (topic, partition), after the records polled so far."""

    def commit(self, offsets: Offsets) -> bool:
        """Record that everything before ``offsets`` is processed and durable; False
        when the commit was not done (the brokers are unreachable, the group is
        rebalancing): the caller keeps the offsets and commits again later."""

    def seek(self, offsets: Offsets) -> None:
        """Start reading at these offsets (from a checkpoint) where partitions are ours."""

    def status(self) -> SourceStatus:
        """Lag, assignment and broker health, for the readiness check (it may ask the
        brokers: the service calls it every few seconds, not per batch)."""

    def close(self) -> None: ...


@runtime_checkable
class SchemaSink(Protocol):
    """A source that decodes feature columns with the engine's schemas (optional: a
    source without it hands over raw features, which the engine decodes itself; the
    result is the same)."""

    def share_schemas(self, schemas: dict[str, dict[str, Any]]) -> bool:
        """Decode these models' features with these schemas (``Schema.to_state()``)
        from now on; False when they were not taken (share them again later)."""


class RebalanceHandler(Protocol):
    """What the service does when partitions change owners, so that a model's state
    follows its partition (the Kafka sources call it; see ``kafka.changelog``).

    Partitions are ``(topic, partition)`` pairs. Every method runs while the consumer
    waits for it (heartbeats go on), and after every batch handed over before it was
    processed.
    """

    def revoked(self, partitions: list[tuple[str, int]]) -> Offsets | None:
        """Make the state of these partitions' models durable and let them go; the
        offsets to commit for them (None: nothing may be committed, the state is not
        durable)."""

    def assigned(self, partitions: list[tuple[str, int]]) -> dict[str, Offsets] | None:
        """Restore these partitions' models; per restored model, the input positions
        its state corresponds to (the source resumes at the lowest and applies a
        model's records only from its own); None: the restore failed (the source
        pauses the partitions and asks again later)."""

    def lost(self, partitions: list[tuple[str, int]]) -> None:
        """These partitions were taken away without a revocation (the group expired
        this instance): forget their models, write and commit nothing."""


class SourceStatus(NamedTuple):
    """What a source knows about its brokers and partitions (see ``status()``).

    Attributes
    ----------
    lag
        Records behind the end of each assigned partition; None when unknown (the
        brokers did not answer).
    assigned
        Partitions assigned to this instance; None when the source has no group.
    error
        Why the brokers could not be reached just now (None: they answered).
    broker_errors
        Failed requests to the brokers since the source started (polls, probes,
        commits), a running total.
    """

    lag: dict[tuple[str, int], int] | None
    assigned: int | None = None
    error: str | None = None
    broker_errors: int = 0


# kafka-python's errors that a rebalance causes: the commit belongs to a generation the
# group has left behind. Not a failure: the partitions are committed again by whoever
# owns them after the rejoin (this instance, or another one from the last commit).
# Matched by name: kafka-python is imported only where a Kafka source is used.
_REBALANCE_ERRORS = (
    "RebalanceInProgressError",
    "CommitFailedError",
    "IllegalGenerationError",
    "UnknownMemberIdError",
    "FencedInstanceIdError",
)


def kafka_client_options(settings: KafkaSettings) -> dict[str, object]:
    """The consumer's connection, security and fetch options: see
    :func:`driftline.monitor.kafka_client.client_options` (the one mapping every client uses)."""
    from driftline.monitor.kafka_client import client_options  # imports kafka: only when consuming

    return client_options(settings, "consumer")


def _kafka_consumer(settings: KafkaSettings) -> Any:
    """A kafka-python consumer in the settings' group, with auto-commit off; the one
    place a consumer is built (its connection options: :func:`kafka_client_options`)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        return KafkaConsumer(
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


class KafkaSource:
    """Consume predictions and feedback with a kafka-python consumer group.

    Offsets are committed only through :meth:`commit`, which the service calls after
    sinks flushed and the checkpoint was written.

    Broker outages and rebalances are ridden out, never raised: a poll that fails
    returns no records (kafka-python reconnects by itself), a commit refused by a
    rebalance or unanswered returns False (the service commits again later), and
    :meth:`status` says whether the brokers answer, for the readiness check.
    """

    def __init__(
        self, settings: KafkaSettings, lifecycle_topic: str | None = None, handover: RebalanceHandler | None = None
    ) -> None:
        self.settings = settings
        self.exhausted = False
        self.handover = handover
        self.closing = False
        self.delivered: dict[tuple[str, int], int] = {}  # next offset handed over (consumer process)
        self._gates: dict[tuple[str, int], _Gate] = {}  # partitions read again after a restore
        self._awaiting: list[tuple[str, int]] = []  # assigned but paused: their restore failed
        self._retry_restore_at = 0.0
        self._pending_seek: dict[tuple[str, int], int] = {}
        self._to_seek: list[Any] = []  # assigned partitions whose checkpoint seek is due
        self._positions: dict[tuple[str, int], int] = {}
        self.broker_errors = 0
        self._last_error: str | None = None
        self._warned = 0.0  # monotonic time of the last broker warning (rate-limited)
        self._consumer = _kafka_consumer(settings)
        if settings.fast_record_parser:
            install_fast_parser(self._consumer)
        self.lifecycle_topic = _lifecycle_subscription(self._consumer, settings, lifecycle_topic)
        # a newly assigned lifecycle partition is read up to its end before its predictions
        self.catch_up = LifecycleCatchUp(settings, self.lifecycle_topic) if self.lifecycle_topic else None
        self._decoder = BatchDecoder(settings.predictions_topic, settings.feedback_topic, self.lifecycle_topic)
        topics = [settings.predictions_topic, settings.feedback_topic]
        self._consumer.subscribe(
            topics + ([self.lifecycle_topic] if self.lifecycle_topic else []),
            listener=_handover_listener(self) if handover is not None else _rebalance_listener(self),
        )

    @property
    def connected(self) -> bool:
        return bool(self._consumer.assignment())

    def _broker_failed(self, what: str, exc: Exception) -> str:
        """Count a failed request to the brokers and log it (a warning at most every
        10 s: an outage of minutes must not flood the log)."""
        self.broker_errors += 1
        text = str(exc)
        name = type(exc).__name__
        self._last_error = f"{what}: {text if text.startswith(name) else f'{name}: {text}'}"
        now = time.monotonic()
        if now - self._warned >= 10.0:
            self._warned = now
            log.warning("Kafka %s failed (%s); retrying: kafka-python reconnects by itself", what, self._last_error)
        else:
            log.debug("Kafka %s failed: %s", what, self._last_error)
        return self._last_error

    def poll(self) -> DecodedBatch:
        """The next batch of records, decoded (empty when none came within the poll
        timeout, or the brokers are away)."""
        records = self.poll_records()
        return self._decoder.decode(records) if records else DecodedBatch()

    def share_schemas(self, schemas: dict[str, dict[str, Any]]) -> bool:
        """Decode these models' feature columns from now on (see :class:`SchemaSink`)."""
        self._decoder.set_schemas(schemas)
        return True

    def poll_records(self) -> list[RawRecord]:
        """The next records as they came (the consumer process decodes them itself)."""
        from kafka.errors import KafkaError

        if self._awaiting and time.monotonic() >= self._retry_restore_at:
            self._restore_again()
        try:
            batches = self._consumer.poll(
                timeout_ms=self.settings.poll_timeout_ms, max_records=self.settings.max_poll_records
            )
        except KafkaError as exc:  # the brokers are away: nothing fetched this time
            self._broker_failed("poll", exc)
            time.sleep(min(1.0, self.settings.poll_timeout_ms / 1000))  # do not spin on a dead broker
            return []
        if self._to_seek:  # partitions assigned with a checkpoint offset waiting
            moved, waiting = self._apply_seeks(self._to_seek)
            for tp in [*moved, *waiting]:
                # fetched from before the seek: fetched again after it (a seek that
                # could not be done yet is retried at the next poll, its records dropped)
                batches.pop(tp, None)
            self._to_seek = waiting
        if self.catch_up is not None:
            self._align_lifecycle(batches)
        records: list[RawRecord] = []
        for tp, recs in batches.items():
            if recs:
                key = (tp.topic, tp.partition)
                self._positions[key] = recs[-1].offset + 1
                gate = self._gates.get(key)
                if gate is not None:
                    if recs[0].offset >= gate.until:
                        del self._gates[key]  # past every restored state: nothing more to filter
                    else:
                        recs = gate.admit(recs)
                records.extend(recs)
        return records

    def _align_lifecycle(self, batches: dict[Any, list[RawRecord]]) -> None:
        """Drop the lifecycle records read aside before; read the backlog of newly
        assigned lifecycle partitions aside and put it into this batch (see
        :class:`LifecycleCatchUp`). Runs in the polling thread, before any record of
        the batch is handed over."""
        from kafka import TopicPartition

        cu = self.catch_up
        assert cu is not None
        if not (cu.due or cu.read_until):
            return
        fetched = {tp.partition: recs for tp, recs in batches.items() if tp.topic == cu.topic}
        held = [*self._awaiting, *((tp.topic, tp.partition) for tp in self._to_seek)]
        kept, aside = cu.align(fetched, self.assignment, held, self._lifecycle_starts)
        for p, recs in kept.items():
            batches[TopicPartition(cu.topic, p)] = [*aside.pop(p, ()), *recs]
        for p, read in aside.items():  # partitions of which nothing was polled
            only: list[RawRecord] = [*read]
            batches[TopicPartition(cu.topic, p)] = only

    def _lifecycle_starts(self, partitions: list[int]) -> dict[int, int | None]:
        """The next offset the consumer hands over of these lifecycle partitions (its
        commit, a seek, or the reset policy); those the brokers did not tell left out."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        assert self.catch_up is not None
        starts: dict[int, int | None] = {}
        for p in partitions:
            try:
                position = self._consumer.position(
                    TopicPartition(self.catch_up.topic, p), timeout_ms=self.settings.request_timeout_ms
                )
            except KafkaError as exc:
                self._broker_failed("reading the lifecycle position", exc)
                continue
            if position is not None:
                starts[p] = position
        return starts

    # -- state that follows its partition (with a RebalanceHandler) -------------------------
    def _forget(self, partitions: list[tuple[str, int]]) -> None:
        """Drop what this source knows of partitions it no longer owns."""
        for tp in partitions:
            self._positions.pop(tp, None)
            self._gates.pop(tp, None)
            self.delivered.pop(tp, None)
        self._awaiting = [tp for tp in self._awaiting if tp not in partitions]
        if self.catch_up is not None:
            self.catch_up.forget(partitions)

    def _resume_at(self, partitions: list[tuple[str, int]], restored: dict[str, Offsets]) -> None:
        """After a restore: start each partition at the lowest of the group's commit and
        the restored states' positions, and filter what is read again per model (a
        model's records before its state's position are in its state already; those of a
        model without a state before the commit were applied and committed by the
        previous owner). Blocking (asks the group coordinator): never on kafka-python's
        IO thread."""
        from kafka import TopicPartition

        for topic, partition in partitions:
            tp = TopicPartition(topic, partition)
            states = {m: pos[(topic, partition)] for m, pos in restored.items() if (topic, partition) in pos}
            if not states:
                continue  # nothing restored here: the group's commit (or the reset policy) decides
            committed = self._consumer.committed(tp, timeout_ms=self.settings.request_timeout_ms)
            floor = committed if committed is not None else 0
            start = min(floor, *states.values())
            gate = _Gate(floor, states)
            if gate.until > start:
                self._gates[(topic, partition)] = gate
            self._consumer.seek(tp, start)
            self._positions[(topic, partition)] = start
            if self.catch_up is not None:
                self.catch_up.moved([(topic, partition)])
            if committed is not None and start < committed:
                log.info(
                    "%s/%d: resuming at %d, before the group's commit (%d): some restored states "
                    "are older; each model's records apply from its own state's position",
                    topic,
                    partition,
                    start,
                    committed,
                )

    def _commit_now(self, offsets: dict[Any, Any]) -> bool:
        """Commit ``{TopicPartition: OffsetAndMetadata}`` at a revocation; whether it was
        done (a refusal is not fatal: the new owner then starts from the previous commit
        and skips what the written states already hold)."""
        from kafka.errors import KafkaError

        try:
            self._consumer.commit(offsets=offsets, timeout_ms=self.settings.request_timeout_ms)
        except KafkaError as exc:
            log.info(
                "the commit at a revocation was not done (%s: %s): the new owner resumes from the "
                "previous commit and the changelog's positions",
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def _restore_again(self) -> None:
        """Ask the handler again for the partitions whose restore failed; resume them
        once it succeeds (paused until then: never processed without their state)."""
        from kafka import TopicPartition

        waiting = list(self._awaiting)
        restored = self.handover.assigned(waiting) if self.handover is not None else {}
        if restored is None:
            self._retry_restore_at = time.monotonic() + _RESTORE_RETRY_SECONDS
            return
        self._resume_at(waiting, restored)
        self._awaiting = [tp for tp in self._awaiting if tp not in waiting]
        self._consumer.resume(*[TopicPartition(t, p) for t, p in waiting])
        log.info("restored the state of partitions %s: consuming them again", waiting)

    def offsets(self) -> dict[tuple[str, int], int]:
        return dict(self._positions)

    def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        """Commit the offsets of the partitions this instance owns; False when the
        commit was not done: refused by a rebalance (after the rejoin the service
        commits again, and partitions no longer owned are left to their new owner) or
        not answered by the brokers. Never raises for either."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assigned = self._consumer.assignment()
        mine = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in assigned
        }
        if not mine:
            return True
        try:
            self._consumer.commit(offsets=mine, timeout_ms=self.settings.request_timeout_ms)
        except KafkaError as exc:
            if type(exc).__name__ in _REBALANCE_ERRORS:
                log.info("commit refused by a rebalance (%s); committing again after the rejoin", type(exc).__name__)
            else:
                self._broker_failed("commit", exc)
            return False
        return True

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        self._pending_seek.update(offsets)
        _, waiting = self._apply_seeks(self._consumer.assignment())
        self._to_seek.extend(tp for tp in waiting if tp not in self._to_seek)

    def _apply_seeks(self, assigned) -> tuple[list, list]:
        """Seek assigned partitions to their checkpoint offsets, unless the group has
        committed further since (another instance owned the partition meanwhile: its
        commit wins, and this instance's state for it is older than the stream).
        Returns the partitions it moved, and those whose seek must wait (the brokers
        did not answer). Not callable from the rebalance callback (kafka-python runs
        that on its IO thread, where blocking calls are refused)."""
        from kafka.errors import KafkaError

        moved, waiting = [], []
        for tp in assigned:
            off = self._pending_seek.get((tp.topic, tp.partition))
            if off is None:
                continue
            try:
                committed = self._consumer.committed(tp, timeout_ms=self.settings.request_timeout_ms)
            except KafkaError as exc:
                self._broker_failed("reading the committed offset", exc)
                waiting.append(tp)
                continue
            if committed is not None and committed > off:
                log.warning(
                    "%s/%d: the group committed offset %d, past this instance's checkpoint "
                    "(%d); resuming from the commit",
                    tp.topic,
                    tp.partition,
                    committed,
                    off,
                )
                off = committed
            self._consumer.seek(tp, off)
            del self._pending_seek[(tp.topic, tp.partition)]
            self._positions[(tp.topic, tp.partition)] = off
            if self.catch_up is not None:
                self.catch_up.moved([(tp.topic, tp.partition)])
            moved.append(tp)
        return moved, waiting

    def end_offsets(self, timeout_ms: int | None = None) -> dict[tuple[str, int], int]:
        """The end offset of every assigned partition (asks the broker; raises
        kafka-python's ``KafkaError`` when it does not answer within ``timeout_ms``)."""
        assigned = list(self._consumer.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned, timeout_ms=timeout_ms or self.settings.request_timeout_ms)
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}

    def assignment(self) -> list[tuple[str, int]]:
        return [(tp.topic, tp.partition) for tp in self._consumer.assignment()]

    def probe(self) -> tuple[dict[tuple[str, int], int] | None, int, str | None]:
        """Ask the brokers for the end offsets of the assigned partitions (of the
        predictions topic's partition 0 when none is assigned, so that an outage shows
        either way): ``(ends or None, partitions assigned, error or None)``."""
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        assigned = list(self._consumer.assignment())
        timeout = min(self.settings.request_timeout_ms, _PROBE_TIMEOUT_MS)
        try:
            if assigned:
                ends = self._consumer.end_offsets(assigned, timeout_ms=timeout)
            else:
                self._consumer.end_offsets([TopicPartition(self.settings.predictions_topic, 0)], timeout_ms=timeout)
                ends = {}
        except KafkaError as exc:
            return None, len(assigned), self._broker_failed("end-offset request", exc)
        return {(tp.topic, tp.partition): end for tp, end in ends.items()}, len(assigned), None

    def status(self) -> SourceStatus:
        ends, assigned, error = self.probe()
        lag = None if ends is None else _lag(ends, self._positions)
        return SourceStatus(lag, assigned, error, self.broker_errors)

    def lag(self) -> dict[tuple[str, int], int]:
        return self.status().lag or {}

    def close(self) -> None:
        self.closing = True  # the revocation at close is not a handover: the service checkpointed
        self._consumer.close(autocommit=False)


def _lifecycle_subscription(consumer: Any, settings: KafkaSettings, topic: str | None) -> str | None:
    """``topic`` when the brokers know it (the lifecycle topic is then consumed with the
    predictions and feedback), else None.

    A deployment that does not use lifecycle events has no such topic, and subscribing
    to it would let the brokers auto-create it with their default partition count:
    not co-partitioned with the predictions, so a model's lifecycle events could land on
    another instance than its predictions. The topic must therefore exist when the
    service starts (docker-compose's kafka-init and the demo create it); a missing one
    is reported once, and a topic created later is consumed after a restart.
    """
    if not topic:
        return None
    from kafka.errors import KafkaError

    try:
        known = consumer.topics()
    except KafkaError as exc:
        log.warning(
            "cannot list the topics to find the lifecycle topic %r (%s): lifecycle events "
            "are not consumed until the service is restarted with the brokers answering",
            topic,
            exc,
        )
        return None
    if topic not in known:
        log.warning(
            "the lifecycle topic %r does not exist: model lifecycle events (deployed, "
            "promoted, rolled_back, retired) are not consumed. Create it with the partition "
            "count of %r and restart to use them (lifecycle.topic)",
            topic,
            settings.predictions_topic,
        )
        return None
    ours, theirs = consumer.partitions_for_topic(topic), consumer.partitions_for_topic(settings.predictions_topic)
    warn_if_not_copartitioned(topic, ours, settings.predictions_topic, theirs)
    return topic


def warn_if_not_copartitioned(topic: str, ours: Any, predictions_topic: str, theirs: Any) -> None:
    """Warn when the lifecycle topic's partitions (``ours``) and the predictions topic's
    (``theirs``) differ in number (either may be empty: unknown, nothing to say)."""
    if ours and theirs and len(ours) != len(theirs):
        log.warning(
            "the lifecycle topic %r has %d partitions and %r has %d: they are not "
            "co-partitioned, so a model's lifecycle events may reach another instance "
            "than its predictions; give them the same partition count",
            topic,
            len(ours),
            predictions_topic,
            len(theirs),
        )


_PROBE_TIMEOUT_MS = 5000
"""At most this long for a health probe (end offsets): an outage shows within seconds."""
_RESTORE_RETRY_SECONDS = 2.0
"""A failed restore is tried again this much later (its partitions paused meanwhile)."""


class _Gate:
    """Which records of one partition, read again after a restore, are new to their
    model: a record of a model with a restored state from the state's position on,
    any other record from the group's commit on (a model without a state had nothing
    applied durably; an unreadable record before the commit was dead-lettered by the
    previous owner before it committed)."""

    __slots__ = ("floor", "states", "until")

    def __init__(self, floor: int, states: dict[str, int]) -> None:
        self.floor = floor
        self.states = states
        self.until = max(floor, *states.values())

    def admit(self, records: list[RawRecord]) -> list[RawRecord]:
        return [
            r for r in records if r.offset >= self.until or r.offset >= self.states.get(_model_of(r) or "", self.floor)
        ]


_CATCH_UP_POLL_MS = 500
_CATCH_UP_SETTLE_MS = 200
"""The poll that confirms a lifecycle catch-up reached the end: nothing came within this
long (the end offset may read a little low; records past it come back at once)."""


class LifecycleCatchUp:
    """Event-time alignment of the lifecycle topic at catch-up, for both Kafka clients.

    The Kafka sources fetch their topics independently: a consumer that starts on a
    backlog (at start, after a restart, when a rebalance assigns it a partition) may
    hand the service a model's predictions before a lifecycle event that
    precedes them in event time, and the event would then take effect late. So when
    lifecycle partition ``p`` is assigned (or its position moves by a seek), the source
    reads it aside, from the consumer's position up to the end offset seen then (a
    bounded read with a deadline, in a consumer of its own without a group), before it
    hands over any record polled after the assignment, and hands those events over
    first, in the same batch: the engine keeps each until its event time. The
    consumer's own records of ``p`` below the end of that read are dropped when they
    come (they were handed over already), and the source's position of ``p`` moves
    past them, so they are committed with the batch like any record (a crash before
    the commit reads them again, as it reads the predictions again). A consumer that
    falls behind while keeping its partitions gets no new assignment, hence no read
    ahead: its events take effect when read, as before.

    The source tells it which partitions were assigned (:meth:`assigned`), moved by a
    seek (:meth:`moved`) or taken away (:meth:`forget`); at each poll it hands the
    lifecycle records it polled to :meth:`align`, with a callback that says where its
    consumer starts a partition (the one part that depends on the client), and puts
    what comes back into its batch, the records read aside first. The side reader is a
    kafka-python consumer whichever client the source uses (kafka-python is always
    installed: the producers are kafka-python's).

    Parameters
    ----------
    settings
        ``kafka`` of the configuration (connection options, ``auto_offset_reset``,
        ``request_timeout_ms``: the read's deadline).
    topic
        The lifecycle topic the source consumes.
    """

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self.due: set[int] = set()  # lifecycle partitions assigned whose backlog is not read yet
        self.read_until: dict[int, int] = {}  # partition -> next offset after the records read aside
        self.records_read = 0  # lifecycle records read aside so far
        self.incomplete = 0  # reads that stopped at their deadline (or on a broker error)
        self.deadline_seconds = settings.request_timeout_ms / 1000

    # -- bookkeeping, from the source ------------------------------------------------------
    def assigned(self, partitions: Any) -> None:
        """``(topic, partition)`` pairs newly assigned: their lifecycle backlog is due."""
        for topic, partition in partitions:
            if topic == self.topic:
                self.due.add(partition)
                self.read_until.pop(partition, None)

    def moved(self, partitions: Any) -> None:
        """``(topic, partition)`` pairs whose position a seek moved: read aside again from
        there (what was read aside past it is read again, as the predictions are)."""
        self.assigned(partitions)

    def forget(self, partitions: Any) -> None:
        """``(topic, partition)`` pairs no longer assigned."""
        for topic, partition in partitions:
            if topic == self.topic:
                self.due.discard(partition)
                self.read_until.pop(partition, None)

    def ready(self, assigned: Any, held: Any) -> list[int]:
        """The due partitions that are assigned (``(topic, partition)`` pairs) and not
        ``held`` (paused until a restore or a checkpoint seek is done: read once they
        consume again, from where they start then)."""
        assigned, held = set(assigned), set(held)
        for p in [p for p in self.due if (self.topic, p) not in assigned]:
            self.due.discard(p)  # no longer ours: its next assignment makes it due again
        return sorted(p for p in self.due if (self.topic, p) not in held)

    # -- records ---------------------------------------------------------------------------
    def unread(self, partition: int, records: list[RawRecord]) -> list[RawRecord]:
        """The consumer's records of lifecycle ``partition`` not read aside before."""
        until = self.read_until.get(partition)
        if until is None or not records:
            return records
        if records[-1].offset >= until - 1:
            del self.read_until[partition]  # the consumer is past what was read aside
        if records[0].offset >= until:
            return records
        return [r for r in records if r.offset >= until]

    def align(
        self,
        fetched: Mapping[int, list[RawRecord]],
        assigned: Callable[[], Any],
        held: Any,
        start_positions: Callable[[list[int]], dict[int, int | None]],
    ) -> tuple[dict[int, list[RawRecord]], dict[int, list[Record]]]:
        """One poll's lifecycle records, aligned: the records read aside before are
        dropped, the backlog of the partitions due is read aside (:meth:`ready`,
        :meth:`read`) and the records it covers are dropped.

        Parameters
        ----------
        fetched
            The lifecycle records the consumer polled, per partition, in offset order.
        assigned
            Gives the ``(topic, partition)`` pairs assigned (asked only when some
            partition is due).
        held
            As for :meth:`ready`.
        start_positions
            The client's part: for lifecycle partitions of which nothing was polled,
            the next offset its consumer hands over (None: where ``auto_offset_reset``
            says); a partition left out is not known (the brokers did not answer), and
            its events are read as they come.

        Returns
        -------
        kept, aside
            Per partition polled, its records to hand over; per partition read aside
            now, the records read, to hand over before any of ``kept`` (in the same
            batch).
        """
        kept = {p: self.unread(p, recs) if p in self.read_until else recs for p, recs in fetched.items()}
        if not self.due:
            return kept, {}
        ready = self.ready(assigned(), held)
        starts: dict[int, int | None] = {p: kept[p][0].offset for p in ready if kept.get(p)}
        unknown = [p for p in ready if p not in starts]
        found = start_positions(unknown) if unknown else {}
        for p in unknown:
            if p in found:
                starts[p] = found[p]
                continue
            self.due.discard(p)
            log.warning(
                "%s/%d: where the consumer starts it is not known (the brokers did not answer): its "
                "lifecycle events are read as they come, possibly after later predictions",
                self.topic,
                p,
            )
        aside = self.read(starts)
        for p in aside:  # the consumer's own records of it past those read aside
            until = self.read_until.get(p)
            if until is not None and p in kept:
                kept[p] = [r for r in kept[p] if r.offset >= until]
        return kept, aside

    def read(self, starts: dict[int, int | None]) -> dict[int, list[Record]]:
        """Read lifecycle partitions from ``starts`` (None: where ``auto_offset_reset``
        says) up to their end offsets, as asked now; the partitions are no longer due.

        Bounded by ``request_timeout_ms``: a read that does not reach the end by then (the
        brokers do not answer) is logged and handed over as far as it got; the rest comes
        as the consumer reads it (late, as without this read). Never raises for the
        brokers.

        Returns
        -------
        dict
            Per partition, its records read aside, in offset order (as
            :class:`~driftline.monitor.contract.Record` s); :attr:`read_until` holds
            where each read ended.
        """
        from kafka import TopicPartition
        from kafka.errors import KafkaError, KafkaTimeoutError

        for p in starts:
            self.due.discard(p)
        if not starts:
            return {}
        deadline = time.monotonic() + self.deadline_seconds
        tps = {p: TopicPartition(self.topic, p) for p in sorted(starts)}
        out: dict[int, list[Record]] = {p: [] for p in tps}
        next_offset: dict[int, int] = {}
        consumer = None
        try:
            consumer = self._consumer(deadline)
            consumer.assign(list(tps.values()))
            for p, tp in tps.items():
                start = starts[p]
                if start is None:
                    (
                        consumer.seek_to_beginning
                        if self.settings.auto_offset_reset == "earliest"
                        else consumer.seek_to_end
                    )(tp)
                else:
                    consumer.seek(tp, start)
            wait = int(max(0.1, deadline - time.monotonic()) * 1000)
            ends = consumer.end_offsets(list(tps.values()), timeout_ms=wait)
            for p, tp in tps.items():
                position = consumer.position(tp, timeout_ms=wait)
                if position is None:
                    raise KafkaTimeoutError(f"no position for partition {p} within {wait} ms")
                next_offset[p] = position
            at_end = all(next_offset[p] >= ends[tp] for p, tp in tps.items())
            if at_end:
                return out  # the steady state: nothing to read, not even one poll
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.incomplete += 1
                    log.warning(
                        "reading the lifecycle topic %r ahead of the predictions did not reach the end in %.0f s "
                        "(partition: (position, end offset) %s): the events not read yet take effect when "
                        "the consumer reads them, possibly after later predictions; check that the brokers answer",
                        self.topic,
                        self.deadline_seconds,
                        {p: (next_offset[p], ends[tp]) for p, tp in tps.items()},
                    )
                    break
                # at the end offset, one more (shorter) poll: the broker may report it a
                # little low, and records past it come back at once if there are any
                batch = consumer.poll(
                    timeout_ms=int(min(_CATCH_UP_SETTLE_MS if at_end else _CATCH_UP_POLL_MS, remaining * 1000)),
                    max_records=2000,
                )
                for tp, recs in batch.items():
                    for r in recs:
                        out[tp.partition].append(Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value))
                    if recs:
                        next_offset[tp.partition] = recs[-1].offset + 1
                if not batch and at_end:
                    break
                at_end = all(next_offset[p] >= ends[tp] for p, tp in tps.items())
        except KafkaError as exc:
            self.incomplete += 1
            log.warning(
                "reading the lifecycle topic %r ahead of the predictions failed (%s: %s): the events not "
                "read yet take effect when the consumer reads them, possibly after later predictions",
                self.topic,
                type(exc).__name__,
                exc,
            )
        finally:
            if consumer is not None:
                consumer.close(autocommit=False)
            for p, recs in out.items():
                if recs:
                    self.read_until[p] = recs[-1].offset + 1
            read = sum(map(len, out.values()))
            self.records_read += read
            if read:
                log.info(
                    "read %d lifecycle records of %r partitions %s ahead of the predictions (catching up)",
                    read,
                    self.topic,
                    sorted(p for p, recs in out.items() if recs),
                )
        return out

    def _consumer(self, deadline: float) -> Any:
        """A kafka-python consumer without a group, for one read; its network client
        closed again when it cannot bootstrap (kafka-python 3.0 leaves it open)."""
        from kafka import KafkaConsumer
        from kafka.net.compat import KafkaNetClient

        clients: list[Any] = []

        def client(**cfg: Any) -> Any:
            clients.append(KafkaNetClient(**cfg))
            return clients[-1]

        options: dict[str, Any] = {
            **kafka_client_options(self.settings),
            "client_id": f"{self.settings.client_id}-lifecycle",
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": self.settings.auto_offset_reset,
            "fetch_min_bytes": 1,
            "fetch_max_wait_ms": 100,
            "bootstrap_timeout_ms": int(max(0.1, deadline - time.monotonic()) * 1000),
        }
        try:
            return KafkaConsumer(**options, kafka_client=client)
        except BaseException:
            for opened in clients:
                opened.close()
            raise


def _model_of(record: RawRecord) -> str | None:
    """The ``model`` field of a record's JSON value (None when it has none); read only
    for the few records read again after a restore."""
    import orjson

    try:
        value = orjson.loads(record.value) if record.value is not None else None
    except orjson.JSONDecodeError:
        return None
    model = value.get("model") if isinstance(value, dict) else None
    return model if isinstance(model, str) else None


def _lag(ends: dict[tuple[str, int], int], positions: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    return {tp: max(0, end - positions[tp]) for tp, end in ends.items() if tp in positions}


# ---- the consumer process ---------------------------------------------------------------
# Messages between the service and its consumer process: small picklable types, one per
# request, so that each side matches on a type rather than on strings in a tuple.


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit these offsets; the reply's value: whether the commit was done."""

    name: ClassVar[str] = "commit"
    offsets: Offsets


@dataclass(frozen=True, slots=True)
class Seek:
    """Start at these offsets (a checkpoint's) where the partitions are assigned."""

    name: ClassVar[str] = "seek"
    offsets: Offsets


@dataclass(frozen=True, slots=True)
class GetStatus:
    """Ask the brokers for end offsets; the reply's value: a :class:`BrokerStatus`."""

    name: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class ShareSchemas:
    """Decode these models' feature columns from now on (``Schema.to_state()`` by model)."""

    name: ClassVar[str] = "schemas"
    schemas: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Close:
    """Stop polling, close the consumer and exit."""

    name: ClassVar[str] = "close"


@dataclass(frozen=True, slots=True)
class Answer:
    """The service's answer to the :class:`Handover` ``handover`` (no reply: the consumer
    process is waiting for it)."""

    name: ClassVar[str] = "answer"
    handover: int
    value: Any = None


Command = Commit | Seek | GetStatus | ShareSchemas | Close | Answer


@dataclass(frozen=True, slots=True)
class Handover:
    """In-band on the data queue, after the batches handed over before it: partitions
    change owners (``kind``: "revoke", "assign" or "lost"); the consumer process waits
    for the service's :class:`Answer` (see :class:`RebalanceHandler`)."""

    id: int
    kind: Literal["revoke", "assign", "lost"]
    partitions: list[tuple[str, int]]
    deadline: float = float("inf")
    """Wall-clock time (``time.time()``) after which the consumer process no longer waits:
    a revocation handled later is taken as a loss (the partitions may be another
    instance's by then: nothing is written or committed for them)."""


class Request(NamedTuple):
    """A command of the service, with the id its reply repeats."""

    id: int
    command: Command


class Reply(NamedTuple):
    """The consumer process's answer to the request ``id`` (0: the start-up reply,
    once the consumer is built; its value: the lifecycle topic subscribed, or None)."""

    id: int
    value: Any = None
    error: str | None = None
    """Why the request failed (then ``value`` is None)."""


class BrokerStatus(NamedTuple):
    """The reply to :class:`GetStatus` (see :meth:`KafkaSource.probe`)."""

    ends: Offsets | None
    assigned: int
    error: str | None
    broker_errors: int


class Batch(NamedTuple):
    """A polled batch on its way to the service: decoded in the consumer process, or
    the records as plain tuples of :class:`~driftline.monitor.contract.Record`'s fields
    (cheap to pickle) for the service to decode."""

    batch: DecodedBatch | list[tuple[Any, ...]]
    positions: Offsets
    """Next offset of every partition the batch has records of."""
    assignment: list[tuple[str, int]]
    """The partitions assigned when the batch was polled."""


DecodeWhere = Literal["when-busy", "always", "never"]
"""Where :class:`ProcessKafkaSource` decodes batches: ``"when-busy"``, ``"always"`` (in
the consumer process) or ``"never"`` (in the service)."""


class ProcessKafkaSource:
    """A :class:`KafkaSource` in a child process, prefetching the next batches while
    this process decodes and detects.

    Fetching, parsing and decoding take about as long as detection; in one process they
    add up. Here the consumer process polls ahead (at most ``_PREFETCH`` batches, so
    memory stays bounded) and shares the decoding with the service: while batches wait
    in the queue (the service is the busier one) it decodes each with a
    :class:`~driftline.monitor.decode.BatchDecoder` and sends a
    :class:`~driftline.monitor.decode.DecodedBatch`, with the feature columns of every model
    whose schema the engine has shared (:meth:`share_schemas`); when the queue is empty
    (the service waits) it sends the records and :meth:`poll` decodes them here, with a
    decoder that knows the same schemas. Either way the service gets the same decoded
    batch (decoding is a pure function of the records and schemas), and the work
    settles where there is a free core. Offsets are still committed only through
    :meth:`commit`, which the consumer process runs for this one and answers; the
    consumer process exits when this one closes it, or when this process disappears.

    Requests to the consumer process (:class:`Request`) carry an id and its replies
    (:class:`Reply`) repeat it: a reply that comes after its request timed out is
    recognised and dropped, never taken for the answer to a later request. A request
    that times out has a defined outcome: ``status``/``lag`` unknown, ``commit`` not
    done (the service commits again later), ``share_schemas`` not shared (shared again
    with the next batch).
    """

    _PREFETCH = 3
    _DECODE: DecodeWhere = "when-busy"
    """Where batches are decoded: "when-busy" (see above), "always" in the consumer
    process, or "never" (tests and benchmarks pin one)."""

    def __init__(
        self, settings: KafkaSettings, lifecycle_topic: str | None = None, handover: RebalanceHandler | None = None
    ) -> None:
        import multiprocessing

        self.handover = handover
        self.settings = settings
        self.exhausted = False
        self._positions: dict[tuple[str, int], int] = {}
        self._ids = itertools.count(1)  # request ids; 0 is the start-up reply
        self.stale_replies = 0  # replies dropped because their request had timed out
        self._timeouts = 0  # requests the consumer process did not answer in time
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or sockets
        self._data = ctx.Queue(maxsize=self._PREFETCH)
        self._commands = ctx.Queue()
        self._replies = ctx.Queue()
        self._proc = ctx.Process(
            target=_consumer_process,
            name="driftline-consumer",
            args=(
                settings,
                self._data,
                self._commands,
                self._replies,
                os.getpid(),
                self._DECODE,
                _logging_setup(),
                lifecycle_topic,
                handover is not None,
            ),
            daemon=True,
        )
        self._proc.start()
        deadline = time.monotonic() + settings.bootstrap_timeout_ms / 1000 + 60
        while True:
            try:
                started: Reply = self._replies.get(timeout=0.2)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    self._proc.join(timeout=5)  # its last reply may still be in the pipe
                    try:
                        started = self._replies.get(timeout=1)
                        break
                    except queue.Empty:
                        pass
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    self._stop()
                    raise SourceError(
                        "the Kafka consumer process did not start (a script that runs the "
                        'Service needs an `if __name__ == "__main__":` guard, or set '
                        "kafka.consumer_process: false)"
                    ) from None
        if started.error is not None:
            self._stop()
            raise SourceError(started.error)
        # the consumer process subscribed to the lifecycle topic only if it exists
        self.lifecycle_topic: str | None = started.value
        self._decoder = BatchDecoder(settings.predictions_topic, settings.feedback_topic, self.lifecycle_topic)

    def poll(self) -> DecodedBatch:
        """The next batch, decoded (see the class); an empty one when none came within
        the poll timeout."""
        try:
            message: Batch | Handover = self._data.get(timeout=self.settings.poll_timeout_ms / 1000)
        except queue.Empty:
            self._check_alive()
            return DecodedBatch()
        if isinstance(message, Handover):
            self._hand_over(message)
            return DecodedBatch()
        assigned = set(map(tuple, message.assignment))
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]  # revoked: another instance owns it now
        self._positions.update(message.positions)
        return self._decoded(message.batch)

    def _hand_over(self, message: Handover) -> None:
        """Run a rebalance step in the service (every batch before it is processed) and
        answer the consumer process, which waits for it."""
        value: Any = None
        kind = message.kind
        if kind == "revoke" and time.time() > message.deadline:
            log.warning(
                "partitions %s: their revocation came too late to hand their state over (the "
                "consumer process stopped waiting): dropped without writing, their new owner "
                "restores the last states written",
                message.partitions,
            )
            kind = "lost"
        if self.handover is not None:
            if kind == "revoke":
                value = self.handover.revoked(message.partitions)
            elif kind == "assign":
                value = self.handover.assigned(message.partitions)
            else:
                self.handover.lost(message.partitions)
        if message.kind != "assign":
            for tp in message.partitions:
                self._positions.pop((tp[0], tp[1]), None)
        self._commands.put(Request(0, Answer(message.id, value)))

    def _decoded(self, batch: DecodedBatch | list[tuple[Any, ...]]) -> DecodedBatch:
        """A batch the consumer process decoded as it is; records decoded here."""
        if isinstance(batch, DecodedBatch):
            return batch
        return self._decoder.decode(list(map(Record._make, batch)))

    def share_schemas(self, schemas: dict[str, dict[str, Any]]) -> bool:
        """Give the consumer process these models' schemas (``Schema.to_state()``), so
        that it decodes their feature columns from now on, and decode with them here
        too; False when it did not answer in time (share them again later: decoding is
        the same either way)."""
        if self._ask(ShareSchemas(schemas), timeout=self._patience()) is _TIMED_OUT:
            return False
        self._decoder.set_schemas(schemas)
        return True

    def _check_alive(self) -> None:
        if not self._proc.is_alive():
            raise SourceError(f"the Kafka consumer process exited (code {self._proc.exitcode}); see its log")

    def _patience(self) -> float:
        """How long to wait for a reply: the consumer process may first finish a poll
        or a request of its own that runs into the request timeout."""
        s = self.settings
        return (2 * s.request_timeout_ms + s.poll_timeout_ms) / 1000 + 5.0

    def _ask(self, command: Command, timeout: float) -> Any:
        """Send a request and wait for the reply with its id; replies to earlier
        requests that timed out are dropped. Returns the reply's value, or
        ``_TIMED_OUT``; raises :class:`SourceError` for an error reply or a dead
        consumer process."""
        self._check_alive()
        request = next(self._ids)
        self._commands.put(Request(request, command))
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply: Reply = self._replies.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                self._check_alive()
                if time.monotonic() >= deadline:
                    self._timeouts += 1
                    log.warning(
                        "the Kafka consumer process did not answer %s within %.0f s "
                        "(taken as not done; a late answer will be ignored)",
                        command.name,
                        timeout,
                    )
                    return _TIMED_OUT
                continue
            if reply.id != request:
                self.stale_replies += 1
                log.debug("dropping a late reply to request %s (waiting for %s)", reply.id, request)
                continue
            if reply.error is not None:
                raise SourceError(f"{command.name} failed in the Kafka consumer process: {reply.error}")
            return reply.value

    def offsets(self) -> Offsets:
        return dict(self._positions)

    def commit(self, offsets: Offsets) -> bool:
        """Commit in the consumer process; False when not done (a rebalance refused
        it, the brokers or the consumer process did not answer in time)."""
        return self._ask(Commit(offsets), timeout=self._patience()) is True

    def seek(self, offsets: Offsets) -> None:
        # positions follow the records that arrive: the consumer process may resume
        # from a newer commit than the checkpoint, and offsets must never go back
        if self._ask(Seek(offsets), timeout=self._patience()) is _TIMED_OUT:
            raise SourceError(
                "the Kafka consumer process did not take the checkpoint's offsets in "
                f"{self._patience():.0f} s: check that the brokers answer, then restart"
            )

    def status(self) -> SourceStatus:
        """Lag, assignment and broker health, from the consumer process; unknown lag
        and an error when it does not answer in time."""
        reply = self._ask(GetStatus(), timeout=self._patience())
        if reply is _TIMED_OUT:
            return SourceStatus(None, None, "the Kafka consumer process did not answer in time", self._timeouts)
        brokers = BrokerStatus(*reply)
        lag = None if brokers.ends is None else _lag(brokers.ends, self._positions)
        return SourceStatus(lag, brokers.assigned, brokers.error, brokers.broker_errors + self._timeouts)

    def lag(self) -> Offsets:
        return self.status().lag or {}

    def close(self) -> None:
        if self._proc.is_alive():
            self._commands.put(Request(0, Close()))
            self._proc.join(timeout=15)
        self._stop()

    def _stop(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        for q in (self._data, self._commands, self._replies):
            q.cancel_join_thread()
            q.close()


_TIMED_OUT = object()
"""What :meth:`ProcessKafkaSource._ask` returns when no reply came in time."""


def _logging_setup() -> tuple[int, logging.Formatter | None]:
    """This process's log level and format, for the consumer process (a spawned
    process starts with logging unconfigured: its warnings would lose their format)."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    try:
        import pickle

        pickle.dumps(formatter)
    except Exception:  # noqa: BLE001 - any formatter that cannot cross: the default one
        formatter = None
    return root.level, formatter


def _consumer_process(
    settings: KafkaSettings,
    data: Any,
    commands: Any,
    replies: Any,
    parent: int,
    decode: DecodeWhere,
    logging_setup: tuple[int, logging.Formatter | None] = (logging.WARNING, None),
    lifecycle_topic: str | None = None,
    handover: bool = False,
) -> None:
    """The consumer process's entry point: poll ahead into ``data`` (:class:`Batch`); run
    the :class:`Request` s from ``commands`` and answer each in ``replies`` with a
    :class:`Reply` of its id. As an entry point it owns its process's settings: signals,
    logging, the garbage collector."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when to stop
    # this process's entry point: log as the service does (level and format), to stderr
    level, formatter = logging_setup
    handler = logging.StreamHandler(sys.stderr)
    if formatter is not None:
        handler.setFormatter(formatter)
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, level))
    # at exit, do not wait to push buffered batches into a pipe nobody may read any more
    data.cancel_join_thread()
    try:
        helper = _ChildHandover(settings, data, commands, replies, parent) if handover else None
        source: Any
        if settings.client == "confluent":  # the same interface on confluent-kafka (kafka.client)
            from driftline.monitor.confluent_source import ConfluentSource

            source = ConfluentSource(settings, lifecycle_topic, handover=helper)
        else:
            source = KafkaSource(settings, lifecycle_topic, handover=helper)
    except SourceError as exc:
        replies.put(Reply(0, error=str(exc)))  # flushed at exit: the parent is waiting for it
        return
    replies.put(Reply(0, source.lifecycle_topic))  # the lifecycle topic, when subscribed
    tune_gc()
    decoder = BatchDecoder(settings.predictions_topic, settings.feedback_topic, source.lifecycle_topic)
    delivered = source.delivered  # partition -> next offset handed over (forgotten when revoked)
    if helper is not None:
        helper.source, helper.decoder = source, decoder
    pending: Batch | None = None
    try:
        while os.getppid() == parent and not (helper is not None and helper.closed):
            try:
                request: Request | None = commands.get_nowait()
            except queue.Empty:
                request = None
            if request is not None:
                command = request.command
                if isinstance(command, Close):
                    break
                if isinstance(command, Answer):
                    continue  # to a handover that timed out: too late to act on
                if isinstance(command, ShareSchemas):
                    decoder.set_schemas(command.schemas)
                    replies.put(Reply(request.id))
                    continue
                replies.put(_run(source, request))
                continue
            if pending is None:
                records = source.poll_records()
                assignment = source.assignment()
                records = _unseen(records, delivered, assignment) if records else records
                if records:
                    positions = {tp: delivered[tp] for tp in {(r.topic, r.partition) for r in records}}
                    # the service waits (nothing queued): hand the records over as they are
                    # and let it decode; it is busy: decode here meanwhile
                    here = decode == "always" or (decode == "when-busy" and not data.empty())
                    batch = decoder.decode(records) if here else _tuples(records)
                    pending = Batch(batch, positions, assignment)
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


def _tuples(records: list[RawRecord]) -> list[tuple[Any, ...]]:
    """Records as plain tuples of :class:`~driftline.monitor.contract.Record`'s fields (cheap to pickle)."""
    # driftline's parser makes Records (tuples already); kafka-python's own records may have
    # lifecycle Records read aside (LifecycleCatchUp) among them
    return [
        tuple(r) if type(r) is Record else (r.topic, r.partition, r.offset, r.timestamp, r.key, r.value)
        for r in records
    ]


def _unseen(
    records: list[RawRecord], delivered: dict[tuple[str, int], int], assignment: list[tuple[str, int]]
) -> list[RawRecord]:
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


def _run(source: KafkaSource, request: Request) -> Reply:
    """Run one request of the service in the consumer process."""
    from kafka.errors import KafkaError

    command = request.command
    try:
        if isinstance(command, Commit):
            return Reply(request.id, source.commit(command.offsets))
        if isinstance(command, Seek):
            source.seek(command.offsets)
            return Reply(request.id)
        if isinstance(command, GetStatus):
            ends, assigned, error = source.probe()
            return Reply(request.id, BrokerStatus(ends, assigned, error, source.broker_errors))
    except KafkaError as exc:
        return Reply(request.id, error=f"{type(exc).__name__}: {exc}")
    return Reply(request.id, error=f"unknown command {command!r}")


_NO_ANSWER = object()


class _ChildHandover:
    """The consumer process's :class:`RebalanceHandler`: a :class:`Handover` to the
    service in-band on the data queue, then its :class:`Answer` awaited, while the
    service's other requests are answered from what is known without the consumer (it
    is inside its rebalance): status without lag, commits not done (the service
    commits again later), schemas taken."""

    def __init__(self, settings: KafkaSettings, data: Any, commands: Any, replies: Any, parent: int) -> None:
        self.data, self.commands, self.replies, self.parent = data, commands, replies, parent
        self.source: KafkaSource | None = None
        self.decoder: BatchDecoder | None = None
        self.closed = False
        self._ids = itertools.count(1)
        # the service may first finish a batch, flush its sinks, write the changelog and
        # restore; kafka-python's default max.poll.interval.ms (5 min) bounds it anyway
        self.patience = 2 * settings.changelog.timeout_seconds + 2 * settings.request_timeout_ms / 1000 + 60

    def revoked(self, partitions: list[tuple[str, int]]) -> Offsets | None:
        return self._ask("revoke", partitions)

    def assigned(self, partitions: list[tuple[str, int]]) -> dict[str, Offsets] | None:
        return self._ask("assign", partitions)

    def lost(self, partitions: list[tuple[str, int]]) -> None:
        self._ask("lost", partitions)

    def _ask(self, kind: Literal["revoke", "assign", "lost"], partitions: list[tuple[str, int]]) -> Any:
        if self.closed:
            return None
        message = Handover(next(self._ids), kind, list(partitions), time.time() + self.patience)
        deadline = time.monotonic() + self.patience
        sent = False
        while time.monotonic() < deadline and os.getppid() == self.parent and not self.closed:
            if not sent:
                try:
                    self.data.put(message, timeout=0.05)  # full: the service is behind
                    sent = True
                except queue.Full:
                    pass
            try:
                request: Request = self.commands.get(timeout=0.05) if sent else self.commands.get_nowait()
            except queue.Empty:
                continue
            answer = self._serve(request, message.id)
            if answer is not _NO_ANSWER:
                return answer
        if not self.closed:
            log.warning(
                "the service did not answer the %s of partitions %s within %.0f s: nothing committed for them",
                kind,
                partitions,
                self.patience,
            )
        return None

    def _serve(self, request: Request, wanted: int) -> Any:
        command = request.command
        if isinstance(command, Answer):
            return command.value if command.handover == wanted else _NO_ANSWER
        if isinstance(command, Close):
            self.closed = True
            if self.source is not None:
                self.source.closing = True
            return None
        if isinstance(command, ShareSchemas):
            if self.decoder is not None:
                self.decoder.set_schemas(command.schemas)
            self.replies.put(Reply(request.id))
        elif isinstance(command, GetStatus):
            assigned = len(self.source._consumer.assignment()) if self.source is not None else 0
            errors = self.source.broker_errors if self.source is not None else 0
            self.replies.put(Reply(request.id, BrokerStatus(None, assigned, None, errors)))
        elif isinstance(command, Commit):
            self.replies.put(Reply(request.id, False))  # not now: committed again after the rebalance
        elif isinstance(command, Seek):
            if self.source is not None:
                self.source._pending_seek.update(command.offsets)
            self.replies.put(Reply(request.id))
        return _NO_ANSWER


def _handover_listener(source: KafkaSource):
    from kafka import AsyncConsumerRebalanceListener

    class _Listener(_HandoverListener, AsyncConsumerRebalanceListener):
        pass

    return _Listener(source)


class _HandoverListener:
    """Rebalance callbacks that hand a partition's state over (see
    :class:`RebalanceHandler`).

    kafka-python 3.0 runs them on its IO thread, in its own event loop (not asyncio's):
    a blocking call there would stop heartbeats, and a blocking consumer call cannot
    complete there. So each step runs in a worker thread while the callback awaits
    it in short sleeps of that loop; heartbeats go on meanwhile.
    """

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        net = self.source._consumer._coordinator._net
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - raised again on the loop below
                box["error"] = exc

        worker = threading.Thread(target=work, name="driftline-handover", daemon=True)
        worker.start()
        while worker.is_alive():
            await net.sleep(0.02)
        if "error" in box:
            raise box["error"]
        return box.get("value")

    async def on_partitions_revoked(self, revoked) -> None:
        from kafka.structs import OffsetAndMetadata

        src = self.source
        assert src.handover is not None  # this listener is installed only with a handler
        tps = sorted((tp.topic, tp.partition) for tp in revoked)
        if src.closing or not tps:
            src._forget(tps)
            return
        offsets = await self._off_loop(src.handover.revoked, tps)  # it reads the positions: forgotten after
        src._forget(tps)
        mine = {
            tp: OffsetAndMetadata(offsets[(tp.topic, tp.partition)], "", -1)
            for tp in revoked
            if offsets and (tp.topic, tp.partition) in offsets
        }
        if mine:
            # still in the old generation: the group takes it, and the new owner starts there
            done = await self._off_loop(src._commit_now, mine)
            log.info("partitions %s revoked: state written, offsets %scommitted", tps, "" if done else "not ")

    async def on_partitions_lost(self, lost) -> None:
        src = self.source
        assert src.handover is not None  # this listener is installed only with a handler
        tps = sorted((tp.topic, tp.partition) for tp in lost)
        src._forget(tps)
        if not src.closing and tps:
            await self._off_loop(src.handover.lost, tps)

    async def on_partitions_assigned(self, assigned) -> None:
        src = self.source
        assert src.handover is not None  # this listener is installed only with a handler
        tps = sorted((tp.topic, tp.partition) for tp in assigned)
        if src.closing or not tps:
            return
        if src.catch_up is not None:
            src.catch_up.assigned(tps)
        restored = await self._off_loop(src.handover.assigned, tps)
        if restored is None:
            # never process a partition without its state: paused, restored again later
            src._consumer.pause(*assigned)
            src._awaiting.extend(tp for tp in tps if tp not in src._awaiting)
            src._retry_restore_at = time.monotonic() + _RESTORE_RETRY_SECONDS
            log.warning(
                "restoring the state of partitions %s failed: they stay paused and the restore "
                "is tried again in %.0f s",
                tps,
                _RESTORE_RETRY_SECONDS,
            )
            return
        await self._off_loop(src._resume_at, tps, restored)


def _rebalance_listener(source: KafkaSource):
    from kafka import ConsumerRebalanceListener

    class _Listener(_Rebalance, ConsumerRebalanceListener):
        pass

    return _Listener(source)


class _Rebalance:
    """Notes which newly assigned partitions have a checkpoint seek due (the next poll
    applies it); forgets positions of revoked partitions (their new owner resumes from
    the group's last commit)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked) -> None:
        for tp in revoked:
            self.source._positions.pop((tp.topic, tp.partition), None)
        self.source._to_seek = [tp for tp in self.source._to_seek if tp not in revoked]
        if self.source.catch_up is not None:
            self.source.catch_up.forget((tp.topic, tp.partition) for tp in revoked)

    def on_partitions_assigned(self, assigned) -> None:
        if self.source.catch_up is not None:
            self.source.catch_up.assigned((tp.topic, tp.partition) for tp in assigned)
        pending = self.source._pending_seek
        self.source._to_seek.extend(
            tp for tp in assigned if (tp.topic, tp.partition) in pending and tp not in self.source._to_seek
        )


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
    """Replay JSONL files: predictions and (optionally) feedback and lifecycle events,
    merged by event time.

    Lines are merged on their ``ts`` (ties: lifecycle events first, so that a version
    deployed at ``ts`` is known when its first prediction of ``ts`` arrives, then
    predictions, then feedback, then file order), as they would have arrived live;
    each file's own order is kept. Offsets are line numbers. Lifecycle records carry
    ``lifecycle_topic`` as their topic, so they are decoded as over Kafka.
    """

    def __init__(
        self,
        predictions: Path,
        feedback: Path | None,
        *,
        predictions_topic: str,
        feedback_topic: str,
        batch_size: int = 5000,
        lifecycle: Path | None = None,
        lifecycle_topic: str = "model-lifecycle",
    ) -> None:
        for p in (predictions, feedback):
            if p is not None and not Path(p).is_file():
                raise SourceError(f"{p} does not exist or is not a file")
        # generators all the way: memory does not grow with the files' length
        preds = (((ts, 0, n), rec) for ts, n, rec in _lines(Path(predictions), predictions_topic))
        streams: list[Iterator] = [preds]
        if feedback is not None:
            streams.append(((ts, 1, n), rec) for ts, n, rec in _lines(Path(feedback), feedback_topic))
        if lifecycle is not None:
            from driftline.monitor.lifecycle import read_lifecycle_file

            streams.append(((ts, -1, n), rec) for ts, n, rec in read_lifecycle_file(lifecycle, lifecycle_topic))
        self._merged: Iterator = heapq.merge(*streams, key=lambda kv: kv[0]) if len(streams) > 1 else preds
        self.batch_size = batch_size
        self.exhausted = False
        self._positions: dict[tuple[str, int], int] = {}
        self.records_read = 0
        self._decoder = BatchDecoder(
            predictions_topic, feedback_topic, lifecycle_topic if lifecycle is not None else None
        )

    def poll(self) -> DecodedBatch:
        """The next ``batch_size`` lines, decoded."""
        records = self.poll_records()
        return self._decoder.decode(records) if records else DecodedBatch()

    def share_schemas(self, schemas: dict[str, dict[str, Any]]) -> bool:
        """Decode these models' feature columns from now on (see :class:`SchemaSink`)."""
        self._decoder.set_schemas(schemas)
        return True

    def poll_records(self) -> list[Record]:
        """The next ``batch_size`` lines as records, in event-time order."""
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

    def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        return True  # a replay starts from the beginning every time

    def seek(self, offsets: dict[tuple[str, int], int]) -> None:
        pass

    def status(self) -> SourceStatus:
        """Files have no brokers and no lag."""
        return SourceStatus(lag={})

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def close(self) -> None:
        pass
