"""The audit trail (driftline.sinks.audit): an append-only SQLite table whose records are
idempotent (a replay, even after a kill -9, duplicates nothing), with its own retention,
queries, table and JSON output, a trigger's answer chain, ``driftline audit``, and the
Kafka copy on a real broker (published at least once, across an outage and a restart)."""

from __future__ import annotations

import gc
import json
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import driftline
from driftline.cli import main as cli_main
from driftline.monitor.alarms import Alarm
from driftline.monitor.config import KafkaSettings, load_settings
from driftline.monitor.decode import Record
from driftline.monitor.lifecycle import LifecycleEvent, Reference
from driftline.sinks.audit import (
    AUDIT_FILE,
    AuditLog,
    Lineage,
    SourceRange,
    alarm_record,
    delivery_record,
    fingerprint,
    format_chain,
    format_records,
    lifecycle_record,
    parse_since,
    record_id,
    trigger_record,
)
from driftline.sinks.policy import Trigger, idempotency_key
from tests.support.topics import read_topic

REPO = Path(__file__).resolve().parents[2]
DAY = 86400.0


def alarm(
    i: int,
    *,
    model: str = "fraud",
    version: str = "v7",
    ts: float | None = None,
    feature: str = "amount",
    origin: str = "predictions/0/0",
) -> Alarm:
    return Alarm(
        model,
        version,
        "feature_drift",
        "ks",
        feature,
        0.31,
        0.1,
        1e-7,
        i * 100,
        i * 100 + 99,
        1763900000.0 + i if ts is None else ts,
        "retrain",
        origin=origin,
    )


def trigger(alarms: list[Alarm], key: str | None = None) -> Trigger:
    a = alarms[-1]
    first = min(x.first_index for x in alarms)
    last = max(x.last_index for x in alarms)
    key = key or idempotency_key(a.model, a.version, a.action, (x.origin for x in alarms), first, last, alarms)
    return Trigger(a.model, a.version, a.action, tuple(alarms), key, first, last, max(x.ts for x in alarms))


LINEAGE = Lineage(
    source_positions=(SourceRange("predictions", 0, 1200, 1399), SourceRange("predictions", 1, 800, 999)),
    reference_fingerprint=fingerprint({"reference": [1.0, 2.0]}),
    config_fingerprint=fingerprint({"window": {"size": 1000}}),
    detector_params={"ks": {"alpha": 1e-5, "correction": "bh"}},
)


def lifecycle(
    event: str = "deployed", *, version: str = "v8", ts: float = 1763990000.0, trigger_key: str | None = None, **fields
) -> LifecycleEvent:
    if event == "deployed":
        fields.setdefault("role", "canary")
    return LifecycleEvent("fraud", version, event, ts, trigger=trigger_key, **fields)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / AUDIT_FILE, retention_days=30)
    yield log
    log.close()


def chain_records():
    """An alarm, the trigger it caused, two delivery attempts and the deployment that answered."""
    evidence = [alarm(0), alarm(1, feature="country")]
    t = trigger(evidence)
    return t, [
        *(alarm_record(a) for a in evidence),
        trigger_record(t, LINEAGE, reason="retrain fraud v7: 2 alarm(s)"),
        delivery_record(
            target="ci",
            idempotency_key=t.idempotency_key,
            model="fraud",
            version="v7",
            action="retrain",
            outcome="retried",
            attempts=1,
            at=1763900100.0,
            error="HTTP 503",
        ),
        delivery_record(
            target="ci",
            idempotency_key=t.idempotency_key,
            model="fraud",
            version="v7",
            action="retrain",
            outcome="delivered",
            attempts=2,
            at=1763900160.0,
        ),
        lifecycle_record(
            lifecycle(
                trigger_key=t.idempotency_key,
                traffic_share=0.05,
                reference=Reference(path="refs/fraud-v8.jsonl"),
                actor="github-actions run 4711",
                reason="retrain after drift",
            ),
            Record("model-lifecycle", 1, 42, -1, b"fraud", b"{}"),
        ),
    ]


# ---- append, idempotency, durability ------------------------------------------------


def test_append_returns_the_new_records_and_a_replay_adds_none(tmp_path):
    _, records = chain_records()
    path = tmp_path / AUDIT_FILE
    log = AuditLog(path)
    try:
        assert log.append(records) == records
        assert log.append(records) == []
        assert log.append(records[::-1]) == []
    finally:
        log.close()
    log = AuditLog(path)  # after a restart, as after a crash: the same records again
    try:
        assert log.append(records) == []
        rows = log.query()
        assert len(rows) == len(records) == len({r["id"] for r in rows})
        assert sorted(r["id"] for r in rows) == sorted(r.id for r in records)
    finally:
        log.close()


