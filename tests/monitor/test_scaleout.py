"""Scaling out: state follows its partition (issue 14).

Three ``driftline run`` processes in one consumer group share six partitions of twenty
models, with predictions and feedback flowing; one is killed with SIGKILL while a
drift is under way on one of its models, and a fourth starts later. Each model's state
(detectors, reference, label join, trigger-policy evidence, deliveries not yet
acknowledged) is in the changelog topic (:mod:`driftline.monitor.changelog`), so the
instances together must behave as one replay of the same events:

* the union of their alarms (JSONL sinks; an alarm re-emitted after the kill counts
  once) equals the replay's, alarm for alarm at the same indices;
* the drift under way at the kill is reported, at the replay's indices (its reference
  was restored, not rebuilt from the drifted data);
* every trigger of the replay reaches the receiver under one idempotency key, and no
  other (feature-drift triggers: see :func:`feature_drift_triggers`); the killed
  instance's pending deliveries (the receiver is down until after the kill) are
  delivered by the new owners.
"""

from __future__ import annotations

import gc
import re
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.monitor.streams import feedback_for, prediction_events
from tests.support.receiver import WebhookReceiver
from tests.support.runs import (
    DriftlineProcess,
    alarm_set,
    describe,
    metric_values,
    outbox_rows,
    read_alarms,
    replay,
    tracebacks,
    trigger_identity,
    wait_for,
    write_config,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]

PARTITIONS = 6
MODELS = [f"m{i:02d}" for i in range(20)]
N = 1_500
SHIFT_AT = {m: 450 + 20 * i for i, m in enumerate(MODELS) if i % 2 == 0}  # feature drift, before 2/3
EARLY = {m: 320 for i, m in enumerate(MODELS) if i % 2 == 1}  # reported early: triggers on every instance
FLIP_AFTER = {m: 700 for i, m in enumerate(MODELS) if i % 5 == 1}  # concept drift
DEFAULTS = {"reference": {"size": 300}, "window": {"size": 150}, "performance": {"window": 100}}
SECRET, SECRET_ENV = "scaleout-webhook-secret", "SCALEOUT_WEBHOOK_SECRET"
SESSION_MS = 3000
"""The group's session timeout: Tansu answers a join after about half of it, and every
start, kill and join here is a rebalance of the group; but longer than a partition's
restore from the changelog on a loaded machine (a member is expelled when its
rebalance listener, which restores, holds its heartbeats for longer)."""


def stream() -> tuple[list[dict], list[dict]]:
    preds, labels = [], []
    for i, m in enumerate(MODELS):
        events = prediction_events(N, model=m, seed=700 + i, shift_at=SHIFT_AT.get(m, EARLY.get(m)), shift=1.5)
        preds += events
        labels += feedback_for(events, seed=800 + i, flip_after=FLIP_AFTER.get(m))
    key = lambda e: (e["ts"], e["model"])  # noqa: E731
    return sorted(preds, key=key), sorted(labels, key=key)


class Producers:
    """Predictions and feedback from two threads at once, keyed by model (so a model's
    records stay in one partition), in paced chunks: the instances consume while the
    events are produced. The last third waits for ``resume`` (a new instance joins while
    events still flow), then flows with a shorter pause (the pace is for the kill, which
    must come while a drift is under way; the new instance only needs events to come
    after it joined)."""

    def __init__(self, broker, topics, predictions, feedback, chunk: int = 400, pause: float = 0.25) -> None:
        self.errors: list[BaseException] = []
        self.resume = threading.Event()
        self.threads = [
            threading.Thread(target=self._send, args=(broker, topics[t], ev, chunk, pause))
            for t, ev in (("predictions", predictions), ("feedback", feedback))
        ]
        for t in self.threads:
            t.start()

    def _send(self, broker, topic, events, chunk, pause) -> None:
        try:
            p = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            for start in range(0, len(events), chunk):
                last_third = start >= 2 * len(events) // 3
                if last_third and not self.resume.is_set():
                    p.flush()
                    assert self.resume.wait(300), "never resumed"
                for e in events[start : start + chunk]:
                    p.send(topic, key=e["model"].encode(), value=orjson.dumps(e))
                p.flush()
                time.sleep(pause / 5 if last_third else pause)
            p.close()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            self.errors.append(exc)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=300)
        assert not any(t.is_alive() for t in self.threads) and not self.errors, self.errors


