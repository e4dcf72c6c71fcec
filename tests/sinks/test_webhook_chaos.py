"""Webhook delivery against misbehaving receivers: every trigger arrives exactly once.

Real HTTP receivers on 127.0.0.1 draw a fault for every request from a seeded random
source (500/502/503, 429 with ``Retry-After``, a stall past the client's timeout after
processing, a connection reset before or after processing, a slowly sent answer) and go
down and up again (refused connections) while a webhook sink records hundreds of
triggers for three targets; half-way the sink is closed and a new one is built over the
same outbox, which also replays alarms the first one had recorded. The receivers' own
de-duplication by ``Idempotency-Key`` then holds exactly the triggers each target
subscribes to, and every attempt is accounted for by the client's log, the receivers'
logs, the outbox's attempt counts and the metrics.

The long outages use a fake clock and the default retry settings: a receiver down for
six hours gets every trigger once it is back, and one down longer than the three-day
horizon leaves a failed row that is visible and re-sent by ``driftline webhooks resend``.
"""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import WebhookSettings, WebhookTarget
from driftline.sinks.outbox import Outbox
from tests.support import Reply, Reset, SlowBody, Stall, WebhookReceiver
from tests.support.receiver import ReceivedRequest, Step

SEED = 20261201
TIMEOUT = 0.25
"""Client timeout per attempt in the chaos run: stalls last three times as long."""
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(180)


# ---- the client's own log of attempts -------------------------------------------------


class CountingTransport(httpx.BaseTransport):
    """httpx's transport, recording every attempt: (port, key, delivery id, outcome)."""

    def __init__(self, log: list[dict[str, Any]], lock: threading.Lock) -> None:
        self._inner = httpx.HTTPTransport()
        self._log = log
        self._lock = lock

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        entry: dict[str, Any] = {
            "port": request.url.port,
            "key": request.headers["idempotency-key"],
            "delivery": request.headers["x-driftline-delivery"],
        }
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            entry["outcome"] = type(exc).__name__
            with self._lock:
                self._log.append(entry)
            raise
        entry["outcome"] = response.status_code
        with self._lock:
            self._log.append(entry)
        return response

    def close(self) -> None:
        self._inner.close()


# ---- faults --------------------------------------------------------------------------


def fault_chooser(name: str) -> Callable[[ReceivedRequest, int], Step | None]:
    """A fault per request, drawn from (seed, target, key, how many came before)."""

    def choose(request: ReceivedRequest, seen: int) -> Step | None:
        if seen >= 8:
            return None  # bounds the test's length; the outages still come on top
        rng = random.Random(f"{SEED}:{name}:{request.idempotency_key}:{seen}")
        x = rng.random()
        if x < 0.10:
            return Reply(rng.choice([500, 502, 503]))
        if x < 0.14:
            return Reply(429, retry_after=rng.choice(["1", "0"]))
        if x < 0.16:
            return Stall(3 * TIMEOUT)
        if x < 0.22:
            return Reset(process=rng.random() < 0.5)
        if x < 0.26:
            return SlowBody(0.08)
        return None

    return choose


