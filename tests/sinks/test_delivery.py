"""The pure parts of delivery and presets: backoff, Retry-After, request rendering."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from driftline.monitor.config import WebhookTarget
from driftline.sinks.delivery import backoff_delay, parse_retry_after
from driftline.sinks.presets import GITHUB_CLIENT_PAYLOAD_MAX_KEYS, render


@given(attempt=st.integers(1, 200), base=st.floats(0.001, 10), cap=st.floats(0.001, 1000), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_the_capped_exponential(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = backoff_delay(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 60))


def test_backoff_grows_then_stops_at_the_cap() -> None:
    rng = random.Random(1)
    means = [sum(backoff_delay(a, 1.0, 8.0, rng) for _ in range(2000)) / 2000 for a in (1, 2, 3, 4, 5, 6)]
    assert means[0] == pytest.approx(0.5, rel=0.1)
    assert means[2] == pytest.approx(2.0, rel=0.1)
    assert means[4] == pytest.approx(4.0, rel=0.1) and means[5] == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("12", 12.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_seconds_or_http_date(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=1445412450.0) == expected


PAYLOAD = {
    "schema": "driftline.trigger/v1",
    "idempotency_key": "k",
    "model": "fraud",
    "version": "v7",
    "action": "rollback",
    "reason": "r",
    "evidence": [],
    "first_index": 0,
    "last_index": 9,
    "created_at": 1.0,
}


def test_github_keeps_the_client_payload_within_its_key_limit() -> None:
    target = WebhookTarget(name="gh", url="https://api.github.com/repos/o/r/dispatches", preset="github", token_env="T")
    wide = {**PAYLOAD, "extra_1": 1, "extra_2": 2}
    body = render(target, wide, token="t").body
    client_payload = json.loads(body)["client_payload"]
    assert len(client_payload) == GITHUB_CLIENT_PAYLOAD_MAX_KEYS
    assert set(client_payload) == set(PAYLOAD)  # the payload's own keys come first
    assert json.loads(body)["event_type"] == "driftline-rollback"


def test_generic_sends_a_token_as_bearer_only_when_configured() -> None:
    target = WebhookTarget(name="g", url="http://127.0.0.1:1/h")
    assert render(target, PAYLOAD, token=None).headers == {}
    assert render(target, PAYLOAD, token="t").headers == {"Authorization": "Bearer t"}


def test_slack_lists_at_most_ten_evidence_lines() -> None:
    evidence = [{"kind": "feature_drift", "feature": f"f{i}", "detector": "psi", "statistic": 0.3} for i in range(14)]
    target = WebhookTarget(name="s", url="http://127.0.0.1:1/h", preset="slack")
    blocks = json.loads(render(target, {**PAYLOAD, "evidence": evidence}, None).body)["blocks"]
    lines = blocks[3]["text"]["text"].splitlines()
    assert len(lines) == 11 and lines[-1] == "• … and 4 more"
