"""Label-free performance estimation inside the engine (monitor/estimation.py): on by
default, calibrated on the labelled reference once its labels have joined, alarming
before any label of the shifted traffic arrives, and checkpointed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from tests.monitor.streams import records

SETTINGS = load_settings(
    defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}}
)
SHIFT = 6000
T0 = 1_700_000_000.0


def binary_events(
    n: int, *, seed: int, start: int = 0, scale: float = 1.0, mean: float = 0.0, model: str = "fraud"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A calibrated binary scorer: score = sigmoid(3 x0), label ~ Bernoulli(score);
    ``scale``/``mean`` move x0 (a covariate shift: P(label | x) does not change)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    x[:, 0] = mean + scale * x[:, 0]
    score = 1 / (1 + np.exp(-3 * x[:, 0]))
    label = (rng.random(n) < score).astype(int)
    preds, fb = [], []
    for i in range(n):
        pid = f"p-{start + i}"
        preds.append(
            {
                "model": model,
                "version": "v1",
                "id": pid,
                "ts": T0 + start + i,
                "features": {"x0": float(x[i, 0]), "x1": float(x[i, 1])},
                "prediction": float(score[i]),
            }
        )
        fb.append({"model": model, "id": pid, "ts": T0 + start + i + 0.5, "label": int(label[i])})
    return preds, fb


def multiclass_events(
    n: int,
    *,
    seed: int,
    start: int = 0,
    scale: float = 1.0,
    with_scores: bool = True,
    versions: tuple[str, ...] = ("v1",),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A calibrated 3-class model (softmax of 2 x, classes a/b/c), prediction = argmax."""
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=(n, 3))
    logits = 2.0 * x
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    classes = np.array(["a", "b", "c"])
    label = classes[(rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1).clip(0, 2)]
    pred = classes[p.argmax(axis=1)]
    preds, fb = [], []
    for i in range(n):
        pid = f"m-{start + i}"
        e: dict[str, Any] = {
            "model": "iris",
            "version": versions[i % len(versions)],
            "id": pid,
            "ts": T0 + start + i,
            "features": {f"x{j}": float(x[i, j]) for j in range(3)},
            "prediction": str(pred[i]),
        }
        if with_scores:
            e["scores"] = {str(c): float(p[i, k]) for k, c in enumerate(classes)}
        preds.append(e)
        fb.append({"model": "iris", "id": pid, "ts": T0 + start + i + 0.5, "label": str(label[i])})
    return preds, fb


