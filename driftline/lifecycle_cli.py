"""``driftline lifecycle`` (produce a model lifecycle event) and ``driftline audit``
(print the audit trail).

A CI job tells the monitor what it did::

    driftline lifecycle deployed --model fraud --version v8 --role canary \\
        --traffic-share 0.05 --reference refs/fraud-v8.jsonl \\
        --actor "github-actions run 4711" --reason "retrain after drift" --trigger "$KEY"

The event is checked against the contract (:mod:`driftline.monitor.lifecycle`) before
anything is sent: an invalid one exits 2 naming the flag. It is produced to
``lifecycle.topic`` keyed by model with ``acks=all`` and flushed: exit 0 means the
broker acknowledged it, exit 3 that it could not be delivered (nothing may be assumed).

``driftline audit [--model M] [--version V] [--since T] [--kind K] [--format table|json]``
prints the audit log's records; ``--trigger KEY`` prints one trigger's chain: why it
fired and what happened next.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from driftline.monitor.config import Settings
from driftline.monitor.exceptions import ConfigError, SourceError
from driftline.monitor.lifecycle import (
    CLI_EVENT_NAMES,
    LIFECYCLE_ROLES,
    LifecycleContractError,
    LifecycleEvent,
    encode_lifecycle,
    lifecycle_key,
    validate_lifecycle,
)

__all__ = ["add_lifecycle_parser", "run_lifecycle", "add_audit_parser", "run_audit"]

# The contract's field -> the flag that sets it (errors name the flag the user typed).
_FLAGS = {
    "model": "--model",
    "version": "--version",
    "event": "EVENT",
    "ts": "--ts",
    "role": "--role",
    "traffic_share": "--traffic-share",
    "reference": "--reference",
    "reference.path": "--reference",
    "reference.from_stream": "--reference-from-stream",
    "actor": "--actor",
    "reason": "--reason",
    "trigger": "--trigger",
}


def add_lifecycle_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``driftline lifecycle`` to ``subparsers`` (of ``driftline``'s parser)."""
    lc = subparsers.add_parser(
        "lifecycle",
        help="tell the monitor a model version was deployed, promoted, rolled back or retired",
        description="Produce one model lifecycle event to the lifecycle topic (acks=all, flushed).",
    )
    lc.add_argument("event", choices=list(CLI_EVENT_NAMES), help="what happened to the version")
    lc.add_argument("--model", required=True, help="the model's name")
    lc.add_argument("--version", required=True, help="the version concerned")
    lc.add_argument("--role", choices=LIFECYCLE_ROLES, help="deployed only (required there)")
    lc.add_argument("--traffic-share", type=float, help="share of traffic, 0 < S <= 1 (deployed only)")
    ref = lc.add_mutually_exclusive_group()
    ref.add_argument(
        "--reference", metavar="FILE", help="JSONL or CSV reference of the version, as the service reads the path"
    )
    ref.add_argument(
        "--reference-from-stream",
        type=int,
        metavar="N",
        help="the version's first N prediction events are its reference",
    )
    lc.add_argument("--actor", help="who or what acted (a CI run)")
    lc.add_argument("--reason", help="why")
    lc.add_argument("--trigger", metavar="KEY", help="idempotency key of the driftline trigger this answers")
    lc.add_argument("--ts", type=float, help="event time, epoch seconds (default: now)")
    lc.add_argument("--config", type=Path, help="YAML config file (also DRIFTLINE_CONFIG)")
    lc.add_argument("--bootstrap-servers", help="Kafka bootstrap servers, comma-separated")
    lc.add_argument("--topic", help="the lifecycle topic (default: lifecycle.topic of the configuration)")
    lc.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the broker's acknowledgement (default 30)"
    )
    return lc


def build_event(args: argparse.Namespace, now: float | None = None) -> LifecycleEvent:
    """The event the command line describes, checked against the contract.

    Raises
    ------
    ConfigError
        Naming the flag and what is expected.
    """
    value: dict[str, Any] = {
        "model": args.model,
        "version": args.version,
        "event": CLI_EVENT_NAMES[args.event],
        "ts": args.ts if args.ts is not None else (time.time() if now is None else now),
    }
    for name in ("role", "traffic_share", "actor", "reason", "trigger"):
        if getattr(args, name, None) is not None:
            value[name] = getattr(args, name)
    if args.reference is not None:
        value["reference"] = {"path": args.reference}
    elif args.reference_from_stream is not None:
        value["reference"] = {"from_stream": args.reference_from_stream}
    try:
        return validate_lifecycle(value)
    except LifecycleContractError as exc:
        flag = _FLAGS.get(exc.field or "", exc.field or "the event")
        raise ConfigError(f"{flag}: {exc.detail} (lifecycle contract: {exc.reason})") from None


