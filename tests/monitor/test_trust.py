"""Issue 10, items 1-9: each reproduction of the issue as a test of the intended behaviour.

1. numeric-only (and numeric + boolean, boolean-only, categorical-only, prediction-less,
   label-less) models run;
2. one string in a numeric feature of the reference window is dead-lettered and
   changes nothing else;
3. two fragments that would merge into a valid event in one batch are two dead letters;
4. trigger idempotency keys differ for different triggers after a wiped state dir and
   are equal when a trigger is re-emitted;
5. shadow versions scoring the same ids both get every label;
6. a changed reference file is applied on restart;
7. model names are bounded by ``max_models``, the rest dead-lettered ``model_limit``;
8. multi-class macro / micro metrics and one-vs-rest ROC-AUC;
9. a dead-lettered prediction takes no event index.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from scipy.stats import rankdata

from driftline.app import Service
from driftline.monitor.config import load_settings
from driftline.sinks.prometheus import EngineCollector
from tests.monitor.streams import feedback_for, prediction_events
from tests.monitor.zoo import (
    FeatureSpec,
    Invalid,
    ModelSpec,
    Stream,
    StreamSpec,
    expand,
    produce_stream,
    replay_stream,
    run_kafka,
)
from tests.support.receiver import WebhookReceiver
from tests.support.runs import QUICK_SESSION_MS, outbox_rows, read_alarms

REPO = Path(__file__).resolve().parents[2]


def _stream(predictions: list[Any], feedback: list[Any] = ()) -> Stream:
    """A zoo Stream from events (dicts) or raw lines (bytes), keyed by model."""

    def line(e: Any) -> tuple[bytes, bytes]:
        if isinstance(e, bytes):
            return b"m", e
        return e["model"].encode(), orjson.dumps(e)

    return Stream(predictions=[line(e) for e in predictions], feedback=[line(e) for e in feedback])


def _metric(engine: Any, name: str, labels: dict[str, str]) -> float | None:
    """A sample of the engine collector, as Prometheus would scrape it."""
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.snapshot))
    return registry.get_sample_value(name, labels)


def _topics(broker) -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = {k: f"{k}-trust-{suffix}" for k in ("predictions", "feedback", "dead_letter")}
    broker.create_topics(list(names.values()), partitions=2)
    return names


# ---- 1. every common model shape runs -----------------------------------------------------------


def test_item1_all_numeric_model_exits_0_when_its_reference_fills(tmp_path):
    """The issue's reproduction, as a user runs it: the `driftline` command, the
    reference size from the environment, 1,500 events of features {a, b} (floats)."""
    rng = np.random.default_rng(1)
    events = [
        {
            "model": "m",
            "id": i,
            "ts": 1_700_000_000 + i,
            "features": {"a": float(rng.normal()), "b": float(rng.normal())},
            "prediction": float(rng.random()),
        }
        for i in range(1500)
    ]
    (tmp_path / "p.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env["DRIFTLINE_DEFAULTS__REFERENCE__SIZE"] = "1000"
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "replay",
            "--predictions",
            str(tmp_path / "p.jsonl"),
            "--alarms",
            str(tmp_path / "a.jsonl"),
            "--quiet",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replayed 1500 predictions" in done.stderr and "0 invalid" in done.stderr


def _features(kind: str, n: int) -> tuple[FeatureSpec, ...]:
    return tuple(FeatureSpec(f"{kind}{i}", kind) for i in range(n))


@pytest.mark.parametrize(
    "shape", ["numeric", "numeric_and_boolean", "boolean", "categorical", "prediction_less", "label_less"]
)
def test_item1_every_common_model_shape_runs_and_is_monitored(tmp_path, shape):
    """Each shape runs to the end and is monitored: a shift of its first feature at
    event 3,000 is found there (reference 1,000, windows 1,000)."""
    features = {
        "numeric": _features("normal", 2),
        "numeric_and_boolean": _features("normal", 1) + _features("bool", 1),
        "boolean": _features("bool", 2),
        "categorical": _features("cat", 2),
        "prediction_less": _features("normal", 2),
        "label_less": _features("normal", 2),
    }[shape]
    task = {"prediction_less": "none"}.get(shape, "binary_score")
    model = ModelSpec("m", features, task, n_ids=5000, labelled=0.0 if shape == "label_less" else 1.0)
    stream = expand(StreamSpec((model,), seed=3))
    # the change: from event 3,000 on, the first feature takes another distribution
    first = features[0]
    shifted = []
    for i, (key, value) in enumerate(stream.predictions):
        e = orjson.loads(value)
        if i >= 3000:
            v = e["features"].get(first.name)
            if first.kind == "normal" and v is not None:
                e["features"][first.name] = v + 1000.0
            elif first.kind == "bool":
                e["features"][first.name] = True
            elif first.kind == "cat":
                e["features"][first.name] = sorted({"cat0_DE", "cat0_FR"})[0]
        shifted.append((key, orjson.dumps(e)))
    stream.predictions = shifted
    out = replay_stream(stream, tmp_path, config={"defaults": {"reference": {"size": 1000}}})
    assert out.code == 0
    assert out.dead_letters == []
    assert out.versions[("m", "v1")][0] == 5000
    drift = [(a["feature"], a["first_index"]) for a in out.alarms if a["kind"] == "feature_drift"]
    assert (first.name, 3000) in drift, out.alarm_keys()
    assert {a["feature"] for a in out.alarms if a["kind"] == "feature_drift"} == {first.name}


# ---- 2. one bad record in the reference window --------------------------------------------------


def test_item2_one_string_in_a_numeric_reference_feature_is_dead_lettered_and_changes_nothing(tmp_path):
    events = prediction_events(8000, model="fraud", seed=21)
    fb = feedback_for(events, seed=22)
    bad_ref = dict(events[100], id="bad-ref", features=dict(events[100]["features"], x0="abc"))
    bad_later = dict(events[6500], id="bad-later", features=dict(events[6500]["features"], x0="xyz"))
    preds = events[:101] + [bad_ref] + events[101:6501] + [bad_later] + events[6501:]
    fb += [
        {"model": "fraud", "id": "bad-ref", "ts": bad_ref["ts"] + 5, "label": 1},
        {"model": "fraud", "id": "bad-later", "ts": bad_later["ts"] + 5, "label": 0},
    ]
    fb.sort(key=lambda e: e["ts"])
    config = {
        "webhooks": {
            "targets": [{"name": "ci", "url": "http://127.0.0.1:9/hook"}],
            "policy": {
                "kinds": [
                    "data_quality",
                    "feature_drift",
                    "prediction_drift",
                    "performance",
                    "concept_drift",
                    "regression",
                ]
            },
        },
        "state_dir": str(tmp_path / "state"),
    }
    out = replay_stream(_stream(preds, fb), tmp_path, config=config, extra_args=("--with-webhooks",))
    assert out.code == 0
    assert out.dead_letters == sorted(
        [(orjson.dumps(bad_ref).decode(), "wrong_type"), (orjson.dumps(bad_later).decode(), "wrong_type")]
    )
    assert out.alarm_keys() == []  # no data_quality, no chi2 feature drift on x0
    assert outbox_rows(tmp_path / "state") == []  # and so no retraining
    assert out.versions[("fraud", "v1")] == (8000, 8000)  # the bad ones counted nowhere, labels included
    schema = out.engine.models["fraud"].schema
    assert "x0" in schema.numeric and "x0" not in schema.categorical


def test_item2_a_mixed_feature_is_reported_and_not_monitored(tmp_path, caplog):
    """A feature genuinely half numbers, half strings: neither type reaches 99 %; it is
    left out of the schema, reported by a WARNING naming it, and nothing is dead-lettered
    for it."""
    events = prediction_events(3000, model="fraud", seed=23)
    for i, e in enumerate(events):
        e["features"]["code"] = i % 7 if i % 2 else f"k{i % 7}"
    with caplog.at_level(logging.WARNING):
        out = replay_stream(_stream(events), tmp_path, config={"defaults": {"reference": {"size": 1000}}})
    assert out.code == 0 and out.dead_letters == [] and out.alarm_keys() == []
    schema = out.engine.models["fraud"].schema
    assert "code" not in schema.numeric and "code" not in schema.categorical
    assert any(
        r.levelno == logging.WARNING and "code" in r.getMessage() and "fraud" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert _metric(out.engine, "driftline_mixed_features", {"model": "fraud"}) == 1


@pytest.mark.parametrize("declared", ["categorical_features", "numeric_features"])
def test_item2_explicit_feature_types_win_over_inference(tmp_path, declared):
    """The same half-numbers, half-strings feature, declared in the config: as
    categorical, every value is a category (numbers coded by their text); as numeric,
    its strings are dead-lettered (in the reference window as later)."""
    events = prediction_events(3000, model="fraud", seed=24)
    for i, e in enumerate(events):
        e["features"]["code"] = i % 7 if i % 2 else f"k{i % 7}"
    config = {"defaults": {"reference": {"size": 1000}, declared: ["code"]}}
    out = replay_stream(_stream(events), tmp_path, config=config)
    assert out.code == 0
    schema = out.engine.models["fraud"].schema
    if declared == "categorical_features":
        assert "code" in schema.categorical and out.dead_letters == []
        assert out.versions[("fraud", "v1")][0] == 3000
    else:
        assert "code" in schema.numeric
        assert [r for _, r in out.dead_letters] == ["wrong_type"] * 1500
        assert out.versions[("fraud", "v1")][0] == 1500
    assert out.alarm_keys() == []


# ---- 3. fragments that merge in one batch ---------------------------------------------------------

FRAGMENTS = [
    b'{"model":"m","id":1,"features":{"a":[1',
    b'2]},"prediction":0.5}, {"model":"m","id":2,"features":{"a":3}}',
]
FRAGMENTS_LATER = [
    b'{"model":"m","id":11,"features":{"a":[1',
    b'2]},"prediction":0.5}, {"model":"m","id":12,"features":{"a":3}}',
]


def _fragment_stream() -> Stream:
    rng = np.random.default_rng(31)
    events = [
        {
            "model": "m",
            "id": f"p{i}",
            "ts": 1_700_000_000 + i,
            "features": {"a": float(rng.normal())},
            "prediction": float(rng.random()),
        }
        for i in range(3000)
    ]
    # a pair while the reference is collected (raw decoding), a pair after the schema
    # is known (typed decoding)
    return _stream(events[:10] + FRAGMENTS + events[10:2500] + FRAGMENTS_LATER + events[2500:])


def _check_fragments(out) -> None:
    assert out.code == 0
    assert out.dead_letters == sorted((f.decode(), "invalid_json") for f in FRAGMENTS + FRAGMENTS_LATER)
    assert out.versions[("m", "default")][0] == 3000  # no fabricated event


def test_item3_fragments_that_merge_in_a_batch_are_two_dead_letters_in_a_replay(tmp_path):
    _check_fragments(replay_stream(_fragment_stream(), tmp_path, config={"defaults": {"reference": {"size": 1000}}}))


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_item3_fragments_that_merge_in_a_batch_are_two_dead_letters_through_kafka(broker, tmp_path):
    stream = _fragment_stream()
    # what the dead-letter reader waits for (then it reads on a little, to see any extra)
    stream.invalid = [Invalid("predictions", b"m", f, "invalid_json", "fragment") for f in FRAGMENTS + FRAGMENTS_LATER]
    _check_fragments(run_kafka(broker, _topics(broker), stream, tmp_path, defaults={"reference": {"size": 1000}}))


# ---- 4. idempotency keys ---------------------------------------------------------------------------


class _Run:
    """The Service (with a webhook target) in a thread, until :meth:`stop`."""

    def __init__(self, settings):
        self.service = Service(settings)
        self.stop_event = threading.Event()
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(self.service.run(self.stop_event)), daemon=True)
        self.thread.start()

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if not self.thread.is_alive():
                raise AssertionError(f"the service exited while waiting for {what}")
            time.sleep(0.1)

    def stop(self) -> int:
        self.stop_event.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.codes[0]


def _produce(broker, topic: str, events: list[dict]) -> None:
    produce_stream(broker, {"predictions": topic, "feedback": topic}, _stream(events))


@pytest.mark.kafka
@pytest.mark.timeout(600)
def test_item4_trigger_keys_differ_after_a_wiped_state_and_repeat_when_re_emitted(broker, tmp_path):
    """Run 1 triggers a retrain on a shift at its event 2,000. The state dir is wiped
    (lost checkpoint and outbox) and run 2, same group, continues on new events whose
    shift is again at *its* event 2,000: the same model, action and indices, but another
    trigger, which a receiver that deduplicates by key (as the README advises) must
    accept. Run 3, a fresh group from the start, re-emits run 1's trigger: same key."""
    topics = _topics(broker)
    part1 = prediction_events(4000, model="fraud", seed=41, shift_at=2000, shift=2.0)
    part2 = prediction_events(4000, model="fraud", seed=42, shift_at=2000, shift=2.0, start=4000, id_prefix="q")
    state = tmp_path / "state"

    def settings(group: str, state_dir: Path, changelog: str | None = None):
        return load_settings(
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": group,
                "predictions_topic": topics["predictions"],
                "feedback_topic": topics["feedback"],
                "dead_letter_topic": topics["dead_letter"],
                "session_timeout_ms": QUICK_SESSION_MS,
                "poll_timeout_ms": 200,
                "changelog": {"topic": changelog},
            },
            defaults={"reference": {"size": 1000}, "window": {"size": 1000}},
            webhooks={
                "targets": [{"name": "ci", "url": receiver.url, "timeout_seconds": 2.0}],
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.5,
            },
            prometheus={"enabled": False},
            state_dir=state_dir,
            checkpoint_interval_seconds=0,
        )

    with WebhookReceiver() as receiver:
        _produce(broker, topics["predictions"], part1)
        run = _Run(settings("g-trust", state))
        run.wait(lambda: run.service.stats.records >= 4000 and len(receiver.requests) >= 1, 120, "run 1's trigger")
        assert run.stop() == 0
        first = receiver.requests[0]
        assert first.json()["action"] == "retrain" and first.json()["first_index"] <= 2000

        # All state lost: the checkpoint and outbox (the state dir) and the changelog
        # (run 2 reads another, empty one): the indices start over at 0.
        shutil.rmtree(state)
        _produce(broker, topics["predictions"], part2)
        seen = len(receiver.requests)
        run = _Run(settings("g-trust", state, changelog=f"lost-{topics['predictions']}"))
        run.wait(lambda: run.service.stats.records >= 4000 and len(receiver.requests) > seen, 120, "run 2's trigger")
        assert run.stop() == 0
        second = receiver.requests[seen]
        assert second.json()["action"] == "retrain"
        assert second.idempotency_key != first.idempotency_key
        assert not second.duplicate, "a new trigger was dropped as a repeat of an old one"

        seen = len(receiver.requests)
        run = _Run(settings("g-trust-again", tmp_path / "state-again"))  # the same source, re-read
        run.wait(lambda: run.service.stats.records >= 8000 and len(receiver.requests) > seen, 120, "run 3's trigger")
        assert run.stop() == 0
        third = receiver.requests[seen]
        assert third.idempotency_key == first.idempotency_key
        assert third.duplicate
        keys = {r.idempotency_key for r in receiver.requests}
    assert keys == {first.idempotency_key, second.idempotency_key}


