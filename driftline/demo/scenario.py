"""``driftline demo``: the whole continuous-delivery loop on one machine, in well under a minute.

What it runs, all on 127.0.0.1 and all stopped at the end (also on Ctrl-C):

1. an embedded Kafka-protocol broker (:class:`driftline.demo.embedded_broker.EmbeddedBroker`)
   with the ``predictions``, ``feedback``, ``model-lifecycle``, ``driftline-audit`` and
   dead-letter topics;
2. a webhook receiver (:class:`WebhookReceiver`, a real HTTP server) that checks each
   request's HMAC signature (:func:`driftline.sinks.signing.verify`) and records the retrain,
   promote and rollback triggers it gets;
3. the monitor service (:class:`driftline.app.Service`) in a thread, with its Prometheus
   endpoint, a JSONL alarms file, its audit trail and three webhook targets (retrain,
   promote: the non-inferiority test is on, rollback);
4. the simulator (:mod:`driftline.demo.simulator`), producing a fraud model's predictions and
   delayed labels, routed by a :class:`~driftline.demo.simulator.TrafficPlan`;
5. the CI system (:class:`DemoCI`), which answers the triggers the receiver got with
   lifecycle events (:func:`driftline.monitor.lifecycle.encode_lifecycle`) and changes the
   traffic plan as a deployment would:

   * the feature shift -> retrain trigger -> v2 (retrained on the drifted data) deployed
     as a 5 % canary with its own reference (``deployed``);
   * the non-inferiority test -> promote trigger -> ``promoted``: v2 takes all the
     traffic and the drift gauges clear (v2 is measured against its own reference);
   * the next release, v3 (a training/serving skew: more errors), deployed as a 20 %
     canary -> rollback trigger -> ``rolled_back``, its traffic stops, the rollback is
     confirmed;
   * the concept drift at the end -> a retrain trigger of v2 (left unanswered).

It then prints, for each injected change, when and by which detector it was detected,
the triggers that reached the receiver, each step of the loop and whether it happened,
and the audit trail (the table of ``driftline audit`` and the retrain trigger's answer
chain). The progress line and the summary are the command's user interface: they go to
the ``stream`` given (stdout by default); library diagnostics go to :mod:`logging`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from driftline.demo.simulator import (
    Injection,
    PublishStats,
    Scenario,
    TrafficPlan,
    generate,
    publish,
    reference_events,
    train_models,
)

__all__ = [
    "DEMO_SECRET_ENV",
    "WebhookReceiver",
    "ReceivedTrigger",
    "Detection",
    "AlarmTail",
    "DemoCI",
    "LoopStep",
    "LoopReport",
    "LOOP_STEPS",
    "DEMO_EVENTS",
    "MIN_LOOP_EVENTS",
    "demo_scenario",
    "demo_injections",
    "demo_settings",
    "match_detections",
    "format_summary",
    "run_demo",
]

log = logging.getLogger(__name__)

DEMO_SECRET_ENV = "DRIFTLINE_DEMO_WEBHOOK_SECRET"
"""The variable the demo's webhook targets read their (random, per-run) secret from: the
demo hands the service an ``environ`` mapping that holds it, and never sets it in the
process's environment."""


# ---- the webhook receiver -------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedTrigger:
    """One trigger request the receiver accepted (valid signature, first delivery)."""

    path: str
    event: str | None
    idempotency_key: str | None
    payload: dict[str, Any]
    received_at: float


