"""A trigger that fails for good is visible (metric, gauge, ERROR line) and
``driftline webhooks resend``, run as its own process beside a running delivery thread,
gets it delivered with the same Idempotency-Key."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import Reply

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "driftline.cli", "webhooks"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_failed_trigger_is_visible_and_resent_to_the_running_sink(
    secret, tmp_path: Path, receivers, make_sink, make_alarm, metric, caplog
) -> None:
    receiver = receivers(secret=secret, script=[Reply(503), Reply(503)])
    ci = {
        "name": "ci",
        "url": receiver.url,
        "secret_env": "DRIFTLINE_TEST_SECRET",
        "max_attempts": 2,
        "timeout_seconds": 2.0,
    }
    other = receivers()
    sink = make_sink([ci, {"name": "other", "url": other.url}])
    with caplog.at_level(logging.ERROR, logger="sinks"):
        sink.write([make_alarm(1000.0, index=4)])
        sink.flush()
        wait_until(
            lambda: metric("driftline_webhook_deliveries_total", target="ci", action="retrain", outcome="failed") == 1,
            20,
            "failed",
        )
    other.wait_accepted(1)
    wait_until(lambda: metric("driftline_webhook_outbox_failed") == 1, 10, "the failed gauge")
    (row,) = [r for r in sink.outbox.rows() if r.target == "ci"]
    short = row.idempotency_key[:12]
    assert (row.status, row.attempts, row.last_error) == ("failed", 2, "HTTP 503")
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"key {short}" in error.getMessage() and "target 'ci'" in error.getMessage()
    assert receiver.url not in caplog.text

    listed = cli("list", "--status", "failed", "--json", "--state-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    (shown,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (shown["target"], shown["idempotency_key"], shown["status"], shown["attempts"]) == (
        "ci",
        row.idempotency_key,
        "failed",
        2,
    )
    assert receiver.url not in listed.stdout

    wrong = cli("resend", "--key", short, "--target", "other", "--state-dir", str(tmp_path))
    assert wrong.returncode == 2 and "matches no failed delivery" in wrong.stderr
    resent = cli("resend", "--all-failed", "--state-dir", str(tmp_path))
    assert resent.returncode == 0, resent.stderr
    assert f"re-queued retrain for fraud (key {short}) to target 'ci'" in resent.stdout

    # The sink's delivery thread finds the row in the shared file on its own.
    (request,) = receiver.wait_accepted(1, timeout=30)
    assert request.idempotency_key == row.idempotency_key and request.signature_valid
    wait_until(
        lambda: sink.outbox.get("ci", row.idempotency_key).status == "delivered",  # type: ignore[union-attr]
        10,
        "delivered",
    )
    assert sink.outbox.get("ci", row.idempotency_key).attempts == 1  # type: ignore[union-attr]
    wait_until(lambda: metric("driftline_webhook_outbox_failed") == 0, 10, "the gauge back to 0")
    assert metric("driftline_webhook_deliveries_total", target="ci", action="retrain", outcome="delivered") == 1
    assert len(other.accepted) == 1 and receiver.duplicates == 0

    again = cli("resend", "--all-failed", "--state-dir", str(tmp_path))
    assert again.returncode == 0 and "0 delivery(ies) pending again" in again.stdout
