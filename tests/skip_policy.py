"""No test passes by skipping: a skip fails the run unless it is listed here.

The README promises that ``make test`` runs every test. A test that skips because a
dependency is missing (Debian's ``prometheus``/``promtool``, ``docker-compose``) would
turn that promise into a green run that proved less, so every skip (``pytest.skip`` in a
test or fixture, a ``skipif`` mark, a module-level skip) is reported as a failure that
says what was missing, unless its test is in :data:`ALLOWED_SKIPS` with the reason it may
skip. Expected failures (``xfail``) are not skips and are left alone.

``DRIFTLINE_ALLOW_SKIPS=1`` turns the check off for a local run on a machine that lacks
the system packages; ``make test`` and CI never set it.

The hooks are imported by ``tests/conftest.py``; ``tests/test_skip_policy.py`` runs them
on small throw-away suites.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["ALLOWED_SKIPS", "ALLOW_ENV", "INSTALL_COMMAND", "pytest_make_collect_report", "pytest_runtest_makereport"]

ALLOWED_SKIPS: dict[str, str] = {}
"""Deliberate skips: a node id (or the prefix of one, e.g. a module path) -> why that
test may skip. Empty: no test of the suite may skip."""

ALLOW_ENV = "DRIFTLINE_ALLOW_SKIPS"
"""Set to 1 to let skips pass (a local run without the system packages)."""

INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends prometheus docker-compose"
"""What installs the system packages the suite needs (as root; ``make system-deps``)."""


def _strict() -> bool:
    return os.environ.get(ALLOW_ENV, "") not in ("1", "true", "yes")


def _allowed(nodeid: str) -> bool:
    return any(
        nodeid == key or nodeid.startswith(key.rstrip(":") + "::") or (key.endswith(".py") and nodeid.startswith(key))
        for key in ALLOWED_SKIPS
    )


def _reason(longrepr: Any) -> str:
    """The text of a skip (pytest keeps ``(path, lineno, "Skipped: why")``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _failure(nodeid: str, reason: str) -> str:
    return (
        f"{nodeid} was skipped ({reason}), and the suite allows no skip.\n"
        f"Install what it needs: `make system-deps` as root, i.e. `{INSTALL_COMMAND}`; "
        f"or, if the skip is deliberate, list the test with its reason in ALLOWED_SKIPS "
        f"(tests/skip_policy.py). {ALLOW_ENV}=1 lets a local run skip."
    )


def _enforce(report: Any) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and _strict() and not _allowed(report.nodeid):
        reason = _reason(report.longrepr)
        report.outcome = "failed"
        report.longrepr = _failure(report.nodeid, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skip of a test (in its body, a fixture, or a ``skipif`` mark) fails it."""
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A module skipped at collection (``pytest.skip(allow_module_level=True)``,
    ``pytest.importorskip``) is a collection error."""
    outcome = yield
    _enforce(outcome.get_result())