def test_the_file_is_wal_with_full_sync_and_records_are_never_changed(audit):
    _, records = chain_records()
    audit.append(records)
    db = sqlite3.connect(str(audit.path))
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET model = 'other'")
        with pytest.raises(sqlite3.IntegrityError):  # the unique constraint, not only INSERT OR IGNORE
            db.execute(
                "INSERT INTO audit (id, kind, model, ts, recorded_at, payload) "
                "SELECT id, kind, model, ts, recorded_at, payload FROM audit LIMIT 1"
            )
    finally:
        db.close()
    assert audit._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_WRITER = textwrap.dedent("""
    import sys
    from driftline.monitor.alarms import Alarm
    from driftline.sinks.audit import AuditLog, alarm_record
    log = AuditLog(sys.argv[1])
    for i in range(int(sys.argv[2])):
        a = Alarm("fraud", "v7", "feature_drift", "ks", "amount", 0.31, 0.1, 1e-7, i * 100, i * 100 + 99,
                  1763900000.0 + i, "retrain", origin="predictions/0/0")
        log.append([alarm_record(a)])
        print(i, flush=True)
    """)


def test_a_kill_9_mid_append_then_a_replay_loses_and_duplicates_nothing(tmp_path):
    path = tmp_path / AUDIT_FILE
    total = 100_000  # far more than it can write before the kill
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(total)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        written = -1
        while written < 50 and time.monotonic() < deadline:  # some appends committed, more in flight
            line = proc.stdout.readline()
            if not line:
                break
            written = int(line)
        assert written >= 50, "the writer did not get going"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    db = sqlite3.connect(str(path))
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (survived,) = db.execute("SELECT COUNT(*) FROM audit").fetchone()
    finally:
        db.close()
    assert written + 1 <= survived < total  # every acknowledged append survived
    replay = [alarm_record(alarm(i)) for i in range(survived + 200)]  # the replay covers more than was written
    log = AuditLog(path)
    try:
        added = log.append(replay)
        assert len(added) == len(replay) - survived
        rows = log.query(kind="alarm")
        assert len(rows) == len(replay) == len({r["id"] for r in rows})
    finally:
        log.close()


# ---- ids ----------------------------------------------------------------------------


def test_ids_are_deterministic_and_tell_records_apart():
    assert alarm_record(alarm(3)).id == alarm_record(alarm(3)).id
    assert alarm_record(alarm(3)).id != alarm_record(alarm(4)).id
    # the same indices counted from another origin (state rebuilt elsewhere) are another alarm
    assert alarm_record(alarm(3)).id != alarm_record(alarm(3, origin="predictions/1/500")).id
    # the same lifecycle event read at another position (a replay file) is the same record
    e = lifecycle()
    assert (
        lifecycle_record(e, Record("model-lifecycle", 0, 5, 0, None, b"")).id
        == lifecycle_record(e, Record("lifecycle.jsonl", 0, 1, -1, None, b"")).id
        == lifecycle_record(e).id
    )
    assert lifecycle_record(e).id != lifecycle_record(lifecycle(ts=e.ts + 1)).id
    d = {"target": "ci", "idempotency_key": "k" * 64, "model": "fraud", "version": "v7", "action": "retrain", "at": 1.0}
    ids = {delivery_record(outcome=o, attempts=n, **d).id for o in ("retried", "delivered") for n in (1, 2)}
    assert len(ids) == 4
    assert (
        delivery_record(outcome="retried", attempts=1, **d).id
        == delivery_record(outcome="retried", attempts=1, **{**d, "at": 99.0}).id
    )  # the attempt, not when it was noted
    assert record_id("trigger", "k") != record_id("delivery", "k")


def test_a_trigger_record_carries_its_lineage():
    t, records = chain_records()
    rec = next(r for r in records if r.kind == "trigger")
    p = rec.payload
    assert rec.trigger_key == p["idempotency_key"] == t.idempotency_key
    assert (rec.model, rec.version, rec.ts) == ("fraud", "v7", t.ts)
    assert p["evidence_ids"] == [alarm_record(a).id for a in t.alarms]
    assert [a["feature"] for a in p["evidence"]] == ["amount", "country"]
    assert p["evidence"][0]["origin"] == "predictions/0/0"
    assert p["source_positions"] == [
        {"topic": "predictions", "partition": 0, "first_offset": 1200, "last_offset": 1399},
        {"topic": "predictions", "partition": 1, "first_offset": 800, "last_offset": 999},
    ]
    assert p["reference_fingerprint"] == LINEAGE.reference_fingerprint
    assert p["config_fingerprint"] == LINEAGE.config_fingerprint
    assert p["detector_params"] == {"ks": {"alpha": 1e-5, "correction": "bh"}}
    assert p["driftline_version"] == driftline.__version__
    assert (p["first_index"], p["last_index"], p["action"]) == (0, 199, "retrain")
    json.dumps(p, allow_nan=False)  # strict JSON


