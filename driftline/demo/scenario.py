"""``driftline demo``: the whole loop on one machine, in about a minute.

What it runs, all on 127.0.0.1 and all stopped at the end (also on Ctrl-C):

1. an embedded Kafka-protocol broker (:class:`driftline.demo.embedded_broker.EmbeddedBroker`)
   with the ``predictions``, ``feedback`` and dead-letter topics;
2. a webhook receiver (:class:`WebhookReceiver`, a real HTTP server) that checks each
   request's HMAC signature (:func:`driftline.sinks.signing.verify`) and records the retrain and
   rollback triggers it gets;
3. the monitor service (:class:`driftline.app.Service`) in a thread, with its Prometheus
   endpoint, a JSONL alarms file and two webhook targets (retrain, rollback);
4. the simulator (:mod:`driftline.demo.simulator`), producing a fraud model's predictions and
   delayed labels with three changes injected at known events.

It then prints, for each injected change, when and by which detector it was detected,
and which triggers reached the receiver. The progress line and the summary are the
command's user interface: they go to the ``stream`` given (stdout by default); library
diagnostics go to :mod:`logging`.
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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from driftline.demo.simulator import Injection, PublishStats, Scenario, generate, publish

__all__ = [
    "DEMO_SECRET_ENV",
    "WebhookReceiver",
    "ReceivedTrigger",
    "Detection",
    "AlarmTail",
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
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
            name="demo-webhook-receiver", daemon=True,
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
            self._triggers.append(ReceivedTrigger(
                path, headers.get("X-Driftline-Event"), key,
                payload if isinstance(payload, dict) else {"value": payload}, time.time(),
            ))
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


def demo_settings(
    bootstrap_servers: str,
    *,
    metrics_port: int,
    state_dir: Path,
    retrain_url: str,
    rollback_url: str,
    secret_env: str = DEMO_SECRET_ENV,
    metrics_host: str = "127.0.0.1",
) -> Any:
    """The monitor's settings for the demo (a :class:`driftline.monitor.config.Settings`).

    Reference from the first 2,000 events, drift windows of 1,000 events, performance
    windows of 500 labels; triggers within 3,600 s of event time, with a cooldown of
    1,800 s (3,600 simulated events) so that the later concept drift gets its own
    retrain trigger after the feature shift's.
    """
    from driftline.monitor.config import load_settings

    return load_settings(
        kafka={"bootstrap_servers": bootstrap_servers, "group_id": "driftline-demo",
               "client_id": "driftline-demo", "poll_timeout_ms": 200},
        prometheus={"enabled": True, "host": metrics_host, "port": metrics_port},
        webhooks={
            "targets": [
                {"name": "retrain", "url": retrain_url, "preset": "generic",
                 "actions": ["retrain"], "secret_env": secret_env,
                 "timeout_seconds": 5.0, "max_attempts": 5},
                {"name": "rollback", "url": rollback_url, "preset": "generic",
                 "actions": ["rollback"], "secret_env": secret_env,
                 "timeout_seconds": 5.0, "max_attempts": 5},
            ],
            "policy": {"window_seconds": 3600.0, "cooldown_seconds": 1800.0},
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 2.0,
        },
        defaults={
            "reference": {"source": "stream", "size": 2000},
            "window": {"size": 1000},
            "performance": {"window": 500},
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


def match_detections(scenario: Scenario, alarms: list[dict[str, Any]]) -> list[Detection]:
    """For each injected change, the earliest alarm at or after it that detects it.

    An alarm detects a change when its ``kind`` is one the change expects, it concerns
    the change's feature and version (where the change has one), and its event time is
    not before the change began.
    """
    out = []
    for inj in scenario.injections():
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
) -> str:
    """The demo's closing report, as text."""
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
            rows.append([inj.name, f"event {inj.index:,}", f"event {d.detected_at:,}",
                         f"{d.delay:,} events", f"{a.get('kind')} / {a.get('detector')}", where])
    lines += ["  " + line for line in _table(rows)]
    for d in detections:
        lines.append(f"  {d.injection.name}: {d.injection.description}")
    kinds: dict[str, int] = {}
    for a in alarms:
        kinds[a.get("kind", "?")] = kinds.get(a.get("kind", "?"), 0) + 1
    lines += ["", f"Alarms: {len(alarms)} ("
              + (", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none") + ")"]
    lines += ["", f"Triggers received by the webhook receiver (signature verified): {len(triggers)}"
              + (f", {rejected} rejected (bad signature)" if rejected else "")]
    if triggers:
        rows = [["action", "model", "version", "evidence events", "reason"]]
        for t in triggers:
            p = t.payload
            rows.append([
                str(p.get("action", t.event)), str(p.get("model", "")), str(p.get("version", "")),
                f"{p.get('first_index', '?')}-{p.get('last_index', '?')}",
                str(p.get("reason", ""))[:70],
            ])
        lines += ["  " + line for line in _table(rows)]
    if metrics_url:
        lines += ["", f"Metrics: {metrics_url}"]
    return "\n".join(lines) + "\n"


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
    return (consumed.get("predictions", 0) >= stats.predictions
            and consumed.get("feedback", 0) >= stats.feedback
            and all(v == 0 for _, v in pending))


