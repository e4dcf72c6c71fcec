"""Dead letters: records that broke the event contract, kept with the reason.

Nothing is dropped: each bad record is written, with its original bytes and the
reason, to a dead-letter topic (Kafka runs) or a JSONL file (replays), and counted by
reason. Like sinks, a dead-letter writer buffers on ``write`` and makes durable on
``flush``; the service commits offsets only after that flush succeeded. A dead letter
that could not be written keeps ``flush`` raising (so the commit waits) and is written
at a later flush; one dead letter the broker refuses never holds back the others.

Every dead letter carries its original size and the SHA-256 of its original value:
a value too large for the dead-letter topic (over ``kafka.dead_letter_max_bytes``
with its key and headers) is cut to fit and marked truncated, and the hash still names
the original bytes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import orjson

from driftline.monitor.config import KafkaSettings
from driftline.monitor.decode import DeadLetter
from driftline.sinks.exceptions import SinkError
from driftline.sinks.jsonl import LineFile
from driftline.sinks.kafka import Headers, KafkaPublisher, Outgoing

__all__ = ["KafkaDeadLetters", "FileDeadLetters", "DEFAULT_MAX_BYTES", "digest"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1_000_000
"""Bytes a dead-letter record may take (key, value and headers): under Kafka's default
``message.max.bytes`` (1,048,588 bytes for a record batch) by enough for the batch's
own overhead."""

_MIN_VALUE_BYTES = 1024
"""A record refused for its size is halved down to this much value, never below."""

_DETAIL_BYTES = 1000
"""The ``driftline-detail`` header is cut to this many bytes."""

_KEY_BYTES = 4096
"""A key longer than half the record limit is cut to this many bytes."""


def digest(value: bytes | None) -> str:
    """Hex SHA-256 of a dead letter's original value (of no bytes when it had none)."""
    return hashlib.sha256(value or b"").hexdigest()


class FileDeadLetters:
    """Append dead letters as JSON lines to a file.

    Each line is :meth:`DeadLetter.to_dict` plus ``size`` and ``sha256`` of the original
    value; the value is never cut (a file has no record limit). A flush that fails
    part-way is cut back to the last complete flush, so the retry leaves neither a torn
    line nor a duplicate.
    """

    name = "dead-letters"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: list[DeadLetter] = []
        self._lines = LineFile(self.path, "dead letters")

    @property
    def pending(self) -> int:
        """Dead letters not yet on disk."""
        return len(self._pending)

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self._pending.extend(letters)

    def flush(self) -> None:
        """Append the pending dead letters and fsync.

        Raises
        ------
        sinks.SinkError
            When the file cannot be written; the dead letters stay pending.
        """
        if not self._pending:
            return
        data = b"".join(
            orjson.dumps({**d.to_dict(), "size": len(d.value or b""), "sha256": digest(d.value)}) + b"\n"
            for d in self._pending
        )
        try:
            self._lines.append(data)
        except OSError as exc:
            raise SinkError(
                f"cannot write {len(self._pending)} dead letter(s) to {self.path} "
                f"({exc.strerror or exc}); they are kept for the next flush: "
                "check the disk and permissions"
            ) from None
        self._pending.clear()

    def close(self) -> None:
        """Flush (raising :class:`~sinks.SinkError` when it cannot) and close the file."""
        try:
            self.flush()
        finally:
            self._lines.close()