# ---- 5. shadow versions on the same ids -------------------------------------------------------------


@pytest.mark.parametrize("labels", ["after", "before", "between"])
def test_item5_shadow_versions_scoring_the_same_ids_both_get_every_label(tmp_path, labels):
    """v2 scores every request v1 scored, half a second later (or, ``between``, a
    minute later: a shadow scoring asynchronously, its labels coming in between). Small
    batches (100 lines, as a Kafka poll may bring) put the versions' predictions and
    the label in different batches, which must not matter."""
    v1 = prediction_events(3000, model="fraud", version="v1", seed=51)
    lag = 60.0 if labels == "between" else 0.5
    v2 = [dict(e, version="v2", ts=e["ts"] + lag, prediction=min(1.0, e["prediction"] * 1.01)) for e in v1]
    fb = feedback_for(v1, seed=52, delay={"after": 90.0, "before": -30.0, "between": 30.0}[labels])
    preds = sorted(v1 + v2, key=lambda e: e["ts"])
    out = replay_stream(_stream(preds, fb), tmp_path, extra_args=("--batch-size", "100"))
    assert out.code == 0 and out.dead_letters == []
    assert out.versions[("fraud", "v1")] == (3000, 3000)
    assert out.versions[("fraud", "v2")] == (3000, 3000)
    for version in ("v1", "v2"):
        assert (
            _metric(out.engine, "driftline_model_labelled_events_total", {"model": "fraud", "version": version}) == 3000
        )


