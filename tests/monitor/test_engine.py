"""The engine on generated streams with known changes (no broker: decoded batches)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from tests.monitor.streams import feedback_for, prediction_events, records

SETTINGS = load_settings(
    defaults={"reference": {"size": 2000}, "window": {"size": 1000}, "performance": {"window": 500}}
)


def run(engine, recs, batch):
    alarms, dead = [], []
    for i in range(0, len(recs), batch):
        out = engine.process(decode_batch(recs[i : i + batch], "predictions", "feedback"))
        alarms += out.alarms
        dead += out.dead_letters
    return alarms, dead


def interleave(preds, fb, lag=200):
    """Feedback ``lag`` events after its prediction, as a live stream would bring it."""
    p = list(records(preds, "predictions"))
    f = list(records(fb, "feedback"))
    out = []
    for i, r in enumerate(p):
        out.append(r)
        if i >= lag:
            out.append(f[i - lag])
    out.extend(f[len(p) - lag :])
    return out


def test_stable_stream_raises_no_alarm():
    ev = prediction_events(40_000, seed=3)
    alarms, dead = run(Engine(SETTINGS), interleave(ev, feedback_for(ev, seed=4)), 3000)
    assert alarms == [] and dead == []


def test_sudden_shift_is_found_in_the_first_window_after_it():
    ev = prediction_events(12_000, seed=5, shift_at=6_000, shift=0.5)
    alarms, _ = run(Engine(SETTINGS), list(records(ev, "predictions")), 2500)
    drift = [a for a in alarms if a.kind == "feature_drift"]
    assert [(a.feature, a.detector, a.first_index, a.last_index) for a in drift] == [("x0", "ks", 6000, 6999)]
    assert drift[0].p_value < 1e-4 and drift[0].action == "retrain"
    assert drift[0].ts == ev[6999]["ts"]


def test_alarms_do_not_depend_on_batch_cuts():
    ev = prediction_events(9_000, seed=6, shift_at=5_000, shift=0.7)
    fb = feedback_for(ev, seed=7, flip_after=6_000)
    recs = interleave(ev, fb)
    a1, _ = run(Engine(SETTINGS), recs, 10_000)
    a2, _ = run(Engine(SETTINGS), recs, 777)
    a3, _ = run(Engine(SETTINGS), recs, 1)
    # the same alarms; the order of emission follows arrival (labels come later)
    assert sorted(a1, key=repr) == sorted(a2, key=repr) == sorted(a3, key=repr)
    assert {a.kind for a in a1} >= {"feature_drift", "concept_drift"}


def test_checkpoint_round_trip_continues_exactly():
    ev = prediction_events(9_000, seed=8, shift_at=6_500, shift=0.7)
    fb = feedback_for(ev, seed=9, flip_after=7_000)
    recs = interleave(ev, fb)
    whole, _ = run(Engine(SETTINGS), recs, 1000)
    first = Engine(SETTINGS)
    head, _ = run(first, recs[:7_000], 1000)
    state = decode_state(orjson.loads(orjson.dumps(encode_state(first.state_dict()))))
    second = Engine(SETTINGS)
    second.load_state(state)
    tail, _ = run(second, recs[7_000:], 1000)
    assert head + tail == whole  # same cuts: same order too
    assert len(whole) >= 2


def test_wrong_type_row_is_dead_lettered_and_the_rest_processed():
    ev = prediction_events(3_000, seed=10)
    ev[2500]["features"]["x1"] = "not-a-number"
    ev[2600]["features"]["x2"] = {"nested": 1}
    ev[100]["features"]["x0"] = [1, 2]  # inside the reference
    engine = Engine(SETTINGS)
    _, dead = run(engine, list(records(ev, "predictions")), 1000)
    assert sorted(d.offset for d in dead) == [100, 2500, 2600]
    assert {d.reason for d in dead} == {"wrong_type"}
    snap = {s.version: s for s in engine.snapshot()}
    assert (
        snap["v1"].events == 2_997
    )  # every accepted prediction event, reference included; a dead letter leaves no trace


def test_unseen_categories_and_missing_values_raise_data_quality_alarms():
    ev = prediction_events(5_000, seed=11)
    for e in ev[3000:4000]:
        e["features"]["country"] = "XX"
    for e in ev[4000:5000:2]:
        e["features"]["x1"] = None
    alarms, _ = run(Engine(SETTINGS), list(records(ev, "predictions")), 1000)
    dq = {(a.detector, a.feature, a.first_index) for a in alarms if a.kind == "data_quality"}
    assert ("unseen_rate", "country", 3000) in dq
    assert ("missing_rate", "x1", 4000) in dq
    assert all(a.action == "none" for a in alarms if a.kind == "data_quality")


def test_worse_canary_raises_regression_with_rollback():
    rng = np.random.default_rng(12)
    stable = prediction_events(8_000, seed=13, version="v1")
    canary = prediction_events(3_000, seed=14, version="v2", id_prefix="c")
    for e in canary:
        e["latency_ms"] += 8.0  # ~12 ms -> ~20 ms
    events = stable[:2000] + [e for pair in zip(stable[2000:5000], canary) for e in pair] + stable[5000:]
    fb = []
    for e in events:
        wrong = rng.random() < (0.35 if e["version"] == "v2" else 0.10)
        truth = int(e["prediction"] >= 0.5)
        fb.append({"model": "fraud", "id": e["id"], "ts": e["ts"] + 1, "label": 1 - truth if wrong else truth})
    alarms, _ = run(Engine(SETTINGS), interleave(events, fb, lag=50), 1000)
    reg = [a for a in alarms if a.kind == "regression"]
    msprt = [a for a in reg if a.detector == "msprt"]
    assert len(msprt) == 1, "a version found worse is reported once"
    assert reg and reg[0].version == "v2" and reg[0].action == "rollback" and reg[0].detector == "msprt"
    assert reg[0].statistic > 0.1
    assert not [a for a in alarms if a.kind == "regression" and a.version == "v1"]
    latency = [a for a in alarms if a.kind == "regression" and a.detector == "latency"]
    assert len(latency) == 1 and latency[0].version == "v2" and latency[0].statistic > latency[0].threshold


def test_regression_task_performance_alarm():
    rng = np.random.default_rng(15)
    ev = prediction_events(6_000, seed=16)
    for e in ev:
        e["prediction"] = float(e["features"]["x0"] * 2)
    fb = []
    for i, e in enumerate(ev):
        noise = rng.normal(scale=0.1 if i < 4000 else 1.0)
        fb.append({"model": "fraud", "id": e["id"], "ts": e["ts"] + 1, "label": e["prediction"] + noise})
    alarms, _ = run(Engine(SETTINGS), interleave(ev, fb, lag=10), 1000)
    perf = [a for a in alarms if a.kind == "performance"]
    assert perf and perf[0].detector == "mae" and perf[0].first_index >= 4000


def test_state_does_not_grow_with_the_stream():
    engine = Engine(SETTINGS)
    sizes = []
    for k in range(4):
        ev = prediction_events(10_000, seed=20 + k, start=k * 10_000)
        fb = feedback_for(ev, seed=30 + k)
        run(engine, interleave(ev, fb), 5000)
        sizes.append(len(orjson.dumps(encode_state(engine.state_dict()))))
    assert max(sizes[1:]) <= sizes[1] * 1.05


def test_checkpoint_inside_the_reference_keeps_buffered_records():
    ev = prediction_events(4_000, seed=40, shift_at=3_000, shift=1.0)
    ev[500]["features"]["x1"] = [1]  # dead-lettered when the reference is built
    recs = list(records(ev, "predictions"))
    whole_alarms, whole_dead = run(Engine(SETTINGS), recs, 700)
    first = Engine(SETTINGS)
    a1, d1 = run(first, recs[:1400], 700)  # still collecting the reference
    assert d1 == [] and not first.models["fraud"].reference_ready
    second = Engine(SETTINGS)
    second.load_state(decode_state(orjson.loads(orjson.dumps(encode_state(first.state_dict())))))
    a2, d2 = run(second, recs[1400:], 700)
    assert a1 + a2 == whole_alarms and [d.offset for d in d2] == [d.offset for d in whole_dead] == [500]
    assert d2[0].value == recs[500].value


def test_gauges_show_ks_against_the_reference_with_the_bh_correction():
    """The statistics the engine exposes agree with scipy on the raw events: KS of the
    window against the reference, p-values corrected by Benjamini-Hochberg."""
    from scipy import stats

    ev = prediction_events(3_000, seed=60, shift_at=2_000, shift=0.15)
    engine = Engine(SETTINGS)
    run(engine, list(records(ev, "predictions")), 1000)
    (snap,) = engine.snapshot()
    got = {s.feature: s for s in snap.drift if s.detector == "ks"}
    x = np.array([[e["features"][f"x{j}"] for j in range(3)] for e in ev])
    raw = [stats.ks_2samp(x[2000:, j], x[:2000, j], method="asymp") for j in range(3)]
    country = np.array([e["features"]["country"] for e in ev])
    table = np.array(
        [
            [np.sum(country[:2000] == c) for c in ("DE", "FR", "US")],
            [np.sum(country[2000:] == c) for c in ("DE", "FR", "US")],
        ]
    )
    chi2_p = stats.chi2_contingency(table, correction=False).pvalue
    corrected = stats.false_discovery_control([r.pvalue for r in raw] + [chi2_p], method="bh")
    for j in range(3):
        assert got[f"x{j}"].statistic == pytest.approx(raw[j].statistic, abs=1e-12)
        assert got[f"x{j}"].p_value == pytest.approx(corrected[j], rel=1e-9)
    chi2 = next(s for s in snap.drift if s.detector == "chi2")
    assert chi2.p_value == pytest.approx(corrected[3], rel=1e-9)


# ---- one bad record changes nothing; state that is rebuilt never reuses a key ------------


def _offset_records(events, topic, start):
    """Records at Kafka offsets from ``start`` (as a consumer resuming there reads them)."""
    return [r._replace(offset=r.offset + start) for r in records(events, topic)]


def _triggers(alarms):
    from driftline.monitor.config import TriggerPolicySettings
    from driftline.sinks.policy import TriggerPolicy

    return TriggerPolicy(TriggerPolicySettings(cooldown_seconds=0)).observe(alarms)


def test_alarms_carry_the_origin_of_the_state_that_counted_them():
    ev = prediction_events(5_000, seed=21, shift_at=3_000, shift=1.0)
    alarms, _ = run(Engine(SETTINGS), _offset_records(ev, "predictions", 700), 1000)
    assert alarms and {a.origin for a in alarms} == {"predictions/0/700"}
    assert "origin" not in alarms[0].to_dict()  # not part of the alarm contract


def test_trigger_keys_repeat_for_a_replay_and_never_for_rebuilt_state():
    """The same events from the same position give the same keys (a crash, a replay);
    state rebuilt from a later position (a rebalance, a wiped checkpoint) counts its
    indices from another origin, so a trigger at the same indices gets another key."""
    ev = prediction_events(12_000, seed=22, shift_at=6_000, shift=1.0)
    first = _triggers(run(Engine(SETTINGS), _offset_records(ev, "predictions", 0), 2000)[0])
    again = _triggers(run(Engine(SETTINGS), _offset_records(ev, "predictions", 0), 3000)[0])
    assert first and [t.idempotency_key for t in first] == [t.idempotency_key for t in again]
    # the same content read from a later position: same indices, another origin
    later = _triggers(run(Engine(SETTINGS), _offset_records(ev, "predictions", 50_000), 2000)[0])
    assert [(t.first_index, t.last_index) for t in later] == [(t.first_index, t.last_index) for t in first]
    assert not {t.idempotency_key for t in later} & {t.idempotency_key for t in first}


def test_a_dead_lettered_event_leaves_no_trace_in_the_indices():
    ev = prediction_events(12_000, seed=23, shift_at=7_000, shift=1.0)
    fb = feedback_for(ev, seed=24, flip_after=9_000)
    clean, _ = run(Engine(SETTINGS), interleave(ev, fb), 2500)
    bad = {
        "model": ev[0]["model"],
        "id": "intruder",
        "ts": ev[100]["ts"],
        "version": "v1",
        "features": {**ev[100]["features"], "x0": "B"},
        "prediction": 0.5,
    }
    dirty, dead = run(Engine(SETTINGS), interleave(ev[:100] + [bad] + ev[100:], fb), 2500)
    assert [d.reason for d in dead] == ["wrong_type"]
    assert [(a.kind, a.feature, a.first_index, a.last_index) for a in dirty] == [
        (a.kind, a.feature, a.first_index, a.last_index) for a in clean
    ]
    assert any(a.kind in ("concept_drift", "performance") for a in clean)


def test_one_bad_record_in_the_reference_window_is_dead_lettered_not_learned():
    ev = prediction_events(8_000, seed=25)
    ev[300]["features"]["x0"] = "abc"
    engine = Engine(SETTINGS)
    alarms, dead = run(engine, list(records(ev, "predictions")), 1000)
    assert [(d.offset, d.reason) for d in dead] == [(300, "wrong_type")]
    assert alarms == []
    assert "x0" in engine.models[ev[0]["model"]].schema.numeric


@pytest.mark.parametrize(
    "features",
    [
        lambda rng: {"a": float(rng.normal()), "b": float(rng.normal())},  # all numeric
        lambda rng: {"a": float(rng.normal()), "flag": bool(rng.random() < 0.3)},  # numeric and boolean
        lambda rng: {"c": str(rng.choice(["x", "y", "z"])), "d": str(rng.choice(["p", "q"]))},  # all categorical
    ],
    ids=["numeric", "numeric+boolean", "categorical"],
)
@pytest.mark.parametrize("prediction", ["score", "class", "none"])
def test_every_model_shape_runs(features, prediction):
    rng = np.random.default_rng(26)
    ev = []
    for i in range(6_000):
        e = {"model": "m", "id": i, "ts": 1.7e9 + i, "features": features(rng)}
        if prediction == "score":
            e["prediction"] = float(rng.random())
        elif prediction == "class":
            e["prediction"] = str(rng.choice(["A", "B", "C"]))
        ev.append(e)
    alarms, dead = run(Engine(SETTINGS), list(records(ev, "predictions")), 1500)
    assert alarms == [] and dead == []


def test_a_mixed_feature_is_reported_and_not_monitored(caplog):
    rng = np.random.default_rng(27)
    ev = [
        {
            "model": "m",
            "id": i,
            "ts": 1.7e9 + i,
            "features": {"a": float(rng.normal()), "zip": int(rng.integers(10_000, 99_999)) if i % 10 else "N/A"},
        }
        for i in range(5_000)
    ]
    engine = Engine(SETTINGS)
    with caplog.at_level("WARNING", logger="driftline.monitor.engine"):
        alarms, dead = run(engine, list(records(ev, "predictions")), 1000)
    mm = engine.models["m"]
    assert mm.mixed_features == ["zip"] and mm.schema.numeric == ["a"] and mm.schema.categorical == []
    assert "'m': zip hold both numbers and strings" in caplog.text
    assert alarms == [] and dead == []


def test_models_beyond_max_models_are_dead_lettered():
    settings = load_settings(max_models=3, defaults={"reference": {"size": 100}})
    ev = [{"model": f"m{i % 5}", "id": i, "ts": 1.7e9 + i, "features": {"a": float(i % 7)}} for i in range(500)]
    engine = Engine(settings)
    _, dead = run(engine, list(records(ev, "predictions")), 100)
    assert sorted(engine.models) == ["m0", "m1", "m2"]
    assert len(dead) == 200 and {d.reason for d in dead} == {"model_limit"}
    fb = [{"model": "m4", "id": 4, "label": 1}]
    _, dead = run(engine, list(records(fb, "feedback")), 10)
    assert [d.reason for d in dead] == ["model_limit"] and "m4" not in engine.models


def test_a_changed_reference_is_applied_on_restart(tmp_path, caplog):
    from driftline.monitor.engine import stream_fingerprint
    from driftline.monitor.reference import load_reference
    from tests.monitor.streams import to_jsonl

    ref_path = tmp_path / "ref.jsonl"
    ref_path.write_bytes(to_jsonl(prediction_events(2_000, seed=28)))
    model = prediction_events(1, seed=28)[0]["model"]
    settings = load_settings(models={model: {"reference": {"source": "file", "path": str(ref_path), "size": 2000}}})
    loader = lambda name: load_reference(ref_path, name, 2000) if name == model else None  # noqa: E731
    first = Engine(settings, reference_loader=loader)
    run(first, list(records(prediction_events(3_000, seed=29), "predictions")), 1000)
    state = decode_state(orjson.loads(orjson.dumps(encode_state(first.state_dict()))))
    old_ref = first.models[model].num_ref.to_state()

    # unchanged file: the checkpoint's reference stays
    same = Engine(settings, reference_loader=loader)
    same.load_state(state)
    assert same.models[model].reference_fingerprint == first.models[model].reference_fingerprint

    # a new file: applied, and logged
    ref_path.write_bytes(to_jsonl(prediction_events(2_000, seed=30, shift_at=0, shift=2.0)))
    changed = Engine(settings, reference_loader=loader)
    with caplog.at_level("INFO", logger="driftline.monitor.engine"):
        changed.load_state(state)
    mm = changed.models[model]
    assert "the reference changed since the checkpoint" in caplog.text
    assert mm.num_ref.to_state()["sorted_values"].tolist() != old_ref["sorted_values"].tolist()
    assert mm.n_events == 3_000  # indices go on
    assert stream_fingerprint(mm.settings) != mm.reference_fingerprint


def test_multi_class_models_get_macro_micro_and_one_vs_rest_metrics():
    rng = np.random.default_rng(31)
    classes = ["bird", "cat", "dog", "fish"]
    recs = []
    for i in range(6_000):
        y = str(rng.choice(classes))
        pred = y if rng.random() < 0.8 else str(rng.choice(classes))
        scores = {c: (0.7 if c == pred else 0.1) for c in classes}
        recs.append(
            (
                "predictions",
                {
                    "model": "mc",
                    "id": i,
                    "ts": 1e9 + i,
                    "features": {"a": float(rng.normal())},
                    "prediction": pred,
                    "scores": scores,
                },
            )
        )
        recs.append(("feedback", {"model": "mc", "id": i, "ts": 1e9 + i, "label": y}))
    from driftline.monitor.decode import Record

    engine = Engine(SETTINGS)
    run(engine, [Record(t, 0, i, -1, None, orjson.dumps(e)) for i, (t, e) in enumerate(recs)], 2000)
    (snap,) = engine.snapshot()
    perf = snap.performance
    assert perf["f1_micro"] == pytest.approx(perf["accuracy"])
    assert 0.75 < perf["precision_macro"] < 0.95 and 0.75 < perf["recall_macro"] < 0.95
    assert 0.75 < perf["f1_macro"] < 0.95 and 0.85 < perf["roc_auc_ovr"] < 1.0
    assert set(snap.class_recall) == set(classes)
    assert "1" not in engine.models["mc"].label_encoder.vocab  # no phantom positive class


def test_a_checkpoint_of_another_format_is_refused_with_what_to_do():
    from driftline.monitor.exceptions import CheckpointError

    with pytest.raises(CheckpointError, match="move the checkpoint away"):
        Engine(SETTINGS).load_state({"models": {}})