def feature_drift_triggers(config: Path) -> Path:
    """Only feature-drift alarms trigger: their order is that of the predictions
    partition, the same for Kafka and a replay (alarms that need labels arrive in an order
    that depends on how far each topic was read, and the policy's cooldown, counted in
    event time, is order-sensitive)."""
    cfg = yaml.safe_load(config.read_text())
    cfg["webhooks"]["policy"]["kinds"] = ["feature_drift"]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def committed(broker, group: str, topic: str) -> int:
    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        return sum(probe.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS))
    finally:
        probe.close()


def gauge(proc: DriftlineProcess, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", proc.metrics(), re.M)
    return float(m.group(1)) if m else 0.0


def model_events(proc: DriftlineProcess) -> dict[str, float]:
    return {dict(k)["model"]: v for k, v in metric_values(proc.metrics(), "driftline_model_events_total").items()}


def test_three_instances_a_kill_and_a_join_equal_one_replay(broker, tmp_path: Path):
    preds, labels = stream()
    # ---- the replay: alarms, triggers, and where each feature drift is first reported
    with pytest.MonkeyPatch.context() as mp, WebhookReceiver(secret=SECRET) as sink:
        mp.setenv(SECRET_ENV, SECRET)
        cfg = feature_drift_triggers(
            write_config(
                tmp_path / "replay.yml",
                state_dir=tmp_path / "replay-state",
                webhook_url=sink.url,
                secret_env=SECRET_ENV,
                defaults=DEFAULTS,
            )
        )
        want_alarms = replay(tmp_path, preds, labels, cfg, with_webhooks=True, state_dir=tmp_path / "replay-state")
    want_triggers = {r["identity"] for r in outbox_rows(tmp_path / "replay-state")}
    detected = {}
    for a in want_alarms:
        if a["kind"] == "feature_drift" and a["model"] in SHIFT_AT:
            detected[a["model"]] = min(detected.get(a["model"], N), a["last_index"])
    assert set(detected) == set(SHIFT_AT), f"the replay misses drifts: {sorted(set(SHIFT_AT) - set(detected))}"

    # ---- three instances in one group, the receiver down until after the kill
    suffix = uuid.uuid4().hex[:8]
    topics = {"predictions": f"predictions-{suffix}", "feedback": f"feedback-{suffix}", "dead_letter": f"dlq-{suffix}"}
    broker.create_topics(list(topics.values()), partitions=PARTITIONS)
    group = f"scale-{suffix}"
    env = {SECRET_ENV: SECRET}
    procs: dict[str, DriftlineProcess] = {}

    def config(name: str) -> Path:
        return feature_drift_triggers(
            write_config(
                tmp_path / f"{name}.yml",
                broker=broker,
                topics=topics,
                group=group,
                state_dir=tmp_path / f"state-{name}",
                alarms=tmp_path / f"alarms-{name}.jsonl",
                webhook_url=receiver.url,
                secret_env=SECRET_ENV,
                checkpoint_interval_seconds=1.0,
                defaults=DEFAULTS,
                session_timeout_ms=SESSION_MS,
            )
        )

    def alive(*names: str) -> bool:
        for n in names:
            code = procs[n].proc.poll()
            assert code is None, f"instance {n} exited with code {code}:\n{procs[n].log()[-4000:]}"
        return False

    receiver = WebhookReceiver(secret=SECRET, start=False)
    producers = None
    try:
        for n in "ABC":
            procs[n] = DriftlineProcess(config(n), tmp_path, env=env, name=n)
        wait_for(
            lambda: alive("A", "B", "C") or all(gauge(procs[n], "driftline_assigned_partitions") == 4 for n in "ABC"),
            180,
            "the three instances to share the twelve partitions",
        )
        producers = Producers(broker, topics, preds, labels)

        # ---- kill B while a drift of one of its models is under way (begun, not yet
        # reported) and triggers wait in its outbox (the receiver is down)
        under_way: dict[str, float] = {}

        def drifting_on_b() -> bool:
            alive("A", "B", "C")
            seen = model_events(procs["B"])
            under_way.clear()
            under_way.update(
                {m: c for m, c in seen.items() if m in SHIFT_AT and SHIFT_AT[m] + 10 <= c <= detected[m] - 40}
            )
            return bool(under_way) and any(r["status"] == "pending" for r in outbox_rows(tmp_path / "state-B"))

        wait_for(drifting_on_b, 240, "a drift under way on a model of B, with triggers pending", interval=0.05)
        b_alarms = read_alarms(tmp_path / "alarms-B.jsonl")
        procs["B"].kill()
        pending_at_kill = {r["key"] for r in outbox_rows(tmp_path / "state-B") if r["status"] == "pending"}
        reported_by_b = {a["model"] for a in b_alarms if a["kind"] == "feature_drift"}
        assert not set(under_way) & reported_by_b, (under_way, reported_by_b)
        receiver.start()

        wait_for(
            lambda: (
                alive("A", "C")
                or gauge(procs["A"], "driftline_assigned_partitions")
                + gauge(procs["C"], "driftline_assigned_partitions")
                == 2 * PARTITIONS
            ),
            180,
            "A and C to take B's partitions over",
        )
        # ---- D joins at two thirds of the stream; the last third flows once it has partitions
        two_thirds = 2 * len(preds) // 3 - 400  # the producers wait at two thirds
        wait_for(
            lambda: alive("A", "C") or committed(broker, group, topics["predictions"]) >= two_thirds,
            240,
            "two thirds of the predictions committed",
        )
        procs["D"] = DriftlineProcess(config("D"), tmp_path, env=env, name="D")
        wait_for(
            lambda: alive("A", "C", "D") or gauge(procs["D"], "driftline_assigned_partitions") > 0,
            180,
            "D to join the group",
        )
        producers.resume.set()
        producers.join()
        wait_for(
            lambda: (
                alive("A", "C", "D")
                or (
                    committed(broker, group, topics["predictions"]) >= len(preds)
                    and committed(broker, group, topics["feedback"]) >= len(labels)
                )
            ),
            300,
            "every event committed",
        )
        try:  # on a timeout, the comparisons below say what is missing
            wait_for(
                lambda: (
                    want_triggers <= {trigger_identity(r.json()) for r in receiver.accepted}
                    and pending_at_kill <= {r.idempotency_key for r in receiver.accepted}
                ),
                120,
                "every trigger at the receiver",
            )
        except AssertionError:
            pass
        for n in "ACD":
            assert procs[n].terminate(timeout=120) == 0, procs[n].log()[-3000:]
        logs = {n: p.log() for n, p in procs.items()}
    finally:
        if producers is not None:
            producers.resume.set()
            producers.join()
        for p in procs.values():
            p.close()
        receiver.stop()
        gc.collect()  # a client of this test left unclosed is reported here, not in a later test

    context = f"B killed with drifts under way at {under_way}; {len(pending_at_kill)} deliveries pending in B's outbox"
    assert not any(tracebacks(text) for text in logs.values()), {n: tracebacks(t) for n, t in logs.items()}
    assert "model state(s) restored from the changelog" in logs["D"], logs["D"][-3000:]
    assert sum(t.count("restored from the changelog") for t in logs.values()) >= 3, context

    got = set()
    for n in "ABCD":
        got |= alarm_set(read_alarms(tmp_path / f"alarms-{n}.jsonl"))
    want = alarm_set(want_alarms)
    assert got == want, (
        f"{context}\nonly in the instances: {describe(got - want)}\nonly in the replay: {describe(want - got)}"
    )
    for m in under_way:  # reported after the handover, at the replay's index
        first = min(a["last_index"] for a in map(orjson.loads, got) if a["model"] == m and a["kind"] == "feature_drift")
        assert first == detected[m], (m, first, detected[m])

    delivered = [r.idempotency_key for r in receiver.accepted]
    assert len(delivered) == len(set(delivered))
    keys_of: dict[tuple, set[str]] = {}
    for r in receiver.accepted:
        keys_of.setdefault(trigger_identity(r.json()), set()).add(r.idempotency_key)
    assert set(keys_of) == want_triggers, (
        f"{context}\nmissing {sorted(want_triggers - set(keys_of))}\nextra {sorted(set(keys_of) - want_triggers)}"
    )
    assert all(len(k) == 1 for k in keys_of.values()), f"a trigger arrived under several keys: {keys_of}"
    assert all(r.signature_valid for r in receiver.requests)
    assert pending_at_kill, f"{context}: B had no pending delivery when killed (the test proves nothing of them)"
    assert pending_at_kill <= set(delivered), f"{context}: lost {sorted(pending_at_kill - set(delivered))}"
