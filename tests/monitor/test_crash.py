"""Crash tests: ``driftline run`` SIGKILLed at chosen points, restarted, compared with a replay.

Each case produces the same two-model stream (predictions and their labels, a feature
shift in ``fraud``, a concept drift in ``churn``) to the broker, runs the real service in
a subprocess that kills itself with SIGKILL at one point of its loop (through
:mod:`tests.support.crashpoint`, no hook in the production code) or is killed from
outside while webhook deliveries are pending, restarts it over the same state
directory, lets it finish, and compares with ``driftline replay`` of the same events:

- the set of alarms in the JSONL sink equals the replay's (repeats of alarms re-emitted
  after the crash are allowed: the sink is at least once);
- every trigger of the replay (model, version, action, evidence window) reaches the real
  HTTP receiver under one idempotency key, exactly once after the receiver's
  de-duplication, and no other trigger; a trigger re-emitted after the restart keeps its
  key (a new key for the same trigger would reach the receiver twice);
- ``driftline_model_events_total`` / ``driftline_model_labelled_events_total`` are exact.
"""

from __future__ import annotations

import threading
import time

import orjson
import pytest
from kafka import KafkaProducer

from tests.monitor.streams import feedback_for, prediction_events
from tests.support.receiver import Stall, WebhookReceiver
from tests.support.runs import (
    QUICK_SESSION_MS,
    DriftlineProcess,
    alarm_set,
    committed_total,
    describe,
    metric_values,
    outbox_rows,
    read_alarms,
    replay,
    trigger_identity,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]

SECRET = "crash-test-webhook-secret"
SECRET_ENV = "CRASH_WEBHOOK_SECRET"
N_FRAUD, N_CHURN = 6_000, 4_000


def crash_stream() -> tuple[list[dict], list[dict]]:
    """Two models on the same clock: ``fraud``'s x0 moves by 1 sd at 3,000 (feature
    drift), ``churn``'s labels flip after 2,000 (concept drift, performance); every
    prediction gets its label 30 s (of event time) later."""
    fraud = prediction_events(N_FRAUD, model="fraud", seed=31, shift_at=3_000, shift=1.0)
    churn = prediction_events(N_CHURN, model="churn", seed=32)
    preds = sorted(fraud + churn, key=lambda e: (e["ts"], e["model"]))
    labels = feedback_for(fraud, seed=33) + feedback_for(churn, seed=34, flip_after=2_000)
    return preds, sorted(labels, key=lambda e: (e["ts"], e["model"]))


