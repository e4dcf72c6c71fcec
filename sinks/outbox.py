"""The durable webhook outbox: one SQLite row per (target, trigger).

The webhook sink inserts a row for every target a trigger goes to, in one transaction,
before the service commits the Kafka offsets that caused the trigger (``INSERT OR
IGNORE``: a trigger replayed after a crash has the same idempotency key and is not
added twice). The delivery thread then works through the rows that are due::

    pending --2xx--> delivered
       |  \\--connection error, timeout, 5xx, 429--> pending (attempts + 1, next_attempt_at)
       |---other 4xx, or the retry horizon (or max_attempts) reached--> failed
    failed --resend (``driftline webhooks resend``)--> pending (attempts 0, queued_at now)

``queued_at`` is when the row was recorded or last re-sent: the retry horizon
(``max_retry_seconds``) counts from it. Rows hold the generic trigger payload only: tokens and secrets are added when a request
is built and never reach the file. The database is in WAL mode with
``synchronous=FULL``, so a committed insert survives a power loss.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Outbox", "OutboxRow", "OutboxEntry", "STATUSES", "MIN_KEY_PREFIX"]

MIN_KEY_PREFIX = 8
"""Shortest key prefix :meth:`Outbox.resend` accepts (logs show the first 12 characters)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    target          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_error      TEXT,
    created_at      REAL    NOT NULL,
    delivered_at    REAL,
    queued_at       REAL,
    PRIMARY KEY (target, idempotency_key)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
"""

STATUSES: tuple[str, ...] = ("pending", "delivered", "failed")


@dataclass(frozen=True)
class OutboxEntry:
    """What the sink records: a trigger's payload for one target."""

    target: str
    idempotency_key: str
    model: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    """One stored delivery, as read back."""

    target: str
    idempotency_key: str
    model: str
    action: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    delivered_at: float | None
    queued_at: float
    """When the row was recorded or last re-sent (the retry horizon counts from here)."""


_COLUMNS = (
    "target, idempotency_key, model, action, payload, status, attempts, next_attempt_at, "
    "last_error, created_at, delivered_at, COALESCE(queued_at, created_at)"
)


def _row(values: tuple[Any, ...]) -> OutboxRow:
    return OutboxRow(
        target=values[0],
        idempotency_key=values[1],
        model=values[2],
        action=values[3],
        payload=json.loads(values[4]),
        status=values[5],
        attempts=values[6],
        next_attempt_at=values[7],
        last_error=values[8],
        created_at=values[9],
        delivered_at=values[10],
        queued_at=values[11],
    )


