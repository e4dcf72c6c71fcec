"""Helpers for tests that compare `driftline run` over Kafka with `driftline replay`.

- :func:`write_config`: one YAML file for both (the replay ignores the ``kafka`` part);
- :class:`DriftlineProcess`: ``driftline run`` as a subprocess, through
  :mod:`tests.support.crashpoint` (which can SIGKILL it at a chosen point), its metrics
  port read from a file (no port chosen by the test and released before use);
- :func:`committed_total`, :func:`metric_values`, :func:`read_alarms`,
  :func:`alarm_set`, :func:`outbox_rows`: what the tests compare;
- :func:`replay`: ``driftline replay`` of the same events, in-process through the CLI.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

__all__ = [
    "DriftlineProcess",
    "wait_for",
    "write_config",
    "committed_total",
    "metric_values",
    "read_alarms",
    "alarm_set",
    "describe",
    "outbox_rows",
    "trigger_identity",
    "replay",
    "REPO",
    "QUICK_SESSION_MS",
]

REPO = Path(__file__).resolve().parents[2]

QUICK_SESSION_MS = 2000
"""A consumer-group session timeout for tests whose instances start and stop many
times: Tansu answers a join only after a delay that grows with the session timeout
(3 s or more at 6 s, about 1 s at 2 s, measured), and each ``driftline run`` or
``Service`` start joins once. The heartbeat is then 1 s (a third of the session, at
least 1 s: ``driftline.monitor.sources``), so one late heartbeat is tolerated; an
instance expelled by a later one rejoins, which the service rides out."""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def write_config(
    path: Path,
    *,
    broker: Any = None,
    topics: Mapping[str, str] | None = None,
    group: str = "g",
    state_dir: Path,
    alarms: Path | None = None,
    webhook_url: str | None = None,
    secret_env: str | None = None,
    consumer_process: bool = True,
    max_poll_records: int = 500,
    checkpoint_interval_seconds: float = 0.0,
    cooldown_seconds: float = 0.0,
    defaults: Mapping[str, Any] | None = None,
    session_timeout_ms: int = QUICK_SESSION_MS,
) -> Path:
    """A driftline YAML configuration with small windows (alarms within a few thousand
    events) and, when ``webhook_url`` is given, one target triggered by every alarm.
    ``session_timeout_ms``: the consumer group's, :data:`QUICK_SESSION_MS` unless a test
    says otherwise (each start of an instance joins once, and Tansu answers a join only
    after about half the session timeout)."""
    cfg: dict[str, Any] = {
        "state_dir": str(state_dir),
        "checkpoint_interval_seconds": checkpoint_interval_seconds,
        "prometheus": {"host": "127.0.0.1", "port": 0},
        "defaults": dict(
            defaults or {"reference": {"size": 1000}, "window": {"size": 500}, "performance": {"window": 250}}
        ),
    }
    if alarms is not None:
        cfg["alarms_jsonl"] = str(alarms)
    if broker is not None and topics is not None:
        cfg["kafka"] = {
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": group,
            "predictions_topic": topics["predictions"],
            "feedback_topic": topics["feedback"],
            "dead_letter_topic": topics["dead_letter"],
            "session_timeout_ms": session_timeout_ms,
            "poll_timeout_ms": 200,
            "max_poll_records": max_poll_records,
            "consumer_process": consumer_process,
        }
    if webhook_url is not None:
        target: dict[str, Any] = {"name": "ci", "url": webhook_url, "timeout_seconds": 1.0, "max_attempts": 10_000}
        if secret_env:
            target["secret_env"] = secret_env
        cfg["webhooks"] = {
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.5,
            "policy": {"min_alarms": 1, "cooldown_seconds": cooldown_seconds},
            "targets": [target],
        }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class DriftlineProcess:
    """``driftline run --config FILE`` in a subprocess (through the crash-point wrapper).

    Parameters
    ----------
    config
        The YAML file.
    workdir
        Where its port file and its log (stderr) go.
    crash
        ``(point, n)``: SIGKILL itself at the ``n``-th call at ``point`` (see
        :mod:`tests.support.crashpoint`); None: run until stopped.
    env
        Extra environment (webhook secrets).
    """

    def __init__(
        self,
        config: Path,
        workdir: Path,
        *,
        crash: tuple[str, int] | None = None,
        env: Mapping[str, str] | None = None,
        name: str = "run",
    ) -> None:
        self.port_file = workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        self.port_file.unlink(missing_ok=True)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DRIFTLINE_", "CRASHPOINT"))}
        full_env.update(env or {})
        full_env["CRASHPOINT_PORT_FILE"] = str(self.port_file)
        full_env["PYTHONPATH"] = str(REPO)
        if crash is not None:
            full_env["CRASHPOINT"], full_env["CRASHPOINT_AT"] = crash[0], str(crash[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.crashpoint",
                "run",
                "--config",
                str(config),
                "--metrics-port",
                "0",
                "--log-level",
                "INFO",
            ],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def port(self) -> int | None:
        try:
            return int(self.port_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def metrics(self) -> str:
        """The /metrics text ('' while the server is not up)."""
        port = self.port
        if port is None:
            return ""
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"driftline run did not exit within {timeout}s; log tail:\n{self.log()[-3000:]}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the graceful stop (flush, checkpoint, commit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        self.kill()
        self._log.close()

    def __enter__(self) -> DriftlineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.M)


def tracebacks(log: str) -> list[str]:
    """The log records of a ``driftline run`` log (its default format) that hold a
    traceback, but for those whose every frame is inside kafka-python: its 3.0 network
    layer logs one now and then while a client closes (``'NoneType' object has no
    attribute 'recv'`` in ``kafka/net/transport.py``), which says nothing of driftline.
    A traceback with a frame of driftline's, or printed outside a log record (an
    uncaught exception), is always returned."""
    starts = [m.start() for m in _LOG_RECORD.finditer(log)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    records = [log[a:b] for a, b in zip(starts, [*starts[1:], len(log)])]
    found = []
    for record in records:
        if "Traceback" not in record:
            continue
        header = record.split("\n", 1)[0].split(" ")
        logger = header[3] if _LOG_RECORD.match(record) and len(header) > 3 else ""
        frames = re.findall(r'^\s*File "([^"]+)"', record, re.M)
        if logger.startswith("kafka.") and frames and all("/site-packages/kafka/" in f for f in frames):
            continue
        found.append(record)
    return found


def committed_total(broker: Any, group: str, topic: str, partitions: int = 2) -> int:
    """Sum of the group's committed offsets over the topic's partitions."""
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=group, enable_auto_commit=False)
    try:
        return sum(probe.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        probe.close()


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$", re.M)


def metric_values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of metric ``name`` in a /metrics text, keyed by their sorted labels."""
    out = {}
    for metric, labels, value in _SAMPLE.findall(text):
        if metric == name:
            pairs = tuple(sorted(tuple(p.split("=", 1)) for p in re.findall(r'\w+="[^"]*"', labels)))
            out[tuple((k, v.strip('"')) for k, v in pairs)] = float(value)
    return out


