"""What the service reports about itself, behind a small interface.

The service loop calls a :class:`Telemetry` (the webhook sink reports through its own
``driftline.sinks.delivery.WebhookTelemetry``, which PrometheusTelemetry implements
too); ``driftline.sinks.prometheus.PrometheusTelemetry`` implements it with
prometheus-client counters and histograms, and :class:`NullTelemetry` (the default)
does nothing, so that ``monitor`` runs and is tested without a metrics registry. The
readiness components it reports are spelled once, here (:class:`Readiness`).

Per-feature statistics are *not* pushed through this interface: the Prometheus sink
reads them from :meth:`driftline.monitor.engine.Engine.snapshot` at scrape time.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

__all__ = ["Telemetry", "NullTelemetry", "Readiness", "ReadinessComponent", "READINESS_COMPONENTS"]

ReadinessComponent = Literal["kafka", "partitions", "consuming", "reference"]
"""A part of the service that ``/readyz`` and ``driftline_ready{component=...}`` report."""


class Readiness:
    """The readiness components, spelled once (the values are the metric's labels).

    Attributes
    ----------
    KAFKA
        The brokers answer.
    PARTITIONS
        At least one partition is assigned to this instance.
    CONSUMING
        Records arrive, or there is no lag (false while a sink cannot flush, and when
        nothing arrived for ``kafka.stall_timeout_seconds`` while records wait).
    REFERENCE
        Every model's reference is complete.
    """

    KAFKA: Final = "kafka"
    PARTITIONS: Final = "partitions"
    CONSUMING: Final = "consuming"
    REFERENCE: Final = "reference"


READINESS_COMPONENTS: Final[tuple[ReadinessComponent, ...]] = (
    Readiness.KAFKA,
    Readiness.PARTITIONS,
    Readiness.CONSUMING,
    Readiness.REFERENCE,
)
"""Every readiness component, in the order they are reported."""


class Telemetry(Protocol):
    def record_events(self, stream: str, count: int) -> None:
        """``count`` events consumed from ``stream`` (``predictions`` or ``feedback``)."""

    def record_invalid(self, reason: str, count: int = 1) -> None:
        """``count`` records dead-lettered for ``reason`` (a short fixed code)."""

    def record_join(self, outcome: str, count: int) -> None:
        """Label-join outcomes: ``matched``, ``self_contained``, ``unmatched``, ``expired``,
        ``evicted``."""

    def record_alarm(self, model: str, kind: str) -> None:
        """One alarm of ``kind`` raised for ``model``."""

    def observe_batch(self, seconds: float, size: int) -> None:
        """One batch processed end to end in ``seconds``."""

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Consumer lag of one partition, in records."""

    def mark_success(self, what: str) -> None:
        """``what`` (``batch``, ``commit``, ``checkpoint``, ``webhook``) just succeeded."""

    def set_ready(self, component: str, ready: bool) -> None:
        """Readiness of one of :data:`READINESS_COMPONENTS` (see :class:`Readiness`)."""

    def record_broker_errors(self, count: int) -> None:
        """``count`` more requests to the Kafka brokers failed or went unanswered."""

    def set_assigned_partitions(self, count: int) -> None:
        """Partitions the consumer group assigned to this instance."""

    def record_feature_overflow(self, model: str, count: int) -> None:
        """``count`` features of ``model`` beyond the per-model cap (not monitored)."""


class NullTelemetry:
    """Telemetry that records nothing."""

    def record_events(self, stream: str, count: int) -> None:
        pass

    def record_invalid(self, reason: str, count: int = 1) -> None:
        pass

    def record_join(self, outcome: str, count: int) -> None:
        pass

    def record_alarm(self, model: str, kind: str) -> None:
        pass

    def observe_batch(self, seconds: float, size: int) -> None:
        pass

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        pass

    def mark_success(self, what: str) -> None:
        pass

    def set_ready(self, component: str, ready: bool) -> None:
        pass

    def record_broker_errors(self, count: int) -> None:
        pass

    def set_assigned_partitions(self, count: int) -> None:
        pass

    def record_feature_overflow(self, model: str, count: int) -> None:
        pass