class WebhookReceiver:
    """A small HTTP server on 127.0.0.1 that accepts signed driftline webhooks.

    Requests with a missing or wrong ``X-Driftline-Signature`` get 401 and are counted
    in :attr:`rejected`; a repeated ``Idempotency-Key`` gets 200 and is not recorded
    again (as a real receiver would drop it); others get 204 and are recorded.

    Parameters
    ----------
    secret
        The shared HMAC secret.
    port
        0 picks a free port.

    Examples
    --------
    >>> with WebhookReceiver("s3cret") as receiver:         # doctest: +SKIP
    ...     url = receiver.url("/retrain")
    """

    def __init__(self, secret: str, port: int = 0) -> None:
        self._secret = secret
        self._lock = threading.Lock()
        self._triggers: list[ReceivedTrigger] = []
        self._keys: set[str] = set()
        self.rejected = 0
        self.duplicates = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def triggers(self) -> list[ReceivedTrigger]:
        with self._lock:
            return list(self._triggers)

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="demo-webhook-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, path: str, headers: Any, body: bytes) -> int:
        from driftline.sinks.signing import SIGNATURE_HEADER, verify

        if not verify(self._secret, body, headers.get(SIGNATURE_HEADER)):
            with self._lock:
                self.rejected += 1
            return 401
        key = headers.get("Idempotency-Key")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"raw": body.decode("utf-8", "replace")}
        with self._lock:
            if key is not None and key in self._keys:
                self.duplicates += 1
                return 200
            if key is not None:
                self._keys.add(key)
            self._triggers.append(
                ReceivedTrigger(
                    path,
                    headers.get("X-Driftline-Event"),
                    key,
                    payload if isinstance(payload, dict) else {"value": payload},
                    time.time(),
                )
            )
        return 204

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status = receiver._accept(self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("receiver: " + format, *args)

        return Handler


# ---- reading the alarms the service wrote ---------------------------------------------


class AlarmTail:
    """Reads the alarms JSONL file incrementally (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.alarms: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns all alarms so far."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return self.alarms
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line.strip():
                self.alarms.append(json.loads(line))
        return self.alarms


# ---- settings and detection matching --------------------------------------------------


DEMO_EVENTS = 16_000
"""Prediction events of ``driftline demo`` by default: enough for the whole loop."""
MIN_LOOP_EVENTS = 14_000
"""Below this, the loop has no time to finish (the self-check then fails)."""
FEATURE_SHIFT_AT = 3_000
"""Where the feature shift starts (after the 2,000-event reference and a clean window)."""
CONCEPT_DRIFT_BEFORE_END = 2_500
"""The concept drift starts this many events before the end of the stream."""
CANARY_SHARE = 0.05
"""Traffic share of the retrained v2 while it is a canary."""
BAD_CANARY_SHARE = 0.2
"""Traffic share of the bad canary v3 (larger than v2's: its regression shows sooner)."""
SETTLE_EVENTS = 1_500
"""Events after the promote before the CI checks the drift gauges and releases v3 (v2's
first window against its own reference needs 1,000)."""
REFERENCE_EVENTS = 2_000
"""Events of v2's reference file (its predictions on the drifted data)."""


def demo_scenario(events: int = DEMO_EVENTS, seed: int = 7) -> Scenario:
    """The simulated stream of the demo's loop: the feature shift at event 3,000 stays
    (only a retrained model makes the drift go away), no fixed canary (the CI deploys
    them, :class:`DemoCI`), the concept drift 2,500 events before the end."""
    return Scenario(
        events=events,
        seed=seed,
        feature_shift_at=FEATURE_SHIFT_AT,
        shift_events=None,
        canary_share=0.0,
        concept_drift_at=max(FEATURE_SHIFT_AT + 1, events - CONCEPT_DRIFT_BEFORE_END),
    )


def demo_injections(scenario: Scenario) -> list[Injection]:
    """The scenario's injected changes as the loop sees them: the concept drift is
    detected on whichever version is stable by then (v2 once promoted)."""
    return [replace(i, version=None) if i.name == "concept_drift" else i for i in scenario.injections()]


def demo_settings(
    bootstrap_servers: str,
    *,
    metrics_port: int,
    state_dir: Path,
    retrain_url: str,
    rollback_url: str,
    promote_url: str | None = None,
    secret_env: str = DEMO_SECRET_ENV,
    metrics_host: str = "127.0.0.1",
) -> Any:
    """The monitor's settings for the demo (a :class:`driftline.monitor.config.Settings`).

    Reference from the first 2,000 events, drift windows of 1,000 events, performance
    windows of 500 labels; triggers within 3,600 s of event time, with a cooldown of
    3,600 s (7,200 simulated events): v1, still drifting while its successor is a
    canary, is not asked for a retrain again before it is replaced, and the later
    concept drift gets its own retrain trigger (of v2). With ``promote_url``, the non-inferiority
    test is on with a demo's margin: a canary may err up to 10 points more than the
    stable version (production would use about 0.01, and more labels), at
    ``alpha`` 0.05, ``tau`` 0.08 and 100 labels per version at least, so that a 5 %
    canary can be promoted within about 3,000 events.
    """
    from driftline.monitor.config import load_settings

    targets = [
        {
            "name": "retrain",
            "url": retrain_url,
            "preset": "generic",
            "actions": ["retrain"],
            "secret_env": secret_env,
            "timeout_seconds": 5.0,
            "max_attempts": 5,
        },
        {
            "name": "rollback",
            "url": rollback_url,
            "preset": "generic",
            "actions": ["rollback"],
            "secret_env": secret_env,
            "timeout_seconds": 5.0,
            "max_attempts": 5,
        },
    ]
    if promote_url is not None:
        targets.append(
            {
                "name": "promote",
                "url": promote_url,
                "preset": "generic",
                "actions": ["promote"],
                "secret_env": secret_env,
                "timeout_seconds": 5.0,
                "max_attempts": 5,
            }
        )
    return load_settings(
        kafka={
            "bootstrap_servers": bootstrap_servers,
            "group_id": "driftline-demo",
            "client_id": "driftline-demo",
            "poll_timeout_ms": 200,
        },
        prometheus={"enabled": True, "host": metrics_host, "port": metrics_port},
        webhooks={
            "targets": targets,
            "policy": {"window_seconds": 3600.0, "cooldown_seconds": 3600.0},
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 2.0,
        },
        defaults={
            "reference": {"source": "stream", "size": 2000},
            "window": {"size": 1000},
            "performance": {"window": 500},
            "canary": {
                "promote": {
                    "enabled": promote_url is not None,
                    "margin": 0.1,
                    "tau": 0.08,
                    "alpha": 0.05,
                    "min_samples": 100,
                }
            },
        },
        state_dir=state_dir,
        alarms_jsonl=state_dir / "alarms.jsonl",
        checkpoint_interval_seconds=1.0,
    )


@dataclass(frozen=True)
class Detection:
    """An injected change and the first alarm that detected it (None: not detected).

    ``detected_at`` is the simulated event index at the alarm's event time (``ts``), so
    it does not depend on how the engine counts indices per version.
    """

    injection: Injection
    alarm: dict[str, Any] | None
    detected_at: int | None

    @property
    def delay(self) -> int | None:
        return None if self.detected_at is None else self.detected_at - self.injection.index


def match_detections(
    scenario: Scenario, alarms: list[dict[str, Any]], injections: list[Injection] | None = None
) -> list[Detection]:
    """For each injected change (default: the scenario's), the earliest alarm at or
    after it that detects it.

    An alarm detects a change when its ``kind`` is one the change expects, it concerns
    the change's feature and version (where the change has one), and its event time is
    not before the change began.
    """
    out = []
    for inj in scenario.injections() if injections is None else injections:
        best: tuple[int, dict[str, Any]] | None = None
        for alarm in alarms:
            if alarm.get("model") != scenario.model or alarm.get("kind") not in inj.expected_kinds:
                continue
            if inj.feature is not None and alarm.get("feature") != inj.feature:
                continue
            if inj.version is not None and alarm.get("version") != inj.version:
                continue
            at = scenario.index_of(float(alarm["ts"]))
            if at >= inj.index and (best is None or at < best[0]):
                best = (at, alarm)
        out.append(Detection(inj, best[1] if best else None, best[0] if best else None))
    return out


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_summary(
    scenario: Scenario,
    detections: list[Detection],
    alarms: list[dict[str, Any]],
    triggers: list[ReceivedTrigger],
    *,
    rejected: int,
    stats: PublishStats | None,
    wall_seconds: float,
    metrics_url: str | None,
    loop: LoopReport | None = None,
) -> str:
    """The demo's closing report, as text: what was sent, each injected change and its
    detection, the alarms, the triggers received, the loop's steps and the audit trail."""
    lines = [""]
    if stats is not None:
        rate = stats.predictions / stats.seconds if stats.seconds else 0.0
        by_version = ", ".join(f"{v} {n:,}" for v, n in sorted(stats.by_version.items()))
        lines.append(
            f"Sent {stats.predictions:,} predictions ({by_version}), "
            f"{stats.feedback:,} labels and {stats.malformed} malformed records "
            f"in {stats.seconds:.1f}s ({rate:,.0f} predictions/s); total {wall_seconds:.1f}s."
        )
    lines += ["", "Injected changes and their detection:"]
    rows = [["change", "injected at", "detected at", "delay", "kind / detector", "where"]]
    for d in detections:
        inj = d.injection
        where = inj.feature or inj.version or ""
        if d.alarm is None:
            rows.append([inj.name, f"event {inj.index:,}", "NOT DETECTED", "-", "-", where])
        else:
            a = d.alarm
            where = " ".join(x for x in (a.get("version"), a.get("feature")) if x)
            rows.append(
                [
                    inj.name,
                    f"event {inj.index:,}",
                    f"event {d.detected_at:,}",
                    f"{d.delay:,} events",
                    f"{a.get('kind')} / {a.get('detector')}",
                    where,
                ]
            )
    lines += ["  " + line for line in _table(rows)]
    for d in detections:
        lines.append(f"  {d.injection.name}: {d.injection.description}")
    kinds: dict[str, int] = {}
    for a in alarms:
        kinds[a.get("kind", "?")] = kinds.get(a.get("kind", "?"), 0) + 1
    lines += [
        "",
        f"Alarms: {len(alarms)} (" + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none") + ")",
    ]
    lines += [
        "",
        f"Triggers received by the webhook receiver (signature verified): {len(triggers)}"
        + (f", {rejected} rejected (bad signature)" if rejected else ""),
    ]
    if triggers:
        rows = [["action", "model", "version", "evidence events", "reason"]]
        for t in triggers:
            p = t.payload
            rows.append(
                [
                    str(p.get("action", t.event)),
                    str(p.get("model", "")),
                    str(p.get("version", "")),
                    f"{p.get('first_index', '?')}-{p.get('last_index', '?')}",
                    str(p.get("reason", ""))[:70],
                ]
            )
        lines += ["  " + line for line in _table(rows)]
    if metrics_url:
        lines += ["", f"Metrics: {metrics_url}"]
    if loop is not None:
        lines += _loop_lines(loop)
    return "\n".join(lines) + "\n"


def _loop_lines(loop: LoopReport) -> list[str]:
    """The loop's part of the summary: each step, then the audit trail."""
    done = sum(s.done for s in loop.steps.values())
    lines = ["", f"The delivery loop ({done} of {len(loop.steps)} steps):"]
    rows = [["", "step", "at", "seen"]]
    for name, step in loop.steps.items():
        rows.append(
            [
                "ok" if step.done else "MISSING",
                LOOP_STEPS[name],
                "-" if step.at is None else f"event {step.at:,}",
                step.detail,
            ]
        )
    lines += ["  " + line for line in _table(rows)]
    if loop.drift_before or loop.drift_after:
        lines.append(
            f"  drifting before the promote: {', '.join(loop.drift_before) or 'none'}; "
            f"after: {', '.join(loop.drift_after) or 'none'}"
        )
    if loop.unanswered:
        lines.append(f"  left unanswered (the demo stops there): {', '.join(loop.unanswered)}")
    if loop.audit_table:
        lines += ["", "Audit trail (driftline audit, alarms left out: --kind alarm lists them):"]
        lines += ["  " + line for line in loop.audit_table.splitlines()]
    if loop.chain:
        lines += ["", "Why was v1 retrained, and what happened next (driftline audit --trigger KEY):"]
        lines += ["  " + line for line in loop.chain.splitlines()]
    return lines


# ---- the CI system of the loop ------------------------------------------------------------


LOOP_STEPS: dict[str, str] = {
    "retrain_trigger": "retrain trigger of v1 received (the feature shift)",
    "canary_deployed": f"v2 deployed as a {CANARY_SHARE:.0%} canary with its own reference",
    "promote_trigger": "promote trigger of v2 received (non-inferiority test)",
    "promoted": "v2 promoted: it takes all the traffic",
    "drift_cleared": "drift gauges back to normal after the promote",
    "bad_canary_deployed": f"v3 (training/serving skew) deployed as a {BAD_CANARY_SHARE:.0%} canary",
    "rollback_trigger": "rollback trigger of v3 received (regression)",
    "rolled_back": "v3 rolled back: its traffic stops",
    "rollback_confirmed": "rollback confirmed (no rollback_unconfirmed)",
    "audit_chain": "audit trail links each trigger to the lifecycle event answering it",
}
"""The loop's steps, in order, and what each means (the summary's wording)."""

MAX_AHEAD = 1_000
"""Prediction events the simulator may be ahead of the monitor: the CI answers a trigger
at most about this many events after its evidence, so that the loop's event times stay
close to a real deployment's (and within the rollback confirmation period)."""


@dataclass
class LoopStep:
    """One step of the loop: whether it happened, at which prediction event, and what was seen."""

    name: str
    done: bool = False
    at: int | None = None
    detail: str = ""


@dataclass
class LoopReport:
    """What the loop did, for the summary, the self-check and the tests.

    Attributes
    ----------
    steps
        :data:`LOOP_STEPS` by name.
    keys
        The idempotency key of each trigger the CI answered, by step name
        (``retrain_trigger``, ``promote_trigger``, ``rollback_trigger``).
    drift_before, drift_after
        The drifting series (``version feature detector``) on the drift gauges just
        before the promote, and once v2 had a window against its own reference.
    unanswered
        Triggers the CI did not act on (``action model version``).
    alarms
        Every alarm of the run, as ``kind version``, in the order written.
    audit_table, chain
        The audit trail (triggers, deliveries, lifecycle events) as ``driftline audit``
        prints it, and the retrain trigger's answer chain.
    """

    steps: dict[str, LoopStep] = field(default_factory=lambda: {n: LoopStep(n) for n in LOOP_STEPS})
    keys: dict[str, str] = field(default_factory=dict)
    drift_before: list[str] = field(default_factory=list)
    drift_after: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)
    audit_table: str = ""
    chain: str = ""

    @property
    def complete(self) -> bool:
        return all(step.done for step in self.steps.values())

    def mark(self, name: str, at: int | None, detail: str = "", done: bool = True) -> None:
        step = self.steps[name]
        step.done, step.at, step.detail = done, at, detail

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": {n: {"done": s.done, "at": s.at, "detail": s.detail} for n, s in self.steps.items()},
            "keys": dict(self.keys),
            "drift_before": list(self.drift_before),
            "drift_after": list(self.drift_after),
            "unanswered": list(self.unanswered),
            "alarms": list(self.alarms),
            "audit_table": self.audit_table,
            "chain": self.chain,
        }


