"""`driftline replay` and file references, through the CLI."""

from __future__ import annotations

import csv
import gc
import hashlib
import time

import orjson
import pytest

from driftline.cli import main
from driftline.monitor.config import load_settings
from driftline.monitor.exceptions import ReferenceLoadError
from driftline.monitor.reference import load_reference
from tests.monitor.streams import prediction_events, to_jsonl


def _alarms(path):
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_replay_with_a_jsonl_reference_file_monitors_from_the_first_event(tmp_path):
    reference = prediction_events(3_000, seed=50)
    live = prediction_events(4_000, seed=51, shift_at=2_000, shift=1.0, id_prefix="live")
    (tmp_path / "ref.jsonl").write_bytes(to_jsonl(reference))
    (tmp_path / "live.jsonl").write_bytes(to_jsonl(live))
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"defaults:\n  reference: {{source: file, path: {tmp_path / 'ref.jsonl'}, size: 3000}}\n")
    out = tmp_path / "alarms.jsonl"
    assert (
        main(
            [
                "replay",
                "--predictions",
                str(tmp_path / "live.jsonl"),
                "--config",
                str(cfg),
                "--alarms",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    drift = [a for a in _alarms(out) if a["kind"] == "feature_drift"]
    # windows start at the stream's first event, since no event is spent on the reference
    assert [(a["feature"], a["first_index"], a["last_index"]) for a in drift] == [("x0", 2000, 2999)]


def test_csv_reference_and_its_errors(tmp_path):
    path = tmp_path / "ref.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "amount", "country", "prediction"])
        w.writerow(["fraud", "12.5", "DE", "0.9"])
        w.writerow(["fraud", "", "FR", "0.1"])
        w.writerow(["other", "1", "US", "0.5"])
    ref = load_reference(path, "fraud", 100)
    assert ref.features == [{"amount": 12.5, "country": "DE"}, {"amount": None, "country": "FR"}]
    assert ref.prediction == [0.9, 0.1]
    with pytest.raises(ReferenceLoadError, match="no prediction events of model 'nobody'"):
        load_reference(path, "nobody", 100)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"model": "fraud", "features": {}}\nnot json\n')
    with pytest.raises(ReferenceLoadError, match="bad.jsonl:2"):
        load_reference(bad, "fraud", 100)


def test_replay_exit_codes_and_dead_letter_file(tmp_path, capsys):
    events = prediction_events(100, seed=52)
    path = tmp_path / "p.jsonl"
    path.write_bytes(to_jsonl(events) + b"this is not json\n")
    out = tmp_path / "a.jsonl"
    assert main(["replay", "--predictions", str(path), "--alarms", str(out)]) == 0
    err = capsys.readouterr().err
    assert "replayed 100 predictions" in err and "1 invalid" in err
    dead = [orjson.loads(x) for x in (tmp_path / "a.jsonl.dead-letters.jsonl").read_bytes().splitlines()]
    assert dead == [
        {
            "reason": "invalid_json",
            "detail": dead[0]["detail"],
            "topic": "predictions",
            "partition": 0,
            "offset": 100,
            "key": None,
            "key_base64": None,
            "value": "this is not json",
            "value_base64": None,
            "size": 16,
            "sha256": hashlib.sha256(b"this is not json").hexdigest(),
        }
    ]
    assert main(["replay", "--predictions", str(tmp_path / "missing.jsonl"), "--alarms", str(out)]) == 3
    cfg = tmp_path / "bad.yml"
    cfg.write_text("defaults:\n  reference: {source: file, path: /nonexistent/ref.jsonl}\nmodels:\n  fraud: {}\n")
    assert main(["replay", "--predictions", str(path), "--alarms", str(out), "--config", str(cfg)]) == 3
    assert "/nonexistent/ref.jsonl" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_run_without_a_broker_fails_with_exit_code_3(tmp_path, monkeypatch, capsys):
    from driftline.demo.embedded_broker import free_port

    monkeypatch.setenv("DRIFTLINE_KAFKA__BOOTSTRAP_TIMEOUT_MS", "1500")
    port = free_port()  # nothing listens there
    started = time.monotonic()
    code = main(
        ["run", "--bootstrap-servers", f"127.0.0.1:{port}", "--state-dir", str(tmp_path), "--metrics-port", "0"]
    )
    assert code == 3
    # every client (consumer, changelog, sinks) honours kafka.bootstrap_timeout_ms: the
    # changelog's once waited its own 30 s
    assert time.monotonic() - started < 20
    assert f"cannot connect to Kafka at 127.0.0.1:{port}" in capsys.readouterr().err
    # kafka-python 3.0 leaves the refused connection's socket open: collect it here,
    # under this test's filter, rather than in whichever test runs next
    gc.collect()


def test_trigger_policy_state_survives_a_restart(tmp_path):
    """Evidence gathered before a restart still counts after it: the policy is
    checkpointed with the engine and restored into the new webhook sink."""
    from driftline.app import Service
    from driftline.monitor.sources import JsonlSource

    events = prediction_events(4_000, seed=70, shift_at=3_000, shift=1.0)
    path = tmp_path / "p.jsonl"
    path.write_bytes(to_jsonl(events))
    settings = load_settings(
        defaults={"reference": {"size": 2000}, "window": {"size": 1000}},
        prometheus={"enabled": False},
        state_dir=tmp_path / "state",
        checkpoint_interval_seconds=0,
        webhooks={
            "targets": [{"name": "ci", "url": "http://127.0.0.1:9/hook"}],
            "policy": {"min_alarms": 3, "dry_run": True},
        },
        # no broker in this test: the audit trail's Kafka copy (on by default) would wait
        # for one at every flush and leave kafka-python's refused sockets to the collector
        audit={"kafka_topic": None},
    )

    def service():
        src = JsonlSource(path, None, predictions_topic="predictions", feedback_topic="feedback")
        from driftline.sinks.deadletter import FileDeadLetters

        return Service(settings, source=src, dead_letters=FileDeadLetters(tmp_path / "dead.jsonl"))

    first = service()
    webhook = next(s for s in first.sinks if hasattr(s, "policy"))
    assert first.run() == 0
    before = webhook.policy.state_dict()
    assert any(r["evidence"] for r in before["routes"]), "the shift should leave evidence (2 of 3 alarms)"

    second = service()
    second._restore(second._source)  # what run() does first
    restored = next(s for s in second.sinks if hasattr(s, "policy"))
    assert restored.policy.state_dict() == before
    second.close()