def _line_count(path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _is_json(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


class PacedProducers:
    """Predictions and feedback from two producer threads at once, keyed by model, in
    chunks with a pause between them: the service consumes while they produce, so its
    batches mix both topics (produced all at once, a catching-up consumer reads one
    partition after the other)."""

    def __init__(self, broker, topics, predictions, feedback, chunk: int = 250, pause: float = 0.1) -> None:
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._send, args=(broker, topics["predictions"], predictions, chunk, pause)),
            threading.Thread(target=self._send, args=(broker, topics["feedback"], feedback, chunk, pause)),
        ]
        for t in self.threads:
            t.start()

    def _send(self, broker, topic, events, chunk, pause):
        try:
            p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            for start in range(0, len(events), chunk):
                for e in events[start : start + chunk]:
                    p.send(topic, key=e["model"].encode(), value=orjson.dumps(e))
                p.flush()
                time.sleep(pause)
            p.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.errors.append(exc)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in self.threads) and not self.errors, self.errors


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The replay of the crash stream: its alarms and its triggers (read from the outbox
    of a replay run with ``--with-webhooks`` towards a receiver of its own)."""
    tmp = tmp_path_factory.mktemp("crash-replay")
    preds, labels = crash_stream()
    with pytest.MonkeyPatch.context() as mp, WebhookReceiver(secret=SECRET) as sink:
        mp.setenv(SECRET_ENV, SECRET)  # the replay's webhook sink reads it
        cfg = write_config(tmp / "replay.yml", state_dir=tmp / "state", webhook_url=sink.url, secret_env=SECRET_ENV)
        alarms = replay(tmp, preds, labels, cfg, with_webhooks=True, state_dir=tmp / "state")
    triggers = {r["identity"] for r in outbox_rows(tmp / "state")}
    return {"predictions": preds, "feedback": labels, "alarms": alarms, "triggers": triggers}


def test_the_replay_has_labelled_and_unlabelled_alarms_and_triggers(expected):
    kinds = {(a["model"], a["kind"]) for a in expected["alarms"]}
    assert ("fraud", "feature_drift") in kinds
    assert ("churn", "concept_drift") in kinds or ("churn", "performance") in kinds
    assert len(expected["triggers"]) >= 3, expected["triggers"]


# (crash point, nth call, receiver, consumer process, crash again in the restart,
# checkpoint interval): the receiver is "up", "down" during the first run, or "stall" (it
# processes the first request and answers after the client gave up). A case that crashes
# again in the restart holds the case that crashes once at the same point: its first run
# is that case's, its second run starts from that crash's state (and is killed later), and
# its last run starts from the same kind of state (a trigger in the outbox or a torn
# checkpoint, offsets behind): "after-outbox-before-commit" and "during-checkpoint-write"
# are the first runs of the two "again" cases.
CASES = [
    pytest.param("engine", 9, "up", True, None, 0.0, id="mid-batch"),
    pytest.param("engine", 9, "up", False, None, 0.0, id="mid-batch-in-process-consumer"),
    pytest.param("outbox", 1, "up", True, ("outbox", 1), 0.0, id="after-outbox-before-commit-twice"),
    pytest.param(
        "checkpoint", 7, "up", True, ("engine", 5), 0.0, id="during-checkpoint-write-then-mid-batch-in-the-restart"
    ),
    pytest.param("jsonl", 1, "up", True, None, 0.0, id="during-jsonl-alarm-write"),
    pytest.param(None, 0, "down", True, None, 0.0, id="deliveries-pending-receiver-down"),
    pytest.param(None, 0, "stall", True, None, 0.0, id="delivery-in-flight-receiver-stalled"),
]


@pytest.mark.parametrize("point, at, receiver_mode, consumer_process, again, interval", CASES)
def test_sigkill_then_restart_equals_replay(
    broker, topics, tmp_path, expected, point, at, receiver_mode, consumer_process, again, interval
):
    preds, labels = expected["predictions"], expected["feedback"]
    group = f"crash-{topics['predictions']}"
    state, alarms_path = tmp_path / "state", tmp_path / "alarms.jsonl"
    env = {SECRET_ENV: SECRET}
    script = [Stall(4.0)] if receiver_mode == "stall" else []
    with WebhookReceiver(secret=SECRET, script=script, start=receiver_mode != "down") as receiver:
        cfg = write_config(
            tmp_path / "run.yml",
            broker=broker,
            topics=topics,
            group=group,
            state_dir=state,
            alarms=alarms_path,
            webhook_url=receiver.url,
            secret_env=SECRET_ENV,
            consumer_process=consumer_process,
            checkpoint_interval_seconds=interval,
            session_timeout_ms=QUICK_SESSION_MS,
        )

        # ---- the first run, killed while the events are produced -------------------
        with DriftlineProcess(cfg, tmp_path, crash=(point, at) if point else None, env=env, name="first") as first:
            producers = PacedProducers(broker, topics, preds, labels)
            if point is not None:
                code = first.wait_exit(timeout=180)
                assert code == -9, f"exit {code}, not SIGKILL; log:\n{first.log()[-3000:]}"
            elif receiver_mode == "down":
                wait_for(
                    lambda: any(r["status"] == "pending" and r["attempts"] >= 1 for r in outbox_rows(state)),
                    150,
                    "a trigger in the outbox, attempted and pending (receiver down)",
                )
                first.kill()
            else:
                wait_for(
                    lambda: len(receiver.accepted) >= 1,
                    150,
                    "the receiver to process the first trigger (its answer stalls)",
                )
                first.kill()
            first_log = first.log()
        assert "Traceback" not in first_log, first_log[-3000:]
        committed_at_crash = (
            committed_total(broker, group, topics["predictions"]),
            committed_total(broker, group, topics["feedback"]),
        )
        alarms_at_crash = _line_count(alarms_path)
        rows_at_crash = outbox_rows(state)
        if point is not None:  # the crash came mid-stream, not after the end
            assert sum(committed_at_crash) < len(preds) + len(labels), first_log[-3000:]
        if point == "outbox":  # the triggers were on disk before the crash
            assert len(rows_at_crash) >= at
        if point == "checkpoint":  # a half-written checkpoint was left behind
            assert (state / f"checkpoint-{group}.tmp").exists()

        # ---- the restart, over the same state directory, to the end ----------------
        # (at once: the producers may still be producing, as during the first run)
        if receiver_mode == "down":
            receiver.start()
        if again is not None:  # killed once more, while it replays what the crash left
            with DriftlineProcess(cfg, tmp_path, crash=again, env=env, name="again") as crashed:
                code = crashed.wait_exit(timeout=180)
                assert code == -9, f"exit {code}, not SIGKILL; log:\n{crashed.log()[-3000:]}"
                assert "Traceback" not in crashed.log(), crashed.log()[-3000:]
        with DriftlineProcess(cfg, tmp_path, env=env, name="second") as second:
            producers.join()

            def caught_up():
                text = second.metrics()
                events = metric_values(text, "driftline_model_events_total")
                labelled = metric_values(text, "driftline_model_labelled_events_total")
                return (
                    sum(events.values()) >= len(preds) and sum(labelled.values()) >= len(labels) and (events, labelled)
                )

            try:
                counts = wait_for(caught_up, 180, "the restarted service to reach the end of the stream")
            except AssertionError as exc:  # say how far it got (fewer events: state was lost)
                text = second.metrics()
                raise AssertionError(
                    f"{exc}: events {metric_values(text, 'driftline_model_events_total')}, labelled "
                    f"{metric_values(text, 'driftline_model_labelled_events_total')} of {len(preds)} "
                    f"and {len(labels)}; log tail:\n{second.log()[-2000:]}"
                ) from None
            wait_for(
                lambda: (
                    committed_total(broker, group, topics["predictions"]) >= len(preds)
                    and committed_total(broker, group, topics["feedback"]) >= len(labels)
                ),
                60,
                "every offset committed",
            )
            try:  # on a timeout, the comparisons below say what is missing
                wait_for(
                    lambda: expected["triggers"] <= {trigger_identity(r.json()) for r in receiver.accepted},
                    60,
                    "every trigger of the replay at the receiver",
                )
            except AssertionError:
                pass
            assert second.terminate() == 0, second.log()[-3000:]
            second_log = second.log()
        assert "Traceback" not in second_log, second_log[-3000:]

    # ---- the comparison with the replay ---------------------------------------------
    context = (
        f"crash point {point}#{at} then {again} ({receiver_mode}, consumer_process="
        f"{consumer_process}, checkpoint every {interval}s): "
        f"committed {committed_at_crash[0]}/{len(preds)} predictions and {committed_at_crash[1]}/"
        f"{len(labels)} labels, {alarms_at_crash} alarm "
        f"lines, {len(rows_at_crash)} outbox rows at the crash; after the restart "
        f"{_line_count(alarms_path)} alarm lines ({len(expected['alarms'])} distinct in "
        f"the replay), {len(receiver.requests)} requests, {receiver.duplicates} duplicates, "
        f"{len(expected['triggers'])} triggers"
    )
    print(context)  # the crash matrix, with -s
    torn = [line for line in alarms_path.read_bytes().splitlines() if not _is_json(line)]
    assert not torn, f"{context}\nunreadable lines in the alarm file: {torn}"
    got, want = alarm_set(read_alarms(alarms_path)), alarm_set(expected["alarms"])
    assert got == want, (
        f"{context}\nonly after the crash: {describe(got - want)}\nonly in the replay: {describe(want - got)}"
    )

    events, labelled = counts
    assert events == {
        (("model", "fraud"), ("version", "v1")): N_FRAUD,
        (("model", "churn"), ("version", "v1")): N_CHURN,
    }, context
    assert labelled == {
        (("model", "fraud"), ("version", "v1")): N_FRAUD,
        (("model", "churn"), ("version", "v1")): N_CHURN,
    }, context

    delivered = [r.idempotency_key for r in receiver.accepted]
    assert len(delivered) == len(set(delivered))  # the receiver de-duplicates
    keys_of: dict[tuple, set[str]] = {}
    for r in receiver.accepted:
        keys_of.setdefault(trigger_identity(r.json()), set()).add(r.idempotency_key)
    assert set(keys_of) == expected["triggers"], (
        f"{context}\nmissing {sorted(expected['triggers'] - set(keys_of))}\n"
        f"extra {sorted(set(keys_of) - expected['triggers'])}"
    )
    assert all(len(k) == 1 for k in keys_of.values()), (
        f"{context}\na trigger reached the receiver under several keys: {keys_of}"
    )
    assert all(r.signature_valid for r in receiver.requests)
    rows = outbox_rows(state)
    assert {r["key"] for r in rows} == set(delivered), rows
    assert {r["status"] for r in rows} == {"delivered"}, rows
    if receiver_mode == "stall":  # the request processed while its answer was lost came again
        assert receiver.duplicates >= 1
