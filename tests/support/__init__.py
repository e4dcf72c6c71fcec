"""Test helpers shared by the test directories: real servers, started and stopped by tests.

- :class:`tests.support.prometheus.PrometheusServer`: Debian's Prometheus on a free port,
  scraping given targets, with ``query`` and ``wait_for`` over its HTTP API.
- :class:`tests.support.receiver.WebhookReceiver`: an HTTP receiver that verifies
  driftline's signatures, drops repeated idempotency keys, records everything and can be
  scripted to fail first.
"""

from tests.support.prometheus import PrometheusServer, prometheus_binary
from tests.support.receiver import (
    ReceivedRequest,
    Reply,
    Reset,
    SlowBody,
    Stall,
    WebhookReceiver,
)

__all__ = [
    "PrometheusServer",
    "prometheus_binary",
    "WebhookReceiver",
    "ReceivedRequest",
    "Reply",
    "Stall",
    "Reset",
    "SlowBody",
]