class Outbox:
    """A SQLite outbox file shared by the sink (inserts) and the delivery thread.

    Parameters
    ----------
    path
        The database file (created with its table if missing), normally
        ``<state_dir>/outbox.sqlite3``.
    clock
        Wall-clock seconds, for ``created_at`` and for what is due.
    busy_timeout_seconds
        How long a statement waits for a lock held by another connection before it fails.

    Notes
    -----
    One connection, used under a lock by both threads: every statement is short, and
    this keeps transactions simple. ``close()`` must be called (it closes the
    connection).
    """

    def __init__(self, path: str | Path, clock: Any = time.time, busy_timeout_seconds: float = 10.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path),
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_seconds,
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.Error:
            self._db.close()
            raise

    def _migrate(self) -> None:
        # Files written before queued_at existed get the column; COALESCE in the reads
        # stands in for its NULLs (their horizon counts from created_at).
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        if "queued_at" not in columns:
            self._db.execute("ALTER TABLE deliveries ADD COLUMN queued_at REAL")

    def add(self, entries: Iterable[OutboxEntry]) -> list[OutboxEntry]:
        """Insert ``entries`` in one transaction; those already present are left as they are.

        Returns
        -------
        list of OutboxEntry
            The entries that were new (the others were recorded before: a replay).

        Raises
        ------
        sqlite3.Error
            When the transaction could not be committed (nothing was added).
        """
        now = self._clock()
        added: list[OutboxEntry] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in entries:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO deliveries (target, idempotency_key, model, "
                        "action, payload, next_attempt_at, created_at, queued_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            e.target,
                            e.idempotency_key,
                            e.model,
                            e.action,
                            json.dumps(e.payload, separators=(",", ":")),
                            now,
                            now,
                            now,
                        ),
                    )
                    if cursor.rowcount == 1:
                        added.append(e)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    def due(self, now: float | None = None, limit: int = 100) -> list[OutboxRow]:
        """Pending rows whose next attempt is due: earliest due first, then those tried
        least (a row that keeps failing does not stay ahead of the others)."""
        now = self._clock() if now is None else now
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE status = 'pending' "
                "AND next_attempt_at <= ? ORDER BY next_attempt_at, attempts, created_at LIMIT ?",
                (now, limit),
            )
            return [_row(v) for v in cursor.fetchall()]

    def next_due_at(self) -> float | None:
        """When the earliest pending row is due (None: nothing pending)."""
        with self._lock:
            (value,) = self._db.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'"
            ).fetchone()
        return value

    def pending_count(self) -> int:
        """Rows waiting to be delivered."""
        return self.count("pending")

    def failed_count(self) -> int:
        """Rows that failed for good (until re-sent)."""
        return self.count("failed")

    def count(self, status: str) -> int:
        """Rows with ``status`` (one of :data:`STATUSES`)."""
        with self._lock:
            (value,) = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE status = ?", (status,)).fetchone()
        return int(value)

    def get(self, target: str, key: str) -> OutboxRow | None:
        with self._lock:
            values = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE target = ? AND idempotency_key = ?",
                (target, key),
            ).fetchone()
        return None if values is None else _row(values)

    def rows(self, status: str | None = None, target: str | None = None, limit: int | None = None) -> list[OutboxRow]:
        """Rows, oldest first, optionally only those with ``status`` / for ``target``."""
        where, values = self._where(status=status, target=target)
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries{where} ORDER BY created_at, target, idempotency_key LIMIT ?",
                (*values, -1 if limit is None else limit),
            )
            return [_row(v) for v in cursor.fetchall()]

    @staticmethod
    def _where(
        status: str | None = None, target: str | None = None, key_prefix: str | None = None
    ) -> tuple[str, tuple[Any, ...]]:
        clauses: list[str] = []
        values: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            values.append(status)
        if target is not None:
            clauses.append("target = ?")
            values.append(target)
        if key_prefix is not None:
            # substr, not LIKE: a key prefix holding % or _ matches only itself.
            clauses.append("substr(idempotency_key, 1, ?) = ?")
            values.extend([len(key_prefix), key_prefix])
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(values)

    def resend(self, *, key_prefix: str | None = None, target: str | None = None) -> list[OutboxRow]:
        """Make failed rows pending again, due now, with their attempts and horizon reset.

        The delivery thread of a running service (it reads the file every few seconds)
        or of the next start sends them, with the same ``Idempotency-Key``.

        Parameters
        ----------
        key_prefix
            Only rows whose idempotency key starts with this (at least
            :data:`MIN_KEY_PREFIX` characters; the logs show 12); None: every failed row.
        target
            Only rows for this target.

        Returns
        -------
        list of OutboxRow
            The rows re-queued, as they are now.

        Raises
        ------
        ValueError
            When ``key_prefix`` is shorter than :data:`MIN_KEY_PREFIX`.
        """
        if key_prefix is not None and len(key_prefix) < MIN_KEY_PREFIX:
            raise ValueError(
                f"the key {key_prefix!r} is too short: give at least {MIN_KEY_PREFIX} "
                "characters of the idempotency key (the logs show 12)"
            )
        where, values = self._where(status="failed", target=target, key_prefix=key_prefix)
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                chosen = self._db.execute(f"SELECT target, idempotency_key FROM deliveries{where}", values).fetchall()
                self._db.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, "
                    f"next_attempt_at = ?, queued_at = ?{where}",
                    (now, now, *values),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return [row for t, k in chosen if (row := self.get(t, k)) is not None]

    def mark_delivered(self, target: str, key: str, attempts: int) -> None:
        self._update(
            target,
            key,
            "status = 'delivered', attempts = ?, delivered_at = ?, last_error = NULL",
            (attempts, self._clock()),
        )

    def mark_retry(self, target: str, key: str, attempts: int, next_attempt_at: float, error: str) -> None:
        self._update(
            target, key, "attempts = ?, next_attempt_at = ?, last_error = ?", (attempts, next_attempt_at, error)
        )

    def mark_failed(self, target: str, key: str, attempts: int, error: str) -> None:
        self._update(target, key, "status = 'failed', attempts = ?, last_error = ?", (attempts, error))

    def defer(self, target: str, key: str, next_attempt_at: float) -> None:
        """Put off a pending row's next attempt to ``next_attempt_at`` (attempts unchanged)."""
        self._update(target, key, "next_attempt_at = MAX(next_attempt_at, ?)", (next_attempt_at,))

    def _update(self, target: str, key: str, assignments: str, values: tuple[Any, ...]) -> None:
        with self._lock:
            # Only pending rows change: a delivered row is never reopened.
            self._db.execute(
                f"UPDATE deliveries SET {assignments} WHERE target = ? AND idempotency_key = ? AND status = 'pending'",
                (*values, target, key),
            )

    # -- pending deliveries that follow their model's partition --------------------------------
    def pending_for(self, models: Iterable[str]) -> list[dict[str, Any]]:
        """The pending rows of ``models`` as plain values (for the model's changelog
        record: their new owner delivers them with the same idempotency keys)."""
        names = sorted(set(models))
        if not names:
            return []
        marks = ",".join("?" * len(names))
        with self._lock:
            rows = self._db.execute(
                "SELECT target, idempotency_key, model, action, payload, attempts, created_at "
                f"FROM deliveries WHERE status = 'pending' AND model IN ({marks}) "
                "ORDER BY created_at, target, idempotency_key",
                names,
            ).fetchall()
        return [
            {
                "target": t,
                "idempotency_key": k,
                "model": m,
                "action": a,
                "payload": json.loads(p),
                "attempts": n,
                "created_at": c,
            }
            for t, k, m, a, p, n, c in rows
        ]

    def adopt(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert :meth:`pending_for` rows of another instance, due now (one transaction);
        a row already present (delivered here before, or adopted twice) is left as it
        is. Returns how many were new.

        Raises
        ------
        sqlite3.Error
            When the transaction could not be committed (nothing was added).
        """
        now = self._clock()
        added = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO deliveries (target, idempotency_key, model, action, payload, "
                        "attempts, next_attempt_at, created_at, queued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            r["target"],
                            r["idempotency_key"],
                            r["model"],
                            r["action"],
                            json.dumps(r["payload"], separators=(",", ":")),
                            int(r.get("attempts", 0)),
                            now,
                            float(r.get("created_at", now)),
                            now,
                        ),
                    )
                    added += cursor.rowcount == 1
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return added

    def drop(self, models: Iterable[str]) -> int:
        """Delete the pending rows of ``models`` (their partition moved: the new owner
        delivers them); how many were deleted."""
        names = sorted(set(models))
        if not names:
            return 0
        marks = ",".join("?" * len(names))
        with self._lock:
            cursor = self._db.execute(f"DELETE FROM deliveries WHERE status = 'pending' AND model IN ({marks})", names)
            return cursor.rowcount

    def prune(self, older_than_seconds: float) -> int:
        """Delete delivered and failed rows created more than ``older_than_seconds`` ago.

        A replay never reaches back further than the last committed offsets, so rows
        much older than a checkpoint interval cannot be needed for de-duplication.
        """
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM deliveries WHERE status != 'pending' AND created_at < ?",
                (self._clock() - older_than_seconds,),
            )
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