# ---- 6. a changed reference is applied on restart -----------------------------------------------------


@pytest.mark.kafka
@pytest.mark.timeout(400)
def test_item6_a_changed_reference_file_is_applied_on_restart(broker, tmp_path, caplog):
    topics = _topics(broker)
    ref = tmp_path / "reference.jsonl"
    ref.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in prediction_events(2000, model="fraud", seed=61)))
    settings = load_settings(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": "g-ref",
            "predictions_topic": topics["predictions"],
            "feedback_topic": topics["feedback"],
            "dead_letter_topic": topics["dead_letter"],
            "session_timeout_ms": QUICK_SESSION_MS,
            "poll_timeout_ms": 200,
        },
        defaults={"reference": {"source": "file", "path": str(ref), "size": 2000}},
        prometheus={"enabled": False},
        state_dir=tmp_path / "state",
        alarms_jsonl=tmp_path / "alarms.jsonl",
        checkpoint_interval_seconds=0,
    )
    live = prediction_events(4000, model="fraud", seed=62, id_prefix="live")  # like the first reference
    _produce(broker, topics["predictions"], live[:2000])
    run = _Run(settings)
    run.wait(lambda: run.service.stats.records >= 2000, 120, "the first half")
    assert run.stop() == 0
    assert read_alarms(tmp_path / "alarms.jsonl") == []

    # the new reference: x0 three standard deviations higher, so the live stream drifts from it
    ref.write_bytes(
        b"".join(
            orjson.dumps(e) + b"\n" for e in prediction_events(2000, model="fraud", seed=63, shift_at=0, shift=3.0)
        )
    )
    _produce(broker, topics["predictions"], live[2000:])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run = _Run(settings)
        run.wait(lambda: run.service.stats.records >= 2000, 120, "the second half")
        assert run.stop() == 0
    alarms = read_alarms(tmp_path / "alarms.jsonl")
    drift = [(a["feature"], a["first_index"]) for a in alarms if a["kind"] == "feature_drift"]
    assert ("x0", 2000) in drift, alarms
    assert any(
        "reference" in r.getMessage() and "fraud" in r.getMessage()
        for r in caplog.records
        if r.name.startswith("driftline.monitor") and not r.getMessage().startswith("restored checkpoint")
    ), [r.getMessage() for r in caplog.records]