def _drifting(samples: dict[str, list[tuple[dict[str, str], float]]], model: str) -> tuple[list[str], set[str]]:
    """The series past their threshold on the drift gauges, as the alert rule
    ``DriftlineFeatureDrift`` reads them (a p-value below its threshold, or a statistic
    without p-value above it), and the versions that have drift gauges at all."""

    def by_key(name: str) -> dict[tuple[str, str, str], float]:
        return {
            (lb["version"], lb["feature"], lb["detector"]): v
            for lb, v in samples.get(name, [])
            if lb.get("model") == model
        }

    p_values, statistics, thresholds = (by_key(f"driftline_drift_{n}") for n in ("p_value", "statistic", "threshold"))
    out = []
    for key, limit in thresholds.items():
        if (key in p_values and p_values[key] < limit) or (key not in p_values and statistics.get(key, 0.0) > limit):
            out.append(" ".join(key))
    return sorted(out), {k[0] for k in statistics}


class DemoCI:
    """The demo's CI/CD system: it answers the triggers the receiver got with lifecycle
    events and changes the traffic plan as a deployment would.

    Called between prediction events (:meth:`step`, from the simulator's progress
    callback and while the monitor catches up), on the thread that produces: a change of
    the plan takes effect at the next event. Each lifecycle event carries the event time
    of the next prediction event and is produced (``acks=all``) before it; the CI then
    waits until the monitor has recorded it in its audit trail, so that the event is
    known before the first prediction it concerns (the engine applies it just before
    the first prediction event with ``ts >= event.ts``).

    Parameters
    ----------
    scenario
        The simulated stream (event times).
    plan
        The simulator's traffic plan, which the CI changes.
    receiver
        Where the triggers arrive.
    bootstrap_servers, topic
        The broker and the lifecycle topic.
    reference_path
        v2's reference file (its predictions on the drifted data), as the service reads it.
    audit_path
        The service's audit log (read to see that a lifecycle event arrived, and for
        the summary).
    metrics_url
        The service's Prometheus endpoint (drift gauges, rollback gauges).
    stop
        Set to give up waiting.
    """

    def __init__(
        self,
        scenario: Scenario,
        plan: TrafficPlan,
        receiver: WebhookReceiver,
        bootstrap_servers: str,
        topic: str,
        reference_path: Path,
        audit_path: Path,
        metrics_url: str | None,
        stop: threading.Event,
    ) -> None:
        self.scenario = scenario
        self.plan = plan
        self.receiver = receiver
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.reference_path = reference_path
        self.audit_path = audit_path
        self.metrics_url = metrics_url
        self.stop = stop
        self.report = LoopReport()
        self.bad_canary: Injection | None = None
        self._seen = 0
        self._producer: Any = None
        self._audit: Any = None

    # -- what the CI does ---------------------------------------------------------------
    def step(self, next_index: int, streaming: bool = True) -> None:
        """Answer the triggers received since the last call, and release v3 once v2 has
        settled. ``next_index``: the next prediction event to be produced (the stream's
        length once it ended: ``streaming`` False)."""
        for t in self.receiver.triggers[self._seen :]:
            self._seen += 1
            self._answer(t, next_index, streaming)
        r = self.report.steps
        if r["promoted"].done and not r["bad_canary_deployed"].done and streaming:
            assert r["promoted"].at is not None
            if next_index >= r["promoted"].at + SETTLE_EVENTS:
                self._release_bad_canary(next_index)

    def _answer(self, t: ReceivedTrigger, next_index: int, streaming: bool) -> None:
        action, version = t.payload.get("action"), t.payload.get("version")
        key = t.idempotency_key or ""
        steps = self.report.steps
        if action == "retrain" and version == "v1" and not steps["retrain_trigger"].done:
            self.report.mark("retrain_trigger", next_index, f"key {key[:12]}")
            self.report.keys["retrain_trigger"] = key
            if streaming:
                ok = self._emit(
                    next_index,
                    streaming,
                    {
                        "version": "v2",
                        "event": "deployed",
                        "role": "canary",
                        "traffic_share": CANARY_SHARE,
                        "reference": {"path": str(self.reference_path)},
                        "reason": "retrained on the drifted data after the retrain trigger",
                        "trigger": key,
                    },
                )
                if ok:
                    self.plan.deploy("v2", CANARY_SHARE)
                    self.report.mark("canary_deployed", next_index, f"reference {self.reference_path.name}")
            return
        if action == "promote" and version == "v2" and not steps["promote_trigger"].done:
            self.report.mark("promote_trigger", next_index, f"key {key[:12]}")
            self.report.keys["promote_trigger"] = key
            before, _ = self._drift()
            self.report.drift_before = before
            if self._emit(
                next_index,
                streaming,
                {"version": "v2", "event": "promoted", "reason": "not inferior to v1", "trigger": key},
            ):
                self.plan.promote("v2")
                self.report.mark("promoted", next_index)
            return
        if action == "rollback" and version == "v3" and not steps["rollback_trigger"].done:
            self.report.mark("rollback_trigger", next_index, f"key {key[:12]}")
            self.report.keys["rollback_trigger"] = key
            if self._emit(
                next_index,
                streaming,
                {"version": "v3", "event": "rolled_back", "reason": "regression against v2", "trigger": key},
            ):
                self.plan.remove("v3")
                self.report.mark("rolled_back", next_index)
            return
        self.report.unanswered.append(f"{action} {t.payload.get('model')} {version}")

    def _release_bad_canary(self, next_index: int) -> None:
        """Check that the drift cleared (once v2 has a window against its own
        reference, or long enough after the promote), then deploy v3."""
        r = self.report.steps
        drifting, versions = self._drift()
        assert r["promoted"].at is not None
        if "v2" not in versions and next_index < r["promoted"].at + 3 * SETTLE_EVENTS:
            return  # v2's first window is not in yet
        self.report.drift_after = drifting
        self.report.mark(
            "drift_cleared",
            next_index,
            f"{len(self.report.drift_before)} drifting series before the promote, {len(drifting)} after",
            done="v2" in versions and not drifting,
        )
        if self._emit(
            next_index,
            True,
            {
                "version": "v3",
                "event": "deployed",
                "role": "canary",
                "traffic_share": BAD_CANARY_SHARE,
                "reason": "the next release",
            },
        ):
            self.plan.deploy("v3", BAD_CANARY_SHARE)
            self.report.mark("bad_canary_deployed", next_index)
            self.bad_canary = Injection(
                "bad_canary",
                next_index,
                None,
                f"canary v3 takes {BAD_CANARY_SHARE:.0%} of traffic (more errors, slower)",
                ("regression",),
                version="v3",
            )

    # -- the checks at the end ------------------------------------------------------------
    def finish(self, alarms: list[dict[str, Any]]) -> LoopReport:
        """Check the rollback's confirmation and the audit trail; fill the report's
        audit table and chain."""
        report = self.report
        report.alarms = [f"{a.get('kind')} {a.get('version')}" for a in alarms]
        if report.steps["rolled_back"].done:
            unconfirmed = [a for a in alarms if a.get("kind") == "rollback_unconfirmed" and a.get("version") == "v3"]
            samples = _scrape(self.metrics_url) if self.metrics_url else None
            gauges = {
                name: [v for lb, v in (samples or {}).get(name, []) if lb.get("version") == "v3"]
                for name in ("driftline_rollback_pending", "driftline_rollback_unconfirmed")
            }
            still = any(v for vs in gauges.values() for v in vs)
            report.mark(
                "rollback_confirmed",
                report.steps["rolled_back"].at,
                "no rollback_unconfirmed alarm, rollback gauges of v3 at 0"
                if not (unconfirmed or still)
                else f"{len(unconfirmed)} rollback_unconfirmed alarm(s); gauges {gauges}",
                done=not unconfirmed and not still and samples is not None,
            )
        audit = self._open_audit()
        if audit is None:
            return report
        from driftline.sinks.audit import format_chain, format_records

        records = [r for r in audit.query(model=self.scenario.model) if r["kind"] != "alarm"]
        report.audit_table = format_records(records)
        chains = {}
        for name, key in report.keys.items():
            try:
                chains[name] = audit.answer_chain(key)
            except ValueError:
                chains[name] = None
        want = {"retrain_trigger": "deployed", "promote_trigger": "promoted", "rollback_trigger": "rolled_back"}
        linked = [
            name
            for name, event in want.items()
            if chains.get(name)
            and chains[name]["trigger"] is not None
            and any(r["payload"].get("event") == event for r in chains[name]["lifecycle"])
        ]
        report.mark(
            "audit_chain",
            None,
            f"{len(linked)} of 3 triggers answered in the trail ("
            + ", ".join(f"{n.split('_')[0]} -> {want[n]}" for n in linked)
            + ")",
            done=len(linked) == len(want),
        )
        if chains.get("retrain_trigger"):
            report.chain = format_chain(chains["retrain_trigger"])
        return report

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        if self._audit is not None:
            self._audit.close()
            self._audit = None

    # -- helpers ----------------------------------------------------------------------------
    def _drift(self) -> tuple[list[str], set[str]]:
        samples = _scrape(self.metrics_url) if self.metrics_url else None
        return _drifting(samples or {}, self.scenario.model)

    def _open_audit(self) -> Any:
        if self._audit is None and self.audit_path.exists():
            from driftline.sinks.audit import AuditLog

            self._audit = AuditLog(self.audit_path)
        return self._audit

    def _emit(self, next_index: int, streaming: bool, fields: dict[str, Any]) -> bool:
        """Produce a lifecycle event of the scenario's model at the next event's time
        (the last event's once the stream ended, so that it applies at once) and wait
        until the monitor recorded it. False (logged) when it could not be sent or did
        not arrive within 30 s."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        from driftline.monitor.lifecycle import encode_lifecycle, lifecycle_key, validate_lifecycle

        index = next_index if streaming else max(0, next_index - 1)
        event = validate_lifecycle(
            {"model": self.scenario.model, "ts": self.scenario.ts_of(index), "actor": "driftline demo CI", **fields}
        )
        try:
            if self._producer is None:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap_servers, acks="all", client_id="driftline-demo-ci"
                )
            self._producer.send(self.topic, key=lifecycle_key(event), value=encode_lifecycle(event)).get(timeout=30)
        except KafkaError as exc:
            log.error("the demo CI could not produce the %s event of %s: %s", event.event, event.version, exc)
            return False
        deadline = time.monotonic() + 30.0
        while not self.stop.is_set() and time.monotonic() < deadline:
            audit = self._open_audit()
            if audit is not None and any(
                r["payload"].get("event") == event.event and r["ts"] == event.ts
                for r in audit.query(model=event.model, version=event.version, kind="lifecycle")
            ):
                return True
            self.stop.wait(0.05)
        log.error("the monitor did not record the %s event of %s within 30s", event.event, event.version)
        return False


# ---- running it -----------------------------------------------------------------------


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]] | None:
    """The samples of a Prometheus text endpoint by name (None: it did not answer)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return None
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def _caught_up(url: str | None, stats: PublishStats) -> bool:
    """Whether the monitor has consumed every record sent and delivered its webhooks
    (``driftline_events_consumed_total`` per stream against what was sent, and an empty
    webhook outbox)."""
    if url is None:
        return True
    samples = _scrape(url)
    if samples is None:
        return False
    consumed = {labels.get("stream"): v for labels, v in samples.get("driftline_events_consumed_total", [])}
    pending = samples.get("driftline_webhook_outbox_pending", [])
    return (
        consumed.get("predictions", 0) >= stats.predictions
        and consumed.get("feedback", 0) >= stats.feedback
        and all(v == 0 for _, v in pending)
    )


