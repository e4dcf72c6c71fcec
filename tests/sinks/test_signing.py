"""driftline.sinks.signing: the signature scheme receivers verify."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.monitor.config import TriggerPolicySettings
from driftline.sinks.policy import TriggerPolicy
from driftline.sinks.presets import trigger_payload
from driftline.sinks.signing import sign, verify

NOW = 1_763_900_000


def test_header_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    body = b'{"schema":"driftline.trigger/v1"}'
    expected = hmac.new(b"k", b"1763900000." + body, hashlib.sha256).hexdigest()
    assert sign("k", body, NOW) == f"t=1763900000,v1={expected}"


@given(secret=st.text(min_size=1), body=st.binary(), skew=st.integers(-300, 300))
def test_a_signature_verifies_within_the_tolerance(secret: str, body: bytes, skew: int) -> None:
    assert verify(secret, body, sign(secret, body, NOW), now=NOW + skew)


@given(body=st.binary(), other=st.binary())
def test_another_body_does_not_verify(body: bytes, other: bytes) -> None:
    if body != other:
        assert not verify("k", other, sign("k", body, NOW), now=NOW)


def test_another_secret_does_not_verify() -> None:
    assert not verify("k2", b"x", sign("k1", b"x", NOW), now=NOW)


def test_stale_or_future_signatures_are_refused() -> None:
    header = sign("k", b"x", NOW)
    assert not verify("k", b"x", header, now=NOW + 301)
    assert not verify("k", b"x", header, now=NOW - 301)
    assert verify("k", b"x", header, tolerance_seconds=1000, now=NOW + 301)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    digest = sign("k", b"x", NOW).split(",")[1]
    assert not verify("k", b"x", f"t={NOW + 10},{digest}", now=NOW + 10)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "v1=00", f"t={NOW}", f"t={NOW},v1"])
def test_malformed_headers_are_refused(header: str | None) -> None:
    assert not verify("k", b"x", header, now=NOW)


def test_any_of_several_v1_digests_may_match_for_secret_rotation() -> None:
    new = sign("new", b"x", NOW).split(",")[1]
    old = sign("old", b"x", NOW).split(",")[1]
    header = f"t={NOW},{old},{new}"
    assert verify("new", b"x", header, now=NOW)
    assert verify("old", b"x", header, now=NOW)
    assert not verify("other", b"x", header, now=NOW)


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_block(after: str, language: str) -> str:
    text = README.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start : text.index("```", start)]


def test_the_readme_verification_snippet_verifies_real_signatures() -> None:
    namespace: dict = {}
    exec(readme_block("Receivers should verify", "python"), namespace)  # noqa: S102
    readme_verify = namespace["verify"]
    body = b'{"schema":"driftline.trigger/v1"}'
    header = sign("k", body)
    assert readme_verify("k", body, header)
    assert not readme_verify("k", body + b" ", header)
    assert not readme_verify("other", body, header)
    assert not readme_verify("k", body, sign("k", body, timestamp=NOW))  # stale


def test_the_readme_payload_schema_lists_the_payload_keys(make_alarm) -> None:
    schema = json.loads(readme_block("described by this JSON Schema", "json"))
    (trigger,) = TriggerPolicy(TriggerPolicySettings()).observe([make_alarm()])
    payload = trigger_payload(trigger, created_at=1.0)
    assert set(schema["required"]) == set(schema["properties"]) == set(payload)
    alarm_schema = schema["properties"]["evidence"]["items"]
    assert set(alarm_schema["required"]) == set(payload["evidence"][0])