class Flapper:
    """Stops and restarts a receiver at random (seeded) moments: refused connections."""

    def __init__(self, receiver: WebhookReceiver, seed: str) -> None:
        self.receiver = receiver
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.outages = 0
        self._thread = threading.Thread(target=self._run, name="flapper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(0.4, 1.2)):
            self.receiver.stop()
            self.outages += 1
            self._stop.wait(self._rng.uniform(0.1, 0.5))
            self.receiver.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.receiver.start()


def alarm(i: int) -> Alarm:
    """Alarm number ``i``: a retrain for two thirds, a rollback for a third, five models."""
    model = f"model-{i % 5}"
    if i % 3 == 2:
        return Alarm(
            model, "v8", "regression", "ks", "amount", 0.4, 0.0001, 1e-7, i * 100, i * 100 + 99, 1000.0 + i, "rollback"
        )
    return Alarm(
        model,
        "v7",
        "feature_drift",
        "ks",
        f"f{i % 4}",
        0.31,
        0.0001,
        1e-7,
        i * 100,
        i * 100 + 99,
        1000.0 + i,
        "retrain",
    )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def test_hundreds_of_triggers_through_faults_and_a_restart_arrive_exactly_once(
    secret,
    tmp_path: Path,
    receivers,
    make_sink,
    metric,
) -> None:
    subscriptions = {"both": ["retrain", "rollback"], "retrain-only": ["retrain"], "rollback-only": ["rollback"]}
    hosts = {name: receivers(secret=secret, chooser=fault_chooser(name)) for name in subscriptions}
    targets = [
        {
            "name": name,
            "url": hosts[name].url,
            "actions": actions,
            "secret_env": "DRIFTLINE_TEST_SECRET",
            "timeout_seconds": TIMEOUT,
        }
        for name, actions in subscriptions.items()
    ]
    retries = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.2}
    attempts_log: list[dict[str, Any]] = []
    lock = threading.Lock()
    alarms = [alarm(i) for i in range(300)]

    # First sink: half of the triggers, stopped while deliveries are still under way.
    first = make_sink(
        targets, retries=retries, rng=random.Random(SEED), transport=CountingTransport(attempts_log, lock)
    )
    first.write(alarms[:150])
    triggers = {t.idempotency_key: t.action for t in first.pending_triggers}
    first.flush()
    flappers = [Flapper(r, f"{SEED}:flap:{name}") for name, r in hosts.items()]
    try:
        wait_until(
            lambda: sum(len(r.accepted) for r in hosts.values()) >= 75, 60, "a quarter of the first sink's deliveries"
        )
        first.close()
        box = Outbox(tmp_path / "outbox.sqlite3")
        try:
            left = box.pending_count()
        finally:
            box.close()
        assert left > 0, "the first sink was meant to stop mid-way"

        # Second sink over the same outbox: alarms it had recorded come again (a replay
        # after a crash), then the other half.
        second = make_sink(
            targets, retries=retries, rng=random.Random(SEED + 1), transport=CountingTransport(attempts_log, lock)
        )
        second.write(alarms[:60])
        replayed = {t.idempotency_key for t in second.pending_triggers}
        assert replayed <= set(triggers) and len(replayed) == 60
        second.flush()
        second.write(alarms[150:])
        triggers.update({t.idempotency_key: t.action for t in second.pending_triggers})
        second.flush()
        assert len(triggers) == 300

        def refused() -> bool:
            with lock:
                return any(e["outcome"] == "ConnectError" for e in attempts_log)

        # Outages go on while the second sink works, until some attempts met them.
        wait_until(lambda: sum(f.outages for f in flappers) >= 6 and refused(), 60, "outages that refuse attempts")
    finally:
        for flapper in flappers:
            flapper.stop()
    wait_until(lambda: second.outbox.pending_count() == 0, 90, "every row delivered")
    rows = second.outbox.rows()
    second.close()

    # -- delivered: exactly the subscribed triggers, per target --------------------------
    assert sum(f.outages for f in flappers) >= 6
    for name, receiver in hosts.items():
        expected = {k for k, action in triggers.items() if action in subscriptions[name]}
        got = [r.idempotency_key for r in receiver.accepted]
        assert len(got) == len(set(got))
        assert set(got) == expected, name
        assert all(r.signature_valid for r in receiver.requests)
        assert {r.headers["x-driftline-event"] for r in receiver.requests} <= set(subscriptions[name])
        assert all(triggers[r.idempotency_key] == r.headers["x-driftline-event"] for r in receiver.requests)
    assert {(r.target, r.status) for r in rows} == {(name, "delivered") for name in hosts}
    assert len(rows) == sum(1 for k, a in triggers.items() for n in subscriptions if a in subscriptions[n])
    faults = Counter(r.fault for h in hosts.values() for r in h.requests)
    assert all(faults[f] > 0 for f in ("ok", "reply", "stall", "reset", "slow_body")), faults
    assert sum(h.duplicates for h in hosts.values()) > 0  # processed, answer lost, re-sent

    # -- every attempt accounted for -----------------------------------------------------
    port_of = {name: r.port for name, r in hosts.items()}
    per_row = Counter((e["port"], e["key"]) for e in attempts_log)
    for row in rows:
        assert row.attempts == per_row[(port_of[row.target], row.idempotency_key)], row
    assert sum(per_row.values()) == sum(row.attempts for row in rows)
    client_ids = {e["delivery"] for e in attempts_log}
    assert len(client_ids) == len(attempts_log)
    for receiver in hosts.values():
        seen_ids = {r.delivery_id for r in receiver.requests}
        assert len(seen_ids) == len(receiver.requests)
        assert seen_ids <= client_ids, "the receiver got a request the client did not send"
        answered = {e["delivery"] for e in attempts_log if e["port"] == receiver.port and isinstance(e["outcome"], int)}
        assert answered <= seen_ids, "an answer came from somewhere else"
        refused = [e for e in attempts_log if e["port"] == receiver.port and e["outcome"] == "ConnectError"]
        assert not {e["delivery"] for e in refused} & seen_ids
    refused_total = sum(1 for e in attempts_log if e["outcome"] == "ConnectError")
    assert refused_total > 0
    for name in hosts:
        target_rows = [r for r in rows if r.target == name]
        outcomes = {
            outcome: sum(
                metric("driftline_webhook_deliveries_total", target=name, action=action, outcome=outcome)
                for action in subscriptions[name]
            )
            for outcome in ("delivered", "retried", "failed", "rejected")
        }
        assert outcomes["delivered"] == len(target_rows)
        assert outcomes["delivered"] + outcomes["retried"] == sum(r.attempts for r in target_rows)
        assert outcomes["failed"] == outcomes["rejected"] == 0
    assert (
        sum(
            metric("driftline_triggers_total", model=f"model-{m}", action=a)
            for m in range(5)
            for a in ("retrain", "rollback")
        )
        == 300
    )
    assert metric("driftline_webhook_outbox_pending") == 0
    assert metric("driftline_webhook_outbox_failed") == 0
    print(
        f"chaos: {len(rows)} rows, {len(attempts_log)} attempts ({refused_total} refused, "
        f"{sum(f.outages for f in flappers)} outages), receiver faults {dict(faults)}, "
        f"{sum(h.duplicates for h in hosts.values())} duplicates dropped"
    )