def test_non_finite_numbers_are_stored_as_null(audit):
    a = Alarm(
        "fraud",
        "v7",
        "performance",
        "accuracy",
        None,
        float("nan"),
        float("inf"),
        None,
        0,
        9,
        1.0,
        "retrain",
        origin="x",
    )
    t = trigger([a])
    audit.append([trigger_record(t, Lineage(detector_params={"adwin": {"delta": float("nan")}}))])
    [row] = audit.query()
    assert row["payload"]["detector_params"] == {"adwin": {"delta": None}}
    assert row["payload"]["evidence"][0]["statistic"] is None


# ---- retention ----------------------------------------------------------------------


def test_retention_deletes_only_records_older_than_its_days(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path / AUDIT_FILE, retention_days=7, clock=clock)
    try:
        log.append([alarm_record(alarm(0))])
        clock.now += 5 * DAY
        log.append([alarm_record(alarm(1))])
        clock.now += 3 * DAY  # the first is 8 days old, the second 3
        assert log.prune() == 1
        assert [r["payload"]["first_index"] for r in log.query()] == [100]
        assert log.prune() == 0
        # the first flush prunes, then at most hourly
        clock.now += 5 * DAY
        log.write([alarm_record(alarm(2))])
        log.flush()
        assert [r["payload"]["first_index"] for r in log.query()] == [200]
    finally:
        log.close()


def test_retention_counts_recording_time_not_event_time(tmp_path):
    clock = Clock(now=1763900000.0)
    log = AuditLog(tmp_path / AUDIT_FILE, retention_days=1, clock=clock)
    try:
        log.append([alarm_record(alarm(0, ts=1.0))])  # a replay of last year's events
        assert log.prune() == 0 and len(log.query()) == 1
    finally:
        log.close()


def test_opening_the_file_to_read_it_deletes_nothing(tmp_path):
    path = tmp_path / AUDIT_FILE
    clock = Clock()
    log = AuditLog(path, retention_days=400, clock=clock)
    log.append([alarm_record(alarm(0))])
    log.close()
    clock.now += 10 * DAY
    reader = AuditLog(path, retention_days=1, clock=clock)  # e.g. `driftline audit` with another config
    try:
        assert len(reader.query()) == 1
    finally:
        reader.close()


def test_retention_days_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="retention_days"):
        AuditLog(tmp_path / AUDIT_FILE, retention_days=0)


# ---- queries and formats ------------------------------------------------------------


def test_query_filters_by_model_version_time_and_kind(audit):
    _, records = chain_records()
    other = [
        alarm_record(alarm(0, model="churn", version="v1", ts=1763800000.0)),
        lifecycle_record(lifecycle("promoted", version="v8", ts=1764000000.0)),
    ]
    audit.append(records + other)
    everything = audit.query()
    assert [r["ts"] for r in everything] == sorted(r["ts"] for r in everything)  # by event time
    assert {r["model"] for r in audit.query(model="churn")} == {"churn"}
    assert {(r["kind"], r["version"]) for r in audit.query(model="fraud", version="v8")} == {("lifecycle", "v8")}
    assert len(audit.query(model="fraud", version="v8")) == 2
    assert [r["kind"] for r in audit.query(model="fraud", version="v7")] == [
        "alarm",
        "alarm",
        "trigger",
        "delivery",
        "delivery",
    ]
    assert [r["ts"] for r in audit.query(since=1763990000.0)] == [1763990000.0, 1764000000.0]
    assert [r["ts"] for r in audit.query(since=1763900000.0, until=1763900001.0)] == [1763900000.0]
    assert [r["kind"] for r in audit.query(kind="delivery")] == ["delivery", "delivery"]
    assert len(audit.query(limit=2)) == 2
    assert audit.query(model="nobody") == []
    assert all(r["recorded_at"] > 0 for r in everything)


