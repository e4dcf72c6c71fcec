"""Request bodies for each kind of webhook target (``WebhookTarget.preset``).

- ``generic``: the driftline trigger payload as JSON (schema ``driftline.trigger/v1``).
- ``github``: a ``repository_dispatch`` event: ``{"event_type", "client_payload"}`` with
  ``Authorization: Bearer <token>``, for ``https://api.github.com/repos/OWNER/REPO/dispatches``.
- ``gitlab``: the pipeline trigger API, form fields ``token``, ``ref`` and
  ``variables[DRIFTLINE_*]``, for ``https://gitlab.example/api/v4/projects/ID/trigger/pipeline``.
- ``slack``: a Slack-compatible incoming-webhook message (``text`` and ``blocks``) for
  people.

The generic payload is what the outbox stores; a target's body is rendered from it at
delivery time, so tokens never reach the outbox file.

Examples
--------
>>> payload = {"schema": "driftline.trigger/v1", "idempotency_key": "ab12", "model": "fraud",
...            "version": "v7", "action": "retrain", "reason": "2 alarms", "evidence": [],
...            "first_index": 0, "last_index": 999, "created_at": 1763900400.0}
>>> from driftline.monitor.config import WebhookTarget
>>> target = WebhookTarget(name="ci", url="https://api.github.com/repos/o/r/dispatches",
...                        preset="github", token_env="GH_TOKEN")
>>> request = render(target, payload, token="t0ken")
>>> request.headers["Accept"], request.content_type
('application/vnd.github+json', 'application/json')
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from driftline.monitor.config import WebhookTarget
from driftline.sinks.policy import Trigger

__all__ = [
    "PAYLOAD_SCHEMA",
    "GITHUB_CLIENT_PAYLOAD_MAX_KEYS",
    "TOKEN_REQUIRED",
    "RenderedRequest",
    "trigger_payload",
    "render",
]

PAYLOAD_SCHEMA = "driftline.trigger/v1"
GITHUB_CLIENT_PAYLOAD_MAX_KEYS = 10
"""GitHub rejects a ``client_payload`` with more top-level properties than this."""

# Which payload keys GitHub keeps first when the payload has to be trimmed.
_GITHUB_KEY_PRIORITY = (
    "schema",
    "idempotency_key",
    "model",
    "version",
    "action",
    "first_index",
    "last_index",
    "reason",
    "created_at",
    "evidence",
)
_SLACK_EVIDENCE_LINES = 10


@dataclass(frozen=True)
class RenderedRequest:
    """A request body and its preset-specific headers (signature headers come later)."""

    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _reason(trigger: Trigger) -> str:
    kinds = Counter(a.kind for a in trigger.alarms)
    features = sorted({a.feature for a in trigger.alarms if a.feature is not None})
    kinds_text = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    shown = ", ".join(features[:5])
    if len(features) > 5:
        shown += f" and {len(features) - 5} more"
    on = f" on {len(features)} feature(s) ({shown})" if features else ""
    return (
        f"{trigger.action} {trigger.model} {trigger.version}: {len(trigger.alarms)} alarm(s) "
        f"({kinds_text}){on} between events {trigger.first_index} and {trigger.last_index}"
    )


def trigger_payload(trigger: Trigger, created_at: float) -> dict[str, Any]:
    """The generic (``driftline.trigger/v1``) payload of a trigger.

    Parameters
    ----------
    trigger
        What the policy decided.
    created_at
        Wall-clock time the trigger is recorded (Unix seconds).
    """
    return {
        "schema": PAYLOAD_SCHEMA,
        "idempotency_key": trigger.idempotency_key,
        "model": trigger.model,
        "version": trigger.version,
        "action": trigger.action,
        "reason": _reason(trigger),
        "evidence": [a.to_dict() for a in trigger.alarms],
        "first_index": trigger.first_index,
        "last_index": trigger.last_index,
        "created_at": created_at,
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _generic(target: WebhookTarget, payload: dict[str, Any], token: str | None) -> RenderedRequest:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return RenderedRequest(_json(payload), "application/json", headers)


def _github(target: WebhookTarget, payload: dict[str, Any], token: str | None) -> RenderedRequest:
    keys = [k for k in _GITHUB_KEY_PRIORITY if k in payload]
    keys += [k for k in payload if k not in keys]
    client_payload = {k: payload[k] for k in keys[:GITHUB_CLIENT_PAYLOAD_MAX_KEYS]}
    body = {
        "event_type": target.github_event_type.format(action=payload["action"]),
        "client_payload": client_payload,
    }
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return RenderedRequest(_json(body), "application/json", headers)


def _gitlab(target: WebhookTarget, payload: dict[str, Any], token: str | None) -> RenderedRequest:
    fields = {
        "token": token or "",
        "ref": target.gitlab_ref,
        "variables[DRIFTLINE_ACTION]": payload["action"],
        "variables[DRIFTLINE_MODEL]": payload["model"],
        "variables[DRIFTLINE_VERSION]": payload["version"],
        "variables[DRIFTLINE_IDEMPOTENCY_KEY]": payload["idempotency_key"],
        "variables[DRIFTLINE_PAYLOAD]": _json(payload).decode("utf-8"),
    }
    return RenderedRequest(urlencode(fields).encode("ascii"), "application/x-www-form-urlencoded")


def _slack(target: WebhookTarget, payload: dict[str, Any], token: str | None) -> RenderedRequest:
    evidence = payload["evidence"]
    lines = []
    for alarm in evidence[:_SLACK_EVIDENCE_LINES]:
        feature = f" `{alarm['feature']}`" if alarm.get("feature") else ""
        statistic = alarm.get("statistic")
        value = "n/a" if statistic is None else f"{statistic:.4g}"
        lines.append(f"• {alarm['kind']}{feature} by {alarm['detector']}: {value}")
    if len(evidence) > _SLACK_EVIDENCE_LINES:
        lines.append(f"• … and {len(evidence) - _SLACK_EVIDENCE_LINES} more")
    title = f"driftline: {payload['action']} requested for {payload['model']} {payload['version']}"
    body = {
        "text": f"{title}: {payload['reason']}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": payload["reason"][:3000]}},
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": f"*Model*\n{payload['model']}"},
                    {"type": "mrkdwn", "text": f"*Version*\n{payload['version']}"},
                    {"type": "mrkdwn", "text": f"*Action*\n{payload['action']}"},
                    {"type": "mrkdwn", "text": f"*Events*\n{payload['first_index']}–{payload['last_index']}"},
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000] or "-"}},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"idempotency key `{payload['idempotency_key']}`"},
                ],
            },
        ],
    }
    return RenderedRequest(_json(body), "application/json")


_PRESETS: dict[str, Callable[[WebhookTarget, dict[str, Any], str | None], RenderedRequest]] = {
    "generic": _generic,
    "github": _github,
    "gitlab": _gitlab,
    "slack": _slack,
}

TOKEN_REQUIRED: frozenset[str] = frozenset({"github", "gitlab"})
"""Presets that cannot work without ``token_env``."""


def render(target: WebhookTarget, payload: dict[str, Any], token: str | None) -> RenderedRequest:
    """The body and headers of a request to ``target`` for a trigger ``payload``.

    Parameters
    ----------
    target
        The target; ``target.preset`` chooses the format.
    payload
        The generic payload (:func:`trigger_payload`).
    token
        The value of ``target.token_env`` (None when not configured); for ``generic`` it
        is sent as a bearer token when given.
    """
    return _PRESETS[target.preset](target, payload, token)
