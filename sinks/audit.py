"""The audit trail: every alarm, trigger, delivery outcome and lifecycle event, kept.

Each is an :class:`AuditRecord` (``kind``, ``model``, ``version``, ``ts``, a JSON
``payload`` and a deterministic ``id``) appended to a local SQLite table and, when
``audit.kafka_topic`` is set, published to that topic (JSON, keyed by model).

- **Append-only and idempotent.** A record's ``id`` is the SHA-256 of its kind and of
  what identifies it (:func:`record_id`), and the table has a unique constraint on it:
  a replay after a crash, or of the same streams, re-appends the same records and adds
  none (``INSERT OR IGNORE``). An ``UPDATE`` of a record is refused by the database.
- **Durable.** The file is in WAL mode with ``synchronous=FULL``, as the webhook outbox
  (:mod:`driftline.sinks.outbox`): an appended record survives a power loss. Its own
  file, ``<state_dir>/audit.sqlite3`` by default (``audit.path``), with its own
  retention (``audit.retention_days``, counted on the wall clock of recording) apart
  from the outbox's 30 days.
- **The Kafka copy is at least once.** Records to publish are listed in the
  ``audit_outgoing`` table in the transaction that appends them, and taken off only
  once the broker acknowledged them: a crash or a broker outage delays the copy and
  never loses it (a repeat carries the same ``id``: consumers key on it). A failed
  publication is logged and retried at the next flush; it does not hold back the
  commit of offsets, since the SQLite record is already durable.
- **Linked by the trigger's key.** A trigger record, its delivery records and the
  lifecycle events that cite it (their ``trigger`` field) share ``trigger_key``:
  :meth:`AuditLog.answer_chain` gives them together.

What each kind's payload holds:

``alarm``
    The alarm's JSON contract and its ``origin``.
``trigger``
    Its lineage: ``idempotency_key``, ``action``, ``reason``, the evidence alarms
    (``evidence``, and their record ids ``evidence_ids``), the evidence window
    (``first_index``, ``last_index``), the ``source_positions`` of the evidence
    windows (topic, partition, first and last offset), ``reference_fingerprint``,
    ``config_fingerprint``, ``detector_params`` and ``driftline_version``. Delivery
    attempts and the lifecycle event that answered it are records of their own, linked
    by the key (the trail is append-only).
``delivery``
    ``target``, ``action``, ``outcome`` (``delivered``, ``retried``, ``failed``,
    ``rejected``, ``dry_run``), ``attempts`` and the stored error: never a URL, a
    header or a secret.
``lifecycle``
    The event as in its contract (:mod:`driftline.monitor.lifecycle`) and its
    ``source_position``.

Examples
--------
>>> import tempfile, pathlib
>>> from driftline.monitor.alarms import Alarm
>>> log = AuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.sqlite3")
>>> a = Alarm("fraud", "v7", "feature_drift", "ks", "amount", 0.3, 0.1, 1e-6, 0, 999, 1763900400.0,
...           "retrain", origin="predictions/0/0")
>>> len(log.append([alarm_record(a)])), len(log.append([alarm_record(a)]))
(1, 0)
>>> [r["kind"] for r in log.query(model="fraud")]
['alarm']
>>> log.close()
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import KafkaSettings, ModelSettings, Settings
from driftline.sinks.exceptions import SinkError
from driftline.sinks.kafka import Headers, KafkaPublisher, Outgoing
from driftline.sinks.policy import Trigger

if TYPE_CHECKING:  # pragma: no cover - typing only
    from kafka import KafkaProducer

    from driftline.monitor.decode import DecodedBatch, RawRecord
    from driftline.monitor.lifecycle import LifecycleEvent
    from driftline.sinks.delivery import DeliveryOutcome

__all__ = [
    "AuditLog",
    "AuditRecord",
    "SourceRange",
    "Lineage",
    "AUDIT_KINDS",
    "AUDIT_FILE",
    "MIN_KEY_PREFIX",
    "record_id",
    "fingerprint",
    "alarm_record",
    "trigger_record",
    "delivery_record",
    "lifecycle_record",
    "format_records",
    "format_chain",
    "parse_since",
    "EvidencePositions",
    "AuditRecorder",
    "detector_params",
]

log = logging.getLogger(__name__)

AUDIT_KINDS: tuple[str, ...] = ("alarm", "trigger", "delivery", "lifecycle")
AUDIT_FILE = "audit.sqlite3"
"""The audit log's file name inside ``state_dir`` (unless ``audit.path`` is set)."""
MIN_KEY_PREFIX = 8
"""Shortest trigger-key prefix :meth:`AuditLog.answer_chain` accepts (logs show 12)."""

_ID_SCHEMA = "driftline.audit/v1"
_ERROR_CHARS = 300
_PUBLISH_BATCH = 5000
_RETRY_MIN_SECONDS = 5.0
_RETRY_MAX_SECONDS = 300.0
"""After a failed publication, :meth:`AuditLog.flush` tries again after 5 s, doubling up to 5 min."""
"""Records handed to the Kafka producer per flush at most (bounded memory after an outage)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL CHECK (kind IN ('alarm', 'trigger', 'delivery', 'lifecycle')),
    model       TEXT    NOT NULL,
    version     TEXT,
    ts          REAL    NOT NULL,
    trigger_key TEXT,
    recorded_at REAL    NOT NULL,
    payload     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_model ON audit (model, version, ts);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_trigger ON audit (trigger_key);
CREATE INDEX IF NOT EXISTS audit_recorded ON audit (recorded_at);
CREATE TABLE IF NOT EXISTS audit_outgoing (
    seq INTEGER PRIMARY KEY
);
CREATE TRIGGER IF NOT EXISTS audit_append_only BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit log is append-only: records are never changed');
END;
"""