# ---- long outages on a fake clock --------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


DEFAULTS = WebhookSettings()
DEFAULT_TARGET = WebhookTarget(name="x", url="http://127.0.0.1:1/x")


def run_until(sink: Any, clock: FakeClock, until: float) -> list[float]:
    """Deliver what is due, jumping the clock from due time to due time, up to ``until``.

    Returns the times of the attempts.
    """
    times: list[float] = []
    while True:
        if sink.deliverer.deliver_due():
            times.append(clock.now)
        next_at = sink.outbox.next_due_at()
        if next_at is None or next_at > until:
            return times
        clock.now = max(clock.now, next_at)


def test_the_default_retries_outlast_a_six_hour_outage(secret, receivers, make_sink, make_alarm, metric) -> None:
    assert DEFAULT_TARGET.max_attempts is None
    start = time.time()
    clock = FakeClock(start)
    receiver = receivers(secret=secret, start=False, clock=clock)
    sink = make_sink(
        [{"name": "ci", "url": receiver.url, "secret_env": "DRIFTLINE_TEST_SECRET"}],
        retries={"retry_base_seconds": DEFAULTS.retry_base_seconds, "retry_max_seconds": DEFAULTS.retry_max_seconds},
        clock=clock,
        rng=random.Random(SEED),
        start=False,
    )
    sink.write([make_alarm(1000.0, index=0), make_alarm(2000.0, index=1)])
    sink.flush()
    times = run_until(sink, clock, start + 6 * 3600)
    # Under the old defaults (8 attempts, full jitter) these rows were failed after ~1 min.
    assert len(times) > 2 * 8
    assert max(b - a for a, b in zip(times, times[1:])) <= DEFAULTS.retry_max_seconds + 1e-6
    assert {r.status for r in sink.outbox.rows()} == {"pending"}
    assert all(r.attempts > 8 for r in sink.outbox.rows())
    assert metric("driftline_webhook_deliveries_total", target="ci", action="retrain", outcome="failed") == 0

    receiver.start()
    back = clock.now
    run_until(sink, clock, back + DEFAULTS.retry_max_seconds)
    assert [r.status for r in sink.outbox.rows()] == ["delivered", "delivered"]
    assert len(receiver.accepted) == 2 and receiver.duplicates == 0
    assert all(r.signature_valid for r in receiver.requests)
    assert clock.now - back <= DEFAULTS.retry_max_seconds