# ---- 7. bounded models ------------------------------------------------------------------------------


def test_item7_model_names_are_bounded_and_the_rest_dead_lettered(tmp_path):
    rng = np.random.default_rng(71)
    names = [f"m-{uuid.UUID(int=int(rng.integers(2**62)) << 64 | int(rng.integers(2**62))).hex}" for _ in range(2000)]
    preds, fb = [], []
    for i, name in enumerate(names):
        preds.append(
            {"model": name, "id": f"p{i}", "ts": 1_700_000_000 + i, "features": {"a": float(i % 10)}, "prediction": 0.5}
        )
        fb.append({"model": name, "id": f"p{i}", "ts": 1_700_000_000 + i + 0.5, "label": 1})
    # a model tracked from the start goes on being monitored after the flood
    tail = [
        {"model": names[0], "id": f"late{i}", "ts": 1_700_010_000 + i, "features": {"a": 1.0}, "prediction": 0.5}
        for i in range(50)
    ]
    out = replay_stream(_stream(preds + tail, fb), tmp_path)
    assert out.code == 0
    assert len(out.models) == 100  # max_models' default
    assert out.models == set(names[:100])
    reasons = [r for _, r in out.dead_letters]
    assert reasons == ["model_limit"] * (2 * 1900)
    assert out.versions[(names[0], "default")][0] == 51

    out = replay_stream(_stream(preds, fb), tmp_path / "ten", config={"max_models": 10})
    assert len(out.models) == 10 and len(out.dead_letters) == 2 * 1990


