"""The one interface every output implements.

The service loop, per batch::

    for sink in sinks: sink.write(alarms)       # hand over; never raises for I/O
    for sink in sinks: sink.flush()             # make durable; may raise SinkError
    # only if every flush succeeded: checkpoint state, then commit Kafka offsets

A sink that fails to flush keeps what it was given and tries again at the next
flush; it never stops the other sinks (the loop flushes them all and only then
decides whether to commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from driftline.monitor.alarms import Alarm

__all__ = ["Sink"]


class Sink(Protocol):
    name: str

    def write(self, alarms: Sequence[Alarm]) -> None:
        """Accept alarms (buffer them). Called once per batch, possibly with none."""

    def flush(self) -> None:
        """Make everything written so far durable or delivered.

        Raises
        ------
        sinks.SinkError
            If it could not; the alarms stay buffered for the next flush.
        """

    def close(self) -> None:
        """Flush what can be flushed and release resources."""
