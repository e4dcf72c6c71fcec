"""Fixtures shared by every test directory: a real Kafka-protocol broker (Tansu) for
the session, and unique topic names per test; the suite's rules: no test passes by
skipping (tests/skip_policy.py), and hypothesis runs reproducibly under CI and
``make test``."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from driftline.demo.embedded_broker import EmbeddedBroker
from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401

# Reproducible property tests: the same examples on every run (derandomize), so a CI
# failure is one anyone can rerun; the failing example's blob printed for
# @reproduce_failure; no example database (examples saved by an earlier run would change
# what this one tries); no deadline or too-slow check (a shared CI machine's timing is not
# the code's). max_examples is the default for tests that do not set their own.
settings.register_profile(
    "ci",
    derandomize=True,
    print_blob=True,
    deadline=None,
    max_examples=100,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
elif os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    settings.load_profile("ci")

_counter = itertools.count()

_BROKER_FIXTURES = frozenset({"broker", "own_broker", "demo", "demo_run", "demo_process"})


def _weight(item: pytest.Item) -> int:
    """0 for tests marked slow, 1 for tests with a broker or the demo (seconds each),
    2 for the rest (milliseconds)."""
    if item.get_closest_marker("slow") is not None:
        return 0
    return 1 if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ())) else 2


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Modules with long tests first (a module weighs what its heaviest test does),
    each module kept whole and in its order: pytest-xdist hands tests out in collection
    order, so the two workers start on the long ones and the short ones fill the end (a
    long test handed out last would run alone while the other worker idles). Modules
    stay whole because a module- or package-scoped fixture (the demo, a module's
    service run) is torn down when the next test belongs elsewhere and set up again
    when one of its tests comes back."""
    weight: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        weight[module] = min(weight.get(module, 2), _weight(item))
    items.sort(key=lambda item: weight[item.nodeid.split("::", 1)[0]])


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


@pytest.fixture(autouse=True)
def _collector_untouched():
    """No test leaves the pytest process's garbage collector tuned (the service tunes it
    for its run, an entry point's business): a test that does, e.g. by leaving a service
    thread running, fails here, and the collector is put back for the next one."""
    import gc

    threshold, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    now = gc.get_threshold(), gc.get_freeze_count()
    if now != (threshold, frozen):
        gc.set_threshold(*threshold)
        if frozen == 0:
            gc.unfreeze()
        pytest.fail(
            f"the test left the collector changed: thresholds {now[0]} (were {threshold}), "
            f"{now[1]} objects frozen (were {frozen}); stop what it started"
        )
