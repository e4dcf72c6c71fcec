"""driftline.sinks.outbox.Outbox over a real SQLite file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from driftline.sinks.outbox import Outbox, OutboxEntry


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(key: str, target: str = "ci") -> OutboxEntry:
    return OutboxEntry(target, key, "fraud", "retrain", {"idempotency_key": key, "n": 1})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(tmp_path: Path, clock: Clock):
    box = Outbox(tmp_path / "outbox.sqlite3", clock=clock)
    yield box
    box.close()


def test_the_database_is_in_wal_mode(outbox: Outbox) -> None:
    db = sqlite3.connect(outbox.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_insert_or_ignore_per_target_and_key(outbox: Outbox) -> None:
    assert outbox.add([entry("k1"), entry("k1", target="slack")]) == [entry("k1"), entry("k1", target="slack")]
    assert outbox.add([entry("k1"), entry("k2")]) == [entry("k2")]
    assert {(r.target, r.idempotency_key) for r in outbox.rows()} == {("ci", "k1"), ("slack", "k1"), ("ci", "k2")}
    assert outbox.pending_count() == 3


def test_rows_survive_a_reopen(tmp_path: Path, clock: Clock) -> None:
    first = Outbox(tmp_path / "o.sqlite3", clock=clock)
    first.add([entry("k1")])
    first.close()
    second = Outbox(tmp_path / "o.sqlite3", clock=clock)
    try:
        (row,) = second.due()
        assert (row.status, row.attempts, row.payload) == ("pending", 0, {"idempotency_key": "k1", "n": 1})
    finally:
        second.close()


def test_due_respects_next_attempt_and_status(outbox: Outbox, clock: Clock) -> None:
    outbox.add([entry("k1"), entry("k2"), entry("k3")])
    outbox.mark_retry("ci", "k1", attempts=1, next_attempt_at=1010.0, error="HTTP 500")
    outbox.mark_delivered("ci", "k2", attempts=1)
    assert [r.idempotency_key for r in outbox.due()] == ["k3"]
    assert outbox.next_due_at() == 1000.0
    clock.now = 1010.0
    assert [r.idempotency_key for r in outbox.due()] == ["k3", "k1"]
    row = outbox.get("ci", "k1")
    assert row is not None and (row.attempts, row.last_error) == (1, "HTTP 500")


def test_a_delivered_row_is_never_reopened(outbox: Outbox) -> None:
    outbox.add([entry("k1")])
    outbox.mark_delivered("ci", "k1", attempts=2)
    outbox.mark_retry("ci", "k1", attempts=3, next_attempt_at=0.0, error="late")
    outbox.mark_failed("ci", "k1", attempts=3, error="late")
    row = outbox.get("ci", "k1")
    assert row is not None
    assert (row.status, row.attempts, row.last_error, row.delivered_at) == ("delivered", 2, None, 1000.0)
    assert outbox.due() == [] and outbox.next_due_at() is None


def test_prune_removes_only_old_finished_rows(outbox: Outbox, clock: Clock) -> None:
    outbox.add([entry("old-delivered"), entry("old-failed"), entry("old-pending")])
    outbox.mark_delivered("ci", "old-delivered", 1)
    outbox.mark_failed("ci", "old-failed", 1, "HTTP 400")
    clock.now += 100.0
    outbox.add([entry("new")])
    outbox.mark_delivered("ci", "new", 1)
    assert outbox.prune(older_than_seconds=50.0) == 2
    assert {r.idempotency_key for r in outbox.rows()} == {"old-pending", "new"}


def test_a_failed_transaction_adds_nothing(tmp_path: Path, clock: Clock) -> None:
    box = Outbox(tmp_path / "o.sqlite3", clock=clock, busy_timeout_seconds=0.05)
    blocker = sqlite3.connect(tmp_path / "o.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            box.add([entry("k1"), entry("k2")])
        blocker.execute("ROLLBACK")
        assert box.pending_count() == 0
        assert len(box.add([entry("k1"), entry("k2")])) == 2
    finally:
        blocker.close()
        box.close()


def test_resend_makes_failed_rows_pending_again_with_attempts_and_horizon_reset(outbox: Outbox, clock: Clock) -> None:
    outbox.add([entry("aaaaaaaa-1"), entry("aaaaaaaa-1", target="slack"), entry("bbbbbbbb-2"), entry("cccccccc-3")])
    outbox.mark_failed("ci", "aaaaaaaa-1", 900, "HTTP 503")
    outbox.mark_failed("slack", "aaaaaaaa-1", 4, "HTTP 400")
    outbox.mark_failed("ci", "bbbbbbbb-2", 12, "refused")
    outbox.mark_delivered("ci", "cccccccc-3", 1)
    assert (outbox.failed_count(), outbox.pending_count()) == (3, 0)
    clock.now = 5000.0

    (row,) = outbox.resend(key_prefix="aaaaaaaa", target="slack")
    assert (row.target, row.status, row.attempts, row.queued_at, row.next_attempt_at) == (
        "slack",
        "pending",
        0,
        5000.0,
        5000.0,
    )
    assert row.created_at == 1000.0 and row.last_error == "HTTP 400"
    assert outbox.get("ci", "aaaaaaaa-1").status == "failed"  # type: ignore[union-attr]

    assert {(r.target, r.idempotency_key) for r in outbox.resend()} == {("ci", "aaaaaaaa-1"), ("ci", "bbbbbbbb-2")}
    assert outbox.resend() == []
    assert outbox.resend(key_prefix="cccccccc") == []  # delivered rows are never reopened
    assert (outbox.failed_count(), outbox.pending_count(), outbox.count("delivered")) == (0, 3, 1)
    assert sorted(r.idempotency_key for r in outbox.due()) == ["aaaaaaaa-1", "aaaaaaaa-1", "bbbbbbbb-2"]


def test_resend_needs_eight_characters_of_a_key_and_takes_them_literally(
    outbox: Outbox,
) -> None:
    outbox.add([entry("ab%_cdefgh")])
    outbox.mark_failed("ci", "ab%_cdefgh", 1, "x")
    with pytest.raises(ValueError, match="at least 8 characters"):
        outbox.resend(key_prefix="ab%_")
    assert outbox.resend(key_prefix="ab%_cdeX") == []
    assert len(outbox.resend(key_prefix="ab%_cdef")) == 1


def test_rows_filters_by_status_and_target(outbox: Outbox) -> None:
    outbox.add([entry("k1"), entry("k2"), entry("k1", target="slack")])
    outbox.mark_failed("ci", "k2", 3, "HTTP 500")
    assert [r.idempotency_key for r in outbox.rows(status="failed")] == ["k2"]
    assert [r.target for r in outbox.rows(target="slack")] == ["slack"]
    assert len(outbox.rows(limit=2)) == 2


def test_an_outbox_from_before_queued_at_is_migrated(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE deliveries (
            target TEXT NOT NULL, idempotency_key TEXT NOT NULL, model TEXT NOT NULL,
            action TEXT NOT NULL, payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
            last_error TEXT, created_at REAL NOT NULL, delivered_at REAL,
            PRIMARY KEY (target, idempotency_key));
        INSERT INTO deliveries (target, idempotency_key, model, action, payload, attempts,
                                next_attempt_at, created_at)
            VALUES ('ci', 'k-old', 'fraud', 'retrain', '{}', 7, 900.0, 800.0);
    """)
    db.commit()
    db.close()
    box = Outbox(path, clock=clock)
    try:
        (row,) = box.rows()
        assert (row.idempotency_key, row.attempts, row.queued_at) == ("k-old", 7, 800.0)
        box.add([entry("k-new")])
        assert box.get("ci", "k-new").queued_at == 1000.0  # type: ignore[union-attr]
    finally:
        box.close()
