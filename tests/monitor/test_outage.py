"""A broker outage is ridden out: a real ``driftline run`` subprocess against its own
Tansu broker, frozen (SIGSTOP) for longer than the client's session and request
timeouts, three times (once, with the consumer process, for longer than its reply
patience too).

The broker of this test is its own (freezing the session's broker would stall every
other test); the embedded broker keeps no data across a restart, which is why an
outage is a freeze and not a restart.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from kafka import KafkaProducer

from driftline.demo.embedded_broker import EmbeddedBroker
from tests.monitor.streams import feedback_for, prediction_events
from tests.support.runs import (
    QUICK_SESSION_MS,
    DriftlineProcess,
    metric_values,
    read_alarms,
    replay,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]

# Client timeouts of the service under test, short so that a freeze outlasting them is
# short too: every freeze outlasts twice the session timeout (and so the request timeout,
# the health probe's and a commit's); with the consumer process, the first freeze also
# outlasts the service's patience with it (2 * request + poll + 5 s = 8.2 s): a request
# to the consumer process that waits on the frozen broker runs out of it, which must not
# stop the service. Shorter freezes show the same: more of the same timeouts, not others.
SESSION_MS, REQUEST_MS, POLL_MS = 2000, 1500, 200
FREEZE_S = 2 * SESSION_MS / 1000
PATIENT_FREEZE_S = (2 * REQUEST_MS + POLL_MS) / 1000 + 5.0 + 1.0


@pytest.fixture
def own_broker(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


def produce(broker, topic, events):
    p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=10)
    for e in events:
        p.send(topic, key=e["model"].encode(), value=orjson.dumps(e))
    p.flush()
    p.close()


def readyz(proc: DriftlineProcess) -> tuple[int, dict] | None:
    port = proc.port
    if port is None:
        return None
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    except httpx.HTTPError:
        return None
    return r.status_code, r.json()


def broker_errors(proc: DriftlineProcess) -> float:
    m = re.search(r"^driftline_broker_errors_total (\S+)$", proc.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def consumed(proc: DriftlineProcess, stream: str) -> float:
    return metric_values(proc.metrics(), "driftline_events_consumed_total").get((("stream", stream),), 0.0)


def outage(broker: EmbeddedBroker, proc: DriftlineProcess, seconds: float) -> dict:
    """Freeze the broker until /readyz answers 503 naming kafka and for at least
    ``seconds``; thaw it; return the /readyz body seen during the outage."""
    broker.freeze()
    started = time.monotonic()
    try:

        def kafka_not_ready():
            assert proc.proc.poll() is None, f"driftline run exited during the outage:\n{proc.log()[-3000:]}"
            got = readyz(proc)
            return got[1] if got is not None and got[0] == 503 and "kafka" in got[1]["not_ready"] else None

        body = wait_for(kafka_not_ready, 60, "/readyz to report kafka not ready during the outage", interval=0.5)
        errors = metric_values(proc.metrics(), "driftline_ready").get((("component", "kafka"),))
        assert errors == 0.0, 'driftline_ready{component="kafka"} must be 0 during the outage'
        while time.monotonic() - started < seconds:
            assert proc.proc.poll() is None, f"driftline run exited during the outage:\n{proc.log()[-3000:]}"
            time.sleep(0.5)
    finally:
        broker.thaw()
    return body


@pytest.mark.parametrize("consumer_process", [True, False], ids=["consumer-process", "in-process"])
def test_broker_outages_are_ridden_out_without_loss(own_broker, tmp_path: Path, consumer_process):
    """Three freezes of the broker, each longer than the session and request timeouts
    (the first, with the consumer process, longer than the reply patience too), with
    events produced between them: ``driftline run`` never exits, /readyz is 503 naming
    kafka while each lasts (and ``driftline_ready{component="kafka"}`` is 0,
    ``driftline_broker_errors_total`` rises, the log says Kafka does not answer), ready
    again afterwards (the log says it answers again), and the alarms equal a replay of
    the same events."""
    broker = own_broker
    topics = {"predictions": "predictions", "feedback": "feedback", "dead_letter": "dlq"}
    broker.create_topics(list(topics.values()), partitions=2)
    fraud = prediction_events(6_000, model="fraud", seed=21, shift_at=4_000, shift=0.8)
    churn = prediction_events(3_000, model="churn", seed=22)
    preds = [e for pair in zip(fraud, churn) for e in pair] + fraud[len(churn) :]
    fb = feedback_for(fraud, seed=23, flip_after=4_500)
    parts = [preds[:3_000], preds[3_000:6_000], preds[6_000:]]

    config = write_config(
        tmp_path / "run.yml",
        broker=broker,
        topics=topics,
        group="outage",
        state_dir=tmp_path / "state",
        alarms=tmp_path / "alarms.jsonl",
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["kafka"].update(
        session_timeout_ms=SESSION_MS,
        request_timeout_ms=REQUEST_MS,
        poll_timeout_ms=POLL_MS,
        stall_timeout_seconds=30,
        consumer_process=consumer_process,
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    with DriftlineProcess(config, tmp_path) as proc:
        produce(broker, topics["predictions"], parts[0])
        wait_for(lambda: readyz(proc) and readyz(proc)[0] == 200, 120, "/readyz 200 at start")
        total = 0
        bodies = []
        for n, part in enumerate(parts):
            if n:
                produce(broker, topics["predictions"], part)
            total += len(part)
            wait_for(lambda total=total: consumed(proc, "predictions") >= total, 180, f"{total} predictions consumed")
            errors_before = broker_errors(proc)
            lost, back = proc.log().count("Kafka does not answer"), proc.log().count("Kafka answers again")
            bodies.append(outage(broker, proc, PATIENT_FREEZE_S if consumer_process and n == 0 else FREEZE_S))
            wait_for(lambda: (readyz(proc) or (0,))[0] == 200, 120, "/readyz 200 after the outage")
            errors_after = broker_errors(proc)
            assert errors_after > errors_before, "the outage must show in driftline_broker_errors_total"
            assert proc.proc.poll() is None, proc.log()[-3000:]
            # the service itself saw this outage begin and end
            log = proc.log()
            assert log.count("Kafka does not answer") > lost and log.count("Kafka answers again") > back, log[-3000:]
        produce(broker, topics["feedback"], fb)  # labels after their predictions, as in life
        wait_for(lambda: consumed(proc, "feedback") >= len(fb), 180, "feedback consumed")
        assert consumed(proc, "predictions") == len(preds)  # nothing counted twice
        assert proc.terminate() == 0, proc.log()[-3000:]
        log = proc.log()
    assert all(b["components"]["kafka"] is False for b in bodies)
    assert "Kafka does not answer" in log and "Kafka answers again" in log

    kafka_alarms = read_alarms(tmp_path / "alarms.jsonl")
    replay_alarms = replay(tmp_path, preds, fb, config)
    key = lambda a: (a["model"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])  # noqa: E731
    assert sorted(kafka_alarms, key=key) == sorted(replay_alarms, key=key)
    kinds = {(a["model"], a["kind"]) for a in kafka_alarms}
    assert ("fraud", "feature_drift") in kinds and ("fraud", "concept_drift") in kinds


def last_batch_success(proc: DriftlineProcess) -> float:
    return metric_values(proc.metrics(), "driftline_last_success_timestamp_seconds").get((("what", "batch"),), 0.0)


def test_a_sink_that_cannot_flush_holds_polls_and_the_commit(broker, topics, tmp_path: Path):
    """The JSONL alarm sink points at a directory: alarms are raised and cannot be
    written. The service then polls nothing more (what the sinks hold stays bounded)
    and retries the flush: consumption stops, /readyz reports ``consuming`` false, the
    offsets stay committed before the first alarm, and the shutdown log says the
    events will be consumed again. Restarted with a writable path (same state and
    group), every alarm reaches the file: the same as a replay."""
    from tests.support.runs import committed_total

    events = prediction_events(6_000, model="fraud", seed=31, shift_at=4_000, shift=0.8)
    fb = feedback_for(events, seed=32, flip_after=4_500)
    bad = tmp_path / "alarms-dir"
    bad.mkdir()
    group = f"g-{topics['predictions']}"
    config = write_config(
        tmp_path / "run.yml",
        broker=broker,
        topics=topics,
        group=group,
        state_dir=tmp_path / "state",
        alarms=bad,
        session_timeout_ms=QUICK_SESSION_MS,
    )
    produce(broker, topics["predictions"], events)
    produce(broker, topics["feedback"], fb)
    with DriftlineProcess(config, tmp_path, name="unwritable") as proc:
        wait_for(lambda: "could not flush" in proc.log(), 120, "a flush that fails")
        wait_for(lambda: (readyz(proc) or (0, {}))[0] == 503, 30, "/readyz reporting the hold")
        status, body = readyz(proc)
        assert "consuming" in body["not_ready"]
        alarms = sum(metric_values(proc.metrics(), "driftline_alarms_total").values())
        assert alarms > 0
        seen = consumed(proc, "predictions") + consumed(proc, "feedback")
        held = committed_total(broker, group, topics["predictions"])
        # held for several retries: nothing more is consumed, nothing committed
        time.sleep(3)  # a negative check: 3 s of retries (0.5, 1, 2 s apart) would have consumed more
        assert consumed(proc, "predictions") + consumed(proc, "feedback") == seen
        assert seen < len(events) + len(fb)
        assert committed_total(broker, group, topics["predictions"]) == held < len(events), (
            "offsets were committed past alarms that were never written"
        )
        assert proc.terminate() == 0
        log = proc.log()
    assert "will be consumed again at the next start" in log
    assert committed_total(broker, group, topics["predictions"]) == held  # shutdown held it too

    bad.rmdir()
    fixed = tmp_path / "alarms.jsonl"
    cfg = yaml.safe_load(config.read_text())
    cfg["alarms_jsonl"] = str(fixed)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with DriftlineProcess(config, tmp_path, name="fixed") as proc:
        wait_for(
            lambda: (
                committed_total(broker, group, topics["feedback"]) == len(fb)
                and committed_total(broker, group, topics["predictions"]) == len(events)
            ),
            120,
            "the rest consumed and committed",
        )
        assert proc.terminate() == 0
    key = lambda a: (a["model"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])  # noqa: E731
    written = sorted(read_alarms(fixed), key=key)
    assert len(written) >= alarms  # those raised before the hold, and the rest of the stream's
    assert written == sorted(replay(tmp_path, events, fb, config), key=key)
