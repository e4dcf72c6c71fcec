"""``kafka.client: confluent``: the confluent-kafka source keeps the default source's
guarantees, on the embedded broker (Tansu) and in real ``driftline run`` subprocesses.

- consume, commit, stop mid-stream, restart: resumes at the committed offsets, nothing
  lost or counted twice; a stale checkpoint never rewinds past the group's commit;
- the alarms of a Kafka run equal a replay of the same events, malformed records in the
  dead-letter topic with their reasons; hostile bytes dead-lettered by ``driftline run``;
- a frozen broker is ridden out: no exit, /readyz 503 naming kafka meanwhile, ready
  again after, the alarms still equal a replay;
- ``driftline run`` SIGKILLed mid-batch and restarted equals a replay (alarms, exact
  event counts, every trigger once);
- instances join and leave one group (SIGTERM, SIGKILL) while events flow: each event
  counted once, the states handed over through the changelog;
- the configuration maps to librdkafka's settings, and ``kafka.client: confluent``
  without confluent-kafka installed is refused naming the field and the extra.

The source runs in the consumer process (``kafka.consumer_process``, the default) and
in the service's process; the tests that differ between the two run both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer

from driftline.cli import main
from driftline.demo.embedded_broker import EmbeddedBroker
from driftline.monitor.config import load_settings
from driftline.monitor.confluent_source import ConfluentSource, confluent_config
from driftline.monitor.sources import ProcessKafkaSource
from tests.monitor.streams import feedback_for, prediction_events, to_jsonl
from tests.monitor.test_crash import (
    N_CHURN,
    N_FRAUD,
    SECRET,
    SECRET_ENV,
    PacedProducers,
    expected,  # noqa: F401 - the replay, a module fixture
)
from tests.monitor.test_dead_letters_durable import (
    HOSTILE,
    REPO,
    at_end,
    check_dead_letters,
    produce_with_hostile,
)
from tests.monitor.test_kafka import PauseAfter, Running, committed_total, produce, settings_for
from tests.monitor.test_outage import (
    FREEZE_S,
    REQUEST_MS,
    SESSION_MS,
    broker_errors,
    consumed,
    outage,
    readyz,
)
from tests.support.receiver import WebhookReceiver
from tests.support.runs import (
    DriftlineProcess,
    alarm_set,
    describe,
    metric_values,
    outbox_rows,
    read_alarms,
    read_topic,
    replay,
    tracebacks,
    trigger_identity,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]


SESSION_TIMEOUT_MS = 3000
"""The consumer group's session timeout of these tests (unless one says otherwise).
Tansu answers a join only after a delay that grows with it (over 3 s at 6 s), and each
instance started joins once; a member SIGKILLed is expired after it. librdkafka
heartbeats every second from its own threads (not held by the GIL or a batch), so a
member is never expired while it runs."""


def confluent(settings, **kafka):
    """``settings`` with ``kafka.client: confluent``, :data:`SESSION_TIMEOUT_MS` (and
    these other kafka settings)."""
    kafka = {"client": "confluent", "session_timeout_ms": SESSION_TIMEOUT_MS, **kafka}
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=kafka)})


def use_confluent(config, **kafka):
    """Set ``kafka.client: confluent``, :data:`SESSION_TIMEOUT_MS` (and these other
    kafka settings) in a YAML config."""
    cfg = yaml.safe_load(config.read_text())
    cfg["kafka"].update({"client": "confluent", "session_timeout_ms": SESSION_TIMEOUT_MS, **kafka})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own: freezing the session's would stall every other test."""
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as b:
        yield b


def alarm_key(a):
    return (a["model"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])


# ---- configuration ---------------------------------------------------------------------


