"""Alarms published to a Kafka topic (``kafka.alarms_topic``), as JSON, keyed by model.

``flush()`` sends the buffered alarms, waits for the broker's acknowledgement
(``acks="all"``) up to ``flush_timeout_seconds`` and keeps every alarm that was not
acknowledged for the next flush. Delivery is at least once: an alarm whose
acknowledgement was lost is sent again, so consumers that must not count twice key on
``(model, version, kind, detector, feature, first_index, last_index)``.

:class:`KafkaPublisher` holds what this sink and the dead-letter writer
(:class:`driftline.sinks.deadletter.KafkaDeadLetters`) share: a producer created at the first
flush, every record kept until the broker acknowledged it, each record in flight at most
once (a flush that timed out leaves it in flight: the next flush waits for it rather than
sending a second copy), and one refused record never holding back the others.

Examples
--------
>>> from driftline.monitor.config import KafkaSettings
>>> sink = KafkaAlarmSink(KafkaSettings(alarms_topic="driftline-alarms"))  # doctest: +SKIP
>>> sink.write(alarms); sink.flush(); sink.close()                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from kafka.net.compat import KafkaNetClient

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import KafkaSettings
from driftline.monitor.exceptions import ConfigError
from driftline.monitor.kafka_client import client_options
from driftline.sinks.exceptions import SinkError

__all__ = ["KafkaAlarmSink", "KafkaPublisher", "Outgoing"]

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
"""Refusals of a record for its size: by the producer (``max_request_size``) or by the
broker (``message.max.bytes`` or the topic's ``max.message.bytes``)."""


@dataclass
class Outgoing:
    """One record waiting for the broker's acknowledgement.

    Attributes
    ----------
    item
        What the publisher encodes into the record (an alarm, a dead letter).
    future
        The send in flight, or None when the record is to be sent (again).
    limit
        Bytes the record may take, for publishers that shrink a record the broker
        refused for its size (None: not used).
    """

    item: Any
    future: Any = None
    limit: int | None = None


class KafkaPublisher:
    """Publish records to one topic and keep each until the broker acknowledged it.

    Subclasses say how an item becomes a record (:meth:`_record`) and, optionally, how
    to make a record smaller after a size refusal (:meth:`_shrink`).

    Parameters
    ----------
    settings
        ``kafka`` of the configuration: brokers, security and socket tuning, mapped by
        :func:`driftline.monitor.kafka_client.client_options` as for the consumer.
    topic
        Where the records go.
    what
        What the records are, in messages ("alarm(s)", "dead letter(s)").
    client_suffix
        Appended to ``settings.client_id`` (the broker's logs and quotas tell the
        producers apart).
    flush_timeout_seconds
        How long ``flush()`` waits for acknowledgements (and for metadata when sending).
    max_request_size
        The producer's ``max_request_size`` (bytes of one record, as kafka-python
        estimates them); None keeps kafka-python's default of 1 MiB.
    producer
        A producer to use instead of one made from ``settings`` (it is closed by
        :meth:`close` all the same).
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        *,
        what: str,
        client_suffix: str,
        flush_timeout_seconds: float = 10.0,
        max_request_size: int | None = None,
        producer: KafkaProducer | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.flush_timeout_seconds = flush_timeout_seconds
        self._what = what
        self._client_suffix = client_suffix
        self._max_request_size = max_request_size
        self._pending: list[Outgoing] = []
        self._producer: KafkaProducer | None = producer
        self._failed_at: float | None = None  # monotonic time of the last failed flush

    @property
    def pending(self) -> int:
        """Records not yet acknowledged by the broker."""
        return len(self._pending)

    # -- what subclasses provide ----------------------------------------------------------
    def _record(self, entry: Outgoing) -> tuple[bytes | None, bytes, Headers]:
        """Key, value and headers of ``entry``'s record."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _shrink(self, entry: Outgoing) -> bool:
        """Make ``entry``'s record smaller after a size refusal; False when it cannot
        (the refusal is then reported at every flush until the limit is raised)."""
        return False

    # -- the producer ---------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        timeout_ms = int(self.flush_timeout_seconds * 1000)
        config = client_options(self.settings, "producer")  # brokers, TLS, SASL, buffers
        config.update(
            {
                "client_id": f"{self.settings.client_id}-{self._client_suffix}",
                "acks": "all",
                "max_block_ms": timeout_ms,
                "request_timeout_ms": timeout_ms,
                "bootstrap_timeout_ms": timeout_ms,
                "linger_ms": 5,
            }
        )
        if self._max_request_size is not None:
            config["max_request_size"] = self._max_request_size
        return config

    def _ensure_producer(self) -> KafkaProducer:
        if self._producer is None:
            # kafka-python 3.0 leaves its network client open when the producer's
            # bootstrap fails in __init__: keep a handle on it to close it ourselves.
            clients: list[KafkaNetClient] = []

            def client(**config: Any) -> KafkaNetClient:
                clients.append(KafkaNetClient(**config))
                return clients[-1]

            try:
                self._producer = KafkaProducer(**self._config(), kafka_client=client)
            except KafkaError as exc:
                for opened in clients:
                    opened.close()
                raise SinkError(
                    f"cannot connect to Kafka at {self.settings.bootstrap_servers} to publish "
                    f"{self._what} ({exc}); {len(self._pending)} {self._what} kept "
                    "for the next flush: check kafka.bootstrap_servers and the broker"
                ) from None
        return self._producer

    # -- the sink interface ---------------------------------------------------------------
    def _add(self, items: Sequence[Any], limit: int | None = None) -> None:
        self._pending.extend(Outgoing(item, limit=limit) for item in items)

    def flush(self) -> None:
        """Send what is not in flight yet, wait for the acknowledgements, and forget only
        the acknowledged records.

        Raises
        ------
        sinks.SinkError
            When some records were not acknowledged in time; those are kept (and those
            still in flight stay in flight) for the next flush.
        """
        if not self._pending:
            self._failed_at = None
            return
        try:
            producer = self._ensure_producer()
        except SinkError:
            self._failed_at = time.monotonic()
            raise
        error: Exception | None = None
        for _ in range(3):  # a record refused for its size is shrunk and sent again at once
            error = self._send(producer) or error
            try:
                producer.flush(timeout=self.flush_timeout_seconds)
            except KafkaError as exc:  # timed out: the records stay in flight
                error = error or exc
            resized = False
            for entry in self._pending:
                future = entry.future
                if future is not None and future.failed() and isinstance(future.exception, _SIZE_ERRORS):
                    error = error or future.exception
                    entry.future = None
                    resized = self._shrink(entry) or resized
            self._pending = [e for e in self._pending if not (e.future is not None and e.future.succeeded())]
            if not self._pending or not resized:
                break
        if not self._pending:
            self._failed_at = None
            return
        for entry in self._pending:
            if entry.future is not None and entry.future.failed():
                error = error or entry.future.exception
        self._failed_at = time.monotonic()
        raise SinkError(
            f"{len(self._pending)} {self._what} not acknowledged by Kafka topic "
            f"{self.topic!r} within {self.flush_timeout_seconds}s "
            f"({type(error).__name__ if error else 'timeout'}: {error}); they are kept for the "
            "next flush: check the broker and that the topic exists"
        )

    def _send(self, producer: KafkaProducer) -> Exception | None:
        """Send every record that is not in flight; the first error, if any."""
        error: Exception | None = None
        for entry in self._pending:
            future = entry.future
            if future is not None:
                if not future.is_done or future.succeeded():
                    continue  # in flight (wait for it) or acknowledged (forgotten after the flush)
                error = error or future.exception  # failed: sent again below
                entry.future = None
            while True:
                key, value, headers = self._record(entry)
                try:
                    entry.future = producer.send(self.topic, key=key, value=value, headers=headers)
                    break
                except _SIZE_ERRORS as exc:  # refused before sending: max_request_size
                    if not self._shrink(entry):
                        error = error or exc
                        break
                except KafkaTimeoutError as exc:
                    # no metadata for the topic within max_block_ms: every other send
                    # would wait as long, so the rest waits for the next flush
                    return error or exc
                except KafkaError as exc:
                    error = error or exc
                    break
        return error

    def close(self) -> None:
        """Flush what can be flushed (a failure is logged) and close the producer.

        When a flush failed less than ``flush_timeout_seconds`` ago (the service's last
        flush before it stops, typically, in a broker outage), the records are not
        waited for again: a shutdown in an outage would otherwise wait the timeout twice
        per Kafka sink (three times with the producer's close), past a container's grace
        period. Nothing is lost: a failed flush held the offsets' commit back, so the
        records are produced again after the restart.
        """
        recent = self._failed_at is not None and time.monotonic() - self._failed_at < self.flush_timeout_seconds
        try:
            if recent and self._pending:
                log.warning(
                    "Kafka topic %r: closing with %d unpublished %s (the last flush failed just now; "
                    "their offsets were not committed, so they are produced again after a restart)",
                    self.topic,
                    len(self._pending),
                    self._what,
                )
            else:
                self.flush()
        except SinkError as exc:
            log.warning(
                "Kafka topic %r: closing with %d unpublished %s: %s", self.topic, len(self._pending), self._what, exc
            )
        finally:
            if self._producer is not None:
                # records still in flight to a broker that did not answer are not waited for
                _close_producer(self._producer, 0 if self._failed_at is not None else self.flush_timeout_seconds)
                self._producer = None


def _close_producer(producer: KafkaProducer, timeout: float) -> None:
    """``producer.close(timeout)``, whatever is still in flight.

    kafka-python 3.0's ``close`` flushes first and raises ``KafkaTimeoutError`` when that
    flush times out (a broker that does not answer), before it stops its sender thread
    and closes its connections: the producer would be left running. Then its flush is
    skipped and it is closed again, at once (the records in flight are dropped: their
    offsets were not committed).
    """
    try:
        producer.close(timeout=timeout)
    except KafkaError:
        producer.flush = lambda timeout=None: None
        producer.close(timeout=0)


def _encode(alarm: Alarm) -> bytes:
    return json.dumps(alarm.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")


class KafkaAlarmSink(KafkaPublisher):
    """Publishes alarms to ``settings.alarms_topic``.

    Parameters
    ----------
    settings
        ``kafka`` of the configuration: brokers, security and ``alarms_topic``.
    flush_timeout_seconds
        How long ``flush()`` waits for acknowledgements (and for metadata when sending).

    Raises
    ------
    ConfigError
        When ``settings.alarms_topic`` is not set.

    Notes
    -----
    The producer is created at the first flush: a broker that is down at start makes
    flushes fail (and offsets stay uncommitted) instead of crashing the service.
    """

    name = "kafka"

    def __init__(
        self, settings: KafkaSettings, *, flush_timeout_seconds: float = 10.0, producer: KafkaProducer | None = None
    ) -> None:
        if not settings.alarms_topic:
            raise ConfigError(
                "kafka.alarms_topic is not set: name the topic alarms are published to, "
                "or do not build the Kafka alarm sink"
            )
        super().__init__(
            settings,
            settings.alarms_topic,
            what="alarm(s)",
            client_suffix="alarms",
            flush_timeout_seconds=flush_timeout_seconds,
            producer=producer,
        )

    def write(self, alarms: Sequence[Alarm]) -> None:
        self._add(alarms)

    def _record(self, entry: Outgoing) -> tuple[bytes | None, bytes, Headers]:
        alarm: Alarm = entry.item
        return alarm.model.encode("utf-8"), _encode(alarm), []