# ---- records ------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON has no NaN) and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    return json.dumps(
        _clean(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
    )


def record_id(kind: str, material: Any) -> str:
    """The deterministic id of a record: SHA-256 hex of its kind and of what identifies
    it (``material``, as canonical JSON). Equal for the same record however often it is
    re-emitted; different for any two different records."""
    return hashlib.sha256(_canonical([_ID_SCHEMA, kind, material]).encode("utf-8")).hexdigest()


def fingerprint(value: Any) -> str:
    """SHA-256 hex of ``value`` as canonical JSON (sorted keys): a reference's or a
    configuration's fingerprint, equal across processes for equal values.

    Examples
    --------
    >>> fingerprint({"b": 1, "a": [1.0, 2]}) == fingerprint({"a": [1.0, 2], "b": 1})
    True
    """
    return hashlib.sha256(_canonical(value).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    """One record of the trail.

    Attributes
    ----------
    id
        :func:`record_id` of the record.
    kind
        One of :data:`AUDIT_KINDS`.
    model, version
        What it concerns (``version`` None when no version applies).
    ts
        Event time (epoch seconds) for alarms, triggers and lifecycle events; the wall
        clock of the attempt for deliveries.
    payload
        What happened (see the module docstring), JSON values.
    trigger_key
        The idempotency key of the trigger it belongs to: the trigger's own, the one a
        delivery sent, the one a lifecycle event cites; None for alarms and for
        lifecycle events that cite none.
    """

    id: str
    kind: str
    model: str
    version: str | None
    ts: float
    payload: dict[str, Any]
    trigger_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON values (the Kafka copy's value)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "ts": self.ts,
            "trigger_key": self.trigger_key,
            "payload": self.payload,
        }


@dataclass(frozen=True)
class SourceRange:
    """Where evidence sits in a source: offsets ``first_offset..last_offset`` (inclusive)
    of one partition of one topic (for a replay: the file's topic, lines as offsets)."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
        }


@dataclass(frozen=True)
class Lineage:
    """What the pipeline knows of a trigger beyond the trigger itself.

    Attributes
    ----------
    source_positions
        The source ranges of the evidence windows.
    reference_fingerprint
        :func:`fingerprint` of the reference the evidence was measured against.
    config_fingerprint
        :func:`fingerprint` of the model's effective settings.
    detector_params
        The parameters of the detectors that fired, by detector name.
    """

    source_positions: tuple[SourceRange, ...] = ()
    reference_fingerprint: str | None = None
    config_fingerprint: str | None = None
    detector_params: Mapping[str, Any] = field(default_factory=dict)


def alarm_record(alarm: Alarm) -> AuditRecord:
    """The record of an alarm. Its id covers the alarm's contract and its ``origin``, so
    that an alarm of a model whose state restarted elsewhere (the same indices counted
    from another position) is another record."""
    payload = alarm.to_dict(origin=True)
    return AuditRecord(
        record_id("alarm", payload), "alarm", alarm.model, alarm.version, float(alarm.ts), _clean(payload)
    )


def trigger_record(
    trigger: Trigger, lineage: Lineage = Lineage(), *, reason: str | None = None, driftline_version: str | None = None
) -> AuditRecord:
    """The record of a trigger with its lineage (see :class:`Lineage`).

    Parameters
    ----------
    trigger
        What the policy decided.
    lineage
        Source positions, fingerprints and detector parameters.
    reason
        The trigger's reason as sent (the webhook payload's); default: none given.
    driftline_version
        Default: ``driftline.__version__``.
    """
    if driftline_version is None:
        from driftline import __version__ as driftline_version
    evidence = [a.to_dict(origin=True) for a in trigger.alarms]
    payload = {
        "idempotency_key": trigger.idempotency_key,
        "action": trigger.action,
        "reason": reason,
        "first_index": trigger.first_index,
        "last_index": trigger.last_index,
        "evidence": evidence,
        "evidence_ids": [alarm_record(a).id for a in trigger.alarms],
        "source_positions": [p.to_dict() for p in lineage.source_positions],
        "reference_fingerprint": lineage.reference_fingerprint,
        "config_fingerprint": lineage.config_fingerprint,
        "detector_params": dict(lineage.detector_params),
        "driftline_version": driftline_version,
    }
    return AuditRecord(
        record_id("trigger", trigger.idempotency_key),
        "trigger",
        trigger.model,
        trigger.version,
        float(trigger.ts),
        _clean(payload),
        trigger.idempotency_key,
    )


def delivery_record(
    *,
    target: str,
    idempotency_key: str,
    model: str,
    version: str | None,
    action: str,
    outcome: str,
    attempts: int,
    at: float,
    error: str | None = None,
) -> AuditRecord:
    """The record of one delivery attempt's outcome (or of a dry run).

    ``error`` is the outbox's stored error (it never holds a URL or a secret), cut to
    300 characters. The id covers the target, the key, the attempt and the outcome: an
    attempt recorded twice (a crash before the outbox noted it) is one record.
    """
    if error is not None and len(error) > _ERROR_CHARS:
        error = error[: _ERROR_CHARS - 3] + "..."
    payload = {
        "target": target,
        "idempotency_key": idempotency_key,
        "action": action,
        "outcome": outcome,
        "attempts": int(attempts),
        "error": error,
    }
    material = [target, idempotency_key, int(attempts), outcome]
    return AuditRecord(record_id("delivery", material), "delivery", model, version, float(at), payload, idempotency_key)


def lifecycle_record(event: LifecycleEvent, source: RawRecord | None = None) -> AuditRecord:
    """The record of a lifecycle event; ``source`` (its record) gives the source position.

    The id covers the event alone, not where it was read: the same event produced twice
    (a CI job re-run) is one record, and a replay file gives the records a Kafka run gave.
    """
    data = event.to_dict()
    payload = dict(data)
    payload["source_position"] = f"{source.topic}/{source.partition}/{source.offset}" if source is not None else None
    return AuditRecord(
        record_id("lifecycle", data),
        "lifecycle",
        event.model,
        event.version,
        float(event.ts),
        _clean(payload),
        event.trigger,
    )


# ---- the Kafka copy -------------------------------------------------------------------


class _AuditPublisher(KafkaPublisher):
    """Publishes audit records (JSON, keyed by model, the id in a header)."""

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        flush_timeout_seconds: float,
        producer: KafkaProducer | None = None,
    ) -> None:
        super().__init__(
            settings,
            topic,
            what="audit record(s)",
            client_suffix="audit",
            flush_timeout_seconds=flush_timeout_seconds,
            producer=producer,
        )

    def send(self, items: Sequence[tuple[int, AuditRecord]]) -> None:
        """Queue ``(seq, record)`` pairs for the next flush."""
        self._add(items)

    def discard(self) -> None:
        """Forget the records not acknowledged yet: they stay listed in the file's
        ``audit_outgoing`` table and are published again after a restart."""
        self._pending = []

    def unacknowledged(self) -> set[int]:
        """Sequence numbers of the records handed over and not acknowledged yet."""
        return {entry.item[0] for entry in self._pending}

    def _record(self, entry: Outgoing) -> tuple[bytes | None, bytes, Headers]:
        record: AuditRecord = entry.item[1]
        value = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        return record.model.encode("utf-8"), value, [("driftline-audit-id", record.id.encode("ascii"))]


# ---- the log --------------------------------------------------------------------------


def _row_dict(values: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": values[0],
        "kind": values[1],
        "model": values[2],
        "version": values[3],
        "ts": values[4],
        "trigger_key": values[5],
        "recorded_at": values[6],
        "payload": json.loads(values[7]),
    }


_COLUMNS = "id, kind, model, version, ts, trigger_key, recorded_at, payload"


class AuditLog:
    """The audit trail's SQLite file, and its Kafka copy when a topic is given.

    Parameters
    ----------
    path
        The database file (created with its tables if missing).
    retention_days
        Records recorded (wall clock) longer ago than this are deleted by :meth:`prune`,
        which runs at the first :meth:`flush` and then at most hourly (opening the file
        to read it, as ``driftline audit`` does, deletes nothing).
    kafka
        ``kafka`` of the configuration (brokers, security), for the Kafka copy.
    kafka_topic
        The topic of the Kafka copy; None: no copy.
    producer
        A producer for the Kafka copy instead of one made from ``kafka`` (tests).
    clock
        Wall-clock seconds (``recorded_at``, retention).
    flush_timeout_seconds
        How long a flush waits for the broker's acknowledgements.
    busy_timeout_seconds
        How long a statement waits for a lock held by another connection.

    Notes
    -----
    One connection, used under a lock: the service loop (alarms, triggers, lifecycle
    events) and the webhook delivery thread (delivery outcomes) append from their own
    threads. :meth:`flush` (the Kafka copy) is for one thread only, the service loop.
    ``close()`` must be called.
    """

    name = "audit"

    def __init__(
        self,
        path: str | Path,
        *,
        retention_days: float = 400.0,
        kafka: KafkaSettings | None = None,
        kafka_topic: str | None = None,
        producer: KafkaProducer | None = None,
        clock: Any = time.time,
        flush_timeout_seconds: float = 10.0,
        busy_timeout_seconds: float = 10.0,
    ) -> None:
        if not retention_days > 0:
            raise ValueError(f"retention_days must be positive, got {retention_days!r}")
        self.path = Path(path)
        self.retention_seconds = float(retention_days) * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer: list[AuditRecord] = []
        self._publisher: _AuditPublisher | None = None
        if kafka_topic:
            self._publisher = _AuditPublisher(
                kafka or KafkaSettings(), kafka_topic, flush_timeout_seconds=flush_timeout_seconds, producer=producer
            )
        self._handed: set[int] = set()
        self._publish_failing = False
        self._publish_backoff = 0.0
        self._next_publish_at = -math.inf
        self._last_prune = -math.inf
        try:
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_seconds
            )
        except sqlite3.Error as exc:
            raise SinkError(
                f"cannot open the audit log {str(self.path)!r} ({exc}): set audit.path "
                "(or state_dir) to a writable place"
            ) from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        state_dir: Path | None = None,
        producer: KafkaProducer | None = None,
        clock: Any = time.time,
    ) -> AuditLog:
        """The audit log the configuration describes: ``audit.path`` (default
        ``<state_dir>/audit.sqlite3``, the directory created if missing),
        ``audit.retention_days`` and ``audit.kafka_topic`` on ``kafka``'s brokers.

        Raises
        ------
        SinkError
            When the directory or the file cannot be created.
        """
        path = settings.audit.path
        if path is None:
            directory = Path(state_dir if state_dir is not None else settings.state_dir)
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SinkError(
                    f"cannot create state_dir {str(directory)!r} for the audit log ({exc}): "
                    "set state_dir (or audit.path) to a writable place"
                ) from None
            path = directory / AUDIT_FILE
        return cls(
            path,
            retention_days=settings.audit.retention_days,
            kafka=settings.kafka,
            kafka_topic=settings.audit.kafka_topic,
            producer=producer,
            clock=clock,
        )

    # -- appending --------------------------------------------------------------------------
    def append(self, records: Iterable[AuditRecord]) -> list[AuditRecord]:
        """Append ``records`` in one transaction (durable when this returns); those
        whose id is present already are left as they are.

        Returns
        -------
        list of AuditRecord
            The records that were new (the others were appended before: a replay).

        Raises
        ------
        sqlite3.Error
            When the transaction could not be committed (nothing was appended).
        """
        now = self._clock()
        added: list[AuditRecord] = []
        copy = self._publisher is not None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    if r.kind not in AUDIT_KINDS:
                        raise ValueError(f"audit record kind must be one of {AUDIT_KINDS}, got {r.kind!r}")
                    cursor = self._db.execute(
                        f"INSERT OR IGNORE INTO audit ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (r.id, r.kind, r.model, r.version, r.ts, r.trigger_key, now, _canonical(r.payload)),
                    )
                    if cursor.rowcount == 1:
                        added.append(r)
                        if copy:
                            self._db.execute("INSERT INTO audit_outgoing (seq) VALUES (?)", (cursor.lastrowid,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    def write(self, records: Sequence[AuditRecord]) -> None:
        """Buffer ``records`` for the next :meth:`flush` (the sinks' write/flush rhythm)."""
        self._buffer.extend(records)

    @property
    def pending(self) -> int:
        """Records written and not yet appended."""
        return len(self._buffer)

    def flush(self) -> None:
        """Append what was written, then publish what the Kafka copy still lacks.

        Raises
        ------
        SinkError
            When the append failed; the records stay buffered for the next flush. A
            failed publication does not raise (the records are durable in the file and
            are published at a later flush, 5 s later at first, backing off to 5 min);
            it is logged and counted by :attr:`kafka_pending`.
        """
        if self._buffer:
            try:
                self.append(self._buffer)
            except sqlite3.Error as exc:
                raise SinkError(
                    f"cannot append {len(self._buffer)} audit record(s) to {str(self.path)!r} ({exc}); "
                    "they are kept for the next flush: check the disk and the file's permissions"
                ) from None
            self._buffer = []
        if self._clock() >= self._next_publish_at:
            self.publish()
        if self._clock() - self._last_prune >= 3600.0:
            self.prune()

    def publish(self) -> bool:
        """Hand the records the Kafka copy lacks to the producer and wait for the broker.

        Returns
        -------
        bool
            True when every record is acknowledged (or there is no Kafka copy).
        """
        publisher = self._publisher
        if publisher is None:
            return True
        with self._lock:
            rows = self._db.execute(
                f"SELECT o.seq, {', '.join('a.' + c.strip() for c in _COLUMNS.split(','))} "
                "FROM audit_outgoing o JOIN audit a ON a.seq = o.seq ORDER BY o.seq LIMIT ?",
                (_PUBLISH_BATCH,),
            ).fetchall()
        fresh = []
        for row in rows:
            if row[0] in self._handed:
                continue  # in flight: the publisher waits for it
            d = _row_dict(row[1:])
            fresh.append(
                (
                    row[0],
                    AuditRecord(d["id"], d["kind"], d["model"], d["version"], d["ts"], d["payload"], d["trigger_key"]),
                )
            )
        publisher.send(fresh)
        self._handed.update(seq for seq, _ in fresh)
        error: SinkError | None = None
        try:
            publisher.flush()
        except SinkError as exc:
            error = exc
        waiting = publisher.unacknowledged()
        acked = self._handed - waiting
        self._handed = waiting
        if acked:
            with self._lock:
                self._db.executemany("DELETE FROM audit_outgoing WHERE seq = ?", [(s,) for s in acked])
        if error is not None:
            # Each attempt may wait flush_timeout_seconds for the broker: back off so that
            # an outage of the audit topic does not slow every batch of the service.
            self._publish_backoff = min(max(2 * self._publish_backoff, _RETRY_MIN_SECONDS), _RETRY_MAX_SECONDS)
            self._next_publish_at = self._clock() + self._publish_backoff
            if not self._publish_failing:
                log.warning(
                    "audit records not published to Kafka topic %r (they are kept in %s and "
                    "published at a later flush): %s",
                    publisher.topic,
                    self.path,
                    str(error),
                )
            self._publish_failing = True
            return False
        if self._publish_failing:
            log.info("audit records published to Kafka topic %r again", publisher.topic)
        self._publish_failing = False
        self._publish_backoff = 0.0
        self._next_publish_at = -math.inf
        return not waiting and len(rows) < _PUBLISH_BATCH

    @property
    def kafka_pending(self) -> int:
        """Records appended and not yet acknowledged by the Kafka copy's topic."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM audit_outgoing").fetchone()
        return int(n)

    def prune(self, now: float | None = None) -> int:
        """Delete the records recorded more than ``retention_days`` before ``now``
        (default: the clock); returns how many."""
        now = self._clock() if now is None else now
        cutoff = now - self.retention_seconds
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                lost = self._db.execute(
                    "DELETE FROM audit_outgoing WHERE seq IN (SELECT seq FROM audit WHERE recorded_at < ?)", (cutoff,)
                ).rowcount
                deleted = self._db.execute("DELETE FROM audit WHERE recorded_at < ?", (cutoff,)).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        self._last_prune = now
        if lost:
            log.warning(
                "%d audit record(s) reached the retention of %.0f days before the Kafka "
                "topic acknowledged them; they are gone from the file and were never "
                "published",
                lost,
                self.retention_seconds / 86400.0,
            )
        return deleted

    # -- reading ----------------------------------------------------------------------------
    def query(
        self,
        model: str | None = None,
        version: str | None = None,
        since: float | None = None,
        *,
        until: float | None = None,
        kind: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Records, by event time (``ts``) then order of recording.

        Parameters
        ----------
        model, version, kind
            Only records of this model / version / kind.
        since, until
            Only records with ``since <= ts < until`` (epoch seconds).
        limit
            At most this many (the earliest).

        Returns
        -------
        list of dict
            :meth:`AuditRecord.to_dict` plus ``recorded_at``.
        """
        clauses: list[str] = []
        values: list[Any] = []
        for column, value in (("model", model), ("version", version), ("kind", kind)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        if since is not None:
            clauses.append("ts >= ?")
            values.append(float(since))
        if until is not None:
            clauses.append("ts < ?")
            values.append(float(until))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM audit{where} ORDER BY ts, seq LIMIT ?",
                (*values, -1 if limit is None else int(limit)),
            ).fetchall()
        return [_row_dict(r) for r in rows]

    def answer_chain(self, trigger_key: str) -> dict[str, Any]:
        """A trigger, its delivery outcomes and the lifecycle events that cite it.

        Parameters
        ----------
        trigger_key
            The idempotency key, or its first :data:`MIN_KEY_PREFIX` or more characters.

        Returns
        -------
        dict
            ``key`` (the full key), ``trigger`` (its record, None when it is not in the
            log, e.g. past retention), ``deliveries`` and ``lifecycle`` (records, by
            time).

        Raises
        ------
        ValueError
            When the prefix is too short, matches no record, or several triggers.
        """
        if len(trigger_key) < MIN_KEY_PREFIX:
            raise ValueError(
                f"the key {trigger_key!r} is too short: give at least {MIN_KEY_PREFIX} "
                "characters of the trigger's idempotency key"
            )
        with self._lock:
            keys = [
                k
                for (k,) in self._db.execute(
                    "SELECT DISTINCT trigger_key FROM audit WHERE substr(trigger_key, 1, ?) = ? LIMIT 3",
                    (len(trigger_key), trigger_key),
                )
            ]
        if not keys:
            raise ValueError(
                f"no audit record cites the trigger key {trigger_key!r}: "
                "`driftline audit --kind trigger` lists the triggers"
            )
        if len(keys) > 1:
            raise ValueError(
                f"the key prefix {trigger_key!r} matches several triggers "
                f"({', '.join(k[:12] for k in keys)}, ...): give more characters"
            )
        key = keys[0]
        with self._lock:
            rows = [
                _row_dict(r)
                for r in self._db.execute(
                    f"SELECT {_COLUMNS} FROM audit WHERE trigger_key = ? ORDER BY ts, seq", (key,)
                )
            ]
        trigger = next((r for r in rows if r["kind"] == "trigger"), None)
        return {
            "key": key,
            "trigger": trigger,
            "deliveries": [r for r in rows if r["kind"] == "delivery"],
            "lifecycle": [r for r in rows if r["kind"] == "lifecycle"],
        }

    def close(self) -> None:
        """Append what is buffered, publish what can be published (failures are
        logged), close the producer and the file."""
        try:
            if self._buffer:
                try:
                    self.append(self._buffer)
                    self._buffer = []
                except sqlite3.Error as exc:
                    log.error("closing the audit log with %d record(s) not appended: %s", len(self._buffer), exc)
            if self._publisher is not None:
                if self._clock() >= self._next_publish_at:  # not while backing off an outage
                    self.publish()
                # What is still unacknowledged is listed in the file: the next start
                # publishes it, so closing need not wait for the broker a second time.
                self._publisher.discard()
                self._publisher.close()
        finally:
            with self._lock:
                self._db.close()


# ---- what the service records ------------------------------------------------------------


class EvidencePositions:
    """Where each model's prediction events sit in the source, batch by batch, so that
    an evidence window (event indices) can be named as offset ranges.

    One mark per (model, batch): the indices the batch gave the model's events and the
    offsets of the batch's records on the model's partition (from the first record of
    the model to the last record of the batch on that partition). A window's ranges are
    the union of the marks it overlaps: they enclose the evidence (batch granularity),
    exactly where each batch held one model, never narrower. Marks live in memory
    (``max_marks`` per model, the oldest dropped first) and are not checkpointed: a
    window older than the marks, or counted before a restart, is named by its alarms'
    ``origin`` only.

    Examples
    --------
    >>> pos = EvidencePositions()
    >>> pos.note("fraud", 0, 500, "predictions/1/1000", {("predictions", 1): 1800})
    >>> pos.note("fraud", 500, 900, "predictions/1/1800", {("predictions", 1): 2500})
    >>> [r.to_dict() for r in pos.ranges("fraud", 450, 600)]
    [{'topic': 'predictions', 'partition': 1, 'first_offset': 1000, 'last_offset': 2499}]
    """

    def __init__(self, max_marks: int = 4096, max_models: int = 100_000) -> None:
        self.max_marks = max_marks
        self.max_models = max_models
        self._marks: dict[str, deque[tuple[int, int, str, int, int, int]]] = {}

    def note(
        self,
        model: str,
        first_index: int,
        end_index: int,
        first_position: str | None,
        next_offsets: Mapping[tuple[str, int], int],
    ) -> None:
        """The batch gave ``model``'s events indices ``first_index .. end_index - 1``; its
        first record of the model was at ``first_position`` (``topic/partition/offset``)
        and ``next_offsets`` is the source's next offset per partition after the batch."""
        if end_index <= first_index or not first_position:
            return
        try:
            topic, partition_text, offset_text = first_position.rsplit("/", 2)
            partition, first_offset = int(partition_text), int(offset_text)
        except ValueError:
            return  # not a position this class can name (nothing is lost: origin stays)
        last_offset = max(first_offset, next_offsets.get((topic, partition), first_offset + 1) - 1)
        marks = self._marks.get(model)
        if marks is None:
            if len(self._marks) >= self.max_models:
                return
            marks = self._marks[model] = deque(maxlen=self.max_marks)
        marks.append((first_index, end_index, topic, partition, first_offset, last_offset))

    def forget(self, model: str) -> None:
        """Drop a model's marks (its state was dropped, or moved to another instance)."""
        self._marks.pop(model, None)

    def ranges(self, model: str, first_index: int, last_index: int) -> tuple[SourceRange, ...]:
        """The offset ranges enclosing events ``first_index .. last_index`` (inclusive) of
        ``model``, one per partition, in (topic, partition) order; empty when no mark
        covers them."""
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for lo, hi, topic, partition, first, last in self._marks.get(model, ()):
            if hi <= first_index or lo > last_index:
                continue
            known = spans.get((topic, partition))
            spans[(topic, partition)] = (first, last) if known is None else (min(known[0], first), max(known[1], last))
        return tuple(SourceRange(t, p, a, b) for (t, p), (a, b) in sorted(spans.items()))


# Which settings section parameterises the detectors of each alarm kind.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "feature_drift": ("window", "drift"),
    "prediction_drift": ("window", "drift"),
    "data_quality": ("window", "quality"),
    "performance": ("performance",),
    "concept_drift": ("performance",),
    "regression": ("regression",),
    "promote_ready": ("regression", "canary"),
    "canary_stalled": ("canary",),
    "rollback_unconfirmed": ("canary",),
    "performance_estimated": ("performance",),
}