def test_the_settings_map_to_librdkafka(tmp_path):
    kafka = load_settings(
        kafka={
            "client": "confluent",
            "bootstrap_servers": " a:9092, b:9092 ",
            "group_id": "grp",
            "client_id": "cid",
            "session_timeout_ms": 9000,
            "request_timeout_ms": 20000,
            "fetch_min_bytes": 10,
            "fetch_max_wait_ms": 50,
            "max_partition_fetch_bytes": 2048,
            "fetch_max_bytes": 4096,
            "client_rack": "az1",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "user",
            "sasl_password": "pw",
        }
    ).kafka
    config = confluent_config(kafka)
    assert config["bootstrap.servers"] == "a:9092,b:9092"
    assert (config["group.id"], config["client.id"], config["client.rack"]) == ("grp", "cid", "az1")
    assert config["enable.auto.commit"] is False and config["auto.offset.reset"] == "earliest"
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"], config["socket.timeout.ms"]) == (
        9000,
        3000,
        20000,
    )
    assert config["max.poll.interval.ms"] >= config["session.timeout.ms"]
    assert (
        config["fetch.min.bytes"],
        config["fetch.wait.max.ms"],
        config["max.partition.fetch.bytes"],
        config["fetch.max.bytes"],
    ) == (10, 50, 2048, 4096)
    assert (
        config["security.protocol"],
        config["sasl.mechanism"],
        config["sasl.username"],
        config["sasl.password"],
    ) == ("sasl_plaintext", "SCRAM-SHA-512", "user", "pw")
    import confluent_kafka

    confluent_kafka.Consumer(config).close()  # librdkafka takes every key and value

    token = tmp_path / "token"
    token.write_text("header.eyJzdWIiOiJzdmMiLCJleHAiOjQxMDI0NDQ4MDB9.sig\n")
    oauth = load_settings(
        kafka={
            "client": "confluent",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token_file": str(token),
        }
    ).kafka
    config = confluent_config(oauth)
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert config["oauth_cb"]("") == ("header.eyJzdWIiOiJzdmMiLCJleHAiOjQxMDI0NDQ4MDB9.sig", 4102444800.0, "svc", {})
    assert "header." not in repr(config["oauth_cb"])


