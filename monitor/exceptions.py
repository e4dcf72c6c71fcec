"""Exceptions of the monitor package.

DriftlineError          base of everything driftline raises on purpose
 +-- ConfigError        the configuration is invalid (the message names the field)
 +-- ReferenceLoadError  a reference file cannot be read or is unusable
 +-- SourceError        a source (Kafka, file) cannot be read
 +-- CheckpointError    a checkpoint cannot be read or was written by another format
 +-- ContractError      one record breaks the event contract (never escapes a batch:
                        it is dead-lettered with ``reason``)
"""

from __future__ import annotations

__all__ = ["DriftlineError", "ConfigError", "ReferenceLoadError", "SourceError", "CheckpointError", "ContractError"]


class DriftlineError(Exception):
    pass


class ConfigError(DriftlineError):
    """Invalid configuration; the message names the field, the value and what was expected."""


class ReferenceLoadError(DriftlineError):
    """A reference file cannot be read or holds no usable events."""


class SourceError(DriftlineError):
    """A source cannot be read."""


class CheckpointError(DriftlineError):
    """A checkpoint cannot be read, or was written in another format; the message says
    which file and what to do."""


class ContractError(DriftlineError):
    """A record breaks the event contract; ``reason`` is a short fixed code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
