"""Exceptions of the sinks package.

DriftlineError (driftline.monitor.exceptions)
 +-- SinkError               a sink could not make its alarms durable or deliver them
 |    +-- SinkBackpressureError  the destination asked to slow down (retry_after seconds)
 +-- DeliveryError           one webhook request failed (carries whether to retry)
"""

from __future__ import annotations

from driftline.monitor.exceptions import DriftlineError

__all__ = ["SinkError", "SinkBackpressureError", "DeliveryError"]


class SinkError(DriftlineError):
    """A sink could not flush; what it holds is kept for the next flush."""


class SinkBackpressureError(SinkError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeliveryError(DriftlineError):
    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
