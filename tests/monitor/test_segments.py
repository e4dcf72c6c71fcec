"""Segments (driftline.monitor.segments): drift, data quality and performance per value
of a categorical feature, with bounded label cardinality, through the engine, the
trigger policy, checkpoints, the metrics and a replay."""

from __future__ import annotations

import json

import numpy as np
import orjson
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from driftline.cli import main
from driftline.monitor.alarms import Alarm
from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import TriggerPolicySettings, load_settings
from driftline.monitor.decode import decode_batch
from driftline.monitor.engine import Engine
from driftline.monitor.segments import OTHER
from driftline.sinks.policy import TriggerPolicy, idempotency_key
from driftline.sinks.prometheus import EngineCollector
from tests.monitor.streams import feedback_for, records, to_jsonl

T0 = 1_700_000_000.0
# DE is 8 % of the traffic: a shift in DE alone is diluted in the whole model's window
COUNTRIES = ["FR", "US", "DE", "IT", "ES", "NL", "PL", "SE", "AT", "BE", "CH", "DK", "PT"]
SHARES = np.array([30, 25, 8, 7, 6, 5, 4, 4, 3, 3, 2, 2, 1], dtype=float)

BASE = {"reference": {"size": 5000}, "window": {"size": 500}, "performance": {"window": 300}}
SEGMENTS = {**BASE, "segments": {"features": ["country"], "top_k": 10, "min_reference_events": 200}}


def segment_events(
    n: int,
    *,
    seed: int,
    shift_at: int | None = None,
    shift: float = 1.5,
    country: str = "DE",
    countries: list[str] | None = None,
    shares: np.ndarray | None = None,
) -> list[dict]:
    """Prediction events; from ``shift_at`` on, ``x0`` moves by ``shift`` in ``country`` only."""
    rng = np.random.default_rng(seed)
    countries = COUNTRIES if countries is None else countries
    shares = SHARES if shares is None else shares
    x = rng.normal(size=(n, 3))
    c = rng.choice(countries, size=n, p=shares / shares.sum())
    if shift_at is not None:
        x[shift_at:, 0] += np.where(c[shift_at:] == country, shift, 0.0)
    score = 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))
    return [
        {
            "model": "fraud",
            "version": "v1",
            "id": f"p-{i}",
            "ts": T0 + i,
            "features": {"x0": float(x[i, 0]), "x1": float(x[i, 1]), "x2": float(x[i, 2]), "country": str(c[i])},
            "prediction": float(score[i]),
        }
        for i in range(n)
    ]


def interleaved(preds: list[dict], fb: list[dict]) -> list:
    """Predictions and feedback merged by event time (as a replay merges its files)."""
    recs = [(e["ts"], 0, i, r) for i, (e, r) in enumerate(zip(preds, records(preds, "predictions"), strict=True))]
    recs += [(e["ts"], 1, i, r) for i, (e, r) in enumerate(zip(fb, records(fb, "feedback"), strict=True))]
    return [r for *_, r in sorted(recs, key=lambda t: t[:3])]


def run(engine: Engine, recs: list, batch: int) -> list[Alarm]:
    alarms: list[Alarm] = []
    for i in range(0, len(recs), batch):
        alarms += engine.process(decode_batch(recs[i : i + batch], "predictions", "feedback")).alarms
    return alarms


def test_a_drift_in_one_segment_alarms_for_that_segment_and_not_for_the_whole_model():
    ev = segment_events(30_000, seed=1, shift_at=15_000)
    recs = list(records(ev, "predictions"))
    whole = run(Engine(load_settings(defaults=BASE)), recs, 2000)
    assert [a for a in whole if a.kind == "feature_drift"] == []  # diluted: 8 % of the window

    engine = Engine(load_settings(defaults=SEGMENTS))
    alarms = run(engine, recs, 2000)
    assert [a for a in alarms if a.segment is None] == whole  # the whole model's checks are unchanged
    drift = [a for a in alarms if a.kind == "feature_drift"]
    assert {(a.segment, a.feature) for a in drift} == {("country=DE", "x0")}
    a = drift[0]
    # DE's window of 500 events spans about 6,000 of the stream
    assert a.last_index >= 15_000 and a.action == "retrain" and a.p_value < 1e-5
    assert a.to_dict()["segment"] == "country=DE"
    # one segment's evidence: a trigger by default, none when two segments are required
    assert len(TriggerPolicy(TriggerPolicySettings()).observe(alarms)) == 1
    assert TriggerPolicy(TriggerPolicySettings(min_segments=2)).observe(alarms) == []
    # the alarm's evidence window holds DE events only
    assert ev[a.last_index]["features"]["country"] == "DE" and ev[a.first_index]["features"]["country"] == "DE"
    # the gauges of the segment show it; the segments are the reference's top 10 and __other__
    snap = engine.snapshot()[0]
    names = [s.value for s in snap.segments]
    assert names == COUNTRIES[:10] + [OTHER]
    de = next(s for s in snap.segments if s.value == "DE")
    assert de.tested and de.reference_events > 200
    assert any(s.feature == "x0" and s.detector == "ks" and s.p_value < 1e-5 for s in de.drift)
    small = [s for s in snap.segments if s.reference_events < 200]  # AT, BE: 3 % of the reference each
    assert small and all(not s.tested and s.events > 0 and s.drift == () for s in small)
    assert all(s.tested for s in snap.segments if s.reference_events >= 200)
    # the metrics, read at scrape time
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.snapshot))
    ids = {"model": "fraud", "version": "v1", "segment_feature": "country", "segment": "DE"}
    ks = next(s for s in de.drift if s.feature == "x0" and s.detector == "ks")
    assert (
        registry.get_sample_value("driftline_segment_drift_p_value", {**ids, "feature": "x0", "detector": "ks"})
        == ks.p_value
    )
    assert registry.get_sample_value("driftline_segment_tested", ids) == 1.0
    assert registry.get_sample_value("driftline_segment_events_total", ids) == de.events
    assert registry.get_sample_value("driftline_segment_tested", {**ids, "segment": small[0].value}) == 0.0


