"""The trigger policy: when alarms become a retrain or rollback request.

The engine suggests an action per alarm (``retrain`` for drift, performance and
data-quality alarms on the stable version, ``rollback`` for ``regression`` alarms on a
newer version, ``none`` otherwise). The policy decides when those suggestions add up to
a :class:`Trigger`, which the webhook sink records in its outbox and delivers.

Rules, per (model, action):

- only alarms whose ``action`` is ``retrain`` or ``rollback`` and whose ``kind`` is in
  ``settings.kinds`` count; a ``promote`` alarm (``promote_ready``, said once per canary
  by the non-inferiority test, off by default) is a trigger by itself, whatever the
  kinds and ``min_alarms``;
- they are kept as evidence while they are within ``window_seconds`` of the newest
  counted alarm, in *event time* (``alarm.ts``), never the wall clock: a replay of the
  same stream gives the same triggers with the same idempotency keys;
- a trigger fires when the evidence holds at least ``min_alarms`` alarms and, for
  ``retrain``, at least ``min_features`` distinct features (an alarm without a feature,
  such as a concept-drift alarm, counts as one feature of its own) and, when
  ``min_segments`` is set, alarms of at least ``min_segments`` distinct segments (an
  alarm of the whole model, without ``segment``, counts as every segment: the model as
  a whole is affected);
- after a trigger the evidence is cleared and alarms earlier than
  ``trigger.ts + cooldown_seconds`` are ignored: they describe the problem the trigger
  already reported.

The state is bounded (evidence is pruned to the window and to ``max_evidence`` alarms
per route) and exported with :meth:`TriggerPolicy.state_dict` for checkpoints.

Examples
--------
>>> from driftline.monitor.alarms import Alarm
>>> from driftline.monitor.config import TriggerPolicySettings
>>> policy = TriggerPolicy(TriggerPolicySettings(min_alarms=2))
>>> def alarm(ts, feature):
...     return Alarm("fraud", "v7", "feature_drift", "ks", feature, 0.3, 0.1, 1e-6,
...                  int(ts) * 10, int(ts) * 10 + 9, ts, "retrain")
>>> policy.observe([alarm(100.0, "amount")])
[]
>>> [t.action for t in policy.observe([alarm(160.0, "country")])]
['retrain']
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from driftline.monitor.alarms import TRIGGER_ACTIONS, Alarm
from driftline.monitor.config import TriggerPolicySettings

__all__ = ["Trigger", "TriggerPolicy", "TRIGGER_ACTIONS", "idempotency_key"]

# TRIGGER_ACTIONS (re-exported here): the actions a trigger can request, written once in
# driftline.monitor.alarms.

_STATE_FORMAT = 1


def idempotency_key(
    model: str,
    version: str,
    action: str,
    origins: Iterable[str | None],
    first_index: int,
    last_index: int,
    evidence: Iterable[Alarm] = (),
) -> str:
    """The idempotency key of a trigger: a SHA-256 hex digest of what identifies it.

    A trigger is identified by its model, version and action and by where its evidence
    sits in the source: the evidence window (the smallest ``first_index`` and the
    largest ``last_index`` of its alarms) counted from the model's ``origin``, the
    source position of the first prediction record the model's state counted. The same trigger
    re-emitted (a replay after a crash, a restart from a checkpoint) has the same
    origin and indices, so the same key; any two different triggers differ in one of
    them, whichever instance fired them: state rebuilt from scratch (a rebalance to
    another instance, a wiped checkpoint) starts at a later position, so with another
    origin. Two triggers on the same window (a cooldown of 0 and two alarms of one
    window) differ in their ``evidence``: what each alarm says (kind, detector, feature,
    window) is part of the key, and so is an alarm's ``segment`` when it has one (the key
    of evidence without segments is the same as before segments existed).

    Examples
    --------
    >>> idempotency_key("fraud", "v7", "retrain", ["predictions/3/1200"], 0, 999)[:12]
    'e8b564d3d2af'
    """
    material = json.dumps(
        [
            "driftline.trigger/v2",
            model,
            version,
            action,
            sorted({o or "" for o in origins}),
            int(first_index),
            int(last_index),
            sorted(
                [
                    a.kind,
                    a.detector,
                    a.feature or "",
                    a.first_index,
                    a.last_index,
                    *(() if a.segment is None else (a.segment,)),
                ]
                for a in evidence
            ),
        ]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Trigger:
    """A decision to request a retrain or a rollback.

    Attributes
    ----------
    model, version
        The model, and the version of the alarm that completed the evidence (for a
        rollback: the newer version that regressed).
    action
        ``retrain`` or ``rollback``.
    alarms
        The evidence, oldest first (event time).
    idempotency_key
        See :func:`idempotency_key`.
    first_index, last_index
        The evidence window in the model's prediction events.
    ts
        Event time of the newest evidence alarm.
    """

    model: str
    version: str
    action: str
    alarms: tuple[Alarm, ...]
    idempotency_key: str
    first_index: int
    last_index: int
    ts: float


@dataclass
class _Route:
    """Evidence and cooldown of one (model, action)."""

    evidence: list[Alarm] = field(default_factory=list)  # sorted by ts
    latest_ts: float = -math.inf
    cooldown_until: float = -math.inf


def _ts(alarm: Alarm) -> float:
    return alarm.ts


def _segments_enough(evidence: list[Alarm], min_segments: int) -> bool:
    """Whether the evidence spans ``min_segments`` segments (an alarm of the whole model
    spans them all)."""
    segments = set()
    for a in evidence:
        if a.segment is None:
            return True
        segments.add(a.segment)
    return len(segments) >= min_segments


class TriggerPolicy:
    """Turns alarms into retrain / rollback triggers (see the module docstring).

    Parameters
    ----------
    settings
        ``webhooks.policy`` of the configuration.
    max_evidence
        Alarms kept per (model, action) at most; the oldest go first beyond it.
    """

    def __init__(self, settings: TriggerPolicySettings, max_evidence: int = 1000) -> None:
        if max_evidence < 1:
            raise ValueError(f"max_evidence must be a positive integer, got {max_evidence!r}")
        self.settings = settings
        self.max_evidence = max_evidence
        self._kinds = frozenset(settings.kinds)
        self.reset()

    def reset(self) -> None:
        """Forget all evidence and cooldowns."""
        self._routes: dict[tuple[str, str], _Route] = {}

    def observe(self, alarms: Iterable[Alarm]) -> list[Trigger]:
        """Count ``alarms`` (in the order given) and return the triggers they complete.

        Parameters
        ----------
        alarms
            Alarms of one batch; those that do not count are ignored.

        Returns
        -------
        list of Trigger
            In the order they fired; empty most of the time.
        """
        triggers: list[Trigger] = []
        settings = self.settings
        for alarm in alarms:
            # a promote verdict is its own trigger (its targets opt in through their actions):
            # it is said once per canary, so neither the kinds nor min_alarms hold it back
            promote = alarm.action == "promote"
            if alarm.action not in TRIGGER_ACTIONS or (alarm.kind not in self._kinds and not promote):
                continue
            route = self._routes.setdefault((alarm.model, alarm.action), _Route())
            if alarm.ts < route.cooldown_until:
                continue
            route.latest_ts = max(route.latest_ts, alarm.ts)
            horizon = route.latest_ts - settings.window_seconds
            if alarm.ts < horizon:
                continue  # arrived late, already outside the window
            evidence = route.evidence
            bisect.insort_right(evidence, alarm, key=_ts)
            drop = bisect.bisect_left(evidence, horizon, key=_ts)
            drop = max(drop, len(evidence) - self.max_evidence)
            if drop > 0:
                del evidence[:drop]
            if len(evidence) < settings.min_alarms and not promote:
                continue
            if alarm.action == "retrain" and (len({a.feature for a in evidence}) < settings.min_features):
                continue
            if (
                alarm.action == "retrain"
                and settings.min_segments
                and not _segments_enough(evidence, settings.min_segments)
            ):
                continue
            triggers.append(self._fire(alarm, route))
        return triggers

    def _fire(self, alarm: Alarm, route: _Route) -> Trigger:
        evidence = tuple(route.evidence)
        first = min(a.first_index for a in evidence)
        last = max(a.last_index for a in evidence)
        route.evidence = []
        route.cooldown_until = route.latest_ts + self.settings.cooldown_seconds
        return Trigger(
            model=alarm.model,
            version=alarm.version,
            action=alarm.action,
            alarms=evidence,
            idempotency_key=idempotency_key(
                alarm.model, alarm.version, alarm.action, (a.origin for a in evidence), first, last, evidence
            ),
            first_index=first,
            last_index=last,
            ts=route.latest_ts,
        )

    def state_dict(self) -> dict[str, Any]:
        """The policy's state as plain JSON-compatible values (for checkpoints)."""
        routes = []
        for (model, action), route in sorted(self._routes.items()):
            routes.append(
                {
                    "model": model,
                    "action": action,
                    "latest_ts": route.latest_ts if math.isfinite(route.latest_ts) else None,
                    "cooldown_until": (route.cooldown_until if math.isfinite(route.cooldown_until) else None),
                    "evidence": [a.to_dict(origin=True) for a in route.evidence],
                }
            )
        return {"format": _STATE_FORMAT, "routes": routes}

    def state_for(self, models: Iterable[str]) -> dict[str, Any]:
        """:meth:`state_dict` of the routes of ``models`` only (a model's part, which
        follows its partition)."""
        names = set(models)
        state = self.state_dict()
        state["routes"] = [r for r in state["routes"] if r["model"] in names]
        return state

    def adopt(self, state: dict[str, Any]) -> None:
        """Take the routes of a :meth:`state_for` (or :meth:`state_dict`) output,
        replacing this policy's routes of the same (model, action).

        Raises
        ------
        ValueError
            If ``state`` is not a state of this format.
        """
        other = TriggerPolicy.from_state(self.settings, state, max_evidence=self.max_evidence)
        self._routes.update(other._routes)

    def drop(self, models: Iterable[str]) -> None:
        """Forget the evidence and cooldowns of ``models`` (their partition moved)."""
        names = set(models)
        for key in [k for k in self._routes if k[0] in names]:
            del self._routes[key]

    @classmethod
    def from_state(
        cls, settings: TriggerPolicySettings, state: dict[str, Any], max_evidence: int = 1000
    ) -> TriggerPolicy:
        """Rebuild a policy from :meth:`state_dict` output.

        Raises
        ------
        ValueError
            If ``state`` is not a state of this format.
        """
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                f"trigger policy state has format {state.get('format')!r}, expected "
                f"{_STATE_FORMAT}: it was written by another driftline version; delete the "
                "checkpoint to start the policy afresh"
            )
        policy = cls(settings, max_evidence=max_evidence)
        for entry in state["routes"]:
            route = _Route(
                evidence=sorted((Alarm.from_dict(a) for a in entry["evidence"]), key=_ts),
                latest_ts=-math.inf if entry["latest_ts"] is None else float(entry["latest_ts"]),
                cooldown_until=(-math.inf if entry["cooldown_until"] is None else float(entry["cooldown_until"])),
            )
            policy._routes[(entry["model"], entry["action"])] = route
        return policy
