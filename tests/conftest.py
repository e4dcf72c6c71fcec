"""Fixtures shared by every test directory: a real Kafka-protocol broker (Tansu) for
the session, and unique topic names per test."""

from __future__ import annotations

import itertools
import uuid

import pytest

from monitor.embedded_broker import EmbeddedBroker

_counter = itertools.count()


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """One Tansu broker on 127.0.0.1 for the whole session (memory storage)."""
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as b:
        yield b


@pytest.fixture
def topics(broker):
    """Fresh topic names (predictions, feedback, dead letters, alarms) for one test."""
    suffix = f"{next(_counter)}-{uuid.uuid4().hex[:6]}"
    names = {
        "predictions": f"predictions-{suffix}",
        "feedback": f"feedback-{suffix}",
        "dead_letter": f"dlq-{suffix}",
        "alarms": f"alarms-{suffix}",
    }
    broker.create_topics(list(names.values()), partitions=2)
    return names


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLI configures the root logger (as an entry point should); put it back after
    each test so that a handler bound to a closed capture stream does not outlive it."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