def _counts(service: Any) -> tuple[int, int]:
    """Prediction events and labelled events the engine has seen so far."""
    try:
        snaps = service.engine.snapshot()
    except AttributeError:  # the engine is built when run() starts
        return 0, 0
    return sum(s.events for s in snaps), sum(s.labelled for s in snaps)


class _Progress:
    """The one-line live progress display."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_plain = 0.0
        self._width = 0

    def show(self, produced: int, rate: float, consumed: int, alarms: int, triggers: int,
             force: bool = False) -> None:
        line = (f"produced {produced:,}/{self.total:,} ({rate:,.0f}/s)  consumed {consumed:,}  "
                f"alarms {alarms}  triggers {triggers}")
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
    events: int = 20_000,
    seed: int = 7,
    metrics_port: int = 9308,
    rate: float = 0.0,
    partitions: int = 2,
    keep_running: bool = False,
    out_dir: str | Path | None = None,
    stream: TextIO | None = None,
    stop: threading.Event | None = None,
    on_summary: Callable[[list[Detection], list[ReceivedTrigger]], None] | None = None,
    catch_up_timeout: float = 90.0,
) -> int:
    """Run the demo; see the module docstring.

    Parameters
    ----------
    events
        Prediction events to simulate (the scenario's change points scale with it;
        at least ~12,000 for every change to be detectable with the demo's windows).
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
        Called with the detections and the received triggers after the summary is
        written (tests use it to query a running demo).
    catch_up_timeout
        Seconds to wait, after the last event is produced, for the monitor to process
        everything and deliver its webhooks.

    Returns
    -------
    int
        0 when every injected change was detected, 2 when one was not, 1 when the
        monitor failed, 130 on Ctrl-C.
    """
    from driftline.app import Service
    from driftline.demo.embedded_broker import EmbeddedBroker

    out = stream if stream is not None else sys.stdout
    stop = stop if stop is not None else threading.Event()
    started = time.monotonic()
    scenario = Scenario(seed=seed).scaled(events)

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
    code = 0
    try:
        out.write("driftline demo: starting the embedded broker, the webhook receiver "
                  "and the monitor...\n")
        out.flush()
        broker.start()
        broker.create_topics(["predictions", "feedback"], partitions=partitions)
        broker.create_topics(["driftline-dead-letters"], partitions=1)
        receiver.start()
        settings = demo_settings(
            broker.bootstrap_servers, metrics_port=metrics_port, state_dir=state_dir,
            retrain_url=receiver.url("/retrain"), rollback_url=receiver.url("/rollback"),
        )
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
        out.write(f"broker at {broker.bootstrap_servers}; monitor metrics at {metrics_url}; "
                  f"webhooks to {receiver.url('/')}\n")
        for inj in scenario.injections():
            out.write(f"  will inject {inj.name} at event {inj.index:,}: {inj.description}\n")
        out.flush()

        tail = AlarmTail(state_dir / "alarms.jsonl")
        progress = _Progress(out, scenario.events)

        def on_progress(stats: PublishStats) -> None:
            if service_result:
                stop.set()  # the monitor died: stop producing
            consumed, _ = _counts(service)
            progress.show(stats.predictions, stats.predictions / max(stats.seconds, 1e-9),
                          consumed, len(tail.poll()), len(receiver.triggers))

        stats = publish(generate(scenario), broker.bootstrap_servers, rate=rate or None,
                        stop=stop, on_progress=on_progress, progress_every=500)

        # Let the monitor catch up: every record consumed, nothing left in the webhook
        # outbox, three checks in a row (a trigger enters the outbox at a batch's end).
        deadline = time.monotonic() + catch_up_timeout
        produce_rate = stats.predictions / max(stats.seconds, 1e-9)
        streak = 0
        while not stop.is_set() and not service_result and time.monotonic() < deadline:
            consumed, _ = _counts(service)
            progress.show(stats.predictions, produce_rate, consumed, len(tail.poll()),
                          len(receiver.triggers))
            streak = streak + 1 if _caught_up(metrics_url, stats) else 0
            if streak >= 3:
                break
            stop.wait(0.5)
        else:
            if not stop.is_set() and not service_result:
                log.warning("the monitor had not caught up after %.0fs (records not yet "
                            "consumed or webhooks not yet delivered)", catch_up_timeout)
        time.sleep(0.5)  # the last batch's alarms reach the JSONL file at its commit
        progress.show(stats.predictions, produce_rate, _counts(service)[0], len(tail.poll()),
                      len(receiver.triggers), force=True)
        progress.done()

        if "error" in service_result or service_result.get("code", 0) not in (0, None):
            why = service_result.get("error") or f"exit code {service_result.get('code')}"
            out.write(f"\nthe monitor stopped: {why}\n")
            code = 1
        detections = match_detections(scenario, tail.alarms)
        out.write(format_summary(
            scenario, detections, tail.alarms, receiver.triggers, rejected=receiver.rejected,
            stats=stats, wall_seconds=time.monotonic() - started, metrics_url=metrics_url,
        ))
        if out_dir is not None:
            out.write(f"Alarms: {state_dir / 'alarms.jsonl'}\n")
        out.flush()
        if code == 0 and stop.is_set():
            code = 130
        elif code == 0 and any(d.alarm is None for d in detections):
            code = 2
        if on_summary is not None:
            on_summary(detections, receiver.triggers)
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