def test_past_the_horizon_a_trigger_fails_visibly_and_resend_delivers_it(
    secret, tmp_path: Path, receivers, make_sink, make_alarm, metric, caplog
) -> None:
    start = time.time()
    clock = FakeClock(start)
    receiver = receivers(secret=secret, start=False, clock=clock)
    sink = make_sink(
        [{"name": "ci", "url": receiver.url, "secret_env": "DRIFTLINE_TEST_SECRET"}],
        retries={"retry_base_seconds": DEFAULTS.retry_base_seconds, "retry_max_seconds": DEFAULTS.retry_max_seconds},
        clock=clock,
        rng=random.Random(SEED),
        start=False,
    )
    sink.write([make_alarm(1000.0, index=3)])
    sink.flush()
    (row,) = sink.outbox.rows()
    horizon = row.queued_at + DEFAULT_TARGET.max_retry_seconds
    with caplog.at_level(logging.INFO, logger="sinks"):
        times = run_until(sink, clock, horizon + 3600)
    (row,) = sink.outbox.rows()
    assert row.status == "failed" and row.attempts == len(times)
    assert times[-1] == pytest.approx(horizon)  # the last attempt came at the horizon
    assert metric("driftline_webhook_deliveries_total", target="ci", action="retrain", outcome="failed") == 1
    assert metric("driftline_webhook_outbox_failed") == 1
    assert metric("driftline_webhook_outbox_pending") == 0
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    short = row.idempotency_key[:12]
    text = error.getMessage()
    for part in (
        "retrain",
        "fraud",
        short,
        "'ci'",
        "failed for good",
        "72.0h",
        f"driftline webhooks resend --key {short} --target ci",
    ):
        assert part in text, part
    assert receiver.url not in caplog.text

    cli = [sys.executable, "-m", "driftline.cli", "webhooks"]
    listed = subprocess.run(
        [*cli, "list", "--status", "failed", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert short in listed.stdout and "failed" in listed.stdout
    assert receiver.url not in listed.stdout
    resent = subprocess.run(
        [*cli, "resend", "--key", short, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert resent.returncode == 0, resent.stderr
    assert f"key {short}" in resent.stdout and "1 delivery(ies) pending again" in resent.stdout
    (row,) = sink.outbox.rows()
    assert (row.status, row.attempts) == ("pending", 0)

    receiver.start()
    clock.now = time.time()  # the CLI queued it on the real clock
    assert sink.deliverer.deliver_due() == 1
    (row,) = sink.outbox.rows()
    assert (row.status, row.attempts) == ("delivered", 1)
    (request,) = receiver.accepted
    assert request.idempotency_key == row.idempotency_key and request.signature_valid
    assert metric("driftline_webhook_outbox_failed") == 0


def test_a_target_that_is_down_costs_one_attempt_per_round_and_holds_up_no_other(
    receivers, make_sink, make_alarm
) -> None:
    start = time.time()
    clock = FakeClock(start)
    down, up = receivers(start=False), receivers()
    sink = make_sink(
        [{"name": "down", "url": down.url}, {"name": "up", "url": up.url}],
        retries={"retry_base_seconds": DEFAULTS.retry_base_seconds, "retry_max_seconds": DEFAULTS.retry_max_seconds},
        clock=clock,
        rng=random.Random(SEED),
        start=False,
    )
    sink.write([make_alarm(1000.0 + i, index=i) for i in range(5)])
    sink.flush()
    assert sink.deliverer.deliver_due() == 1 + 5  # one probe of "down", all of "up"
    assert len(up.accepted) == 5
    rounds = []
    while clock.now < start + 3600:
        next_at = sink.outbox.next_due_at()
        assert next_at is not None
        clock.now = max(clock.now, next_at)
        rounds.append(sink.deliverer.deliver_due())
    assert set(rounds) == {1}  # the other rows waited for the probe's retry
    attempts = [r.attempts for r in sink.outbox.rows(target="down")]
    assert sum(attempts) == 1 + len(rounds)
    assert max(attempts) - min(attempts) <= 1  # the least tried row probes next
    assert {r.status for r in sink.outbox.rows(target="down")} == {"pending"}