def test_table_and_json_formats(audit):
    _, records = chain_records()
    weird = lifecycle("retired", version="v1", ts=1763000000.0, reason="line one\nline two | pipes")
    audit.append(records + [lifecycle_record(weird)])
    rows = audit.query()
    table = format_records(rows, "table").splitlines()
    assert table[0].split()[:3] == ["time", "(UTC)", "kind"]
    assert len(table) == len(rows) + 1  # one line per record, whatever free text holds
    assert table[1].startswith("2025-11-13T") and "retired" in table[1] and "line one line two" in table[1]
    trig = next(line for line in table[1:] if "  trigger " in line)
    assert "retrain on 2 alarm(s)" in trig and "predictions/0@1200-1399" in trig
    assert f"driftline {driftline.__version__}" in trig
    assert any("retrain delivered to ci (attempt 2)" in line for line in table)
    assert any(
        "deployed as canary at 5% reference refs/fraud-v8.jsonl by github-actions run 4711" in line for line in table
    )
    lines = format_records(rows, "json").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert format_records([], "json") == ""
    with pytest.raises(ValueError, match="table"):
        format_records(rows, "csv")


# ---- the answer chain ---------------------------------------------------------------


def test_answer_chain_gives_the_trigger_its_deliveries_and_the_lifecycle_events_citing_it(audit):
    t, records = chain_records()
    unrelated = lifecycle_record(lifecycle("promoted", version="v6", ts=1763000000.0))
    later = lifecycle_record(lifecycle("promoted", ts=1764000000.0, trigger_key=t.idempotency_key))
    audit.append(records + [unrelated, later])
    chain = audit.answer_chain(t.idempotency_key)
    assert chain["key"] == t.idempotency_key
    assert chain["trigger"]["kind"] == "trigger" and chain["trigger"]["payload"]["action"] == "retrain"
    assert [(d["payload"]["outcome"], d["payload"]["attempts"]) for d in chain["deliveries"]] == [
        ("retried", 1),
        ("delivered", 2),
    ]
    assert [(e["payload"]["event"], e["version"]) for e in chain["lifecycle"]] == [
        ("deployed", "v8"),
        ("promoted", "v8"),
    ]
    assert chain["lifecycle"][0]["payload"]["source_position"] == "model-lifecycle/1/42"
    assert audit.answer_chain(t.idempotency_key[:10]) == chain  # a prefix, as the logs show
    text = format_chain(chain)
    assert text.splitlines()[0] == f"trigger {t.idempotency_key}"
    assert "evidence:" in text and "feature_drift ks country" in text
    after = text.split("what happened next:")[1]
    assert after.index("retried") < after.index("delivered") < after.index("deployed") < after.index("promoted")
    assert json.loads(format_chain(chain, "json")) == chain


def test_answer_chain_refuses_short_unknown_and_ambiguous_keys(audit):
    a, b = alarm(0), alarm(1)
    audit.append(
        [
            trigger_record(trigger([a], key="abcdef12" + "0" * 56)),
            trigger_record(trigger([b], key="abcdef12" + "1" * 56)),
        ]
    )
    with pytest.raises(ValueError, match="too short"):
        audit.answer_chain("abc")
    with pytest.raises(ValueError, match="no audit record"):
        audit.answer_chain("ffffffffff")
    with pytest.raises(ValueError, match="several triggers"):
        audit.answer_chain("abcdef12")
    assert audit.answer_chain("abcdef121")["trigger"]["version"] == "v7"


def test_a_chain_whose_trigger_is_gone_still_shows_what_cites_it(audit):
    audit.append([lifecycle_record(lifecycle("rolled_back", trigger_key="f" * 64))])
    chain = audit.answer_chain("f" * 12)
    assert chain["trigger"] is None and len(chain["lifecycle"]) == 1
    assert "not in the log" in format_chain(chain)


# ---- `driftline audit` --------------------------------------------------------------