def detector_params(settings: ModelSettings, alarms: Iterable[Alarm]) -> dict[str, Any]:
    """The parameters of the detectors that raised ``alarms``, by detector name: the
    settings sections that configure them (``window`` and ``drift`` for a drift test,
    ``performance`` for a concept detector, ``regression`` and ``canary`` for the
    canary tests ...), as JSON values."""
    dumped = settings.model_dump(mode="json")
    out: dict[str, Any] = {}
    for a in alarms:
        if a.detector in out:
            continue
        names = _SECTIONS.get(a.kind, ("regression", "canary"))
        out[a.detector] = {name: dumped[name] for name in names if name in dumped}
    return out


class AuditRecorder:
    """What the service appends to the audit trail, and when.

    Per batch, the service calls :meth:`before_batch` before the engine runs and
    :meth:`after_batch` after it: the batch's lifecycle events and alarms are written
    to the :class:`AuditLog` (appended at its flush, after the sinks' flushes and
    before the offsets are committed). The webhook sink calls :meth:`on_triggers` with
    the triggers it recorded (their lineage is built here, from the engine's state and
    the :class:`EvidencePositions`), and its delivery thread calls :meth:`on_delivery`
    with each attempt's outcome, which is appended at once (the outbox row it reports
    is already updated). Every record's id is deterministic: what a replay after a
    crash writes again is not appended twice.

    Parameters
    ----------
    audit
        The log.
    settings
        The service's settings (per-model settings give the config fingerprint and the
        detector parameters).
    engine
        The engine (:class:`driftline.monitor.engine.Engine`): its models' event counts
        and reference fingerprints (per version, from the lifecycle state).
    """

    def __init__(self, audit: AuditLog, settings: Settings, engine: Any) -> None:
        self.audit = audit
        self.settings = settings
        self.engine = engine
        self.positions = EvidencePositions(max_models=max(1, settings.max_models))
        self._counts: dict[str, int] = {}
        self._config_fingerprints: dict[str, str] = {}

    def before_batch(self, decoded: DecodedBatch) -> None:
        """Note each model's event count before the batch (its first index)."""
        models = self.engine.models
        self._counts = {name: models[name].n_events for name in decoded.predictions if name in models}

    def after_batch(
        self, decoded: DecodedBatch, alarms: Sequence[Alarm], next_offsets: Mapping[tuple[str, int], int]
    ) -> None:
        """Note where the batch's events sit; write its lifecycle events and alarms."""
        models = self.engine.models
        for name, p in decoded.predictions.items():
            mm = models.get(name)
            if mm is not None:
                self.positions.note(name, self._counts.get(name, 0), mm.n_events, p.first_position, next_offsets)
        records = [
            lifecycle_record(e, src) for e, src in zip(decoded.lifecycle, decoded.lifecycle_sources, strict=True)
        ]
        records += [alarm_record(a) for a in alarms]
        if records:
            self.audit.write(records)

    def config_fingerprint(self, model: str) -> str:
        """:func:`fingerprint` of the model's effective settings (kept per model)."""
        fp = self._config_fingerprints.get(model)
        if fp is None:
            fp = fingerprint(self.settings.for_model(model).model_dump(mode="json"))
            if len(self._config_fingerprints) < self.positions.max_models:
                self._config_fingerprints[model] = fp
        return fp

    def lineage(self, trigger: Trigger) -> Lineage:
        """The trigger's lineage, from what the pipeline knows now."""
        mm = self.engine.models.get(trigger.model)
        return Lineage(
            source_positions=self.positions.ranges(trigger.model, trigger.first_index, trigger.last_index),
            reference_fingerprint=_reference_fingerprint(mm, trigger.version),
            config_fingerprint=self.config_fingerprint(trigger.model),
            detector_params=detector_params(self.settings.for_model(trigger.model), trigger.alarms),
        )

    def on_triggers(self, triggers: Sequence[Trigger], reasons: Sequence[str | None] | None = None) -> None:
        """The webhook sink is about to record ``triggers`` in its outbox (or, in a dry
        run, decided them): appended now, durably, before the outbox has them, so that
        no trigger is ever sent that the audit trail does not name.

        Raises
        ------
        SinkError
            When the append failed: the webhook sink's flush fails, its triggers stay
            pending (not in the outbox) and the offsets are not committed.
        """
        reasons = reasons if reasons is not None else [None] * len(triggers)
        records = [trigger_record(t, self.lineage(t), reason=r) for t, r in zip(triggers, reasons, strict=True)]
        try:
            self.audit.append(records)
        except sqlite3.Error as exc:
            raise SinkError(
                f"cannot append {len(records)} trigger record(s) to the audit log {str(self.audit.path)!r} ({exc}); "
                "the triggers are kept for the next flush: check the disk and the file's permissions"
            ) from None

    def on_delivery(self, outcome: DeliveryOutcome) -> None:
        """One delivery attempt ended (called from the delivery thread): appended now,
        under the log's lock. A failure to append is logged: the outbox keeps the
        outcome, and the audit misses this attempt's record."""
        record = delivery_record(
            target=outcome.target,
            idempotency_key=outcome.idempotency_key,
            model=outcome.model,
            version=outcome.version,
            action=outcome.action,
            outcome=outcome.outcome,
            attempts=outcome.attempts,
            at=outcome.at,
            error=outcome.error,
        )
        try:
            self.audit.append([record])
        except sqlite3.Error as exc:
            log.warning(
                "the %s outcome of a webhook (key %s) to target %r is not in the audit log (%s); the outbox keeps it",
                outcome.outcome,
                outcome.idempotency_key[:12],
                outcome.target,
                exc,
            )


