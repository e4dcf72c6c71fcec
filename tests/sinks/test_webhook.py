"""WebhookSink end to end: policy -> durable outbox -> delivery to a real HTTP receiver."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from driftline.monitor.alarms import Alarm
from driftline.monitor.exceptions import ConfigError
from driftline.sinks.exceptions import SinkError
from driftline.sinks.outbox import Outbox
from driftline.sinks.policy import idempotency_key
from tests.support import Reply, Stall, WebhookReceiver

MakeAlarm = Callable[..., Alarm]


def target(receiver: WebhookReceiver, **fields: object) -> dict[str, object]:
    return {"name": "ci", "url": receiver.url, "secret_env": "DRIFTLINE_TEST_SECRET", "timeout_seconds": 2.0, **fields}


def deliveries(metric: Callable[..., float], outcome: str, target: str = "ci", action: str = "retrain") -> float:
    return metric("driftline_webhook_deliveries_total", target=target, action=action, outcome=outcome)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.01)


def test_a_trigger_is_delivered_signed_with_its_idempotency_key(
    secret, receivers, make_sink, make_alarm: MakeAlarm, metric
) -> None:
    receiver = receivers(secret=secret)
    sink = make_sink([target(receiver)])
    sink.write([make_alarm(1000.0, index=2)])
    sink.flush()
    (request,) = receiver.wait_accepted(1)
    key = idempotency_key("fraud", "v7", "retrain", [None], 200, 299, [make_alarm(1000.0, index=2)])
    assert request.signature_valid is True
    assert request.headers["idempotency-key"] == key
    assert request.headers["x-driftline-event"] == "retrain"
    assert len(request.headers["x-driftline-delivery"]) == 36
    assert request.headers["content-type"] == "application/json"
    payload = request.json()
    assert set(payload) == {
        "schema",
        "idempotency_key",
        "model",
        "version",
        "action",
        "reason",
        "evidence",
        "first_index",
        "last_index",
        "created_at",
    }
    assert (
        payload["schema"],
        payload["idempotency_key"],
        payload["model"],
        payload["action"],
        payload["first_index"],
        payload["last_index"],
    ) == ("driftline.trigger/v1", key, "fraud", "retrain", 200, 299)
    assert payload["evidence"][0]["feature"] == "amount"
    assert "1 feature_drift" in payload["reason"]
    wait_until(lambda: deliveries(metric, "delivered") == 1)
    assert metric("driftline_triggers_total", model="fraud", action="retrain") == 1
    wait_until(lambda: metric("driftline_webhook_outbox_pending") == 0)
    assert metric("driftline_last_success_timestamp_seconds", what="webhook") > 0
    row = sink.outbox.get("ci", key)
    assert row is not None and (row.status, row.attempts) == ("delivered", 1)


def test_no_signature_header_without_a_secret(receivers, make_sink, make_alarm) -> None:
    receiver = receivers()
    sink = make_sink([{"name": "plain", "url": receiver.url}])
    sink.write([make_alarm()])
    sink.flush()
    (request,) = receiver.wait_accepted(1)
    assert "x-driftline-signature" not in request.headers


def test_server_errors_are_retried_until_delivered_exactly_once(
    secret, receivers, make_sink, make_alarm, metric
) -> None:
    receiver = receivers(secret=secret, script=[Reply(500), Reply(503), Reply(502)])
    sink = make_sink([target(receiver)])
    sink.write([make_alarm(1000.0, index=0), make_alarm(2000.0, index=1)])
    sink.flush()
    accepted = receiver.wait_accepted(2)
    wait_until(lambda: deliveries(metric, "delivered") == 2)
    assert sorted(r.idempotency_key for r in accepted) == sorted(
        [
            idempotency_key("fraud", "v7", "retrain", [None], 0, 99, [make_alarm(1000.0, index=0)]),
            idempotency_key("fraud", "v7", "retrain", [None], 100, 199, [make_alarm(2000.0, index=1)]),
        ]
    )
    assert receiver.duplicates == 0
    assert len(receiver.requests) == 5
    assert deliveries(metric, "retried") == 3
    # every attempt had its own delivery id and a valid signature
    assert len({r.headers["x-driftline-delivery"] for r in receiver.requests}) == 5
    assert all(r.signature_valid for r in receiver.requests)


def test_429_retry_after_is_honoured(receivers, make_sink, make_alarm) -> None:
    receiver = receivers(script=[Reply(429, retry_after="1")])
    sink = make_sink([{"name": "ci", "url": receiver.url}])
    sink.write([make_alarm()])
    sink.flush()
    receiver.wait_accepted(1, timeout=10)
    first, second = receiver.requests
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.9  # the backoff alone would be under 0.05 s


def test_a_request_that_outlives_the_client_timeout_is_seen_once(
    secret, receivers, make_sink, make_alarm, metric
) -> None:
    # The receiver processes the request but answers too late: the sender retries with
    # the same idempotency key, and the receiver drops the repeat.
    receiver = receivers(secret=secret, script=[Stall(1.5)])
    sink = make_sink([target(receiver, timeout_seconds=0.3)])
    sink.write([make_alarm()])
    sink.flush()
    receiver.wait_for(lambda r: r.duplicates >= 1, timeout=10)
    wait_until(lambda: deliveries(metric, "delivered") == 1)
    assert len(receiver.accepted) == 1
    assert receiver.requests[0].idempotency_key == receiver.requests[1].idempotency_key
    assert deliveries(metric, "retried") == 1


def test_refused_connections_are_retried_until_the_receiver_starts(
    secret, receivers, make_sink, make_alarm, metric
) -> None:
    receiver = receivers(secret=secret, start=False)
    sink = make_sink([target(receiver, max_attempts=200)])
    sink.write([make_alarm()])
    sink.flush()
    wait_until(lambda: deliveries(metric, "retried") >= 2)
    assert receiver.requests == []
    receiver.start()
    receiver.wait_accepted(1)
    wait_until(lambda: deliveries(metric, "delivered") == 1)
    row = sink.outbox.rows()[0]
    assert row.status == "delivered" and row.attempts >= 3


def test_a_4xx_is_rejected_not_retried_and_logged_as_a_config_error(
    receivers, make_sink, make_alarm, metric, caplog
) -> None:
    receiver = receivers(script=[Reply(404)])
    sink = make_sink([target(receiver, name="ci")])
    with caplog.at_level(logging.ERROR, logger="driftline.sinks"):
        sink.write([make_alarm()])
        sink.flush()
        wait_until(lambda: deliveries(metric, "rejected") == 1)
    assert len(receiver.requests) == 1
    assert sink.deliverer.deliver_due() == 0
    (row,) = sink.outbox.rows()
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "HTTP 404")
    assert "target 'ci' rejected" in caplog.text and "configuration error" in caplog.text


def test_gives_up_after_max_attempts(receivers, make_sink, make_alarm, metric) -> None:
    receiver = receivers(script=[Reply(500)] * 10)
    sink = make_sink([target(receiver, max_attempts=3)])
    sink.write([make_alarm()])
    sink.flush()
    wait_until(lambda: deliveries(metric, "failed") == 1)
    assert deliveries(metric, "retried") == 2
    assert len(receiver.requests) == 3 and receiver.accepted == []
    (row,) = sink.outbox.rows()
    assert (row.status, row.attempts) == ("failed", 3)


def test_undelivered_triggers_survive_a_restart_and_are_sent_once(
    secret, tmp_path: Path, receivers, make_sink, make_alarm, metric
) -> None:
    receiver = receivers(secret=secret, start=False)
    first = make_sink([target(receiver, max_attempts=100)])
    first.write([make_alarm(1000.0, index=0), make_alarm(2000.0, index=1)])
    first.flush()
    wait_until(lambda: deliveries(metric, "retried") >= 2)
    first.close()
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        assert box.pending_count() == 2
    finally:
        box.close()

    receiver.start()
    second = make_sink([target(receiver, max_attempts=100)])
    receiver.wait_accepted(2)
    wait_until(lambda: second.outbox.pending_count() == 0)
    second.close()

    third = make_sink([target(receiver)], start=False)
    assert third.deliverer.deliver_due() == 0
    assert len(receiver.accepted) == 2 and receiver.duplicates == 0


def test_a_replayed_trigger_is_not_recorded_or_sent_again(secret, receivers, make_sink, make_alarm, metric) -> None:
    receiver = receivers(secret=secret)
    alarms = [make_alarm(1000.0, index=7)]
    first = make_sink([target(receiver)])
    first.write(alarms)
    first.flush()
    receiver.wait_accepted(1)
    first.close()
    # a crash before the offsets were committed: the same alarms come again, to a sink
    # with a fresh policy over the same outbox
    second = make_sink([target(receiver)], start=False)
    second.write(alarms)
    assert len(second.pending_triggers) == 1
    second.flush()
    assert second.pending_triggers == ()
    assert second.deliverer.deliver_due() == 0
    assert metric("driftline_triggers_total", model="fraud", action="retrain") == 1
    assert len(receiver.requests) == 1


def test_flush_failure_keeps_the_triggers_for_the_next_flush(tmp_path: Path, receivers, make_sink, make_alarm) -> None:
    receiver = receivers()
    path = tmp_path / "locked.sqlite3"
    sink = make_sink([target(receiver, secret_env=None)], outbox=Outbox(path, busy_timeout_seconds=0.05))
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        sink.write([make_alarm()])
        with pytest.raises(SinkError, match="kept and retried at the next flush"):
            sink.flush()
        assert len(sink.pending_triggers) == 1
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()
    sink.flush()
    assert sink.pending_triggers == ()
    receiver.wait_accepted(1)


def test_each_target_gets_the_actions_it_subscribes_to(receivers, make_sink, make_alarm) -> None:
    both = receivers()
    retrain_only = receivers()
    sink = make_sink(
        [
            {"name": "both", "url": both.url},
            {"name": "retrain-only", "url": retrain_only.url, "actions": ["retrain"]},
        ]
    )
    sink.write(
        [make_alarm(1000.0, index=0), make_alarm(1000.0, index=1, kind="regression", action="rollback", version="v8")]
    )
    sink.flush()
    got = both.wait_accepted(2)
    assert sorted(r.headers["x-driftline-event"] for r in got) == ["retrain", "rollback"]
    (only,) = retrain_only.wait_accepted(1)
    assert only.headers["x-driftline-event"] == "retrain"
    assert sorted((r.target, r.action) for r in sink.outbox.rows()) == [
        ("both", "retrain"),
        ("both", "rollback"),
        ("retrain-only", "retrain"),
    ]


def test_dry_run_sends_and_records_nothing(receivers, make_sink, make_alarm, metric, caplog) -> None:
    receiver = receivers()
    sink = make_sink([target(receiver)], policy={"dry_run": True})
    with caplog.at_level(logging.INFO, logger="driftline.sinks"):
        sink.write([make_alarm()])
        sink.flush()
    assert deliveries(metric, "dry_run") == 1
    assert sink.outbox.rows() == [] and sink.pending_triggers == ()
    assert "dry run: would send retrain for fraud v7" in caplog.text
    assert sink.deliverer.deliver_due() == 0
    assert receiver.requests == []


def test_missing_secret_variable_is_a_config_error_naming_it(make_sink) -> None:
    with pytest.raises(ConfigError, match=r"targets\['ci'\]\.secret_env.*'DRIFTLINE_NOPE'"):
        make_sink([{"name": "ci", "url": "http://127.0.0.1:1/h", "secret_env": "DRIFTLINE_NOPE"}])


def test_github_and_gitlab_need_a_token(make_sink) -> None:
    for preset in ("github", "gitlab"):
        with pytest.raises(ConfigError, match="token_env is required"):
            make_sink([{"name": "ci", "url": "http://127.0.0.1:1/h", "preset": preset}])


def test_duplicate_target_names_are_a_config_error(make_sink) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        make_sink([{"name": "ci", "url": "http://127.0.0.1:1/a"}, {"name": "ci", "url": "http://127.0.0.1:1/b"}])


def test_declared_targets_have_zeroed_delivery_series(make_sink, registry) -> None:
    make_sink([{"name": "ci", "url": "http://127.0.0.1:1/h", "actions": ["rollback"]}], start=False)
    for outcome in ("delivered", "retried", "failed", "rejected", "dry_run"):
        assert (
            registry.get_sample_value(
                "driftline_webhook_deliveries_total", {"target": "ci", "action": "rollback", "outcome": outcome}
            )
            == 0.0
        )


def test_secrets_never_reach_logs_metrics_or_the_outbox(
    secret,
    token,
    tmp_path: Path,
    receivers,
    make_sink,
    make_alarm,
    registry: CollectorRegistry,
    metric,
    caplog,
) -> None:
    # A GitLab target carries the token in the body; the receiver first rejects the
    # request and echoes that body back, which the sink logs as the error reason.
    gitlab = receivers(secret=secret, script=[Reply(400, echo=True)])
    github = receivers(secret=secret, script=[Reply(500), Reply(401, echo=True)])
    sink = make_sink(
        [
            target(gitlab, name="gitlab", preset="gitlab", token_env="DRIFTLINE_TEST_TOKEN"),
            target(github, name="github", preset="github", token_env="DRIFTLINE_TEST_TOKEN"),
        ]
    )
    with caplog.at_level(logging.DEBUG):
        sink.write([make_alarm()])
        sink.flush()
        wait_until(
            lambda: (
                deliveries(metric, "rejected", target="gitlab") == 1
                and deliveries(metric, "rejected", target="github") == 1
            )
        )
        sink.close()
    assert token in gitlab.requests[0].form()["token"]  # it was really sent...
    assert github.requests[0].headers["authorization"] == f"Bearer {token}"
    assert "[redacted]" in caplog.text  # ...and echoed back, then redacted
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        errors = " ".join(row.last_error or "" for row in box.rows())
    finally:
        box.close()
    assert "HTTP 400" in errors and "HTTP 401" in errors
    exposition = generate_latest(registry).decode()
    assert 'target="gitlab"' in exposition
    for value in (secret, token):
        assert value not in caplog.text
        assert value not in exposition
        assert value not in errors
        for path in tmp_path.glob("outbox.sqlite3*"):
            assert value.encode() not in path.read_bytes()
    assert secret not in repr(sink.targets) and token not in repr(sink.targets)


def test_presets_render_what_each_service_expects(secret, token, receivers, make_sink, make_alarm) -> None:
    github, gitlab, slack = receivers(secret=secret), receivers(), receivers()
    sink = make_sink(
        [
            target(
                github,
                name="github",
                preset="github",
                token_env="DRIFTLINE_TEST_TOKEN",
                github_event_type="model-{action}",
            ),
            {
                "name": "gitlab",
                "url": gitlab.url,
                "preset": "gitlab",
                "token_env": "DRIFTLINE_TEST_TOKEN",
                "gitlab_ref": "release",
            },
            {"name": "slack", "url": slack.url, "preset": "slack"},
        ],
        # one trigger of both alarms (with min_alarms 1 and no cooldown each alarm is a
        # trigger of its own, and a second one reaching a receiver before the first was
        # read made this test fail on a loaded machine)
        policy={"cooldown_seconds": 0, "min_alarms": 2},
    )
    sink.write([make_alarm(feature="amount"), make_alarm(feature="country", index=1)])
    sink.flush()
    (gh,) = github.wait_accepted(1)
    assert gh.signature_valid and gh.headers["accept"] == "application/vnd.github+json"
    body = gh.json()
    assert body["event_type"] == "model-retrain"
    assert len(body["client_payload"]) <= 10
    assert body["client_payload"]["idempotency_key"] == gh.idempotency_key

    (gl,) = gitlab.wait_accepted(1)
    form = gl.form()
    assert gl.headers["content-type"] == "application/x-www-form-urlencoded"
    assert (form["token"], form["ref"], form["variables[DRIFTLINE_ACTION]"], form["variables[DRIFTLINE_MODEL]"]) == (
        token,
        "release",
        "retrain",
        "fraud",
    )
    assert '"schema":"driftline.trigger/v1"' in form["variables[DRIFTLINE_PAYLOAD]"]

    (sl,) = slack.wait_accepted(1)
    message = sl.json()
    assert "retrain requested for fraud v7" in message["text"]
    assert message["blocks"][0]["type"] == "header"
    assert "`amount`" in str(message["blocks"]) and "`country`" in str(message["blocks"])


def test_close_records_what_was_written_and_stops_delivery(tmp_path: Path, receivers, make_sink, make_alarm) -> None:
    receiver = receivers(start=False)
    sink = make_sink([target(receiver, secret_env=None)])
    sink.write([make_alarm()])
    sink.close()
    assert not sink.deliverer.died
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        assert box.pending_count() == 1
    finally:
        box.close()


def test_the_audit_hears_of_a_trigger_before_the_outbox_records_it(tmp_path: Path, receivers, make_sink, make_alarm):
    """Write-ahead: ``on_triggers`` (the audit trail) runs before the outbox has the
    trigger, and when it fails the flush fails with nothing in the outbox (the trigger
    stays pending and is recorded at the next flush): no trigger is ever sent that the
    audit does not name."""
    receiver = receivers(start=False)
    seen_in_outbox: list[int] = []
    fail = [True]

    def on_triggers(triggers, reasons):
        box = Outbox(tmp_path / "outbox.sqlite3")
        try:
            seen_in_outbox.append(len(box.rows()))
        finally:
            box.close()
        if fail[0]:
            raise SinkError("the audit log cannot be appended")

    sink = make_sink([target(receiver, secret_env=None)], on_triggers=on_triggers)
    sink.write([make_alarm()])
    with pytest.raises(SinkError, match="audit"):
        sink.flush()
    fail[0] = False
    sink.flush()  # the pending trigger, again
    box = Outbox(tmp_path / "outbox.sqlite3")
    try:
        assert len(box.rows()) == 1
    finally:
        box.close()
    assert seen_in_outbox == [0, 0]