def test_the_audit_command(tmp_path, capsys):
    t, records = chain_records()
    log = AuditLog.from_settings(load_settings(state_dir=tmp_path))
    assert log.path == tmp_path / AUDIT_FILE and log._publisher is not None  # driftline-audit by default
    log._publisher = None  # no broker here: the Kafka copy is tested below
    log.append(records)
    log.close()
    assert (
        cli_main(["audit", "--state-dir", str(tmp_path), "--model", "fraud", "--version", "v7", "--format", "json"])
        == 0
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in out] == ["alarm", "alarm", "trigger", "delivery", "delivery"]
    assert cli_main(["audit", "--state-dir", str(tmp_path), "--since", "2025-11-24T12:00Z"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 and "deployed as canary" in table[1]  # 2025-11-24T12:00Z = 1763985600
    assert cli_main(["audit", "--state-dir", str(tmp_path), "--trigger", t.idempotency_key[:12]]) == 0
    assert "what happened next:" in capsys.readouterr().out
    assert cli_main(["audit", "--state-dir", str(tmp_path), "--since", "last tuesday"]) == 2
    assert "--since: cannot read 'last tuesday'" in capsys.readouterr().err
    assert cli_main(["audit", "--state-dir", str(tmp_path), "--trigger", "0123456789"]) == 2
    assert "--trigger: no audit record" in capsys.readouterr().err
    assert cli_main(["audit", "--state-dir", str(tmp_path / "elsewhere")]) == 3
    assert "no audit log at" in capsys.readouterr().err


def test_parse_since_forms():
    now = 1763900000.0
    assert parse_since("1763900000") == 1763900000.0
    assert parse_since("2025-11-23") == 1763856000.0
    assert parse_since("2025-11-23T12:00:00Z") == parse_since("2025-11-23T13:00:00+01:00") == 1763899200.0
    assert parse_since("36h", now=now) == now - 36 * 3600
    assert parse_since("7d", now=now) == now - 7 * DAY
    for bad in ("", "tuesday", "-5d", "nan", "5y"):
        with pytest.raises(ValueError, match="epoch seconds"):
            parse_since(bad)


# ---- the Kafka copy -----------------------------------------------------------------


@pytest.mark.kafka
def test_records_are_published_to_the_audit_topic_keyed_by_model(broker, tmp_path):
    topic = f"driftline-audit-{time.monotonic_ns()}"
    broker.create_topics([topic], partitions=2)
    _, records = chain_records()
    records.append(alarm_record(alarm(5, model="churn")))
    log = AuditLog(
        tmp_path / AUDIT_FILE, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers), kafka_topic=topic
    )
    try:
        log.write(records)
        log.flush()
        assert log.kafka_pending == 0
        log.write(records)  # a replay: nothing new to append, nothing published again
        log.flush()
    finally:
        log.close()
    got = read_topic(broker.bootstrap_servers, topic, len(records), decode=json.loads)
    assert sorted(v["id"] for _, v in got) == sorted(r.id for r in records)
    assert all(key == v["model"].encode() for key, v in got)
    by_id = {r.id: r for r in records}
    assert all(v == by_id[v["id"]].to_dict() for _, v in got)
    assert len(read_topic(broker.bootstrap_servers, topic, len(records) + 1, timeout=3.0, decode=json.loads)) == len(
        records
    )


# kafka-python 3.0 does not close a socket whose connect() was refused (its leak, not
# ours): see tests/sinks/test_kafka_sink.py.
@pytest.mark.kafka
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_an_unreachable_topic_delays_the_copy_and_loses_nothing(broker, tmp_path, caplog):
    caplog.set_level(logging.CRITICAL + 1, logger="kafka")
    topic = f"driftline-audit-{time.monotonic_ns()}"
    broker.create_topics([topic], partitions=1)
    _, records = chain_records()
    path = tmp_path / AUDIT_FILE
    with socket.socket() as held:  # bound, not listening: a broker that is down
        held.bind(("127.0.0.1", 0))
        down = KafkaSettings(bootstrap_servers=f"127.0.0.1:{held.getsockname()[1]}")
        clock = Clock(time.time())
        log = AuditLog(path, kafka=down, kafka_topic=topic, flush_timeout_seconds=1.0, clock=clock)
        attempts = []
        real_flush = log._publisher.flush
        log._publisher.flush = lambda: (attempts.append(clock.now), real_flush())[1]
        try:
            log.write(records)
            with caplog.at_level(logging.WARNING, logger="driftline.sinks.audit"):
                log.flush()  # the file has them: the commit of offsets need not wait for Kafka
            assert "not published to Kafka topic" in caplog.text
            assert log.pending == 0 and log.kafka_pending == len(records)
            assert len(log.query()) == len(records)
            log.flush()  # backing off: no second wait for the broker at once
            assert len(attempts) == 1
            clock.now += 6.0
            log.flush()
            assert len(attempts) == 2 and log.kafka_pending == len(records)
        finally:
            log.close()
        gc.collect()  # the sockets kafka-python leaked, while their warning is ignored
    # the service restarts with the broker back: the backlog goes out from the file
    log = AuditLog(path, kafka=KafkaSettings(bootstrap_servers=broker.bootstrap_servers), kafka_topic=topic)
    try:
        assert log.kafka_pending == len(records)
        log.flush()
        assert log.kafka_pending == 0
    finally:
        log.close()
    got = read_topic(broker.bootstrap_servers, topic, len(records), decode=json.loads)
    assert sorted(v["id"] for _, v in got) == sorted(r.id for r in records)