# ---- 8. multi-class metrics ---------------------------------------------------------------------------


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    ranks = rankdata(score)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_item8_multiclass_macro_micro_and_one_vs_rest_metrics(tmp_path):
    model = ModelSpec("animals", (FeatureSpec("w", "normal"),), "multiclass", n_ids=6000, n_classes=4, scores=True)
    stream = expand(StreamSpec((model,), seed=81))
    out = replay_stream(stream, tmp_path)
    assert out.code == 0
    # the last full performance window: labels 5,000..5,999 in the order they arrived
    preds = {e["id"]: e for e in map(orjson.loads, (v for _, v in stream.predictions))}
    window = [orjson.loads(v) for _, v in stream.feedback][5000:6000]
    y = np.array([f["label"] for f in window])
    p = np.array([preds[f["id"]]["prediction"] for f in window])
    classes = sorted(set(y) | set(p))
    f1s, precisions, recalls, aucs = [], [], [], []
    for c in classes:
        tp = np.sum((p == c) & (y == c))
        fp, fn = np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        precisions.append(tp / (tp + fp))
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
        aucs.append(_auc(y == c, np.array([preds[f["id"]]["scores"][c] for f in window])))
    expected = {
        "precision_macro": np.mean(precisions),
        "recall_macro": np.mean(recalls),
        "f1_macro": np.mean(f1s),
        "precision_micro": np.mean(p == y),
        "recall_micro": np.mean(p == y),
        "f1_micro": np.mean(p == y),
        "roc_auc_ovr": np.mean(aucs),
    }
    for metric, value in expected.items():
        got = _metric(out.engine, "driftline_performance", {"model": "animals", "version": "v1", "metric": metric})
        assert got == pytest.approx(value, abs=1e-9), metric
    # per-class recall, one series per class (a bounded number of the most frequent)
    for c, r in zip(classes, recalls):
        got = _metric(out.engine, "driftline_class_recall", {"model": "animals", "version": "v1", "class": c})
        assert got == pytest.approx(r, abs=1e-9), c