def run_lifecycle(args: argparse.Namespace, settings: Settings) -> int:
    """Validate, produce and flush the event; 0 once the broker acknowledged it.

    Raises
    ------
    ConfigError
        The command line breaks the contract (the CLI exits 2).
    SourceError
        The broker did not acknowledge the event in time (the CLI exits 3).
    """
    from driftline.sinks.exceptions import SinkError
    from driftline.sinks.kafka import KafkaPublisher, Outgoing

    event = build_event(args)
    topic = args.topic or settings.lifecycle.topic

    class _Producer(KafkaPublisher):
        def send(self, e: LifecycleEvent) -> None:
            self._add([e])

        def discard(self) -> None:
            # The outcome is decided (and reported): close() must not wait to send it again.
            self._pending = []

        def _record(self, entry: Outgoing) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
            return lifecycle_key(entry.item), encode_lifecycle(entry.item), []

    producer = _Producer(
        settings.kafka, topic, what="lifecycle event(s)", client_suffix="lifecycle", flush_timeout_seconds=args.timeout
    )
    try:
        producer.send(event)
        try:
            producer.flush()
        except SinkError as exc:
            cause = str(exc).split("; ")[0]  # the publisher's "kept for the next flush" is not ours to say
            raise SourceError(
                f"the {event.event} event of {event.model} {event.version} was not acknowledged "
                f"on topic {topic!r} ({cause}): check kafka.bootstrap_servers and that the topic "
                f"exists, then run the command again with --ts {event.ts!r} (the same time makes "
                "a repeat the same event)"
            ) from None
    finally:
        producer.discard()
        producer.close()
    role = f" as {event.role}" if event.role else ""
    print(f"{event.event} {event.model} {event.version}{role} at ts {event.ts!r} -> topic {topic!r} (acknowledged)")
    return 0


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``driftline audit`` to ``subparsers`` (of ``driftline``'s parser)."""
    au = subparsers.add_parser(
        "audit",
        help="print the audit trail: alarms, triggers, deliveries, lifecycle events",
        description="Print the audit log's records by event time, or one trigger's chain.",
    )
    au.add_argument("--model", help="only this model")
    au.add_argument("--version", help="only this version")
    au.add_argument(
        "--since", metavar="T", help="event time from T: epoch seconds, ISO date or time (UTC), or 36h / 7d ago"
    )
    au.add_argument("--until", metavar="T", help="event time before T (same forms)")
    au.add_argument("--kind", choices=["alarm", "trigger", "delivery", "lifecycle"], help="only this kind")
    au.add_argument(
        "--trigger",
        metavar="KEY",
        help="one trigger (its key or 8+ first characters): why it fired, what happened next",
    )
    au.add_argument("--limit", type=int, help="at most this many records (the earliest)")
    au.add_argument(
        "--format", choices=["table", "json"], default="table", help="table (default) or json (one object per line)"
    )
    au.add_argument("--config", type=Path, help="YAML config file (also DRIFTLINE_CONFIG)")
    au.add_argument("--state-dir", type=Path, help="where the service keeps audit.sqlite3")
    return au


def run_audit(args: argparse.Namespace, settings: Settings, out: Any = None) -> int:
    """Print the records (or the chain) ``args`` asks for to ``out`` (default stdout).

    Raises
    ------
    ConfigError
        An unreadable ``--since``/``--until``, or a ``--trigger`` key that matches no
        trigger or several (the CLI exits 2).
    SourceError
        There is no audit log where the settings say (the CLI exits 3).
    """
    from driftline.sinks.audit import (
        AUDIT_FILE,
        AuditLog,
        format_chain,
        format_records,
        parse_since,
    )

    out = sys.stdout if out is None else out
    path = settings.audit.path or (settings.state_dir / AUDIT_FILE)
    if not Path(path).is_file():
        raise SourceError(
            f"no audit log at {str(path)!r}: give the service's state directory with "
            "--state-dir (or state_dir, audit.path in --config)"
        )
    bounds = {}
    for name in ("since", "until"):
        text = getattr(args, name, None)
        if text is not None:
            try:
                bounds[name] = parse_since(text)
            except ValueError as exc:
                raise ConfigError(f"--{name}: {exc}") from None
    audit = AuditLog(path, retention_days=settings.audit.retention_days)
    try:
        if args.trigger is not None:
            try:
                text = format_chain(audit.answer_chain(args.trigger), args.format)
            except ValueError as exc:
                raise ConfigError(f"--trigger: {exc}") from None
        else:
            records = audit.query(
                args.model,
                args.version,
                bounds.get("since"),
                until=bounds.get("until"),
                kind=args.kind,
                limit=args.limit,
            )
            text = format_records(records, args.format)
    finally:
        audit.close()
    if text:
        out.write(text + "\n")
    return 0
