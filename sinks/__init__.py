"""driftline's outputs: Prometheus metrics, webhooks, Kafka and JSONL alarm sinks."""

from sinks.base import Sink
from sinks.delivery import NullWebhookTelemetry, WebhookTelemetry
from sinks.exceptions import DeliveryError, SinkBackpressureError, SinkError
from sinks.factory import build_sinks, start_metrics_server
from sinks.http import MetricsServer
from sinks.jsonl import JsonlSink
from sinks.kafka import KafkaAlarmSink
from sinks.outbox import Outbox
from sinks.prometheus import EngineCollector, PrometheusTelemetry
from sinks.signing import sign, verify
from sinks.webhook import WebhookSink

__all__ = [
    "Sink",
    "SinkError",
    "SinkBackpressureError",
    "DeliveryError",
    "PrometheusTelemetry",
    "EngineCollector",
    "MetricsServer",
    "WebhookSink",
    "WebhookTelemetry",
    "NullWebhookTelemetry",
    "Outbox",
    "JsonlSink",
    "KafkaAlarmSink",
    "build_sinks",
    "start_metrics_server",
    "sign",
    "verify",
]
