"""Fixtures of the deploy tests: one demo run, scraped by a real Prometheus, shared by
the dashboard and demo tests (a demo run is the expensive part)."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import PrometheusServer, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "sinks" / "rules" / "driftline-alerts.yml"

DEMO_EVENTS = 12_000
"""Small enough for the suite's time budget, large enough that every injected change
falls after the 2,000-event reference and gets a few windows."""


@dataclass
class DemoRun:
    prometheus: PrometheusServer
    output: io.StringIO
    detections: list[Any] = field(default_factory=list)
    triggers: list[Any] = field(default_factory=list)
    seconds: float = 0.0


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """A demo running in a thread (``keep_running``) with Prometheus scraping its
    metrics every second; yields once the demo has printed its summary."""
    if prometheus_binary() is None:
        pytest.skip("needs Debian's prometheus (make system-deps)")
    from monitor.demo import run_demo
    from monitor.embedded_broker import free_port

    port = free_port()
    workdir = tmp_path_factory.mktemp("demo-prometheus")
    # The alert rules are loaded too: Prometheus refuses to start on a broken rule file.
    prometheus = PrometheusServer([f"127.0.0.1:{port}"], rule_files=[RULES],
                                  workdir=workdir).start()
    stop = threading.Event()
    summary = threading.Event()
    run = DemoRun(prometheus, io.StringIO())
    result: dict[str, Any] = {}

    def on_summary(detections: list[Any], triggers: list[Any]) -> None:
        run.detections, run.triggers = detections, triggers
        summary.set()

    def target() -> None:
        try:
            result["code"] = run_demo(events=DEMO_EVENTS, seed=7, metrics_port=port,
                                      keep_running=True, stream=run.output, stop=stop,
                                      on_summary=on_summary, catch_up_timeout=60.0)
        except BaseException as exc:  # reported below
            result["error"] = exc
        finally:
            summary.set()

    started = time.monotonic()
    thread = threading.Thread(target=target, name="demo-under-test", daemon=True)
    thread.start()
    try:
        summary.wait(timeout=150)
        run.seconds = time.monotonic() - started
        if "error" in result or not thread.is_alive():
            pytest.fail(f"the demo ended early: {result}\n{run.output.getvalue()}")
        assert summary.is_set(), f"no summary after 150s:\n{run.output.getvalue()}"
        # A few more scrapes of the final state.
        time.sleep(3.0)
        yield run
    finally:
        stop.set()
        thread.join(timeout=60)
        prometheus.stop()
    assert not thread.is_alive(), "the demo did not stop"
