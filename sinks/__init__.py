"""driftline's outputs: Prometheus metrics, webhooks, Kafka and JSONL alarm sinks."""

from sinks.base import Sink
from sinks.exceptions import DeliveryError, SinkBackpressureError, SinkError

__all__ = ["Sink", "SinkError", "SinkBackpressureError", "DeliveryError"]
