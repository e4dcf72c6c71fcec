"""driftline.sinks.policy.TriggerPolicy: when alarms become retrain / rollback triggers.

(Here rather than in tests/monitor/ because the sinks engineer owns the policy.)
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import TriggerPolicySettings
from driftline.sinks.policy import Trigger, TriggerPolicy, idempotency_key

MakeAlarm = Callable[..., Alarm]


def policy(**overrides: object) -> TriggerPolicy:
    return TriggerPolicy(TriggerPolicySettings(**overrides))


def test_one_counted_alarm_triggers_with_the_defaults(make_alarm: MakeAlarm) -> None:
    (trigger,) = policy().observe([make_alarm(1000.0, index=3)])
    assert (trigger.model, trigger.version, trigger.action) == ("fraud", "v7", "retrain")
    assert (trigger.first_index, trigger.last_index, trigger.ts) == (300, 399, 1000.0)
    assert trigger.idempotency_key == idempotency_key("fraud", "v7", "retrain", [None], 300, 399, trigger.alarms)


def test_alarms_without_an_action_or_of_uncounted_kinds_are_ignored(make_alarm: MakeAlarm) -> None:
    p = policy(kinds=["feature_drift"])
    assert p.observe([make_alarm(action="none"), make_alarm(kind="performance")]) == []
    assert len(p.observe([make_alarm(kind="feature_drift")])) == 1


def test_min_alarms_within_the_window_in_event_time(make_alarm: MakeAlarm) -> None:
    p = policy(min_alarms=3, window_seconds=60, cooldown_seconds=0)
    assert p.observe([make_alarm(0.0, index=0), make_alarm(30.0, index=1)]) == []
    # 100 s later the first two are out of the window: still only one in it.
    assert p.observe([make_alarm(100.0, index=2)]) == []
    assert p.observe([make_alarm(120.0, index=3)]) == []
    (trigger,) = p.observe([make_alarm(150.0, index=4)])
    assert [a.first_index for a in trigger.alarms] == [200, 300, 400]
    assert (trigger.first_index, trigger.last_index) == (200, 499)


def test_the_window_boundary_is_inclusive(make_alarm: MakeAlarm) -> None:
    p = policy(min_alarms=2, window_seconds=60)
    assert p.observe([make_alarm(0.0)]) == []
    assert len(p.observe([make_alarm(60.0, index=1)])) == 1


def test_retrain_needs_min_features_distinct_features(make_alarm: MakeAlarm) -> None:
    p = policy(min_alarms=1, min_features=2)
    assert p.observe([make_alarm(1.0, feature="amount"), make_alarm(2.0, feature="amount")]) == []
    (trigger,) = p.observe([make_alarm(3.0, feature="country")])
    assert {a.feature for a in trigger.alarms} == {"amount", "country"}


def test_rollback_ignores_min_features(make_alarm: MakeAlarm) -> None:
    p = policy(min_features=3)
    regression = make_alarm(kind="regression", detector="msprt", feature="accuracy", action="rollback", version="v8")
    (trigger,) = p.observe([regression])
    assert (trigger.action, trigger.version) == ("rollback", "v8")


def test_cooldown_per_model_and_action_in_event_time(make_alarm: MakeAlarm) -> None:
    p = policy(cooldown_seconds=600)
    assert len(p.observe([make_alarm(1000.0, index=0)])) == 1
    # within the cooldown: ignored, for this model and action only
    assert p.observe([make_alarm(1500.0, index=1)]) == []
    assert len(p.observe([make_alarm(1500.0, index=1, model="churn")])) == 1
    assert len(p.observe([make_alarm(1500.0, index=1, kind="regression", action="rollback")])) == 1
    # after it: a new trigger with evidence gathered after the cooldown only
    (trigger,) = p.observe([make_alarm(1600.0, index=2)])
    assert [a.first_index for a in trigger.alarms] == [200]


def test_the_wall_clock_plays_no_part(make_alarm: MakeAlarm) -> None:
    alarms = [make_alarm(1e9 + 10.0 * i, index=i, feature=f"f{i % 3}") for i in range(30)]
    first = policy(min_alarms=4, min_features=2, window_seconds=35, cooldown_seconds=50)
    second = policy(min_alarms=4, min_features=2, window_seconds=35, cooldown_seconds=50)
    assert first.observe(alarms) == second.observe(alarms)


def test_late_alarms_outside_the_window_are_dropped(make_alarm: MakeAlarm) -> None:
    p = policy(min_alarms=2, window_seconds=60)
    assert p.observe([make_alarm(1000.0, index=5)]) == []
    assert p.observe([make_alarm(900.0, index=4)]) == []  # 100 s older than the newest
    (trigger,) = p.observe([make_alarm(1010.0, index=6)])
    assert [a.first_index for a in trigger.alarms] == [500, 600]


def test_evidence_is_bounded(make_alarm: MakeAlarm) -> None:
    p = TriggerPolicy(TriggerPolicySettings(min_alarms=100, window_seconds=1e6), max_evidence=10)
    p.observe([make_alarm(float(i), index=i) for i in range(50)])
    (route,) = p.state_dict()["routes"]
    assert [a["first_index"] for a in route["evidence"]] == [i * 100 for i in range(40, 50)]


def test_max_evidence_is_validated() -> None:
    with pytest.raises(ValueError, match="max_evidence"):
        TriggerPolicy(TriggerPolicySettings(), max_evidence=0)


def test_a_state_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        TriggerPolicy.from_state(TriggerPolicySettings(), {"format": 99, "routes": []})


def test_the_key_names_model_version_action_origin_and_window() -> None:
    origin = ["predictions/3/1200"]
    key = idempotency_key("fraud", "v1", "retrain", origin, 0, 999)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == idempotency_key("fraud", "v1", "retrain", origin, 0, 999)
    assert (
        len(
            {
                key,
                idempotency_key("fraud", "v1", "rollback", origin, 0, 999),
                idempotency_key("churn", "v1", "retrain", origin, 0, 999),
                idempotency_key("fraud", "v2", "retrain", origin, 0, 999),
                # the same indices counted from another origin: state rebuilt elsewhere
                idempotency_key("fraud", "v1", "retrain", ["predictions/3/5000"], 0, 999),
                idempotency_key("fraud", "v1", "retrain", origin, 1, 999),
                idempotency_key("fraud", "v1", "retrain", origin, 0, 998),
            }
        )
        == 7
    )


def test_two_triggers_on_one_window_get_two_keys(make_alarm: MakeAlarm) -> None:
    """With no cooldown, two alarms of one window (a feature and the prediction) are two
    triggers: one key each, or the outbox would drop the second."""
    quick = TriggerPolicy(TriggerPolicySettings(cooldown_seconds=0))
    triggers = quick.observe(
        [
            make_alarm(1000.0, index=3, feature="x0"),
            make_alarm(1000.0, index=3, kind="prediction_drift", feature="prediction"),
        ]
    )
    assert len(triggers) == 2 and triggers[0].first_index == triggers[1].first_index
    assert triggers[0].idempotency_key != triggers[1].idempotency_key
    again = TriggerPolicy(TriggerPolicySettings(cooldown_seconds=0)).observe(
        [
            make_alarm(1000.0, index=3, feature="x0"),
            make_alarm(1000.0, index=3, kind="prediction_drift", feature="prediction"),
        ]
    )
    assert [t.idempotency_key for t in again] == [t.idempotency_key for t in triggers]


# ---- properties: the same triggers however the stream is cut ---------------------------

KINDS = ["feature_drift", "performance", "regression", "data_quality"]


@st.composite
def alarm_streams(draw: st.DrawFn) -> list[Alarm]:
    n = draw(st.integers(0, 40))
    ts = 0.0
    alarms = []
    for i in range(n):
        ts += draw(st.floats(0, 120))
        kind = draw(st.sampled_from(KINDS))
        alarms.append(
            Alarm(
                draw(st.sampled_from(["fraud", "churn"])),
                "v1",
                kind,
                "ks",
                draw(st.sampled_from(["a", "b", "c", None])),
                0.5,
                0.1,
                None,
                i * 10,
                i * 10 + 9,
                ts,
                "rollback" if kind == "regression" else draw(st.sampled_from(["retrain", "none"])),
            )
        )
    return alarms


POLICY_SETTINGS = st.builds(
    TriggerPolicySettings,
    min_alarms=st.integers(1, 4),
    min_features=st.integers(1, 3),
    window_seconds=st.floats(1, 600),
    cooldown_seconds=st.floats(0, 600),
)


def run(p: TriggerPolicy, alarms: list[Alarm], cuts: list[int]) -> list[Trigger]:
    out: list[Trigger] = []
    bounds = [0, *sorted(c % (len(alarms) + 1) for c in cuts), len(alarms)]
    for start, stop in zip(bounds, bounds[1:]):
        out.extend(p.observe(alarms[start:stop]))
    return out


@settings(max_examples=60, deadline=None)
@given(alarm_streams(), POLICY_SETTINGS, st.lists(st.integers(0, 100), max_size=5))
def test_batch_split_invariance(alarms: list[Alarm], config: TriggerPolicySettings, cuts: list[int]) -> None:
    assert run(TriggerPolicy(config), alarms, cuts) == TriggerPolicy(config).observe(alarms)


@settings(max_examples=60, deadline=None)
@given(alarm_streams(), POLICY_SETTINGS, st.integers(0, 100))
def test_state_round_trip_through_json(alarms: list[Alarm], config: TriggerPolicySettings, cut: int) -> None:
    cut %= len(alarms) + 1
    straight = TriggerPolicy(config).observe(alarms)
    first = TriggerPolicy(config)
    before = first.observe(alarms[:cut])
    state = json.loads(json.dumps(first.state_dict()))
    after = TriggerPolicy.from_state(config, state).observe(alarms[cut:])
    assert before + after == straight