class KafkaDeadLetters(KafkaPublisher):
    """Produce dead letters to the dead-letter topic.

    The record is the original key and value with the headers ``driftline-reason``,
    ``driftline-detail`` (at most 1000 bytes), ``driftline-source``
    (topic/partition/offset), ``driftline-original-size`` (bytes of the original value),
    ``driftline-sha256`` (hex, of the original value) and ``driftline-truncated``
    (``true`` when the value was cut to fit, else ``false``). A key longer than half the
    limit is cut too (``driftline-key-original-size`` then gives its length).

    Parameters
    ----------
    settings
        ``kafka`` of the configuration: brokers, security, ``dead_letter_topic`` and
        ``dead_letter_max_bytes``.
    producer
        A producer to use instead of one made from ``settings`` (closed by :meth:`close`).
    max_bytes
        Bytes one record may take (key, value and headers); default
        ``settings.dead_letter_max_bytes``. A broker that refuses a record for its size
        all the same (a topic with a lower ``max.message.bytes``) gets it again with the
        value halved, down to 1 KiB.
    flush_timeout_seconds
        How long ``flush()`` waits for acknowledgements (and for metadata when sending).

    Notes
    -----
    Delivery is at least once: a dead letter whose acknowledgement was lost is produced
    again (its ``driftline-source`` header identifies it). The producer is created at
    the first flush that has something to send: a broker that is down then makes the
    flush fail and the commit wait, never the service crash.
    """

    name = "dead-letters"

    def __init__(
        self,
        settings: KafkaSettings,
        producer=None,
        *,
        max_bytes: int | None = None,
        flush_timeout_seconds: float = 10.0,
    ) -> None:
        self.max_bytes = int(
            max_bytes if max_bytes is not None else getattr(settings, "dead_letter_max_bytes", DEFAULT_MAX_BYTES)
        )
        if self.max_bytes < 4 * _MIN_VALUE_BYTES + _KEY_BYTES:
            raise ValueError(
                f"max_bytes must be at least {4 * _MIN_VALUE_BYTES + _KEY_BYTES} "
                f"(got {self.max_bytes}): room for the headers, a cut key and some value"
            )
        # the producer's own check counts its record overhead too: leave it room, so
        # that a record cut to max_bytes is never refused on this side
        super().__init__(
            settings,
            settings.dead_letter_topic,
            what="dead letter(s)",
            client_suffix="dead-letters",
            flush_timeout_seconds=flush_timeout_seconds,
            max_request_size=max(self.max_bytes + 65_536, 1_048_576),
            producer=producer,
        )

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self._add(letters, limit=self.max_bytes)

    def _record(self, entry: Outgoing) -> tuple[bytes | None, bytes, Headers]:
        d: DeadLetter = entry.item
        value = d.value if d.value is not None else b""
        key = d.key
        limit = entry.limit if entry.limit is not None else self.max_bytes
        headers: Headers = [
            ("driftline-reason", d.reason.encode()),
            ("driftline-detail", _cut_utf8(d.detail.encode("utf-8", "replace"), _DETAIL_BYTES)),
            ("driftline-source", f"{d.topic}/{d.partition}/{d.offset}".encode()),
            ("driftline-original-size", str(len(value)).encode()),
            ("driftline-sha256", digest(value).encode()),
        ]
        if key is not None and len(key) > self.max_bytes // 2:
            headers.append(("driftline-key-original-size", str(len(key)).encode()))
            key = key[:_KEY_BYTES]
        room = limit - len(key or b"") - sum(len(k) + len(v) for k, v in headers) - len("driftline-truncated") - 5
        truncated = len(value) > room
        headers.append(("driftline-truncated", b"true" if truncated else b"false"))
        return key, value[: max(room, 0)] if truncated else value, headers

    def _shrink(self, entry: Outgoing) -> bool:
        d: DeadLetter = entry.item
        limit = entry.limit if entry.limit is not None else self.max_bytes
        sent = min(len(d.value or b""), limit)
        if sent <= _MIN_VALUE_BYTES:
            return False
        entry.limit = max(sent // 2, _MIN_VALUE_BYTES)
        log.warning(
            "dead letter from %s/%d/%d refused for its size: sending again with at most %d "
            "bytes (raise the dead-letter topic's max.message.bytes, or lower "
            "kafka.dead_letter_max_bytes)",
            d.topic,
            d.partition,
            d.offset,
            entry.limit,
        )
        return True


def _cut_utf8(data: bytes, n: int) -> bytes:
    """At most ``n`` bytes of UTF-8 text, not cutting a character in two."""
    if len(data) <= n:
        return data
    return data[:n].decode("utf-8", "ignore").encode("utf-8")
