"""Alarms published to a Kafka topic (``kafka.alarms_topic``), as JSON, keyed by model.

``flush()`` sends the buffered alarms, waits for the broker's acknowledgement
(``acks="all"``) up to ``flush_timeout_seconds`` and keeps every alarm that was not
acknowledged for the next flush. Delivery is at least once: an alarm whose
acknowledgement was lost is sent again, so consumers that must not count twice key on
``(model, version, kind, detector, feature, first_index, last_index)``.

Examples
--------
>>> from monitor.config import KafkaSettings
>>> sink = KafkaAlarmSink(KafkaSettings(alarms_topic="driftline-alarms"))  # doctest: +SKIP
>>> sink.write(alarms); sink.flush(); sink.close()                         # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.net.compat import KafkaNetClient

from monitor.alarms import Alarm
from monitor.config import KafkaSettings
from monitor.exceptions import ConfigError
from sinks.exceptions import SinkError

__all__ = ["KafkaAlarmSink"]

log = logging.getLogger(__name__)


def _encode(alarm: Alarm) -> bytes:
    return json.dumps(alarm.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8")


class KafkaAlarmSink:
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

    def __init__(self, settings: KafkaSettings, *, flush_timeout_seconds: float = 10.0) -> None:
        if not settings.alarms_topic:
            raise ConfigError(
                "kafka.alarms_topic is not set: name the topic alarms are published to, "
                "or do not build the Kafka alarm sink"
            )
        self.settings = settings
        self.topic = settings.alarms_topic
        self.flush_timeout_seconds = flush_timeout_seconds
        self._pending: list[Alarm] = []
        self._producer: KafkaProducer | None = None

    @property
    def pending(self) -> int:
        """Alarms not yet acknowledged by the broker."""
        return len(self._pending)

    def _config(self) -> dict[str, Any]:
        s = self.settings
        timeout_ms = int(self.flush_timeout_seconds * 1000)
        config: dict[str, Any] = {
            "bootstrap_servers": s.bootstrap_servers.split(","),
            "client_id": f"{s.client_id}-alarms",
            "acks": "all",
            "security_protocol": s.security_protocol,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "linger_ms": 5,
        }
        if s.sasl_mechanism is not None:
            config["sasl_mechanism"] = s.sasl_mechanism
            config["sasl_plain_username"] = s.sasl_username
            if s.sasl_password is not None:
                config["sasl_plain_password"] = s.sasl_password.get_secret_value()
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
                    f"alarms ({exc}); {len(self._pending)} alarm(s) kept "
                    "for the next flush: check kafka.bootstrap_servers and the broker"
                ) from None
        return self._producer

    def write(self, alarms: Sequence[Alarm]) -> None:
        self._pending.extend(alarms)

    def flush(self) -> None:
        """Publish the buffered alarms and wait for the broker's acknowledgements.

        Raises
        ------
        sinks.SinkError
            When some alarms were not acknowledged in time; those are kept.
        """
        if not self._pending:
            return
        producer = self._ensure_producer()
        sent = []
        error: Exception | None = None
        for alarm in self._pending:
            try:
                sent.append((alarm, producer.send(self.topic, key=alarm.model.encode("utf-8"),
                                                  value=_encode(alarm))))
            except KafkaError as exc:  # metadata not available within max_block_ms
                error = exc
                break
        try:
            producer.flush(timeout=self.flush_timeout_seconds)
        except KafkaError as exc:
            error = error or exc
        unsent = self._pending[len(sent):]
        failed = [alarm for alarm, future in sent if not (future.is_done and future.succeeded())]
        if not failed and not unsent:
            self._pending = []
            return
        for _, future in sent:
            if future.is_done and future.failed() and error is None:
                error = future.exception
        self._pending = failed + unsent
        raise SinkError(
            f"{len(self._pending)} alarm(s) were not acknowledged by Kafka topic "
            f"{self.topic!r} within {self.flush_timeout_seconds}s "
            f"({type(error).__name__ if error else 'timeout'}: {error}); they are kept for the "
            "next flush: check the broker and that the topic exists"
        )

    def close(self) -> None:
        """Flush what can be flushed (a failure is logged) and close the producer."""
        try:
            self.flush()
        except SinkError as exc:
            log.warning("Kafka alarm sink closing with %d unpublished alarm(s): %s",
                        len(self._pending), exc)
        finally:
            if self._producer is not None:
                self._producer.close(timeout=self.flush_timeout_seconds)
                self._producer = None