def _reference_fingerprint(mm: Any, version: str) -> str | None:
    """The fingerprint of the reference ``version`` of the model is measured against:
    its own (a lifecycle event gave it one), else the model's (the stable version's)."""
    if mm is None:
        return None
    own = mm.lifecycle.refs.get(version)
    return own.fingerprint if own is not None else mm.reference_fingerprint


# ---- presenting -------------------------------------------------------------------------


def _when(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    try:
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{seconds:.0f}"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def _summary(r: Mapping[str, Any]) -> str:
    """One line on what a record says."""
    p = r["payload"]
    kind = r["kind"]
    if kind == "alarm":
        feature = f" {p.get('feature')}" if p.get("feature") else ""
        return (
            f"{p.get('kind')} {p.get('detector')}{feature}: statistic {_num(p.get('statistic'))} "
            f"threshold {_num(p.get('threshold'))}, events {p.get('first_index')}-{p.get('last_index')}, "
            f"action {p.get('action')}"
        )
    if kind == "trigger":
        ref = (p.get("reference_fingerprint") or "-")[:12]
        cfg = (p.get("config_fingerprint") or "-")[:12]
        positions = ", ".join(
            f"{s['topic']}/{s['partition']}@{s['first_offset']}-{s['last_offset']}"
            for s in p.get("source_positions") or []
        )
        return (
            f"{p.get('action')} on {len(p.get('evidence') or [])} alarm(s), events "
            f"{p.get('first_index')}-{p.get('last_index')}"
            + (f" [{positions}]" if positions else "")
            + f", reference {ref}, config {cfg}, driftline {p.get('driftline_version')}"
        )
    if kind == "delivery":
        error = f": {p['error']}" if p.get("error") else ""
        return f"{p.get('action')} {p.get('outcome')} to {p.get('target')} (attempt {p.get('attempts')}){error}"
    parts = [str(p.get("event"))]
    if p.get("role"):
        parts.append(f"as {p['role']}")
    if p.get("traffic_share") is not None:
        parts.append(
            f"at {p['traffic_share']:.0%}" if isinstance(p["traffic_share"], (int, float)) else str(p["traffic_share"])
        )
    ref = p.get("reference")
    if ref:
        parts.append(f"reference {ref.get('path') or 'first ' + str(ref.get('from_stream')) + ' events'}")
    if p.get("actor"):
        parts.append(f"by {p['actor']}")
    if p.get("reason"):
        parts.append(f"({p['reason']})")
    return " ".join(parts)


def _line(text: str) -> str:
    return " ".join(str(text).split())  # one line whatever a free-text field holds


def format_records(records: Sequence[Mapping[str, Any]], fmt: str = "table") -> str:
    """Records of :meth:`AuditLog.query` as text.

    Parameters
    ----------
    records
        As returned by :meth:`AuditLog.query`.
    fmt
        ``table``: a header and one aligned line per record (time in UTC, kind, model,
        version, the first 12 characters of the trigger key, a summary); ``json``: one
        JSON object per line, every field.

    Raises
    ------
    ValueError
        For another ``fmt``.
    """
    if fmt == "json":
        return "\n".join(
            json.dumps(dict(r), separators=(",", ":"), ensure_ascii=False, sort_keys=True) for r in records
        )
    if fmt != "table":
        raise ValueError(f"fmt must be 'table' or 'json', got {fmt!r}")
    lines = [f"{'time (UTC)':<20}  {'kind':<9} {'model':<16} {'version':<10} {'trigger':<12}  what"]
    for r in records:
        lines.append(
            f"{_when(r['ts']):<20}  {r['kind']:<9} {_line(r['model'])[:16]:<16} "
            f"{_line(r['version'] or '-')[:10]:<10} {(r['trigger_key'] or '-')[:12]:<12}  "
            f"{_line(_summary(r))}"
        )
    return "\n".join(lines)


def format_chain(chain: Mapping[str, Any], fmt: str = "table") -> str:
    """:meth:`AuditLog.answer_chain`'s result as text: why the trigger fired (its
    evidence and lineage) and what happened next (deliveries, lifecycle events)."""
    if fmt == "json":
        return json.dumps(dict(chain), separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    if fmt != "table":
        raise ValueError(f"fmt must be 'table' or 'json', got {fmt!r}")
    out = [f"trigger {chain['key']}"]
    t = chain.get("trigger")
    if t is None:
        out.append("  (the trigger's own record is not in the log: past retention, or another instance's)")
    else:
        p = t["payload"]
        out.append(f"  {_when(t['ts'])}  {t['model']} {t['version']}: {_line(_summary(t))}")
        if p.get("reason"):
            out.append(f"  reason: {_line(p['reason'])}")
        if p.get("detector_params"):
            out.append(f"  detector parameters: {_canonical(p['detector_params'])}")
        out.append("  evidence:")
        for a in p.get("evidence") or []:
            out.append(f"    {_when(a.get('ts'))}  {_line(_summary({'kind': 'alarm', 'payload': a}))}")
    out.append("what happened next:")
    nxt = sorted([*chain.get("deliveries", []), *chain.get("lifecycle", [])], key=lambda r: (r["ts"], r["recorded_at"]))
    if not nxt:
        out.append("  nothing recorded yet")
    for r in nxt:
        out.append(
            f"  {_when(r['ts'])}  {r['kind']:<9} {_line(r['model'])} {_line(r['version'] or '-')}: {_line(_summary(r))}"
        )
    return "\n".join(out)


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``--since``: epoch seconds (``1763900000``), an ISO 8601 date or
    time (``2026-11-24``, ``2026-11-24T09:30``, UTC unless it says otherwise), or a
    duration back from now (``36h``, ``7d``; units s, m, h, d, w).

    Raises
    ------
    ValueError
        Saying which forms are accepted.
    """
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    if len(s) >= 2 and s[-1] in _UNITS:
        try:
            amount = float(s[:-1])
        except ValueError:
            amount = math.nan
        if math.isfinite(amount) and amount >= 0:
            return (time.time() if now is None else now) - amount * _UNITS[s[-1]]
    try:
        when = datetime.datetime.fromisoformat(s.replace("Z", "+00:00") if s.endswith("Z") else s)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: give epoch seconds (1763900000), an ISO "
            "date or time (2026-11-24, 2026-11-24T09:30Z) or a duration back from "
            "now (36h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()
