"""One model's state at a time: Engine.model_names / model_state / restore_model /
drop_model, the API that lets a model's state follow its partition to another engine."""

from __future__ import annotations

import orjson
import pytest

from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import load_settings
from driftline.monitor.decode import Record, decode_batch
from driftline.monitor.engine import STATE_FORMAT, Engine
from driftline.monitor.exceptions import CheckpointError
from tests.monitor.streams import feedback_for, prediction_events

SETTINGS = load_settings(
    defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}}
)
MODELS = ("fraud", "churn")


def _stream() -> list[tuple[str, Record]]:
    """Two models' predictions and feedback (labels 200 events late), interleaved, each
    record tagged with its model; both models drift (features, then concept)."""
    per_model = []
    for k, model in enumerate(MODELS):
        ev = prediction_events(9_000, model=model, seed=70 + k, shift_at=5_000 + 500 * k, shift=0.8)
        fb = feedback_for(ev, seed=80 + k, flip_after=6_500)
        out = []
        for i, e in enumerate(ev):
            out.append(("predictions", e))
            if i >= 200:
                out.append(("feedback", fb[i - 200]))
        out.extend(("feedback", f) for f in fb[len(ev) - 200 :])
        per_model.append(out)
    merged = [pair for pairs in zip(*per_model, strict=True) for pair in pairs]
    offsets = {"predictions": 0, "feedback": 0}
    tagged = []
    for topic, e in merged:
        tagged.append((e["model"], Record(topic, 0, offsets[topic], -1, None, orjson.dumps(e))))
        offsets[topic] += 1
    return tagged


STREAM = _stream()


def run(engine, recs, batch=1000):
    alarms = []
    for i in range(0, len(recs), batch):
        alarms += engine.process(decode_batch(recs[i : i + batch], "predictions", "feedback")).alarms
    return alarms


def _wire(state):
    """Through JSON, as a changelog or checkpoint carries it."""
    return decode_state(orjson.loads(orjson.dumps(encode_state(state))))


def _key(alarms):
    return [(a, a.origin) for a in alarms]  # origin is not part of Alarm equality: compare it too


@pytest.mark.parametrize("cut", [1_500, 13_000, 26_000])
def test_a_model_restored_on_a_fresh_engine_continues_exactly(cut):
    """Each model moves alone to a fresh engine (its partition moved) at a point of the
    stream: inside the reference window (cut 1500), after it, and between the feature
    drift alarms and the concept-drift and performance ones (cut 26000); the new
    engine, given the rest of that model's records only, raises the same alarms as one
    engine over the whole stream."""
    recs = [r for _, r in STREAM]
    whole = run(Engine(SETTINGS), recs)
    assert {a.model for a in whole} == set(MODELS) and {a.kind for a in whole} >= {"feature_drift", "concept_drift"}
    first = Engine(SETTINGS)
    head = run(first, recs[:cut])
    assert first.model_names() == list(MODELS)
    if cut == 26_000:  # evidence on both sides of the move
        assert {a.kind for a in head} == {"feature_drift", "prediction_drift"}
    for model in MODELS:
        fresh = Engine(SETTINGS)
        fresh.restore_model(model, _wire(first.model_state(model)))
        assert fresh.model_names() == [model]
        tail = run(fresh, [r for m, r in STREAM[cut:] if m == model])
        assert _key([a for a in head + tail if a.model == model]) == _key([a for a in whole if a.model == model])


def test_restoring_every_model_equals_loading_the_checkpoint():
    recs = [r for _, r in STREAM]
    first = Engine(SETTINGS)
    run(first, recs[:12_000])
    by_model, whole_state = Engine(SETTINGS), Engine(SETTINGS)
    for model in first.model_names():
        by_model.restore_model(model, _wire(first.model_state(model)))
    whole_state.load_state(_wire(first.state_dict()))
    assert _key(run(by_model, recs[12_000:])) == _key(run(whole_state, recs[12_000:]))
    assert by_model.snapshot() == whole_state.snapshot()


def test_model_state_is_the_checkpoints_part_with_its_format_and_name():
    engine = Engine(SETTINGS)
    run(engine, [r for _, r in STREAM[:6_000]])
    state = engine.model_state("churn")
    assert state["format"] == STATE_FORMAT and state["model"] == "churn"
    assert state["reference_fingerprint"] == "stream:2000"
    full = engine.state_dict()["models"]["churn"]
    assert orjson.dumps(encode_state({k: v for k, v in state.items() if k not in ("format", "model")})) == orjson.dumps(
        encode_state(full)
    )
    with pytest.raises(KeyError):
        engine.model_state("nobody")


def test_a_dropped_model_leaves_the_snapshot_and_comes_back_restored():
    engine = Engine(SETTINGS)
    run(engine, [r for _, r in STREAM[:12_000]])
    before = engine.snapshot()
    assert {s.model for s in before} == set(MODELS)
    saved = _wire(engine.model_state("fraud"))
    engine.drop_model("fraud")
    assert engine.model_names() == ["churn"]
    assert {s.model for s in engine.snapshot()} == {"churn"}
    assert list(engine.state_dict()["models"]) == ["churn"]
    engine.drop_model("fraud")  # dropping what is not held does nothing
    engine.restore_model("fraud", saved)
    assert sorted(engine.snapshot(), key=repr) == sorted(before, key=repr)


def test_a_dropped_model_starts_afresh_at_its_next_event():
    engine = Engine(SETTINGS)
    run(engine, [r for _, r in STREAM[:12_000]])
    engine.drop_model("fraud")
    run(engine, [r for m, r in STREAM[12_000:12_100] if m == "fraud"])
    (snap,) = [s for s in engine.snapshot() if s.model == "fraud"]
    assert not snap.reference_ready  # collecting a new reference from the stream


def test_a_bad_model_state_is_refused_with_what_to_do_and_changes_nothing():
    engine = Engine(SETTINGS)
    run(engine, [r for _, r in STREAM[:6_000]])
    good = _wire(engine.model_state("fraud"))
    before = engine.snapshot()
    with pytest.raises(CheckpointError, match="format 1.*move the checkpoint away"):
        engine.restore_model("fraud", {k: v for k, v in good.items() if k != "format"})
    with pytest.raises(CheckpointError, match="belongs to model 'fraud'"):
        engine.restore_model("churn", good)
    broken = {k: v for k, v in good.items() if k != "versions"}
    with pytest.raises(CheckpointError, match="incomplete or malformed.*versions"):
        engine.restore_model("fraud", broken)
    assert engine.snapshot() == before


def test_a_restored_model_whose_reference_changed_takes_the_new_one(caplog):
    engine = Engine(SETTINGS)
    run(engine, [r for _, r in STREAM[:12_000]])
    state = _wire(engine.model_state("fraud"))
    smaller = Engine(
        load_settings(defaults={"reference": {"size": 1500}, "window": {"size": 1000}, "performance": {"window": 500}})
    )
    with caplog.at_level("INFO", logger="driftline.monitor.engine"):
        smaller.restore_model("fraud", state)
    mm = smaller.models["fraud"]
    assert "the reference changed since the checkpoint" in caplog.text
    assert mm.reference_fingerprint == "stream:1500" and not mm.reference_ready
    assert mm.n_events == engine.models["fraud"].n_events  # indices go on
