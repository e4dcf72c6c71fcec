"""The ``driftline`` command.

Subcommands: ``run`` (Kafka), ``replay`` (JSONL files, no broker), ``check-config``,
``demo`` (everything on an embedded broker), ``simulate`` (produce the demo's
simulated events to a Kafka cluster) and ``webhooks list`` / ``webhooks resend`` (inspect
the webhook outbox, re-send failed triggers).

Exit codes (documented in the README):

0  finished normally (a replay reached the end of its files; ``run`` was stopped by
   SIGTERM/SIGINT after finishing its batch, flushing sinks and committing)
1  an unexpected failure (a bug: the traceback is logged)
2  invalid configuration or command line (the message names the field)
3  an input cannot be read: Kafka unreachable, a file or a reference missing

As the process's entry point, the CLI owns its process-wide settings: logging, and the
garbage collector's tuning for a batch pipeline (:func:`driftline.monitor.runtime.steady_gc`,
around ``run``, ``replay`` and ``demo``); the library code it calls changes neither.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from driftline.monitor.config import Settings, load_settings
from driftline.monitor.exceptions import CheckpointError, ConfigError, ReferenceLoadError, SourceError
from driftline.monitor.logs import protect_secrets, secrets_of, setup_logging
from driftline.monitor.runtime import steady_gc

__all__ = ["main", "build_parser"]

log = logging.getLogger("driftline")

EXIT_OK, EXIT_BUG, EXIT_CONFIG, EXIT_INPUT = 0, 1, 2, 3


def _setup_logging(level: str, fmt: str) -> None:
    setup_logging(level, fmt)


def _configure_logging(settings: Settings) -> None:
    # Every configured webhook URL, token and secret is redacted from every line.
    _setup_logging(settings.log_level, settings.log_format)
    protect_secrets(secrets_of(settings, os.environ))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="driftline", description="Streaming drift monitor and retraining/rollback trigger."
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="YAML config file (also DRIFTLINE_CONFIG)")
        sp.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        sp.add_argument("--log-format", choices=["text", "json"])
        sp.add_argument("--state-dir", type=Path, help="checkpoints and webhook outbox")
        sp.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: any free port)")

    run = sub.add_parser("run", help="monitor the Kafka topics (the service)")
    common(run)
    run.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated")
    run.add_argument("--group-id", help="consumer group")
    run.add_argument("--alarms-jsonl", type=Path, help="also append alarms to this JSONL file")

    rp = sub.add_parser("replay", help="run the same pipeline over JSONL files, no broker")
    common(rp)
    rp.add_argument("--predictions", type=Path, required=True, help="JSONL file of prediction events")
    rp.add_argument("--feedback", type=Path, help="JSONL file of feedback events")
    rp.add_argument(
        "--lifecycle", type=Path, help="JSONL file of model lifecycle events, merged with the others by event time"
    )
    rp.add_argument(
        "--audit",
        type=Path,
        help="append the audit trail to this SQLite file (default: STATE_DIR/audit.sqlite3 "
        "when --state-dir or audit.path is given, else none; never published to Kafka)",
    )
    rp.add_argument("--alarms", type=Path, required=True, help="JSONL file the alarms are written to")
    rp.add_argument(
        "--dead-letters", type=Path, help="JSONL file for invalid records (default: ALARMS.dead-letters.jsonl)"
    )
    rp.add_argument("--batch-size", type=int, default=5000)
    rp.add_argument("--with-webhooks", action="store_true", help="also send the configured webhooks (off in replays)")
    rp.add_argument("--quiet", action="store_true", help="no progress line")

    cc = sub.add_parser("check-config", help="validate a config file and exit")
    cc.add_argument("file", type=Path)

    demo = sub.add_parser("demo", help="a simulated model, an embedded broker and the monitor, end to end")
    demo.add_argument("--events", type=int, default=None, help="prediction events to simulate")
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--metrics-port", type=int, default=None, help="Prometheus port (default 9308; 0: any free port)")
    demo.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    demo.add_argument("--partitions", type=int, default=None, help="partitions of the demo topics")
    demo.add_argument("--keep-running", action="store_true", help="keep the monitor up after the summary (Ctrl-C ends)")
    demo.add_argument("--out-dir", type=Path, default=None, help="keep alarms, dead letters and state here")

    sim = sub.add_parser("simulate", help="produce the demo's simulated events to a Kafka cluster")
    sim.add_argument("--bootstrap-servers", required=True)
    sim.add_argument("--events", type=int, default=None)
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    sim.add_argument("--predictions-topic", default=None)
    sim.add_argument("--feedback-topic", default=None)
    sim.add_argument("--repeat", action="store_true", help="start over at the end, forever")

    wh = sub.add_parser("webhooks", help="inspect the webhook outbox and re-send failed triggers")
    wh_sub = wh.add_subparsers(dest="webhooks_command", required=True)

    def outbox_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="YAML config file (also DRIFTLINE_CONFIG)")
        sp.add_argument("--state-dir", type=Path, help="where the service keeps outbox.sqlite3")
        sp.add_argument("--target", help="only deliveries to this target")

    ls = wh_sub.add_parser("list", help="list deliveries in the outbox, newest last")
    outbox_args(ls)
    ls.add_argument("--status", choices=["pending", "delivered", "failed"])
    ls.add_argument("--limit", type=int, default=None, help="at most this many rows")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")

    rs = wh_sub.add_parser("resend", help="make failed deliveries pending again (same key)")
    outbox_args(rs)
    which = rs.add_mutually_exclusive_group(required=True)
    which.add_argument("--key", help="the idempotency key, or its first 8+ characters (the logs show 12)")
    which.add_argument("--all-failed", action="store_true", help="every failed delivery")

    from driftline.lifecycle_cli import add_audit_parser, add_lifecycle_parser

    add_lifecycle_parser(sub)
    add_audit_parser(sub)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if getattr(args, "log_level", None):
        o["log_level"] = args.log_level
    if getattr(args, "log_format", None):
        o["log_format"] = args.log_format
    if getattr(args, "state_dir", None):
        o["state_dir"] = args.state_dir
    if getattr(args, "metrics_port", None) is not None:
        o["prometheus"] = {"enabled": True, "port": args.metrics_port}
    kafka = {}
    if getattr(args, "bootstrap_servers", None):
        kafka["bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "group_id", None):
        kafka["group_id"] = args.group_id
    if kafka:
        o["kafka"] = kafka
    if getattr(args, "alarms_jsonl", None):
        o["alarms_jsonl"] = args.alarms_jsonl
    return o


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.file)
    models = ", ".join(sorted(settings.models)) or "none (defaults apply to every model)"
    print(f"{args.file}: valid. Per-model overrides: {models}.")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from driftline.app import Service

    settings = load_settings(args.config, **_overrides(args))  # sources deep-merge: flags > env > file
    _configure_logging(settings)
    service = Service(settings)
    log.info(
        "driftline consuming %s and %s from %s as group %s",
        settings.kafka.predictions_topic,
        settings.kafka.feedback_topic,
        settings.kafka.bootstrap_servers,
        settings.kafka.group_id,
    )
    with steady_gc():
        return service.run()


def _cmd_replay(args: argparse.Namespace) -> int:
    from driftline.app import Service
    from driftline.monitor.sources import JsonlSource
    from driftline.sinks.deadletter import FileDeadLetters

    over = _overrides(args)
    over["alarms_jsonl"] = args.alarms
    over.setdefault("prometheus", {"enabled": False})
    settings = load_settings(args.config, **over)
    _configure_logging(settings)  # before the targets are dropped: their URLs stay secret
    if not args.with_webhooks:
        settings = settings.model_copy(update={"webhooks": settings.webhooks.model_copy(update={"targets": []})})
    k = settings.kafka
    source = JsonlSource(
        args.predictions,
        args.feedback,
        predictions_topic=k.predictions_topic,
        feedback_topic=k.feedback_topic,
        batch_size=args.batch_size,
        lifecycle=args.lifecycle,
        lifecycle_topic=settings.lifecycle.topic,
    )
    dead_path = args.dead_letters or args.alarms.with_name(args.alarms.name + ".dead-letters.jsonl")
    if args.alarms.exists():
        args.alarms.unlink()  # a replay writes its alarms afresh
    progress = _Progress(sys.stderr, enabled=not args.quiet)
    service = Service(
        settings,
        source=source,
        dead_letters=FileDeadLetters(dead_path),
        checkpoint=False,
        on_batch=progress,
        audit=_replay_audit(args, settings),
    )
    with steady_gc():
        code = service.run()
    progress.done(service.stats)
    s = service.stats
    print(
        f"replayed {s.predictions} predictions and {s.feedback} feedback events"
        f"{' and lifecycle events' if args.lifecycle else ''}: "
        f"{s.alarms} alarms -> {args.alarms}; {s.invalid} invalid -> {dead_path}",
        file=sys.stderr,
    )
    return code


def _replay_audit(args: argparse.Namespace, settings: Settings) -> Any:
    """The audit log of a replay: ``--audit FILE``, else ``audit.path``, else
    ``<state_dir>/audit.sqlite3`` when ``--state-dir`` is given; otherwise False (no
    audit trail: a plain replay leaves no file behind). Never a Kafka copy: a replay
    touches no broker. Records already in the file (the same streams replayed again)
    are not appended twice."""
    import sqlite3

    from driftline.sinks.audit import AUDIT_FILE, AuditLog
    from driftline.sinks.exceptions import SinkError

    path = args.audit or settings.audit.path
    if path is None and args.state_dir is not None:
        path = Path(args.state_dir) / AUDIT_FILE
    if path is None:
        return False
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return AuditLog(path, retention_days=settings.audit.retention_days)
    except (OSError, sqlite3.Error, SinkError) as exc:
        raise SourceError(f"cannot open the audit log {str(path)!r} ({exc}): give a writable --audit FILE") from None


class _Progress:
    """One progress line on a terminal-like stream, at most every half second."""

    def __init__(self, stream: Any, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0

    def __call__(self, stats: Any) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < 0.5:
            return
        self._last = now
        self.stream.write(
            f"\r{stats.records:,} events  {stats.rate:,.0f}/s  {stats.alarms} alarms  {stats.invalid} invalid "
        )
        self.stream.flush()

    def done(self, stats: Any) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from driftline.demo.scenario import run_demo

    kwargs = {
        k: v
        for k, v in (
            ("events", args.events),
            ("seed", args.seed),
            ("metrics_port", args.metrics_port),
            ("rate", args.rate),
            ("partitions", args.partitions),
            ("out_dir", args.out_dir),
        )
        if v is not None
    }
    with steady_gc():
        return run_demo(keep_running=args.keep_running, **kwargs)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from driftline.demo.simulator import produce_to_kafka

    kwargs = {
        k: v
        for k, v in (
            ("events", args.events),
            ("seed", args.seed),
            ("rate", args.rate),
            ("predictions_topic", args.predictions_topic),
            ("feedback_topic", args.feedback_topic),
        )
        if v is not None
    }
    produce_to_kafka(args.bootstrap_servers, repeat=args.repeat, **kwargs)
    return EXIT_OK


def _open_outbox(args: argparse.Namespace) -> tuple[Settings, Any]:
    from driftline.sinks.factory import OUTBOX_FILE
    from driftline.sinks.outbox import Outbox

    settings = load_settings(args.config, **_overrides(args))
    _configure_logging(settings)
    path = settings.state_dir / OUTBOX_FILE
    if not path.is_file():
        raise SourceError(
            f"no webhook outbox at {str(path)!r}: give the service's state directory with "
            "--state-dir (or state_dir in --config)"
        )
    return settings, Outbox(path)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_webhooks_list(args: argparse.Namespace) -> int:
    _, outbox = _open_outbox(args)
    try:
        rows = outbox.rows(status=args.status, target=args.target, limit=args.limit)
    finally:
        outbox.close()
    if args.json:
        for row in rows:
            print(
                json.dumps(
                    {
                        "target": row.target,
                        "idempotency_key": row.idempotency_key,
                        "model": row.model,
                        "action": row.action,
                        "status": row.status,
                        "attempts": row.attempts,
                        "created_at": row.created_at,
                        "queued_at": row.queued_at,
                        "next_attempt_at": row.next_attempt_at,
                        "delivered_at": row.delivered_at,
                        "last_error": row.last_error,
                    }
                )
            )
        return EXIT_OK
    print(
        f"{'status':<10} {'target':<16} {'action':<8} {'model':<16} {'key':<12} "
        f"{'attempts':>8}  {'created (UTC)':<20}  last error"
    )
    for row in rows:
        error = (row.last_error or "").replace("\n", " ")
        print(
            f"{row.status:<10} {row.target:<16} {row.action:<8} {row.model:<16} "
            f"{row.idempotency_key[:12]:<12} {row.attempts:>8}  {_when(row.created_at):<20}  "
            f"{error[:80]}"
        )
    return EXIT_OK


def _cmd_webhooks_resend(args: argparse.Namespace) -> int:
    settings, outbox = _open_outbox(args)
    try:
        try:
            rows = outbox.resend(key_prefix=args.key, target=args.target)
        except ValueError as exc:
            raise ConfigError(f"--key: {exc}") from None
        if not rows and args.key is not None:
            others = [r for r in outbox.rows(target=args.target) if r.idempotency_key.startswith(args.key)]
            found = ", ".join(f"{r.target}: {r.status}" for r in others)
            raise ConfigError(
                f"--key {args.key!r} matches no failed delivery"
                + (
                    f" (its deliveries are {found}; only failed ones are re-sent)"
                    if others
                    else f"{' to ' + repr(args.target) if args.target else ''}: "
                    "`driftline webhooks list --status failed` shows the failed ones"
                )
            )
    finally:
        outbox.close()
    configured = {t.name for t in settings.webhooks.targets}
    for row in rows:
        print(f"re-queued {row.action} for {row.model} (key {row.idempotency_key[:12]}) to target {row.target!r}")
        if configured and row.target not in configured:
            print(
                f"  warning: target {row.target!r} is not in this configuration; a service "
                "without it marks the delivery failed again",
                file=sys.stderr,
            )
    print(
        f"{len(rows)} delivery(ies) pending again, with the same Idempotency-Key: a running "
        "service sends them within seconds, otherwise the next start does."
    )
    return EXIT_OK


def _cmd_webhooks(args: argparse.Namespace) -> int:
    if args.webhooks_command == "list":
        return _cmd_webhooks_list(args)
    return _cmd_webhooks_resend(args)


def _cmd_lifecycle(args: argparse.Namespace) -> int:
    from driftline.lifecycle_cli import run_lifecycle

    settings = load_settings(args.config, **_overrides(args))
    _configure_logging(settings)
    return run_lifecycle(args, settings)


def _cmd_audit(args: argparse.Namespace) -> int:
    from driftline.lifecycle_cli import run_audit

    settings = load_settings(args.config, **_overrides(args))
    _configure_logging(settings)
    return run_audit(args, settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "replay": _cmd_replay,
        "check-config": _cmd_check_config,
        "demo": _cmd_demo,
        "simulate": _cmd_simulate,
        "webhooks": _cmd_webhooks,
        "lifecycle": _cmd_lifecycle,
        "audit": _cmd_audit,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (SourceError, ReferenceLoadError, CheckpointError) as exc:
        print(f"driftline: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
