"""Run the real ``driftline run`` and SIGKILL it at a chosen point, for crash tests.

The crash tests must hit a point of the service's loop deterministically, and the
production code has no test hooks. This module is the subprocess's entry point instead:
it imports driftline, wraps one method so that its Nth call kills the process with
SIGKILL (no ``finally``, no ``atexit``, no flush: as a power loss or the OOM killer
would), then calls :func:`driftline.cli.main` with the real command-line arguments::

    CRASHPOINT=outbox CRASHPOINT_AT=2 python -m tests.support.crashpoint run --config c.yml

``CRASHPOINT`` (the environment variables are not ``DRIFTLINE_*``, which the settings
would read as configuration):

``engine``
    mid-batch: after the Nth ``Engine.process`` returned (the detectors' state has
    moved on, its alarms are neither in a sink nor in a checkpoint, nothing committed);
``outbox``
    after the Nth ``Outbox.add`` committed its transaction (the triggers are on disk,
    the JSONL sink was flushed before it), before the checkpoint and the offset commit;
``checkpoint``
    during the Nth ``CheckpointStore.save``: half of the new checkpoint is written to
    its temporary file and fsynced, the rename never happens;
``commit``
    after the Nth offset commit returned (a clean point, for comparison);
``jsonl``
    during the Nth ``JsonlSink.flush`` that has alarms to write: the first half of its
    bytes reach the file (as a short write before a power loss would leave them), then
    the process dies.

Unset, nothing is patched (the restart after a crash). ``CRASHPOINT_PORT_FILE``, when
set, receives the metrics port once the server listens (run with ``--metrics-port 0``:
no port is chosen by the test and released before use).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["POINTS", "install", "main"]

POINTS = ("engine", "outbox", "checkpoint", "commit", "jsonl")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _counting(original: Callable[..., Any], at: int, before: bool = False) -> Callable[..., Any]:
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if before and calls["n"] == at:
            _die()
        result = original(*args, **kwargs)
        if not before and calls["n"] == at:
            _die()
        return result

    return wrapper


def _half_written_save(original: Callable[..., Any], at: int) -> Callable[..., Any]:
    import orjson

    from driftline.monitor.checkpoint import encode_state

    calls = {"n": 0}

    def save(self: Any, state: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] != at:
            return original(self, state)
        # what CheckpointStore.save writes, cut in the middle of the write
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = orjson.dumps(encode_state(state), option=orjson.OPT_SERIALIZE_NUMPY)
        with open(self.path.with_suffix(".tmp"), "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        _die()

    return save


def _torn_jsonl_flush(original: Callable[..., Any], at: int) -> Callable[..., Any]:
    import json

    calls = {"n": 0}

    def flush(self: Any) -> None:
        if self._buffer:
            calls["n"] += 1
        if calls["n"] != at or not self._buffer:
            return original(self)
        # the bytes JsonlSink.flush writes, cut in the middle
        data = b"".join(
            json.dumps(a.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
            for a in self._buffer
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
        _die()

    return flush


def install(point: str, at: int) -> None:
    """Make the ``at``-th call at ``point`` (one of :data:`POINTS`) kill this process."""
    if at < 1:
        raise ValueError(f"CRASHPOINT_AT must be 1 or more, got {at}")
    if point == "engine":
        from driftline.monitor.engine import Engine

        Engine.process = _counting(Engine.process, at)  # type: ignore[method-assign]
    elif point == "outbox":
        from driftline.sinks.outbox import Outbox

        Outbox.add = _counting(Outbox.add, at)  # type: ignore[method-assign]
    elif point == "checkpoint":
        from driftline.monitor.checkpoint import CheckpointStore

        CheckpointStore.save = _half_written_save(CheckpointStore.save, at)  # type: ignore[method-assign]
    elif point == "commit":
        from driftline.monitor.sources import KafkaSource, ProcessKafkaSource

        for cls in (KafkaSource, ProcessKafkaSource):
            cls.commit = _counting(cls.commit, at)  # type: ignore[method-assign]
    elif point == "jsonl":
        from driftline.sinks.jsonl import JsonlSink

        JsonlSink.flush = _torn_jsonl_flush(JsonlSink.flush, at)  # type: ignore[method-assign]
    else:
        raise ValueError(f"CRASHPOINT must be one of {', '.join(POINTS)}, got {point!r}")


def _report_port(path: Path) -> None:
    from driftline.app import Service

    start = Service._start_metrics

    def start_and_report(self: Any) -> None:
        start(self)
        if self.metrics_port is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(str(self.metrics_port))
            os.replace(tmp, path)

    Service._start_metrics = start_and_report  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    """Install the crash point named by the environment, then run the CLI."""
    point = os.environ.get("CRASHPOINT")
    if point:
        install(point, int(os.environ.get("CRASHPOINT_AT", "1")))
    port_file = os.environ.get("CRASHPOINT_PORT_FILE")
    if port_file:
        _report_port(Path(port_file))
    from driftline.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":  # the consumer process (spawned) must not run this again
    sys.exit(main(sys.argv[1:]))
