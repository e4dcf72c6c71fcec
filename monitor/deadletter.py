"""Dead letters: records that broke the event contract, kept with the reason.

Nothing is dropped: each bad record is written, with its original bytes and the
reason, to a dead-letter topic (Kafka runs) or a JSONL file (replays), and counted by
reason. Like sinks, a dead-letter writer buffers on ``write`` and makes durable on
``flush``; the service commits offsets only after that flush succeeded.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import orjson

from monitor.config import KafkaSettings
from monitor.decode import DeadLetter
from sinks.exceptions import SinkError

__all__ = ["KafkaDeadLetters", "FileDeadLetters"]

log = logging.getLogger(__name__)


class _DeadLetters:
    """Buffer on ``write``; ``flush`` makes the buffer durable (subclasses' ``_deliver``)
    and empties it only then; ``close`` flushes and releases (``_release``)."""

    def __init__(self) -> None:
        self._pending: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self._pending.extend(letters)

    def flush(self) -> None:
        if self._pending:
            self._deliver()
            self._pending.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._release()

    def _deliver(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _release(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class FileDeadLetters(_DeadLetters):
    """Append dead letters as JSON lines to a file."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._fh = None

    def _deliver(self) -> None:
        try:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")
            self._fh.write(b"".join(orjson.dumps(d.to_dict()) + b"\n" for d in self._pending))
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"cannot write dead letters to {self.path}: {exc.strerror}") from None

    def _release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class KafkaDeadLetters(_DeadLetters):
    """Produce dead letters to the dead-letter topic: the original bytes as the value,
    the original key, and headers ``driftline-reason``, ``driftline-detail`` and
    ``driftline-source`` (topic/partition/offset)."""

    def __init__(self, settings: KafkaSettings, producer=None) -> None:
        from kafka import KafkaProducer

        from monitor.sources import kafka_client_options

        super().__init__()
        self.topic = settings.dead_letter_topic
        self._producer = producer or KafkaProducer(acks="all", linger_ms=20, **kafka_client_options(settings))

    def _deliver(self) -> None:
        from kafka.errors import KafkaError

        try:
            futures = [
                self._producer.send(
                    self.topic, key=d.key, value=d.value if d.value is not None else b"",
                    headers=[("driftline-reason", d.reason.encode()),
                             ("driftline-detail", d.detail.encode()[:1000]),
                             ("driftline-source", f"{d.topic}/{d.partition}/{d.offset}".encode())])
                for d in self._pending
            ]
            self._producer.flush(timeout=30)
            for f in futures:
                f.get(timeout=30)
        except KafkaError as exc:
            raise SinkError(f"cannot produce dead letters to {self.topic}: {exc}") from None

    def _release(self) -> None:
        self._producer.close(timeout=5)
