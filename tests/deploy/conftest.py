"""Fixtures of the deploy tests: one demo run in its own process, shared by the demo and
dashboard tests of this package (a demo run is the expensive part), and a real Prometheus
scraping it for the dashboard tests only.

The demo runs in a subprocess so that nothing it does (the service's collector tuning,
its environment variable, its threads) touches the pytest process, and it is stopped
(Ctrl-C, as a user would) when the package's tests end, not at the end of the session.
Its metrics endpoint binds port 0 and the fixture reads the port from the demo's output,
so no port is chosen before it is bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.prometheus import PrometheusServer, prometheus_binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "sinks" / "rules" / "driftline-alerts.yml"

DEMO_EVENTS = 16_000
"""The demo's default: the whole loop (drift, retrain, canary, promote, bad canary,
rollback) and the concept drift at the end fit in it."""
DEMO_SEED = 7

# The demo, kept running after its summary; on_summary writes what the tests check as
# JSON (atomically: the fixture polls for the file). It produces its first event only
# once the fixture says go (a file), after Prometheus has scraped it: a phase of the
# loop (the canary's) can last about a second, and a Prometheus still starting on a
# loaded machine would miss it.
_DEMO_SCRIPT = """
import dataclasses, json, os, signal, sys, time
# stopped with Ctrl-C as in a terminal, even where the suite runs with SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from driftline.demo.scenario import run_demo

summary_path = sys.argv[1]