def read_alarms(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def alarm_set(alarms: Iterable[Mapping[str, Any]]) -> set[bytes]:
    """Alarms as a set of canonical JSON (repeats of an alarm re-emitted after a crash
    collapse; the at-least-once contract allows them)."""
    return {orjson.dumps(dict(a), option=orjson.OPT_SORT_KEYS) for a in alarms}


def describe(alarms: Iterable[bytes]) -> list[tuple]:
    """Short sortable form of canonical alarms, for assertion messages."""
    out = []
    for raw in alarms:
        a = orjson.loads(raw)
        out.append(
            (
                a["model"],
                a["version"],
                a["kind"],
                a["detector"],
                a["feature"] or "",
                a["first_index"],
                a["last_index"],
                round(a["statistic"] or 0.0, 6),
            )
        )
    return sorted(out)


def outbox_rows(state_dir: Path) -> list[dict[str, Any]]:
    """Every outbox row: ``key``, ``status``, ``attempts`` and the trigger's ``identity``
    (see :func:`trigger_identity`)."""
    path = state_dir / "outbox.sqlite3"
    if not path.exists():
        return []
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("select idempotency_key, status, attempts, payload from deliveries").fetchall()
    except sqlite3.OperationalError:  # the table is created by the service; not yet there
        return []
    finally:
        con.close()
    return [
        {"key": k, "status": s, "attempts": n, "identity": trigger_identity(orjson.loads(p))} for k, s, n, p in rows
    ]


def trigger_identity(payload: Mapping[str, Any]) -> tuple:
    """What a trigger is about, independent of its idempotency key (whose material
    includes source positions, which differ between Kafka and a file): model, version,
    action, evidence window and what each evidence alarm says, from the generic payload
    (two triggers may share a window: a cooldown of 0, two alarms of one window)."""
    evidence = tuple(
        sorted(
            (a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])
            for a in payload["evidence"]
        )
    )
    return (
        payload["model"],
        payload["version"],
        payload["action"],
        payload["first_index"],
        payload["last_index"],
        evidence,
    )


def replay(
    tmp: Path,
    predictions: list[dict],
    feedback: list[dict],
    config: Path,
    *,
    with_webhooks: bool = False,
    state_dir: Path | None = None,
    batch_size: int | None = None,
    name: str = "replay",
) -> list[dict[str, Any]]:
    """``driftline replay`` of the events (in-process, through the CLI); its alarms."""
    from driftline.cli import main

    p, f, out = tmp / f"{name}-p.jsonl", tmp / f"{name}-f.jsonl", tmp / f"{name}-alarms.jsonl"
    p.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in predictions))
    f.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in feedback))
    argv = [
        "replay",
        "--predictions",
        str(p),
        "--feedback",
        str(f),
        "--config",
        str(config),
        "--alarms",
        str(out),
        "--quiet",
    ]
    if with_webhooks:
        argv.append("--with-webhooks")
    if state_dir is not None:
        argv += ["--state-dir", str(state_dir)]
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    import logging

    root = logging.getLogger()  # the CLI configures the root logger, as an entry point does
    handlers, level = list(root.handlers), root.level
    try:
        assert main(argv) == 0
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return read_alarms(out)


def read_topic(bootstrap, topic, count, timeout=60.0):
    """Every record of ``topic`` (all partitions) until ``count`` arrived or the deadline."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout
        partitions = None
        while not partitions and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        got = []
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
        return got
    finally:
        consumer.close()
