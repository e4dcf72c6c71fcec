"""The lifecycle event contract (driftline.monitor.lifecycle): every valid shape is
decoded, every invalid one becomes a dead letter with its reason and field, hostile bytes
never raise, replay files read like prediction files, and ``driftline lifecycle``
produces a checked event to a real broker (or exits 2 naming the flag)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.monitor.decode import DeadLetter, Record
from driftline.monitor.exceptions import SourceError
from driftline.monitor.lifecycle import (
    LIFECYCLE_REASONS,
    MAX_DETAIL,
    MAX_NAME,
    LifecycleContractError,
    LifecycleEvent,
    Reference,
    decode_lifecycle,
    decode_lifecycle_batch,
    encode_lifecycle,
    lifecycle_key,
    read_lifecycle_file,
    validate_lifecycle,
)
from tests.support.topics import read_topic

REPO = Path(__file__).resolve().parents[2]
TOPIC = "model-lifecycle"


def rec(value: bytes | None, offset: int = 0) -> Record:
    return Record(TOPIC, 0, offset, 1_000, b"fraud", value)


def base(**fields) -> dict:
    event = {"model": "fraud", "version": "v8", "event": "promoted", "ts": 1763900000.0}
    event.update(fields)
    return {k: v for k, v in event.items() if v is not ...}


# ---- valid events -------------------------------------------------------------------

VALID = [
    base(
        event="deployed",
        role="canary",
        traffic_share=0.05,
        reference={"path": "refs/fraud-v8.jsonl"},
        actor="github-actions run 4711",
        reason="retrain after drift",
        trigger="e8b564d3d2af" * 5,
    ),
    base(event="deployed", role="stable", reference={"from_stream": 5000}),
    base(event="deployed", role="shadow", traffic_share=1),
    base(event="promoted"),
    base(event="promoted", reference={"path": "refs/fraud-v8.csv"}),
    base(event="rolled_back", trigger="k" * 64, reason="canary regressed"),
    base(event="retired", ts=0),
    base(event="retired", actor=""),  # optional free text may be empty
    base(event="promoted", extra={"from": "a newer producer"}),  # unknown top-level fields are ignored
]


@pytest.mark.parametrize("value", VALID)
def test_valid_events_decode_and_round_trip(value):
    event = decode_lifecycle(rec(orjson.dumps(value)))
    assert isinstance(event, LifecycleEvent)
    expected = {k: v for k, v in value.items() if k != "extra"}
    assert event.to_dict() == expected
    assert decode_lifecycle(rec(encode_lifecycle(event))) == event
    assert validate_lifecycle(value) == event
    assert lifecycle_key(event) == b"fraud"


def test_the_issue_example_is_valid():
    raw = (
        b'{"model": "fraud", "version": "v8", "event": "deployed", "role": "canary",'
        b' "traffic_share": 0.05, "ts": 1763900000.0, "reference": {"path": "refs/fraud-v8.jsonl"},'
        b' "actor": "github-actions run 4711", "reason": "retrain after drift", "trigger": "abc"}'
    )
    event = decode_lifecycle(rec(raw))
    assert event == LifecycleEvent(
        "fraud",
        "v8",
        "deployed",
        1763900000.0,
        role="canary",
        traffic_share=0.05,
        reference=Reference(path="refs/fraud-v8.jsonl"),
        actor="github-actions run 4711",
        reason="retrain after drift",
        trigger="abc",
    )
    assert event.reference.kind == "path"


# ---- invalid events: reason and field -------------------------------------------------

INVALID = [
    # whole record
    (b"", "empty_value", None),
    (b"{not json", "invalid_json", None),
    (b'{"model": "fraud"', "invalid_json", None),
    (b"[" * 100_000, "invalid_json", None),
    (b"\xff\xfe{}", "invalid_json", None),
    (b"[1, 2]", "not_an_object", None),
    (b'"deployed"', "not_an_object", None),
    (b"42", "not_an_object", None),
    # a number beyond float64 is refused by the JSON parser itself (as in decode.py)
    (orjson.dumps(base(ts=1.0)).replace(b"1.0", b"1e999"), "invalid_json", None),
    # required fields
    (base(model=...), "missing_field", "model"),
    (base(version=...), "missing_field", "version"),
    (base(event=...), "missing_field", "event"),
    (base(ts=...), "missing_field", "ts"),
    # types
    (base(model=7), "wrong_type", "model"),
    (base(version=["v8"]), "wrong_type", "version"),
    (base(event=1), "wrong_type", "event"),
    (base(ts="yesterday"), "wrong_type", "ts"),
    (base(ts=True), "wrong_type", "ts"),
    (base(ts=None), "wrong_type", "ts"),
    (base(event="deployed", role=1), "wrong_type", "role"),
    (base(event="deployed", role="canary", traffic_share="5%"), "wrong_type", "traffic_share"),
    (base(actor=4711), "wrong_type", "actor"),
    (base(reason={"why": "drift"}), "wrong_type", "reason"),
    (base(trigger=123), "wrong_type", "trigger"),
    # values
    (base(event="launched"), "invalid_value", "event"),
    (base(event="rolled-back"), "invalid_value", "event"),  # the CLI's spelling is not the contract's
    (base(event="deployed", role="primary"), "invalid_value", "role"),
    (base(event="deployed", role="canary", traffic_share=0), "invalid_value", "traffic_share"),
    (base(event="deployed", role="canary", traffic_share=-0.1), "invalid_value", "traffic_share"),
    (base(event="deployed", role="canary", traffic_share=1.5), "invalid_value", "traffic_share"),
    (base(model=""), "invalid_value", "model"),
    (base(version=""), "invalid_value", "version"),
    (base(version="v" * (MAX_NAME + 1)), "invalid_value", "version"),
    (base(trigger=""), "invalid_value", "trigger"),
    (base(actor="a" * 10_000), "invalid_value", "actor"),
    (base(reason="r" * 10_000), "invalid_value", "reason"),
    # reference
    (base(reference="refs/fraud-v8.jsonl"), "invalid_reference", "reference"),
    (base(reference={}), "invalid_reference", "reference"),
    (base(reference={"path": "a.jsonl", "from_stream": 100}), "invalid_reference", "reference"),
    (base(reference={"pth": "a.jsonl"}), "invalid_reference", "reference"),
    (base(reference={"path": ""}), "invalid_reference", "reference.path"),
    (base(reference={"path": 7}), "invalid_reference", "reference.path"),
    (base(reference={"from_stream": 0}), "invalid_reference", "reference.from_stream"),
    (base(reference={"from_stream": -5}), "invalid_reference", "reference.from_stream"),
    (base(reference={"from_stream": 10**9}), "invalid_reference", "reference.from_stream"),
    (base(reference={"from_stream": 1.5}), "invalid_reference", "reference.from_stream"),
    (base(reference={"from_stream": True}), "invalid_reference", "reference.from_stream"),
    # fields the event does not take
    (base(event="deployed"), "field_not_for_event", "role"),
    (base(event="deployed", traffic_share=0.05), "field_not_for_event", "role"),
    (base(event="promoted", role="stable"), "field_not_for_event", "role"),
    (base(event="rolled_back", role="canary"), "field_not_for_event", "role"),
    (base(event="promoted", traffic_share=1.0), "field_not_for_event", "traffic_share"),
    (base(event="rolled_back", reference={"from_stream": 100}), "field_not_for_event", "reference"),
    (base(event="retired", reference={"path": "a.csv"}), "field_not_for_event", "reference"),
]


def _raw(value) -> bytes:
    return value if isinstance(value, bytes) else orjson.dumps(value)


@pytest.mark.parametrize("value, reason, field", INVALID)
def test_invalid_event_is_dead_lettered_with_reason_and_field(value, reason, field):
    raw = _raw(value)
    good = orjson.dumps(VALID[0])
    out = decode_lifecycle_batch([rec(good, 0), rec(raw, 1), rec(good, 2)])
    assert [e.version for e in out.events] == ["v8", "v8"]
    assert [r.offset for r in out.sources] == [0, 2]
    [letter] = out.dead_letters
    assert (letter.reason, letter.offset, letter.value, letter.key, letter.topic) == (reason, 1, raw, b"fraud", TOPIC)
    assert len(letter.detail) <= MAX_DETAIL
    if field is not None:
        assert letter.detail.startswith(f"{field}: ")
    if not isinstance(value, bytes):
        with pytest.raises(LifecycleContractError) as info:
            validate_lifecycle(value)
        assert (info.value.reason, info.value.field) == (reason, field)


def test_every_reason_code_is_exercised():
    assert {reason for _, reason, _ in INVALID} == set(LIFECYCLE_REASONS)


def test_a_long_quoted_value_leaves_a_bounded_detail():
    letter = decode_lifecycle(rec(orjson.dumps(base(event="x" * 100_000))))
    assert isinstance(letter, DeadLetter) and letter.reason == "invalid_value"
    assert len(letter.detail) <= MAX_DETAIL


def test_validate_refuses_what_json_cannot_hold():
    with pytest.raises(LifecycleContractError) as info:
        validate_lifecycle(base(ts=float("nan")))  # encoded as null: not a number
    assert (info.value.reason, info.value.field) == ("wrong_type", "ts")
    with pytest.raises(LifecycleContractError) as info:
        validate_lifecycle(base(actor=object()))
    assert info.value.reason == "wrong_type"


# ---- hostile input ------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "model",
        "version",
        "event",
        "ts",
        "role",
        "traffic_share",
        "reference",
        "actor",
        "reason",
        "trigger",
        "path",
        "from_stream",
    ]
)
_near_events = st.dictionaries(
    _fields,
    st.one_of(
        _json_values,
        st.sampled_from(["deployed", "promoted", "rolled_back", "retired", "stable", "canary", "shadow", "fraud"]),
        st.fixed_dictionaries({}, optional={"path": _json_values, "from_stream": _json_values}),
    ),
    max_size=10,
)


def _check_outcome(raw: bytes) -> None:
    result = decode_lifecycle(rec(raw))
    if isinstance(result, DeadLetter):
        assert result.reason in LIFECYCLE_REASONS
        assert result.value == raw and len(result.detail) <= MAX_DETAIL
    else:
        assert isinstance(result, LifecycleEvent)
        assert decode_lifecycle(rec(encode_lifecycle(result))) == result


@given(st.binary(max_size=300))
def test_hostile_bytes_never_raise(raw):
    _check_outcome(raw)


@given(_near_events)
def test_near_miss_events_never_raise(value):
    _check_outcome(json.dumps(value).encode())  # json: integers beyond 64 bits too


@given(st.sampled_from(VALID), st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8))
def test_corrupted_valid_events_never_raise(value, at, junk):
    raw = orjson.dumps(value)
    at = min(at, len(raw))
    _check_outcome(raw[:at] + junk + raw[at:])


# ---- replay files -------------------------------------------------------------------


def test_a_replay_file_reads_as_records_in_file_order(tmp_path):
    path = tmp_path / "lifecycle.jsonl"
    lines = [
        orjson.dumps(base(event="deployed", role="stable", ts=100.0, version="v1")),
        b"",
        b"{broken",
        orjson.dumps(base(event="deployed", role="canary", traffic_share=0.05, ts=200, version="v2")),
        orjson.dumps(base(event="promoted", ts=300.0, version="v2")) + b"\r",
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    got = list(read_lifecycle_file(path, TOPIC))
    # (ts, line number, record); the broken line keeps the previous ts; blank lines are skipped
    assert [(ts, n) for ts, n, _ in got] == [(100.0, 0), (100.0, 2), (200.0, 3), (300.0, 4)]
    assert all(
        r.topic == TOPIC and r.partition == 0 and r.offset == n and r.key is None and r.timestamp == -1
        for _, n, r in got
    )
    out = decode_lifecycle_batch(r for _, _, r in got)
    assert [(e.event, e.version) for e in out.events] == [("deployed", "v1"), ("deployed", "v2"), ("promoted", "v2")]
    assert [(d.reason, d.offset) for d in out.dead_letters] == [("invalid_json", 2)]


def test_a_missing_replay_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_lifecycle_file(tmp_path / "nope.jsonl", TOPIC)


# ---- the CLI against the embedded broker --------------------------------------------


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", "lifecycle", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


@pytest.mark.kafka
def test_cli_produces_a_checked_event_to_the_lifecycle_topic(broker):
    topic = f"model-lifecycle-{time.monotonic_ns()}"
    broker.create_topics([topic], partitions=2)
    done = _cli(
        "deployed",
        "--model",
        "fraud",
        "--version",
        "v8",
        "--role",
        "canary",
        "--traffic-share",
        "0.05",
        "--reference",
        "refs/fraud-v8.jsonl",
        "--actor",
        "github-actions run 4711",
        "--reason",
        "retrain after drift",
        "--trigger",
        "e8b564d3d2af",
        "--ts",
        "1763900000.0",
        "--bootstrap-servers",
        broker.bootstrap_servers,
        "--topic",
        topic,
    )
    assert done.returncode == 0, done.stderr
    assert "acknowledged" in done.stdout
    [(key, value)] = read_topic(broker.bootstrap_servers, topic, 1)
    assert key == b"fraud"
    assert json.loads(value) == {
        "model": "fraud",
        "version": "v8",
        "event": "deployed",
        "role": "canary",
        "traffic_share": 0.05,
        "ts": 1763900000.0,
        "reference": {"path": "refs/fraud-v8.jsonl"},
        "actor": "github-actions run 4711",
        "reason": "retrain after drift",
        "trigger": "e8b564d3d2af",
    }
    # what the CLI produced is what the monitor accepts
    assert isinstance(decode_lifecycle(rec(value)), LifecycleEvent)

    # rolled-back (the CLI's spelling) and --reference-from-stream on the same topic, in order
    assert (
        _cli(
            "rolled-back",
            "--model",
            "fraud",
            "--version",
            "v8",
            "--trigger",
            "e8b564d3d2af",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--topic",
            topic,
        ).returncode
        == 0
    )
    assert (
        _cli(
            "deployed",
            "--model",
            "fraud",
            "--version",
            "v9",
            "--role",
            "stable",
            "--reference-from-stream",
            "2000",
            "--bootstrap-servers",
            broker.bootstrap_servers,
            "--topic",
            topic,
        ).returncode
        == 0
    )
    events = [json.loads(v) for k, v in read_topic(broker.bootstrap_servers, topic, 3)]
    assert [(e["event"], e["version"]) for e in events] == [
        ("deployed", "v8"),
        ("rolled_back", "v8"),
        ("deployed", "v9"),
    ]  # keyed by model: one partition
    assert events[2]["reference"] == {"from_stream": 2000}
    assert time.time() - 600 < events[1]["ts"] <= time.time()  # --ts defaults to now


@pytest.mark.parametrize(
    "args, flag",
    [
        (["deployed", "--model", "fraud", "--version", "v8"], "--role"),
        (
            ["deployed", "--model", "fraud", "--version", "v8", "--role", "canary", "--traffic-share", "1.5"],
            "--traffic-share",
        ),
        (["promoted", "--model", "fraud", "--version", "v8", "--role", "stable"], "--role"),
        (["deployed", "--model", "fraud", "--version", "", "--role", "canary"], "--version"),
        (
            ["deployed", "--model", "fraud", "--version", "v8", "--role", "canary", "--reference-from-stream", "0"],
            "--reference-from-stream",
        ),
        (["retired", "--model", "fraud", "--version", "v8", "--reference", "refs/a.jsonl"], "--reference"),
    ],
)
def test_cli_refuses_an_invalid_event_with_exit_2_naming_the_flag(args, flag):
    import socket

    # No broker: the event is checked before any connection (a refused connection
    # would exit 3), so nothing can have been produced.
    with socket.socket() as held:  # bound, not listening: connections are refused
        held.bind(("127.0.0.1", 0))
        done = _cli(*args, "--bootstrap-servers", f"127.0.0.1:{held.getsockname()[1]}", "--topic", "model-lifecycle")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"driftline: {flag}: "), done.stderr


def test_cli_exits_3_when_the_broker_does_not_acknowledge():
    import socket

    with socket.socket() as held:  # bound, not listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        done = _cli(
            "retired",
            "--model",
            "fraud",
            "--version",
            "v1",
            "--bootstrap-servers",
            f"127.0.0.1:{port}",
            "--timeout",
            "2",
        )
    assert done.returncode == 3, done.stderr
    assert "was not acknowledged" in done.stderr and "--ts" in done.stderr