def on_summary(detections, triggers, loop):
    data = {
        "detections": [{"injection": dataclasses.asdict(d.injection), "alarm": d.alarm,
                        "detected_at": d.detected_at} for d in detections],
        "triggers": [{"path": t.path, "event": t.event, "idempotency_key": t.idempotency_key,
                      "payload": t.payload, "received_at": t.received_at} for t in triggers],
        "loop": loop.to_dict(),
    }
    with open(summary_path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(summary_path + ".tmp", summary_path)

def before_traffic():
    # the fixture creates the "go" file once Prometheus scrapes the demo (or without one)
    deadline = time.monotonic() + 120
    while not os.path.exists(summary_path + ".go") and time.monotonic() < deadline:
        time.sleep(0.05)

sys.exit(run_demo(events=int(sys.argv[2]), seed=int(sys.argv[3]), metrics_port=0,
                  keep_running=True, on_summary=on_summary, catch_up_timeout=60.0,
                  before_traffic=before_traffic))
"""


class _Output:
    """The demo's stdout, collected by a thread (``getvalue`` as on a StringIO)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def append(self, line: str) -> None:
        with self._lock:
            self._parts.append(line)

    def getvalue(self) -> str:
        with self._lock:
            return "".join(self._parts)


class DemoProcess:
    """``run_demo`` in a subprocess: started, its metrics port read from its output."""

    def __init__(self, workdir: Path) -> None:
        self.summary_path = workdir / "summary.json"
        self.output = _Output()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DEMO_SCRIPT, str(self.summary_path), str(DEMO_EVENTS), str(DEMO_SEED)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, name="demo-output", daemon=True)
        self._reader.start()
        self.prometheus: PrometheusServer | None = None
        self.prometheus_error: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def go(self) -> None:
        """Let the demo produce its events (it waits for this after its set-up)."""
        self.summary_path.with_name(self.summary_path.name + ".go").touch()

    def metrics_port(self, timeout: float) -> int:
        """The port the demo's metrics endpoint bound (from its "monitor metrics at" line)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"monitor metrics at http://127\.0\.0\.1:(\d+)/metrics", self.output.getvalue())
            if found:
                return int(found.group(1))
            time.sleep(0.1)
        pytest.fail(
            f"the demo printed no metrics endpoint within {timeout}s "
            f"(exit code {self.proc.poll()}):\n{self.output.getvalue()}"
        )

    def summary(self, timeout: float) -> tuple[dict[str, Any], float]:
        """The summary the demo wrote, and the seconds from start until it appeared."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.summary_path.exists():
                return json.loads(self.summary_path.read_text()), time.monotonic() - self.started
            time.sleep(0.2)
        if self.summary_path.exists():  # written just before the process ended
            return json.loads(self.summary_path.read_text()), time.monotonic() - self.started
        pytest.fail(
            f"the demo wrote no summary within {timeout}s or ended early "
            f"(exit code {self.proc.poll()}):\n{self.output.getvalue()}"
        )

    def stop(self) -> int:
        """Ctrl-C, as a user stops ``driftline demo``; killed after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@dataclass
class DemoRun:
    """What the demo and dashboard tests read: the demo's output, its detections and the
    triggers its receiver accepted (as :mod:`driftline.demo.scenario` builds them), the
    loop's report (:meth:`driftline.demo.scenario.LoopReport.to_dict`), the seconds until
    its summary, and the Prometheus scraping it (None for the demo tests)."""

    prometheus: PrometheusServer | None
    output: _Output
    detections: list[Any] = field(default_factory=list)
    triggers: list[Any] = field(default_factory=list)
    loop: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _demo_run(process: DemoProcess, prometheus: PrometheusServer | None) -> DemoRun:
    from driftline.demo.scenario import Detection, ReceivedTrigger
    from driftline.demo.simulator import Injection

    data, seconds = process.summary(timeout=150)
    detections = [
        Detection(
            Injection(**{**d["injection"], "expected_kinds": tuple(d["injection"]["expected_kinds"])}),
            d["alarm"],
            d["detected_at"],
        )
        for d in data["detections"]
    ]
    triggers = [ReceivedTrigger(**t) for t in data["triggers"]]
    return DemoRun(prometheus, process.output, detections, triggers, data["loop"], seconds)


@pytest.fixture(scope="package")
def demo_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoProcess]:
    """The demo in a subprocess, kept running after its summary until this package's
    tests end; then stopped with Ctrl-C and checked to have exited.

    Where Prometheus is installed it is started as soon as the demo's metrics endpoint is
    up, whichever test asks first, so that it scrapes the whole run (the dashboards'
    ``increase(...) > 0`` panels need the counters to move while it watches). The demo's
    own test does not use it: a Prometheus that fails to start fails ``demo_run`` only.
    """
    process = DemoProcess(tmp_path_factory.mktemp("demo"))
    prometheus: PrometheusServer | None = None
    try:
        if prometheus_binary() is not None:
            port = process.metrics_port(timeout=60)
            # The alert rules are loaded too: Prometheus refuses to start on a broken rule file.
            server = PrometheusServer(
                [f"127.0.0.1:{port}"], rule_files=[RULES], workdir=tmp_path_factory.mktemp("demo-prometheus")
            )
            try:
                prometheus = server.start()
                prometheus.wait_for('up{job="driftline"} == 1', timeout=60)
            except (OSError, RuntimeError, TimeoutError) as exc:
                process.prometheus_error = f"{type(exc).__name__}: {exc}"
            process.prometheus = prometheus
        process.go()
        yield process
    finally:
        if prometheus is not None:
            prometheus.stop()
        code = process.stop()
    assert code in (0, 2, 130), f"the demo exited with {code}:\n{process.output.getvalue()}"


@pytest.fixture(scope="package")
def demo(demo_process: DemoProcess) -> DemoRun:
    """The demo's summary: its detections and received triggers (no Prometheus)."""
    return _demo_run(demo_process, None)


@pytest.fixture(scope="package")
def demo_run(demo_process: DemoProcess) -> DemoRun:
    """The demo scraped by a real Prometheus every second since its metrics endpoint came
    up, once Prometheus has scraped the state after the summary twice."""
    if prometheus_binary() is None:
        pytest.skip("needs Debian's prometheus (make system-deps)")
    prometheus = demo_process.prometheus
    if prometheus is None or demo_process.prometheus_error is not None:
        pytest.fail(f"Prometheus did not start or scrape the demo: {demo_process.prometheus_error}")
    run = _demo_run(demo_process, prometheus)
    after_summary = time.time()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        scraped = prometheus.query('timestamp(up{job="driftline"} == 1)')
        if scraped and float(scraped[0]["value"][1]) > after_summary + 1.5:
            return run  # two successful scrapes of the final state (one per second)
        time.sleep(0.25)
    pytest.fail(f"Prometheus did not scrape the demo after its summary within 30s: {prometheus.query('up')}")