def test_confluent_without_confluent_kafka_is_refused_naming_the_field_and_the_extra(tmp_path):
    """A separate interpreter in which confluent_kafka cannot be imported: check-config
    exits 2 with the field and the install command."""
    cfg = tmp_path / "c.yml"
    cfg.write_text("kafka:\n  client: confluent\n")
    blocker = tmp_path / "block"
    blocker.mkdir()
    # a meta-path finder that hides confluent_kafka, installed before driftline starts
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'confluent_kafka' or name.startswith('confluent_kafka.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")},
        "PYTHONPATH": os.pathsep.join([str(blocker), str(REPO)]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "check-config", str(cfg)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "kafka.client" in done.stderr and "pip install 'driftline[confluent]'" in done.stderr, done.stderr
    assert main(["check-config", str(cfg)]) == 0  # here it is installed


# ---- the source in the service (in-process service, real broker) ------------------------


PROCESS = pytest.mark.parametrize("consumer_process", [True, False], ids=["consumer-process", "in-process"])


@PROCESS
def test_kafka_run_equals_replay_and_dead_letters_bad_records(broker, topics, tmp_path, consumer_process):
    fraud = prediction_events(6_000, model="fraud", seed=1, shift_at=4_000, shift=0.8)
    churn = prediction_events(4_000, model="churn", seed=2)
    preds = [e for pair in zip(fraud, churn, strict=False) for e in pair] + fraud[len(churn) :]
    fb = feedback_for(fraud, seed=3, flip_after=4_500)
    bad = [
        (b"fraud", b"{oops"),
        (b"fraud", orjson.dumps({"model": "fraud", "features": {}})),
        (b"churn", orjson.dumps({"model": "churn", "id": "z", "features": []})),
    ]
    produce(broker, topics["predictions"], preds, raw=bad)
    running = Running(confluent(settings_for(broker, topics, tmp_path), consumer_process=consumer_process))
    svc = running.service
    wait_for(lambda: svc.stats.predictions + svc.stats.invalid >= len(preds) + len(bad), 120, "predictions consumed")
    assert isinstance(svc._source, ProcessKafkaSource if consumer_process else ConfluentSource)
    produce(broker, topics["feedback"], fb)  # labels arrive after their predictions, as in life
    wait_for(lambda: svc.stats.feedback >= len(fb), 90, "feedback consumed")
    assert running.stop() == 0
    assert (svc.stats.predictions, svc.stats.invalid, svc.stats.feedback) == (len(preds), len(bad), len(fb))
    kafka_alarms = read_alarms(tmp_path / "alarms.jsonl")

    (tmp_path / "p.jsonl").write_bytes(to_jsonl(preds) + b"".join(v + b"\n" for _, v in bad))
    (tmp_path / "f.jsonl").write_bytes(to_jsonl(fb))
    cfg = tmp_path / "replay.yml"
    cfg.write_text("defaults:\n  reference: {size: 2000}\n  window: {size: 1000}\n  performance: {window: 500}\n")
    out = tmp_path / "replay-alarms.jsonl"
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(tmp_path / "p.jsonl"),
                "--feedback",
                str(tmp_path / "f.jsonl"),
                "--config",
                str(cfg),
                "--alarms",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(kafka_alarms, key=alarm_key) == sorted(read_alarms(out), key=alarm_key)
    kinds = {(a["model"], a["kind"]) for a in kafka_alarms}
    assert ("fraud", "feature_drift") in kinds and ("fraud", "concept_drift") in kinds

    consumer = KafkaConsumer(
        topics["dead_letter"],
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = {m.value: dict(m.headers)["driftline-reason"].decode() for m in consumer}
    consumer.close()
    assert letters == {b"{oops": "invalid_json", bad[1][1]: "missing_field", bad[2][1]: "wrong_type"}


# The two hand-over paths, each in one of the two process modes (the modes themselves are
# the default source's, tested there with both paths).
@pytest.mark.parametrize(
    "changelog, consumer_process",
    [(True, True), (False, False)],
    ids=["changelog-consumer-process", "checkpoint-file-in-process"],
)
def test_shutdown_mid_stream_commits_and_resumes_without_loss(broker, topics, tmp_path, changelog, consumer_process):
    """Stopped while held mid-stream: exactly what it counted is committed; a second
    instance consumes the rest, nothing counted twice (the changelog's handover path
    and the checkpoint file's seek path)."""
    events = prediction_events(20_000, model="fraud", seed=5, shift_at=15_000, shift=0.8)
    produce(broker, topics["predictions"], events)
    settings = settings_for(broker, topics, tmp_path)
    settings = confluent(
        settings,
        max_poll_records=500,
        consumer_process=consumer_process,
        changelog=settings.kafka.changelog.model_copy(update={"enabled": changelog}),
    )
    pause = PauseAfter(3_000)
    first = Running(settings, on_batch=pause)
    assert pause.stop(first) == 0
    consumed_first = first.service.stats.predictions
    assert 3_000 <= consumed_first < len(events)
    assert committed_total(broker, settings.kafka.group_id, topics["predictions"]) == consumed_first

    second = Running(settings)
    wait_for(
        lambda: committed_total(broker, settings.kafka.group_id, topics["predictions"]) >= len(events),
        120,
        "the rest consumed and committed",
    )
    assert second.stop() == 0
    assert first.service.stats.predictions + second.service.stats.predictions == len(events)
    alarms = read_alarms(tmp_path / "alarms.jsonl")
    assert [(a["feature"], a["first_index"]) for a in alarms if a["kind"] == "feature_drift"] == [("x0", 15000)]


@pytest.mark.parametrize("consumer_process", [True], ids=["consumer-process"])
def test_a_stale_checkpoint_does_not_rewind_past_the_groups_commit(broker, topics, tmp_path, consumer_process):
    """Instance A checkpoints at X and stops; B (its own state) commits Y > X; A
    restarts from its checkpoint file: it resumes from Y, counts nothing twice and never
    moves the commit back."""
    events = prediction_events(12_000, model="fraud", seed=9)
    produce(broker, topics["predictions"], events[:4_000])

    def settings(state):
        s = settings_for(broker, topics, tmp_path / state)
        return confluent(
            s, consumer_process=consumer_process, changelog=s.kafka.changelog.model_copy(update={"enabled": False})
        )

    a = Running(settings("a"))
    wait_for(lambda: a.service.stats.predictions >= 4_000, 90, "A consumed the first part")
    assert a.stop() == 0
    produce(broker, topics["predictions"], events[4_000:])
    b = Running(settings("b"))
    wait_for(lambda: b.service.stats.predictions >= 8_000, 90, "B consumed the rest")
    assert b.stop() == 0

    again = Running(settings("a"))
    sentinels = prediction_events(2, model="fraud", seed=10)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for partition, event in enumerate(sentinels):
        producer.send(topics["predictions"], key=b"fraud", value=orjson.dumps(event), partition=partition)
    producer.flush()
    producer.close()
    wait_for(lambda: again.service.stats.predictions >= 2, 90, "A read the two new records")
    group = settings("a").kafka.group_id
    wait_for(lambda: committed_total(broker, group, topics["predictions"]) >= len(events) + 2, 60, "A committed them")
    assert again.stop() == 0
    assert again.service.stats.predictions == 2
    assert committed_total(broker, group, topics["predictions"]) == len(events) + 2


# ---- driftline run subprocesses ---------------------------------------------------------


def test_driftline_run_dead_letters_hostile_records(broker, topics, tmp_path):
    """Hostile bytes (invalid JSON and UTF-8, huge values, wrong types) through a
    ``driftline run`` with the confluent client: every one in the dead-letter topic with
    its reason before the offsets pass it; stopped by SIGTERM with exit 0."""
    events = prediction_events(3_000, model="fraud", seed=44)
    positions, ends = produce_with_hostile(broker, topics["predictions"], events)
    group = f"run-{topics['predictions']}"
    cfg = tmp_path / "driftline.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "alarms_jsonl": str(tmp_path / "alarms.jsonl"),
                "checkpoint_interval_seconds": 0,
                "prometheus": {"enabled": False},
                "defaults": {"reference": {"size": 2000}, "window": {"size": 1000}},
                "kafka": {
                    "client": "confluent",
                    "bootstrap_servers": broker.bootstrap_servers,
                    "group_id": group,
                    "predictions_topic": topics["predictions"],
                    "feedback_topic": topics["feedback"],
                    "dead_letter_topic": topics["dead_letter"],
                    "session_timeout_ms": SESSION_TIMEOUT_MS,
                    "poll_timeout_ms": 200,
                    "max_poll_records": 1000,
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["PYTHONPATH"] = str(REPO)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "run", "--config", str(cfg), "--log-level", "INFO"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: at_end(broker, group, topics["predictions"], ends) or proc.poll() is not None,
                240,
                "the offsets committed to the end",
            )
            assert proc.poll() is None, log_path.read_text(errors="replace")[-3000:]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, log_path.read_text(errors="replace")[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert "could not flush" not in text and "Traceback" not in text, text[-3000:]
    check_dead_letters(read_topic(broker.bootstrap_servers, topics["dead_letter"], len(HOSTILE)), positions)


# In-process: the ConfluentSource itself faces the outage (the consumer process around it
# is the default source's, whose outage test runs both modes).
@pytest.mark.parametrize("consumer_process", [False], ids=["in-process"])
def test_broker_outages_are_ridden_out_without_loss(own_broker, tmp_path, consumer_process):
    """Two freezes of the broker, each longer than the session and request timeouts,
    with events produced between them: ``driftline run`` with the confluent client never
    exits, /readyz is 503 naming kafka during each, ready again after, broker errors
    counted, and the alarms equal a replay of the same events."""
    broker = own_broker
    topics = {"predictions": "predictions", "feedback": "feedback", "dead_letter": "dlq"}
    broker.create_topics(list(topics.values()), partitions=2)
    fraud = prediction_events(6_000, model="fraud", seed=21, shift_at=4_000, shift=0.8)
    churn = prediction_events(3_000, model="churn", seed=22)
    preds = [e for pair in zip(fraud, churn) for e in pair] + fraud[len(churn) :]
    fb = feedback_for(fraud, seed=23, flip_after=4_500)
    parts = [preds[:4_500], preds[4_500:]]
    config = write_config(
        tmp_path / "run.yml",
        broker=broker,
        topics=topics,
        group="outage",
        state_dir=tmp_path / "state",
        alarms=tmp_path / "alarms.jsonl",
    )
    use_confluent(
        config,
        session_timeout_ms=SESSION_MS,
        request_timeout_ms=REQUEST_MS,
        stall_timeout_seconds=30,
        consumer_process=consumer_process,
    )

    with DriftlineProcess(config, tmp_path) as proc:
        produce(broker, topics["predictions"], parts[0])
        wait_for(lambda: readyz(proc) and readyz(proc)[0] == 200, 120, "/readyz 200 at start")
        total, bodies = 0, []
        for n, part in enumerate(parts):
            if n:
                produce(broker, topics["predictions"], part)
            total += len(part)
            wait_for(lambda total=total: consumed(proc, "predictions") >= total, 180, f"{total} predictions consumed")
            errors_before = broker_errors(proc)
            bodies.append(outage(broker, proc, FREEZE_S))
            wait_for(lambda: (readyz(proc) or (0,))[0] == 200, 120, "/readyz 200 after the outage")
            assert broker_errors(proc) > errors_before, "the outage must show in driftline_broker_errors_total"
            assert proc.proc.poll() is None, proc.log()[-3000:]
        produce(broker, topics["feedback"], fb)
        wait_for(lambda: consumed(proc, "feedback") >= len(fb), 180, "feedback consumed")
        assert consumed(proc, "predictions") == len(preds)  # nothing counted twice
        assert proc.terminate() == 0, proc.log()[-3000:]
        log = proc.log()
    assert all(b["components"]["kafka"] is False for b in bodies)
    assert "Kafka does not answer" in log and "Kafka answers again" in log
    assert "Traceback" not in log, log[-3000:]
    kafka_alarms = read_alarms(tmp_path / "alarms.jsonl")
    assert sorted(kafka_alarms, key=alarm_key) == sorted(replay(tmp_path, preds, fb, config), key=alarm_key)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, at, consumer_process",
    [
        ("engine", 9, True),
        ("outbox", 1, True),
    ],
    ids=["mid-batch", "after-outbox-before-commit"],
)
def test_sigkill_then_restart_equals_replay(
    broker,
    topics,
    tmp_path,
    expected,  # noqa: F811 - the fixture
    point,
    at,  # noqa: F811 - the fixture
    consumer_process,
):
    """``driftline run`` with the confluent client, SIGKILLed at ``point``, restarted
    over the same state: the alarms equal the replay's, every event counted exactly
    once, every trigger of the replay delivered under one key and no other."""
    preds, labels = expected["predictions"], expected["feedback"]
    group = f"crash-{topics['predictions']}"
    state, alarms_path = tmp_path / "state", tmp_path / "alarms.jsonl"
    env = {SECRET_ENV: SECRET}
    with WebhookReceiver(secret=SECRET) as receiver:
        cfg = use_confluent(
            write_config(
                tmp_path / "run.yml",
                broker=broker,
                topics=topics,
                group=group,
                state_dir=state,
                alarms=alarms_path,
                webhook_url=receiver.url,
                secret_env=SECRET_ENV,
                consumer_process=consumer_process,
            )
        )
        with DriftlineProcess(cfg, tmp_path, crash=(point, at), env=env, name="first") as first:
            producers = PacedProducers(broker, topics, preds, labels)
            code = first.wait_exit(timeout=180)
            assert code == -9, f"exit {code}, not SIGKILL; log:\n{first.log()[-3000:]}"
            first_log = first.log()
        assert "Traceback" not in first_log, first_log[-3000:]
        committed_at_crash = (
            committed_total(broker, group, topics["predictions"]),
            committed_total(broker, group, topics["feedback"]),
        )
        assert sum(committed_at_crash) < len(preds) + len(labels), first_log[-3000:]
        producers.join()
        with DriftlineProcess(cfg, tmp_path, env=env, name="second") as second:

            def caught_up():
                text = second.metrics()
                events = metric_values(text, "driftline_model_events_total")
                labelled = metric_values(text, "driftline_model_labelled_events_total")
                return (
                    sum(events.values()) >= len(preds) and sum(labelled.values()) >= len(labels) and (events, labelled)
                )

            counts = wait_for(caught_up, 180, "the restarted service to reach the end of the stream")
            wait_for(
                lambda: (
                    committed_total(broker, group, topics["predictions"]) >= len(preds)
                    and committed_total(broker, group, topics["feedback"]) >= len(labels)
                ),
                60,
                "every offset committed",
            )
            wait_for(
                lambda: expected["triggers"] <= {trigger_identity(r.json()) for r in receiver.accepted},
                60,
                "every trigger of the replay at the receiver",
            )
            assert second.terminate() == 0, second.log()[-3000:]
            second_log = second.log()
        assert "Traceback" not in second_log, second_log[-3000:]

    got, want = alarm_set(read_alarms(alarms_path)), alarm_set(expected["alarms"])
    assert got == want, f"only after the crash: {describe(got - want)}\nonly in the replay: {describe(want - got)}"
    events, labelled = counts
    exact = {(("model", "fraud"), ("version", "v1")): N_FRAUD, (("model", "churn"), ("version", "v1")): N_CHURN}
    assert events == exact and labelled == exact
    keys_of: dict[tuple, set[str]] = {}
    for r in receiver.accepted:
        keys_of.setdefault(trigger_identity(r.json()), set()).add(r.idempotency_key)
    assert set(keys_of) == expected["triggers"]
    assert all(len(k) == 1 for k in keys_of.values()), keys_of
    assert {r["status"] for r in outbox_rows(state)} == {"delivered"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_instances_join_and_leave_while_events_flow(broker, tmp_path):
    """The rebalance scenario of ``test_rebalance`` with the confluent client: A starts;
    B and C join; B is stopped with SIGTERM while events flow; production pauses until
    everything is committed, C is killed with SIGKILL, more events flow while A takes
    its partitions over. No instance exits on its own, every event is committed, each is
    counted exactly once across the ownership changes (states handed over through the
    changelog at each revocation and restored at each assignment)."""
    from tests.monitor.test_rebalance import (
        MAX_POLL,
        PARTITIONS,
        Producer,
        committed_and_ends,
        final_count,
        gauge,
    )
    from tests.monitor.test_rebalance import consumed as consumed_predictions

    suffix = uuid.uuid4().hex[:8]
    topics = {"predictions": f"predictions-{suffix}", "feedback": f"feedback-{suffix}", "dead_letter": f"dlq-{suffix}"}
    broker.create_topics(list(topics.values()), partitions=PARTITIONS)
    group = f"g-{suffix}"
    config = use_confluent(
        write_config(
            tmp_path / "run.yml",
            broker=broker,
            topics=topics,
            group=group,
            state_dir=tmp_path / "state",
            max_poll_records=MAX_POLL,
        ),
        request_timeout_ms=5000,
    )
    cfg = yaml.safe_load(config.read_text())
    configs = {}
    for name in "ABC":
        cfg["state_dir"] = str(tmp_path / f"state-{name}")
        configs[name] = tmp_path / f"{name}.yml"
        configs[name].write_text(yaml.safe_dump(cfg, sort_keys=False))
    producer = Producer(broker, topics["predictions"])
    procs: dict[str, DriftlineProcess] = {}

    def alive(*names):
        for n in names:
            code = procs[n].proc.poll()
            assert code is None, f"instance {n} exited with code {code}:\n{procs[n].log()[-4000:]}"

    def assigned(n):
        return gauge(procs[n], "driftline_assigned_partitions")

    try:
        procs["A"] = DriftlineProcess(configs["A"], tmp_path, name="A")
        producer.go.set()
        producer.start()
        wait_for(lambda: consumed_predictions(procs["A"]) >= 1_000, 120, "A consuming")
        procs["B"] = DriftlineProcess(configs["B"], tmp_path, name="B")
        procs["C"] = DriftlineProcess(configs["C"], tmp_path, name="C")
        wait_for(
            lambda: alive("A", "B", "C") or all(assigned(n) > 0 and consumed_predictions(procs[n]) > 0 for n in "ABC"),
            180,
            "B and C to join and consume",
        )
        assert procs["B"].terminate(timeout=120) == 0, procs["B"].log()[-3000:]  # mid-stream
        alive("A", "C")
        wait_for(
            lambda: alive("A", "C") or assigned("A") + assigned("C") == 2 * PARTITIONS,
            180,
            "A and C to take B's partitions over",
        )
        producer.pause()
        produced = producer.sent
        wait_for(
            lambda: alive("A", "C") or committed_and_ends(broker, group, topics["predictions"])[0] >= produced,
            300,
            "everything produced so far committed",
        )
        killed = int(consumed_predictions(procs["C"]))
        procs["C"].kill()
        producer.stop_at = producer.chunks + 10
        producer.go.set()
        wait_for(lambda: alive("A") or assigned("A") == 2 * PARTITIONS, 180, "A to take C's partitions over")
        wait_for(
            lambda: producer.error or (producer.chunks >= producer.stop_at and producer.idle.is_set()),
            300,
            "the last events produced",
        )
        assert producer.error is None, producer.error
        total = producer.sent
        wait_for(
            lambda: alive("A") or committed_and_ends(broker, group, topics["predictions"])[0] >= total,
            300,
            "every event committed",
        )
        assert committed_and_ends(broker, group, topics["predictions"])[0] == total
        assert procs["A"].terminate(timeout=120) == 0, procs["A"].log()[-3000:]
        counts = {n: final_count(procs[n]) for n in "AB"} | {"C": killed}
        logs = {n: procs[n].log() for n in procs}
    finally:
        producer.done = True
        producer.go.set()
        for p in procs.values():
            p.close()
    assert sum(counts.values()) == total, f"{counts} sum to {sum(counts.values())}, not {total} events"
    restored = sum(text.count("model state(s) restored from the changelog") for text in logs.values())
    assert restored >= 3, "the partitions' states were not restored from the changelog at the rebalances"
    assert not any(tracebacks(text) for text in logs.values()), {n: tracebacks(t) for n, t in logs.items()}
