"""The engine's reaction to model lifecycle events (issue 13), on generated streams.

Each test builds one source-ordered stream of prediction and feedback records with
lifecycle events placed at positions of the prediction stream, and runs it as the
service does: per batch, ``apply_lifecycle`` with the batch's lifecycle events, then
``process`` with the same result.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.monitor.canary import NonInferiority
from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import PromoteSettings, load_settings
from driftline.monitor.decode import Record, decode_batch
from driftline.monitor.encoding import L_ERR, L_IDX, L_TS
from driftline.monitor.engine import Engine, EngineResult
from driftline.monitor.exceptions import CheckpointError
from driftline.monitor.lifecycle import LifecycleEvent, validate_lifecycle
from driftline.monitor.reference import load_reference
from driftline.monitor.versions import labels_needed

T0 = 1_700_000_000.0
CANARY = {
    "promote": {"enabled": True, "margin": 0.05, "alpha": 0.05, "tau": 0.05},
    "rollback_confirm_seconds": 400.0,
    "grace_seconds": 600.0,
    "stall_after_seconds": 500.0,
    "stall_min_events": 40,
}
SETTINGS = load_settings(
    defaults={"reference": {"size": 1000}, "window": {"size": 500}, "performance": {"window": 500}, "canary": CANARY}
)


def segment(n, start, *, seed, share=0.0, shift_v1=0.0, shift_v2=0.0, v1="v1", v2="v2"):
    """``n`` prediction events from position ``start`` (ts = T0 + position); a share
    ``share`` of them from ``v2``; feature ``x0`` shifted per version."""
    rng = np.random.default_rng(seed)
    is_v2 = rng.random(n) < share
    x = rng.normal(size=(n, 3))
    x[:, 0] += np.where(is_v2, shift_v2, shift_v1)
    country = rng.choice(["DE", "FR", "US"], size=n, p=[0.5, 0.3, 0.2])
    score = 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))
    return [
        {
            "model": "fraud",
            "version": v2 if is_v2[i] else v1,
            "id": f"e{start + i}",
            "ts": T0 + start + i,
            "features": {"x0": float(x[i, 0]), "x1": float(x[i, 1]), "x2": float(x[i, 2]), "country": str(country[i])},
            "prediction": float(score[i]),
        }
        for i in range(n)
    ]


def labels(events, errors, seed):
    """A label per event, wrong with probability ``errors[version]``."""
    rng = np.random.default_rng(seed)
    out = []
    for e in events:
        truth = int(e["prediction"] >= 0.5)
        wrong = rng.random() < errors.get(e["version"], 0.1)
        out.append({"model": "fraud", "id": e["id"], "ts": e["ts"] + 0.5, "label": 1 - truth if wrong else truth})
    return out


def event(version, kind, position, **fields):
    """A lifecycle event taking effect just before prediction ``position``."""
    return validate_lifecycle(
        {"model": "fraud", "version": version, "event": kind, "ts": T0 + position - 0.5, **fields}
    )


def items(preds, fb, lifecycle=(), lag=50):
    """Source order: predictions, each label ``lag`` predictions later, lifecycle events
    at their positions (in the prediction stream)."""
    at: dict[int, list[LifecycleEvent]] = {}
    for ev in lifecycle:
        at.setdefault(int(ev.ts - T0 + 0.5), []).append(ev)
    out: list[object] = []
    for i, e in enumerate(preds):
        out.extend(at.get(i, ()))
        out.append(Record("predictions", 0, i, -1, None, orjson.dumps(e)))
        if i >= lag:
            out.append(Record("feedback", 0, i - lag, -1, None, orjson.dumps(fb[i - lag])))
    for j in range(max(len(preds) - lag, 0), len(fb)):
        out.append(Record("feedback", 0, j, -1, None, orjson.dumps(fb[j])))
    return out


def run(engine, stream, batch):
    """Run a stream as the service does; returns the alarms and the lifecycle counts."""
    alarms, counts = [], {}
    for i in range(0, len(stream), batch):
        chunk = stream[i : i + batch]
        result = EngineResult()
        engine.apply_lifecycle([x for x in chunk if isinstance(x, LifecycleEvent)], result)
        engine.process(
            decode_batch([x for x in chunk if not isinstance(x, LifecycleEvent)], "predictions", "feedback"), result
        )
        alarms += result.alarms
        for k, v in result.lifecycle.items():
            counts[k] = counts.get(k, 0) + v
    return alarms, counts


def loader(model, path=None):
    return None if path is None else load_reference(Path(path), model, 1000)


def snap(engine, version):
    found = [s for s in engine.snapshot() if s.version == version]
    return found[0] if found else None


def write_reference(path, events):
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return str(path)


# ---- drift, a retrained canary, promote ---------------------------------------------------------


def test_promoting_a_retrained_canary_rebases_the_reference_and_clears_the_drift(tmp_path):
    drifted = segment(3000, 0, seed=1, shift_v1=0.8)  # what the world looks like now
    ref = write_reference(tmp_path / "fraud-v2.jsonl", [dict(e, version="v2") for e in drifted[:1000]])
    preds = (
        segment(1000, 0, seed=2)  # the reference
        + segment(3000, 1000, seed=3, shift_v1=0.8)  # v1 drifts
        + segment(3000, 4000, seed=4, share=0.2, shift_v1=0.8, shift_v2=0.8)  # v2 canary, retrained
        + segment(4000, 7000, seed=5, share=1.0, shift_v2=0.8)
    )  # v2 takes all traffic
    fb = labels(preds, {"v1": 0.1, "v2": 0.1}, seed=6)
    lifecycle = [
        event("v2", "deployed", 4000, role="canary", traffic_share=0.2, reference={"path": ref}),
        event("v2", "promoted", 7000),
    ]
    engine = Engine(SETTINGS, reference_loader=loader)
    alarms, counts = run(engine, items(preds, fb, lifecycle), 1500)

    drift = [a for a in alarms if a.kind == "feature_drift"]
    assert drift and all(a.version == "v1" and a.feature == "x0" for a in drift)
    assert not [a for a in drift if a.last_index >= 7000], "no drift alarm after the promote"
    assert not [a for a in alarms if a.version == "v2" and a.kind in ("feature_drift", "prediction_drift")], (
        "the canary is measured against its own reference"
    )
    assert counts["deployed"] == 1 and counts["promoted"] == 1 and counts.get("reference_failed", 0) == 0
    mm = engine.models["fraud"]
    assert mm.stable_version() == "v2" and mm.reference_fingerprint.startswith("file:")
    v2 = snap(engine, "v2")
    assert v2.role == "stable" and v2.reference == mm.reference_fingerprint
    assert v2.drift and all(s.p_value is None or s.p_value > 1e-3 for s in v2.drift if s.detector == "ks")
    assert not mm.versions["v2"].alarming
    # the old stable: its drift gauges went at the promote, its state after the grace period
    assert snap(engine, "v1") is None and "v1" not in mm.lifecycle.roles
    assert counts["freed"] == 1


def test_the_old_stable_gauges_clear_at_the_promote_even_within_its_grace_period():
    settings_ = load_settings(
        defaults={"reference": {"size": 1000}, "window": {"size": 500}, "canary": {**CANARY, "grace_seconds": 1e6}}
    )
    preds = (
        segment(1000, 0, seed=7) + segment(2000, 1000, seed=8, shift_v1=0.8) + segment(1000, 3000, seed=9, share=1.0)
    )
    engine = Engine(settings_)
    run(engine, items(preds, labels(preds, {}, 10), [event("v2", "promoted", 3000)]), 700)
    v1 = snap(engine, "v1")
    assert v1.role == "retiring" and v1.drift == () and v1.quality == {}
    # checks against the old reference start afresh (its own label stream goes on)
    assert not [
        k
        for k in engine.models["fraud"].versions["v1"].alarming
        if k.startswith(("feature_drift", "prediction_drift", "quality"))
    ]


def test_a_from_stream_reference_takes_the_versions_first_events():
    preds = segment(1000, 0, seed=11) + segment(2000, 1000, seed=12, share=0.5, shift_v2=0.8)
    lifecycle = [event("v2", "deployed", 1000, role="canary", reference={"from_stream": 300})]
    engine = Engine(SETTINGS)
    alarms, _ = run(engine, items(preds, labels(preds, {}, 13), lifecycle), 400)
    assert not [a for a in alarms if a.version == "v2" and a.kind == "feature_drift"]
    assert snap(engine, "v2").reference == "from_stream:v2:300"
    # the same shifted traffic as the stable version would be drift against the stable reference
    engine2 = Engine(SETTINGS)
    alarms2, _ = run(engine2, items(preds, labels(preds, {}, 13)), 400)
    assert [a for a in alarms2 if a.version == "v2" and a.kind == "feature_drift"]


def test_an_unreadable_reference_is_counted_and_the_version_inherits():
    preds = segment(1000, 0, seed=14) + segment(1500, 1000, seed=15, share=0.3)
    lifecycle = [event("v2", "deployed", 1000, role="canary", reference={"path": "/nonexistent/ref.jsonl"})]
    engine = Engine(SETTINGS, reference_loader=loader)
    _, counts = run(engine, items(preds, labels(preds, {}, 16), lifecycle), 500)
    assert counts["reference_failed"] == 1
    assert snap(engine, "v2").reference == engine.models["fraud"].reference_fingerprint


# ---- canary verdicts ----------------------------------------------------------------------------


def canary_stream(n, share, errors, seed, lifecycle_extra=()):
    preds = segment(1000, 0, seed=seed) + segment(n, 1000, seed=seed + 1, share=share)
    fb = labels(preds, errors, seed + 2)
    lifecycle = [event("v2", "deployed", 1000, role="canary", traffic_share=share), *lifecycle_extra]
    return preds, fb, lifecycle


def test_a_good_canary_gets_one_promote_alarm_and_a_bad_one_a_rollback():
    preds, fb, lifecycle = canary_stream(12_000, 0.3, {"v1": 0.15, "v2": 0.15}, seed=20)
    engine = Engine(SETTINGS)
    alarms, _ = run(engine, items(preds, fb, lifecycle), 1000)
    promote = [a for a in alarms if a.kind == "promote_ready"]
    assert len(promote) == 1 and promote[0].version == "v2" and promote[0].action == "promote"
    assert promote[0].detector == "noninferiority" and promote[0].statistic < promote[0].threshold == 0.05
    assert not [a for a in alarms if a.kind == "regression"]

    preds, fb, lifecycle = canary_stream(12_000, 0.3, {"v1": 0.10, "v2": 0.30}, seed=30)
    engine = Engine(SETTINGS)
    alarms, _ = run(engine, items(preds, fb, lifecycle), 1000)
    assert not [a for a in alarms if a.kind == "promote_ready"]
    rollback = [a for a in alarms if a.kind == "regression" and a.detector == "msprt"]
    assert len(rollback) == 1 and rollback[0].action == "rollback"


def test_promote_is_off_by_default():
    preds, fb, lifecycle = canary_stream(8000, 0.3, {"v1": 0.15, "v2": 0.15}, seed=40)
    plain = load_settings(defaults={"reference": {"size": 1000}, "window": {"size": 500}})
    alarms, _ = run(Engine(plain), items(preds, fb, lifecycle), 1000)
    assert not [a for a in alarms if a.kind == "promote_ready"]


def test_labels_needed_is_reported_for_a_canary_until_its_verdict():
    preds, fb, lifecycle = canary_stream(6000, 0.3, {"v1": 0.15, "v2": 0.15}, seed=50)
    stream = items(preds, fb, lifecycle)
    engine = Engine(SETTINGS)
    needed, said = [], None
    for k in range(0, len(stream), 400):
        alarms, _ = run(engine, stream[k : k + 400], 400)
        s = snap(engine, "v2")
        if s is not None and s.labels_needed is not None:
            needed.append((s.labelled, s.labels_needed, s.traffic_share))
        if any(a.kind == "promote_ready" for a in alarms):
            said = snap(engine, "v2")
            break
    assert said is not None and needed
    before = [n for _, n, _ in needed[:-1]]
    assert before and all(0 < n < math.inf for n in before)
    assert all(0.2 < share < 0.4 for _, _, share in needed)
    # once promote is said and no rollback is coming at this difference, no decision is pending
    assert said.labels_needed == math.inf or said.labels_needed > 0


def test_labels_needed_approximation():
    # no decision at a difference in the wrong direction; more labels at a smaller share or difference
    assert labels_needed(-0.01, 0.1, 0.1, 0.1, 0.05, 0.05, 10) == math.inf
    a = labels_needed(0.05, 0.1, 0.1, 0.1, 0.05, 0.05, 10)
    assert a > labels_needed(0.05, 0.1, 0.1, 0.5, 0.05, 0.05, 10)
    assert a < labels_needed(0.02, 0.1, 0.1, 0.1, 0.05, 0.05, 10)


def noninferiority_run(p_stable, d, share, n, seed, cfg):
    """One canary comparison fed to the test directly (as the engine feeds it); True when
    it said promote."""
    rng = np.random.default_rng(seed)
    is_canary = rng.random(n) < share
    errors = rng.random(n) < np.where(is_canary, p_stable + d, p_stable)
    rows = np.zeros((n, 6))
    rows[:, L_IDX] = np.arange(n)
    rows[:, L_TS] = T0 + np.arange(n)
    rows[:, L_ERR] = errors
    versions = np.where(is_canary, "v2", "v1").astype(object)
    test = NonInferiority()

    def factory(version):
        return lambda *args: args

    found = []
    for i in range(0, n, 997):  # batch cuts do not matter; they keep the run realistic
        found += test.update(rows[i : i + 997], versions[i : i + 997], "v1", {"v2": 0}, cfg, factory)
    return bool(found)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(p_stable=st.floats(0.05, 0.3), share=st.floats(0.05, 0.5))
def test_false_promote_rate_is_under_alpha(p_stable, share):
    """A canary exactly ``margin`` worse (the null's boundary: its hardest case) is
    promoted in at most ``alpha`` of the runs, up to binomial noise (seeded)."""
    cfg = PromoteSettings(enabled=True, margin=0.03, alpha=0.1, tau=0.03, min_samples=100)
    runs = 60
    promoted = sum(noninferiority_run(p_stable, cfg.margin, share, 6000, seed, cfg) for seed in range(runs))
    # P(Binomial(60, 0.1) >= 14) < 0.002: more would mean the bound does not hold
    assert promoted < 14


def test_a_canary_as_good_as_the_stable_is_promoted_in_most_runs():
    cfg = PromoteSettings(enabled=True, margin=0.03, alpha=0.1, tau=0.03, min_samples=100)
    promoted = sum(noninferiority_run(0.1, 0.0, 0.3, 8000, seed, cfg) for seed in range(20))
    assert promoted >= 15


# ---- rollback confirmation, stall, retire ---------------------------------------------------------


def bad_canary(seed, n=8000):
    return canary_stream(n, 0.4, {"v1": 0.05, "v2": 0.35}, seed=seed)


def rollback_position(alarms):
    (alarm,) = [a for a in alarms if a.kind == "regression" and a.detector == "msprt"]
    return alarm


def test_a_rollback_answered_by_rolled_back_is_confirmed_without_escalation():
    preds, fb, lifecycle = bad_canary(60)
    probe, _ = run(Engine(SETTINGS), items(preds, fb, lifecycle), 1000)
    at = int(rollback_position(probe).ts - T0) + 100  # the delivery pipeline answers 100 s later
    # after the rollback, the canary's traffic goes back to v1
    preds = preds[:at] + [dict(e, version="v1") for e in preds[at:]]
    fb = labels(preds, {"v1": 0.05, "v2": 0.35}, 62)
    lifecycle = [*lifecycle, event("v2", "rolled_back", at)]
    engine = Engine(SETTINGS)
    alarms, counts = run(engine, items(preds, fb, lifecycle), 1000)
    assert rollback_position(alarms).version == "v2"
    assert counts["rollback_confirmed"] == 1
    assert not [a for a in alarms if a.kind == "rollback_unconfirmed"]
    assert snap(engine, "v2") is None  # freed after the grace period


def test_a_rollback_whose_predictions_stop_is_confirmed_without_an_event():
    preds, fb, lifecycle = bad_canary(60)
    probe, _ = run(Engine(SETTINGS), items(preds, fb, lifecycle), 1000)
    at = int(rollback_position(probe).ts - T0) + 50
    preds = preds[:at] + [dict(e, version="v1") for e in preds[at:]]
    fb = labels(preds, {"v1": 0.05, "v2": 0.35}, 62)
    alarms, counts = run(Engine(SETTINGS), items(preds, fb, lifecycle), 1000)
    assert counts["rollback_confirmed"] == 1
    assert not [a for a in alarms if a.kind == "rollback_unconfirmed"]


def test_a_rollback_never_applied_escalates():
    preds, fb, lifecycle = bad_canary(60)
    engine = Engine(SETTINGS)
    alarms, counts = run(engine, items(preds, fb, lifecycle), 1000)
    rollback = rollback_position(alarms)
    (escalation,) = [a for a in alarms if a.kind == "rollback_unconfirmed"]
    assert escalation.version == "v2" and escalation.action == "none"
    assert escalation.ts == rollback.ts + CANARY["rollback_confirm_seconds"]
    assert counts.get("rollback_confirmed", 0) == 0
    v2 = snap(engine, "v2")
    assert v2.rollback_unconfirmed and not v2.rollback_pending
    # a late rolled_back event still confirms it and clears the gauge
    result = EngineResult()
    engine.apply_lifecycle([event("v2", "rolled_back", len(preds) - 1)], result)
    assert result.lifecycle["rollback_confirmed"] == 1 and not snap(engine, "v2").rollback_unconfirmed


def test_a_canary_without_traffic_is_stalled():
    preds = segment(1000, 0, seed=70) + segment(2000, 1000, seed=71, share=0.01)
    lifecycle = [event("v2", "deployed", 1000, role="canary", traffic_share=0.05)]
    engine = Engine(SETTINGS)
    alarms, _ = run(engine, items(preds, labels(preds, {}, 72), lifecycle), 500)
    (stalled,) = [a for a in alarms if a.kind == "canary_stalled"]
    assert stalled.version == "v2" and stalled.ts == T0 + 1000 - 0.5 + CANARY["stall_after_seconds"]
    assert stalled.statistic < stalled.threshold == CANARY["stall_min_events"]
    assert snap(engine, "v2").canary_stalled


def test_retired_frees_the_version_and_its_gauges():
    preds = (
        segment(1000, 0, seed=80) + segment(1500, 1000, seed=81, share=0.6, shift_v2=0.8) + segment(500, 2500, seed=82)
    )  # its traffic has gone when it is retired
    lifecycle = [event("v2", "deployed", 1000, role="shadow"), event("v2", "retired", 2500)]
    engine = Engine(SETTINGS)
    run(engine, items(preds[:2400], labels(preds[:2400], {}, 82), lifecycle[:1]), 500)
    assert snap(engine, "v2").drift  # a shadow is monitored
    engine = Engine(SETTINGS)
    run(engine, items(preds, labels(preds, {}, 82), lifecycle), 500)
    assert snap(engine, "v2") is None, "late labels of a retired version do not bring it back"
    mm = engine.models["fraud"]
    assert "v2" not in mm.version_events and "v2" not in mm.lifecycle.roles


# ---- determinism and state -----------------------------------------------------------------------


def full_loop(seed):
    preds = (
        segment(1000, 0, seed=seed)
        + segment(2000, 1000, seed=seed + 1, shift_v1=0.8)
        + segment(6000, 3000, seed=seed + 2, share=0.3, shift_v1=0.8, shift_v2=0.8, v2="v3")
        + segment(3000, 9000, seed=seed + 3, share=1.0, shift_v2=0.8, v2="v3")
    )
    fb = labels(preds, {"v1": 0.12, "v3": 0.12}, seed + 4)
    lifecycle = [
        event("v3", "deployed", 3000, role="canary", traffic_share=0.3, reference={"from_stream": 400}),
        event("v3", "promoted", 9000),
    ]
    return items(preds, fb, lifecycle)


def test_the_loop_does_not_depend_on_batch_cuts():
    stream = full_loop(90)
    a1, c1 = run(Engine(SETTINGS), stream, 5000)
    a2, c2 = run(Engine(SETTINGS), stream, 333)
    assert sorted(a1, key=repr) == sorted(a2, key=repr) and c1 == c2
    assert {a.kind for a in a1} >= {"feature_drift", "promote_ready"}


@pytest.mark.parametrize("cut", [2500, 6100, 9050])
def test_a_state_round_trip_mid_loop_gives_the_same_alarms(cut):
    stream = full_loop(100)
    whole, _ = run(Engine(SETTINGS), stream, 700)
    first = Engine(SETTINGS)
    head, _ = run(first, stream[:cut], 700)
    second = Engine(SETTINGS)
    for name in first.model_names():
        state = decode_state(orjson.loads(orjson.dumps(encode_state(first.model_state(name)))))
        second.restore_model(name, state)
    tail, _ = run(second, stream[cut:], 700)
    assert sorted(head + tail, key=repr) == sorted(whole, key=repr)
    assert snap(second, "v3").role == "stable"


def test_a_format_2_state_loads_as_a_model_no_lifecycle_event_named():
    engine = Engine(SETTINGS)
    run(engine, full_loop(110)[:3000], 1000)
    state = engine.model_state("fraud")
    state["format"] = 2
    del state["lifecycle"], state["promote"]
    other = Engine(SETTINGS)
    other.restore_model("fraud", state)
    assert other.models["fraud"].lifecycle.roles == {}
    with pytest.raises(CheckpointError, match="move the checkpoint away"):
        other.restore_model("fraud", {**state, "format": 1})


def test_a_rollback_and_its_confirmation_do_not_depend_on_batch_cuts():
    preds, fb, lifecycle = bad_canary(120)
    probe, _ = run(Engine(SETTINGS), items(preds, fb, lifecycle), 1000)
    at = int(rollback_position(probe).ts - T0) + 60  # the label that fires it and the event share batches
    preds = preds[:at] + [dict(e, version="v1") for e in preds[at:]]
    fb = labels(preds, {"v1": 0.05, "v2": 0.35}, 122)
    stream = items(preds, fb, [*lifecycle, event("v2", "rolled_back", at)])
    runs = [run(Engine(SETTINGS), stream, batch) for batch in (7000, 1000, 101)]
    assert all(sorted(a, key=repr) == sorted(runs[0][0], key=repr) and c == runs[0][1] for a, c in runs)
    assert len([a for a in runs[0][0] if a.kind == "regression"]) >= 1
    assert runs[0][1]["rollback_confirmed"] == 1


def test_a_promote_alarm_is_a_trigger_by_itself():
    from driftline.monitor.alarms import Alarm
    from driftline.monitor.config import TriggerPolicySettings
    from driftline.sinks.policy import TriggerPolicy

    policy = TriggerPolicy(TriggerPolicySettings(min_alarms=3))
    alarm = Alarm(
        "fraud",
        "v2",
        "promote_ready",
        "noninferiority",
        "error_rate",
        -0.004,
        0.05,
        None,
        1000,
        5000,
        T0 + 5000,
        "promote",
        origin="predictions/0/0",
    )
    (trigger,) = policy.observe([alarm])
    assert trigger.action == "promote" and trigger.version == "v2"
    stalled = Alarm("fraud", "v2", "canary_stalled", "traffic", None, 3, 40, None, 10, 10, T0, "none")
    assert policy.observe([stalled] * 5) == []


def test_a_reference_with_other_features_rebuilds_the_schema_when_promoted(tmp_path, monkeypatch):
    from driftline.monitor import engine as engine_module
    from driftline.monitor.decode import BatchDecoder

    remapped = []
    remap = engine_module._remap_columns
    monkeypatch.setattr(engine_module, "_remap_columns", lambda *a: remapped.append(1) or remap(*a))

    def with_x3(events, seed):
        rng = np.random.default_rng(seed)
        return [dict(e, features={**e["features"], "x3": float(rng.normal())}) for e in events]

    ref = write_reference(tmp_path / "v2.jsonl", with_x3(segment(1000, 0, seed=130), 131))
    preds = (
        segment(1000, 0, seed=132)
        + segment(1000, 1000, seed=133, share=0.3)
        + with_x3(segment(2000, 2000, seed=134, share=1.0), 135)
    )
    lifecycle = [event("v2", "deployed", 1000, role="canary", reference={"path": ref}), event("v2", "promoted", 2000)]
    stream = items(preds, labels(preds, {}, 136), lifecycle)
    engine = Engine(SETTINGS, reference_loader=loader)
    decoder = BatchDecoder("predictions", "feedback")  # decodes with the engine's schemas, as the service does
    changed, alarms = [], []
    for i in range(0, len(stream), 900):
        chunk = stream[i : i + 900]
        result = EngineResult()
        engine.apply_lifecycle([x for x in chunk if isinstance(x, LifecycleEvent)], result)
        engine.process(decoder.decode([x for x in chunk if not isinstance(x, LifecycleEvent)]), result)
        changed += result.schema_changed
        alarms += result.alarms
        if engine.models["fraud"].schema is not None:  # the service shares the engine's schema with its decoder
            decoder.set_schemas({"fraud": engine.models["fraud"].schema.to_state()})
    mm = engine.models["fraud"]
    assert changed == ["fraud"] and "x3" in mm.schema.numeric
    assert remapped, "the rest of the batch decoded under the old schema was carried over"
    assert {s.feature for s in snap(engine, "v2").drift} >= {"x3"}
    assert not [a for a in alarms if a.kind == "feature_drift" and a.last_index >= 2000]