def regression_events(
    n: int, *, seed: int, start: int = 0, mean: float = 0.0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A regression model whose error grows with |x| (noise 0.2 + 0.5 |x|)."""
    rng = np.random.default_rng(seed)
    x = mean + rng.normal(size=n)
    pred = 5 + 2 * x
    target = pred + rng.normal(size=n) * (0.2 + 0.5 * np.abs(x))
    preds, fb = [], []
    for i in range(n):
        pid = f"r-{start + i}"
        preds.append(
            {
                "model": "price",
                "version": "v1",
                "id": pid,
                "ts": T0 + start + i,
                "features": {"x": float(x[i])},
                "prediction": float(pred[i]),
            }
        )
        fb.append({"model": "price", "id": pid, "ts": T0 + start + i + 0.5, "label": float(target[i])})
    return preds, fb


def stream(preds: list[dict[str, Any]], fb: list[dict[str, Any]], lag: int = 300) -> list[Any]:
    """Predictions in order, each label ``lag`` events after its prediction (the labels
    given may cover only the first predictions: the rest never get one)."""
    p = list(records(preds, "predictions"))
    f = list(records(fb, "feedback"))
    out: list[Any] = []
    for i, r in enumerate(p):
        out.append(r)
        if lag <= i < len(f) + lag:
            out.append(f[i - lag])
    out.extend(f[max(len(p) - lag, 0) :])
    return out


def run(engine: Engine, recs: list[Any], batch: int = 1000) -> list[Any]:
    alarms = []
    for i in range(0, len(recs), batch):
        out = engine.process(decode_batch(recs[i : i + batch], "predictions", "feedback"))
        alarms += out.alarms
    return alarms


def estimated(alarms: list[Any]) -> list[Any]:
    return [a for a in alarms if a.kind == "performance_estimated"]


def shifted_binary(scale: float = 0.15, mean: float = 0.0, n_after: int = 4000):
    """Stable traffic labelled up to SHIFT, then shifted traffic whose labels never come."""
    before, fb = binary_events(SHIFT, seed=1)
    after, _ = binary_events(n_after, seed=2, start=SHIFT, scale=scale, mean=mean)
    return stream(before + after, fb)


def test_harmful_shift_alarms_before_any_label_of_the_shifted_traffic():
    engine = Engine(SETTINGS)
    alarms = run(engine, shifted_binary())
    found = estimated(alarms)
    assert len(found) == 1, found  # edge-triggered: one alarm for the whole episode
    a = found[0]
    assert (a.detector, a.feature, a.action, a.version) == ("cbpe", "accuracy", "retrain", "v1")
    assert SHIFT <= a.first_index and a.last_index - a.first_index == 499
    assert a.last_index < SHIFT + 1000  # the first or second window after the shift
    assert a.statistic < a.threshold < 0.8
    # no labelled check could see it: no label of the shifted traffic ever arrived
    assert not [x for x in alarms if x.kind in ("performance", "concept_drift")]
    snap = engine.snapshot()[0]
    assert snap.estimation is not None and snap.estimation.active
    value, low, high = snap.estimation.estimated["accuracy"]
    assert low <= value <= high < a.threshold + 0.05


def test_benign_shift_and_stable_traffic_raise_no_estimated_alarm():
    assert estimated(run(Engine(SETTINGS), shifted_binary(scale=2.0))) == []  # more confident: accuracy rises
    assert estimated(run(Engine(SETTINGS), shifted_binary(scale=1.0, mean=0.5))) == []
    preds, fb = binary_events(40_000, seed=5)
    engine = Engine(SETTINGS)
    alarms = run(engine, stream(preds, fb), batch=4000)
    assert alarms == []


def test_realized_metric_and_estimation_error_appear_once_labels_arrive():
    preds, fb = binary_events(12_000, seed=7)
    engine = Engine(SETTINGS)
    run(engine, stream(preds[:2400], fb[:900]))  # 900 labelled reference events: not enough to calibrate
    est = engine.snapshot()[0].estimation
    assert est is not None and not est.active and est.estimated == est.realized == {}  # waiting: gauge 0
    run(engine, stream(preds[2400:], fb[900:]))
    est = engine.snapshot()[0].estimation
    assert est is not None
    assert set(est.estimated) == {"accuracy", "precision", "recall", "f1", "roc_auc"}
    assert set(est.realized) == set(est.error) == set(est.estimated)
    assert 0.7 < est.realized["accuracy"] < 0.9
    assert abs(est.error["accuracy"]) < 0.06  # one window of 500: sampling noise only


def test_multiclass_with_scores_alarms_on_a_harmful_shift():
    before, fb = multiclass_events(SHIFT, seed=11)
    after, _ = multiclass_events(4000, seed=12, start=SHIFT, scale=0.2)
    engine = Engine(SETTINGS)
    alarms = run(engine, stream(before + after, fb))
    found = estimated(alarms)
    assert [(a.detector, a.feature) for a in found] == [("cbpe", "accuracy")]
    assert SHIFT <= found[0].first_index and found[0].last_index < SHIFT + 1000
    est = engine.snapshot()[0].estimation
    assert est is not None and est.active and "accuracy" in est.realized


def test_each_version_of_a_mixed_batch_is_calibrated_and_estimated_on_its_own():
    before, fb = multiclass_events(2 * SHIFT, seed=14, versions=("v1", "v2"))
    after, _ = multiclass_events(8000, seed=15, start=2 * SHIFT, scale=0.2, versions=("v1", "v2"))
    engine = Engine(SETTINGS)
    found = estimated(run(engine, stream(before + after, fb)))
    assert sorted(a.version for a in found) == ["v1", "v2"]
    stable = engine.models["iris"].stable_version()
    assert {a.version: a.action for a in found} == {v: "retrain" if v == stable else "none" for v in ("v1", "v2")}
    assert all(2 * SHIFT <= a.last_index < 2 * SHIFT + 2000 for a in found), found  # a window holding the shift
    for snap in engine.snapshot():
        assert snap.estimation is not None and snap.estimation.active and "accuracy" in snap.estimation.realized


def test_multiclass_stable_stream_raises_no_estimated_alarm():
    preds, fb = multiclass_events(16_000, seed=13)
    assert estimated(run(Engine(SETTINGS), stream(preds, fb))) == []


def test_classifier_without_scores_gets_no_estimation():
    before, fb = multiclass_events(SHIFT, seed=11, with_scores=False)
    after, _ = multiclass_events(4000, seed=12, start=SHIFT, scale=0.2, with_scores=False)
    engine = Engine(SETTINGS)
    assert estimated(run(engine, stream(before + after, fb))) == []
    assert engine.snapshot()[0].estimation is None


def test_estimation_can_be_switched_off():
    off = load_settings(
        defaults={
            "reference": {"size": 2000},
            "window": {"size": 1000},
            "performance": {"window": 500, "estimation": {"enabled": False}},
        }
    )
    engine = Engine(off)
    assert estimated(run(engine, shifted_binary())) == []
    assert engine.snapshot()[0].estimation is None


def test_a_single_class_reference_turns_estimation_off_for_the_version(caplog):
    preds, fb = binary_events(8000, seed=3)
    for f in fb:
        f["label"] = 0
    engine = Engine(SETTINGS)
    with caplog.at_level("WARNING", logger="driftline.monitor.estimation"):
        run(engine, stream(preds, fb))
    est = engine.snapshot()[0].estimation
    assert est is not None and not est.active and est.estimated == {}
    assert len([r for r in caplog.records if "performance estimation is off" in r.getMessage()]) == 1


def test_regression_estimates_the_error_from_the_predictions():
    before, fb = regression_events(SHIFT, seed=21)
    after, _ = regression_events(4000, seed=22, start=SHIFT, mean=2.5)
    engine = Engine(SETTINGS)
    alarms = run(engine, stream(before + after, fb))
    found = estimated(alarms)
    assert [(a.detector, a.feature) for a in found] == [("error_bins", "mae")]
    assert found[0].statistic > found[0].threshold and SHIFT <= found[0].first_index < SHIFT + 1000
    stable, fb2 = regression_events(16_000, seed=23)
    engine = Engine(SETTINGS)
    assert estimated(run(engine, stream(stable, fb2))) == []
    est = engine.snapshot()[0].estimation
    assert est is not None and set(est.realized) == {"mae", "rmse"} and abs(est.error["mae"]) < 0.15


@pytest.mark.parametrize("cut", [2500, 4250, 12_130])  # before the calibration, in a window, in the first shifted one
def test_checkpoint_round_trip_mid_stream_gives_the_same_alarms(cut):
    recs = shifted_binary()
    whole = run(Engine(SETTINGS), recs)
    first = Engine(SETTINGS)
    part = run(first, recs[:cut])
    state = decode_state(encode_state(first.state_dict()))
    second = Engine(SETTINGS)
    second.load_state(state)
    part += run(second, recs[cut:])
    assert estimated(whole) and part == whole
    assert second.snapshot()[0].estimation == _snapshot_after(recs)


def _snapshot_after(recs: list[Any]) -> Any:
    engine = Engine(SETTINGS)
    run(engine, recs)
    return engine.snapshot()[0].estimation


def test_the_collector_exposes_estimate_band_realized_error_and_the_gauge():
    from prometheus_client import CollectorRegistry

    from driftline.sinks.prometheus import EngineCollector

    preds, fb = binary_events(8000, seed=9)
    engine = Engine(SETTINGS)
    run(engine, stream(preds, fb))
    no_scores, fb2 = multiclass_events(4000, seed=3, with_scores=False)
    run(engine, stream(no_scores, fb2))
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.snapshot))
    ids = {"model": "fraud", "version": "v1"}
    acc = {**ids, "metric": "accuracy"}
    assert registry.get_sample_value("driftline_performance_estimation_active", ids) == 1.0
    low, value, high = (
        registry.get_sample_value(f"driftline_performance_estimated{s}", acc) for s in ("_low", "", "_high")
    )
    assert low is not None and value is not None and high is not None and low < value < high
    realized = registry.get_sample_value("driftline_performance_realized", acc)
    error = registry.get_sample_value("driftline_performance_estimation_error", acc)
    assert realized is not None and error is not None and abs(error) < 0.06
    metrics = {
        s.labels["metric"] for m in registry.collect() if m.name == "driftline_performance_estimated" for s in m.samples
    }
    assert metrics == {"accuracy", "precision", "recall", "f1", "roc_auc"}  # a fixed set: bounded cardinality
    assert (
        registry.get_sample_value("driftline_performance_estimation_active", {"model": "iris", "version": "v1"}) is None
    )  # no scores: no series


# ---- end to end: the service over the embedded broker ------------------------------------------


def _produce(broker: Any, topic: str, events: list[dict[str, Any]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=20)
    try:
        for e in events:
            producer.send(topic, key=e["model"].encode(), value=orjson.dumps(e))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=10)


def _wait(predicate: Callable[[], bool], thread: threading.Thread, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert thread.is_alive(), f"the service exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.2)


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_end_to_end_the_estimated_alarm_triggers_a_retrain_before_any_label_of_the_shift(broker, topics, tmp_path):
    """The service on the embedded broker: the stable traffic and its labels, then (once
    the version is calibrated) shifted traffic whose labels never come. The
    ``performance_estimated`` alarm reaches the alarms file and, as the only kind the
    trigger policy counts here, a retrain webhook."""
    from driftline.app import Service
    from tests.support.receiver import WebhookReceiver
    from tests.support.runs import read_alarms

    before, fb = binary_events(SHIFT, seed=1)
    after, _ = binary_events(4000, seed=2, start=SHIFT, scale=0.15)
    alarms_file = tmp_path / "alarms.jsonl"
    with WebhookReceiver() as receiver:
        settings = load_settings(
            kafka={
                "bootstrap_servers": broker.bootstrap_servers,
                "group_id": f"g-{topics['predictions']}",
                "predictions_topic": topics["predictions"],
                "feedback_topic": topics["feedback"],
                "dead_letter_topic": topics["dead_letter"],
                "poll_timeout_ms": 200,
            },
            defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}},
            webhooks={
                "targets": [{"name": "ci", "url": receiver.url, "timeout_seconds": 2.0}],
                "policy": {"kinds": ["performance_estimated"]},
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.5,
            },
            prometheus={"enabled": False},
            state_dir=tmp_path / "state",
            alarms_jsonl=alarms_file,
            checkpoint_interval_seconds=0,
        )
        service = Service(settings)
        stop = threading.Event()
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(service.run(stop)), daemon=True)
        thread.start()
        try:
            _produce(broker, topics["predictions"], before)
            _produce(broker, topics["feedback"], fb)

            def calibrated() -> bool:
                snaps = [s for s in service.engine.snapshot() if s.estimation is not None]
                return bool(snaps) and snaps[0].estimation.active and snaps[0].labelled == SHIFT

            _wait(calibrated, thread, 300, "the calibration on the labelled reference")
            _produce(broker, topics["predictions"], after)

            def alarmed() -> bool:
                return any(a["kind"] == "performance_estimated" for a in read_alarms(alarms_file))

            _wait(alarmed, thread, 300, "the performance_estimated alarm")
            _wait(lambda: len(receiver.requests) >= 1, thread, 120, "the retrain webhook")
        finally:
            stop.set()
            thread.join(timeout=60)
        assert codes == [0]
    found = [a for a in read_alarms(alarms_file) if a["kind"] == "performance_estimated"]
    assert len(found) == 1
    assert (found[0]["detector"], found[0]["feature"], found[0]["action"]) == ("cbpe", "accuracy", "retrain")
    assert SHIFT <= found[0]["first_index"] and found[0]["last_index"] < SHIFT + 1000
    body = receiver.requests[0].json()
    assert body["action"] == "retrain" and body["model"] == "fraud"