# ---- 9. a dead-lettered prediction leaves no trace --------------------------------------------------------


@pytest.mark.parametrize("where", ["after_reference", "in_reference"])
def test_item9_a_dead_lettered_prediction_does_not_move_a_concept_drift_alarm(tmp_path, where):
    """The issue's case: one ``"x0": "B"`` (x0 numeric) added to a clean stream, with
    its label, after the reference (or inside it): the dead letter takes no event index
    and joins no label, so every alarm keeps its indices (and its trigger key)."""
    events = prediction_events(12000, model="fraud", seed=91)
    fb = feedback_for(events, seed=92, flip_after=9000)
    clean = replay_stream(_stream(events, fb), tmp_path / "clean")
    concept = [a for a in clean.alarms if a["kind"] == "concept_drift"]
    assert concept and concept[0]["first_index"] >= 5000, clean.alarm_keys()

    at = 7000 if where == "after_reference" else 300
    bad = dict(events[at], id="bad", features=dict(events[at]["features"], x0="B"))
    preds = events[:at] + [bad] + events[at:]
    with_bad = sorted(fb + [{"model": "fraud", "id": "bad", "ts": bad["ts"] + 30, "label": 1}], key=lambda e: e["ts"])
    dirty = replay_stream(_stream(preds, with_bad), tmp_path / "dirty")
    assert dirty.alarms == clean.alarms  # the same indices, so the same trigger keys
    assert dirty.dead_letters == [(orjson.dumps(bad).decode(), "wrong_type")]
    assert dirty.versions == clean.versions == {("fraud", "v1"): (12000, 12000)}