def _outbox_pending(url: str) -> bool:
    """Whether the monitor's webhook outbox holds triggers not yet delivered (or the
    endpoint did not answer)."""
    samples = _scrape(url)
    return samples is None or any(v > 0 for _, v in samples.get("driftline_webhook_outbox_pending", []))


def _counts(service: Any) -> tuple[int, int]:
    """Prediction and feedback events the service has consumed so far (its running
    counts: the engine's per-version counts drop when a version is freed)."""
    stats = getattr(service, "stats", None)
    return (0, 0) if stats is None else (stats.predictions, stats.feedback)


class _Progress:
    """The one-line live progress display."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_plain = 0.0
        self._width = 0

    def show(self, produced: int, rate: float, consumed: int, alarms: int, triggers: int, force: bool = False) -> None:
        line = (
            f"produced {produced:,}/{self.total:,} ({rate:,.0f}/s)  consumed {consumed:,}  "
            f"alarms {alarms}  triggers {triggers}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        elif force or time.monotonic() - self._last_plain >= 5.0:
            self.stream.write(line + "\n")
            self._last_plain = time.monotonic()
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def run_demo(
    events: int = DEMO_EVENTS,
    seed: int = 7,
    metrics_port: int = 9308,
    rate: float = 0.0,
    partitions: int = 2,
    keep_running: bool = False,
    out_dir: str | Path | None = None,
    stream: TextIO | None = None,
    stop: threading.Event | None = None,
    on_summary: Callable[[list[Detection], list[ReceivedTrigger], LoopReport], None] | None = None,
    catch_up_timeout: float = 90.0,
    before_traffic: Callable[[], None] | None = None,
) -> int:
    """Run the demo; see the module docstring.

    Parameters
    ----------
    events
        Prediction events to simulate (the concept drift comes 2,500 before the end; at
        least :data:`MIN_LOOP_EVENTS` for the whole loop to fit).
    seed
        Seed of the simulation.
    metrics_port
        Port of the monitor's Prometheus endpoint on 127.0.0.1 (0: a free one).
    rate
        Prediction events per second to produce at; 0: as fast as possible.
    partitions
        Partitions of the ``predictions`` and ``feedback`` topics.
    keep_running
        After the summary, keep the broker, monitor and metrics endpoint up until
        Ctrl-C (or ``stop``), e.g. to point Prometheus and Grafana at them.
    out_dir
        Keep the monitor's state and ``alarms.jsonl`` here; default: a temporary
        directory removed at the end.
    stream
        Where the progress line and summary go (default: stdout).
    stop
        Set it to end the demo early (or the keep-running phase) from another thread.
    on_summary
        Called with the detections, the received triggers and the loop's report after
        the summary is written (tests use it to query a running demo).
    catch_up_timeout
        Seconds to wait, after the last event is produced, for the monitor to process
        everything and deliver its webhooks.
    before_traffic
        Called once the broker, the monitor and its metrics endpoint are up, before the
        first event is produced (tests use it to have Prometheus scrape the whole run:
        a phase of the loop can last a second on a fast machine).

    Returns
    -------
    int
        0 when every injected change was detected and every step of the loop happened
        (:data:`LOOP_STEPS`), 2 when not, 1 when the monitor failed, 130 on Ctrl-C.
    """
    from driftline.app import Service
    from driftline.demo.embedded_broker import EmbeddedBroker

    out = stream if stream is not None else sys.stdout
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    scenario = demo_scenario(events, seed)

    temp_dir = None
    if out_dir is None:
        temp_dir = tempfile.mkdtemp(prefix="driftline-demo-")
        state_dir = Path(temp_dir)
    else:
        state_dir = Path(out_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / "alarms.jsonl").unlink(missing_ok=True)

    secret = secrets.token_hex(16)

    broker = EmbeddedBroker(log_path=state_dir / "broker.log")
    receiver = WebhookReceiver(secret)
    service_stop = threading.Event()
    service_thread: threading.Thread | None = None
    service_result: dict[str, Any] = {}
    ci: DemoCI | None = None
    code = 0
    try:
        out.write("driftline demo: starting the embedded broker, the webhook receiver and the monitor...\n")
        out.flush()
        broker.start()
        settings = demo_settings(
            broker.bootstrap_servers,
            metrics_port=metrics_port,
            state_dir=state_dir,
            retrain_url=receiver.url("/retrain"),
            rollback_url=receiver.url("/rollback"),
            promote_url=receiver.url("/promote"),
        )
        # lifecycle events co-partitioned with the model's predictions (keyed by model)
        broker.create_topics(["predictions", "feedback", settings.lifecycle.topic], partitions=partitions)
        broker.create_topics(["driftline-dead-letters", settings.audit.kafka_topic or "driftline-audit"], partitions=1)
        receiver.start()
        # the secret reaches the webhook sink through this mapping: os.environ stays as it is
        service = Service(settings, environ={**os.environ, DEMO_SECRET_ENV: secret})

        def serve() -> None:
            try:
                service_result["code"] = service.run(service_stop)
            except BaseException as exc:  # reported by the main thread
                service_result["error"] = exc
                log.exception("the monitor service failed")

        service_thread = threading.Thread(target=serve, name="driftline-demo-service", daemon=True)
        service_thread.start()

        port = _wait_for_port(service, service_thread, timeout=30.0)
        metrics_url = f"http://127.0.0.1:{port}/metrics" if port else None
        out.write(
            f"broker at {broker.bootstrap_servers}; monitor metrics at {metrics_url}; webhooks to {receiver.url('/')}\n"
        )
        for inj in scenario.injections():
            out.write(f"  will inject {inj.name} at event {inj.index:,}: {inj.description}\n")
        out.write(
            "  the demo's CI answers the triggers: v2 (retrained on the drifted data) as a "
            f"{CANARY_SHARE:.0%} canary, promoted when not inferior; then v3 (skewed) as a "
            f"{BAD_CANARY_SHARE:.0%} canary, rolled back\n"
        )
        out.write("training the models (v1; v2 on the drifted data; v3 without amount)...\n")
        out.flush()
        plan = TrafficPlan({"v1": "base", "v2": "retrained", "v3": "skewed"})
        models = train_models(scenario, set(plan.kinds.values()))
        reference = state_dir / "refs" / f"{scenario.model}-v2.jsonl"
        reference.parent.mkdir(parents=True, exist_ok=True)
        reference.write_bytes(
            b"".join(
                json.dumps(e).encode() + b"\n"
                for e in reference_events(scenario, models["retrained"], "v2", REFERENCE_EVENTS)
            )
        )
        audit_path = Path(settings.audit.path or state_dir / "audit.sqlite3")
        ci = DemoCI(
            scenario,
            plan,
            receiver,
            broker.bootstrap_servers,
            settings.lifecycle.topic,
            reference,
            audit_path,
            metrics_url,
            stop,
        )

        tail = AlarmTail(state_dir / "alarms.jsonl")
        progress = _Progress(out, scenario.events)

        def on_progress(stats: PublishStats) -> None:
            if service_result:
                stop.set()  # the monitor died: stop producing
                return
            assert ci is not None
            # Stay at most MAX_AHEAD events ahead of the monitor, and let a trigger in
            # the outbox reach the receiver before producing on: the CI then answers
            # within about MAX_AHEAD events of the evidence whatever the machine's
            # speed (a rollback well within canary.rollback_confirm_seconds).
            deadline = time.monotonic() + 60.0
            while (
                stats.predictions - service.stats.predictions > MAX_AHEAD
                and not stop.is_set()
                and not service_result
                and time.monotonic() < deadline
            ):
                stop.wait(0.02)
            while (
                metrics_url is not None
                and _outbox_pending(metrics_url)
                and not stop.is_set()
                and not service_result
                and time.monotonic() < deadline
            ):
                stop.wait(0.02)
            ci.step(stats.predictions)
            consumed, _ = _counts(service)
            progress.show(
                stats.predictions,
                stats.predictions / max(stats.seconds, 1e-9),
                consumed,
                len(tail.poll()),
                len(receiver.triggers),
            )

        if before_traffic is not None:
            before_traffic()
        stats = publish(
            generate(scenario, plan=plan, models=models),
            broker.bootstrap_servers,
            rate=rate or None,
            stop=stop,
            on_progress=on_progress,
            progress_every=250,
        )

        # Let the monitor catch up: every record consumed, nothing left in the webhook
        # outbox, three checks in a row (a trigger enters the outbox at a batch's end).
        deadline = time.monotonic() + catch_up_timeout
        produce_rate = stats.predictions / max(stats.seconds, 1e-9)
        streak = 0
        while not stop.is_set() and not service_result and time.monotonic() < deadline:
            ci.step(stats.predictions, streaming=False)  # triggers of the stream's last events
            consumed, _ = _counts(service)
            progress.show(stats.predictions, produce_rate, consumed, len(tail.poll()), len(receiver.triggers))
            streak = streak + 1 if _caught_up(metrics_url, stats) else 0
            if streak >= 3:
                break
            stop.wait(0.5)
        else:
            if not stop.is_set() and not service_result:
                log.warning(
                    "the monitor had not caught up after %.0fs (records not yet "
                    "consumed or webhooks not yet delivered)",
                    catch_up_timeout,
                )
        time.sleep(0.5)  # the last batch's alarms reach the JSONL file at its commit
        progress.show(
            stats.predictions, produce_rate, _counts(service)[0], len(tail.poll()), len(receiver.triggers), force=True
        )
        progress.done()

        if "error" in service_result or service_result.get("code", 0) not in (0, None):
            why = service_result.get("error") or f"exit code {service_result.get('code')}"
            out.write(f"\nthe monitor stopped: {why}\n")
            code = 1
        report = ci.finish(tail.alarms)
        injections = demo_injections(scenario) + ([ci.bad_canary] if ci.bad_canary is not None else [])
        detections = match_detections(scenario, tail.alarms, sorted(injections, key=lambda i: i.index))
        out.write(
            format_summary(
                scenario,
                detections,
                tail.alarms,
                receiver.triggers,
                rejected=receiver.rejected,
                stats=stats,
                wall_seconds=time.monotonic() - started,
                metrics_url=metrics_url,
                loop=report,
            )
        )
        if out_dir is not None:
            out.write(f"Alarms: {state_dir / 'alarms.jsonl'}; audit trail: driftline audit --state-dir {state_dir}\n")
        out.flush()
        if code == 0 and stop.is_set():
            code = 130
        elif code == 0 and (any(d.alarm is None for d in detections) or not report.complete):
            code = 2
        if on_summary is not None:
            on_summary(detections, receiver.triggers, report)
        if keep_running and not stop.is_set():
            out.write("Still running (broker, monitor, metrics endpoint): Ctrl-C to stop.\n")
            out.flush()
            while not stop.wait(0.5) and not service_result:
                pass
        return code
    except KeyboardInterrupt:
        out.write("\ninterrupted, stopping...\n")
        out.flush()
        return 130
    finally:
        stop.set()
        if ci is not None:
            ci.close()
        service_stop.set()
        if service_thread is not None:
            service_thread.join(timeout=30)
            if service_thread.is_alive():
                log.error("the monitor service did not stop within 30s")
        receiver.close()
        broker.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_port(service: Any, thread: threading.Thread, timeout: float) -> int | None:
    """The bound metrics port, once the service has opened it (None if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        port = getattr(service, "metrics_port", None)
        if port:
            return int(port)
        time.sleep(0.05)
    return getattr(service, "metrics_port", None)