def test_segments_are_off_by_default_and_cost_no_state():
    ev = segment_events(8_000, seed=2, shift_at=6_000)
    engine = Engine(load_settings(defaults=BASE))
    alarms = run(engine, list(records(ev, "predictions")), 1000)
    mm = engine.models["fraud"]
    assert mm.segments is None and all(vm.segments is None for vm in mm.versions.values())
    assert "segments" not in engine.model_state("fraud") and "segments" not in mm.versions["v1"].state_dict()
    assert all(a.segment is None and "segment" not in a.to_dict() for a in alarms)
    assert engine.snapshot()[0].segments == ()


@hsettings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(distinct=st.integers(2, 80), top_k=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_label_cardinality_is_at_most_k_plus_one_whatever_the_distinct_values(distinct, top_k, seed):
    rng = np.random.default_rng(seed)
    values = [f"c{i}" for i in range(distinct)]
    shares = rng.dirichlet(np.ones(distinct))
    ev = segment_events(1_500, seed=seed, countries=values, shares=shares)
    # values never seen in the reference and missing values: both in __other__
    for i in range(900, 1_500, 7):
        ev[i]["features"]["country"] = f"new{i}" if i % 2 else None
    cfg = {
        "reference": {"size": 300},
        "window": {"size": 60},
        "segments": {"features": ["country"], "top_k": top_k, "min_reference_events": 20},
    }
    engine = Engine(load_settings(defaults=cfg))
    alarms = run(engine, list(records(ev, "predictions")), 400)
    names = {s.value for s in engine.snapshot()[0].segments}
    assert OTHER in names and len(names) <= top_k + 1
    assert {a.segment for a in alarms if a.segment} <= {f"country={v}" for v in names}
    registry = CollectorRegistry()
    registry.register(EngineCollector(engine.snapshot))
    labels = {s.labels["segment"] for m in registry.collect() for s in m.samples if "segment" in s.labels}
    assert OTHER in labels and labels <= names and len(labels) <= top_k + 1


def test_performance_per_segment():
    ev = segment_events(24_000, seed=3)
    fb = feedback_for(ev, seed=4)
    for i in range(14_000, len(ev)):  # DE's labels flip: its accuracy collapses, the others' stays
        if ev[i]["features"]["country"] == "DE":
            fb[i]["label"] = 1 - fb[i]["label"]
    engine = Engine(load_settings(defaults=SEGMENTS))
    alarms = run(engine, interleaved(ev, fb), 3000)
    perf = [a for a in alarms if a.kind == "performance" and a.segment is not None]
    assert {a.segment for a in perf} == {"country=DE"}
    assert perf[0].last_index >= 14_000 and perf[0].feature == "accuracy"
    snap = engine.snapshot()[0]
    de = next(s for s in snap.segments if s.value == "DE")
    fr = next(s for s in snap.segments if s.value == "FR")
    assert de.labelled > 0 and de.performance["accuracy"] < fr.performance["accuracy"] - 0.2


def _alarm(ts: float, segment: str | None, feature: str = "x0") -> Alarm:
    return Alarm(
        "fraud",
        "v1",
        "feature_drift",
        "ks",
        feature,
        0.4,
        1e-5,
        1e-9,
        int(ts),
        int(ts) + 99,
        ts,
        "retrain",
        segment=segment,
    )


def test_the_policy_can_require_evidence_in_several_segments():
    policy = TriggerPolicy(TriggerPolicySettings(min_segments=2))
    assert policy.observe([_alarm(100.0, "country=DE")]) == []
    assert policy.observe([_alarm(110.0, "country=DE", "x1")]) == []  # one segment still
    fired = policy.observe([_alarm(120.0, "country=FR")])
    assert [t.action for t in fired] == ["retrain"]
    # an alarm of the whole model counts as every segment
    assert len(TriggerPolicy(TriggerPolicySettings(min_segments=3)).observe([_alarm(100.0, None)])) == 1
    # off by default: one segment's alarm is enough
    assert len(TriggerPolicy(TriggerPolicySettings()).observe([_alarm(100.0, "country=DE")])) == 1
    # the segment is part of the trigger's key; without it the key is the one it always was
    one, other = [_alarm(100.0, "country=DE")], [_alarm(100.0, "country=FR")]
    assert idempotency_key("fraud", "v1", "retrain", ["o"], 100, 199, one) != idempotency_key(
        "fraud", "v1", "retrain", ["o"], 100, 199, other
    )
    assert "segment" not in _alarm(100.0, None).to_dict()
    assert Alarm.from_dict(one[0].to_dict()) == one[0]


def test_checkpoint_round_trip_mid_stream_equals_an_uninterrupted_run():
    ev = segment_events(22_000, seed=5, shift_at=12_000)
    fb = feedback_for(ev, seed=6)
    for i in range(12_000, len(ev)):
        if ev[i]["features"]["country"] == "DE":
            fb[i]["label"] = 1 - fb[i]["label"]
    recs = interleaved(ev, fb)
    settings = load_settings(defaults=SEGMENTS)
    whole = run(Engine(settings), recs, 1500)
    assert {a.segment for a in whole} >= {"country=DE"}
    first = Engine(settings)
    cut = 21_000  # within the shift, segment windows half full
    head = run(first, recs[:cut], 1500)
    state = decode_state(orjson.loads(orjson.dumps(encode_state(first.state_dict()))))
    second = Engine(settings)
    second.load_state(state)
    tail = run(second, recs[cut:], 1500)
    assert head + tail == whole
    assert second.snapshot() == run_snapshot(settings, recs)


def run_snapshot(settings, recs):
    engine = Engine(settings)
    run(engine, recs, 1500)
    return engine.snapshot()


def test_a_state_without_segments_loads_and_segments_start_with_the_next_reference():
    ev = segment_events(9_000, seed=7)
    recs = list(records(ev, "predictions"))
    old = Engine(load_settings(defaults=BASE))
    run(old, recs[:7_000], 1000)
    state = decode_state(orjson.loads(orjson.dumps(encode_state(old.state_dict()))))
    new = Engine(load_settings(defaults=SEGMENTS))
    new.load_state(state)  # format 3 without segments: loads, the whole model goes on
    alarms = run(new, recs[7_000:], 1000)
    assert all(a.segment is None for a in alarms)
    assert new.models["fraud"].versions["v1"].events == 9_000 - 5_000


def test_replay_equals_the_engine(tmp_path):
    ev = segment_events(20_000, seed=8, shift_at=11_000)
    fb = feedback_for(ev, seed=9, delay=30.5)
    (tmp_path / "p.jsonl").write_bytes(to_jsonl(ev))
    (tmp_path / "f.jsonl").write_bytes(to_jsonl(fb))
    cfg = tmp_path / "segments.yml"
    cfg.write_text("defaults:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in SEGMENTS.items()))
    out = tmp_path / "alarms.jsonl"
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
    replayed = [json.loads(line) for line in out.read_text().splitlines()]
    engine = [a.to_dict() for a in run(Engine(load_settings(defaults=SEGMENTS)), interleaved(ev, fb), 5000)]
    key = lambda a: (a["last_index"], a["kind"], a["detector"], a["feature"] or "", a.get("segment", ""))  # noqa: E731
    assert sorted(replayed, key=key) == sorted(engine, key=key)
    assert any(a.get("segment") == "country=DE" and a["kind"] == "feature_drift" for a in replayed)


def test_labels_find_their_segment_when_versions_interleave():
    ev = segment_events(9_000, seed=10)
    for i, e in enumerate(ev):
        e["version"] = "v1" if i % 3 else "v2"
    fb = feedback_for(ev, seed=11)
    engine = Engine(load_settings(defaults=SEGMENTS))
    run(engine, interleaved(ev, fb), 700)
    for snap in engine.snapshot():
        after_reference = sum(1 for i, e in enumerate(ev) if i >= 5_000 and e["version"] == snap.version)
        segments = {s.value: s for s in snap.segments}
        assert sum(s.labelled for s in segments.values()) == after_reference  # reference events: whole model only
        de = sum(
            1
            for i, e in enumerate(ev)
            if i >= 5_000 and e["version"] == snap.version and e["features"]["country"] == "DE"
        )
        assert segments["DE"].labelled == segments["DE"].events == de
