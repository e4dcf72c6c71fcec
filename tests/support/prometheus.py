"""A real Prometheus server for integration tests (Debian's ``/usr/bin/prometheus``).

Examples
--------
>>> with PrometheusServer(["127.0.0.1:9308"]) as prom:           # doctest: +SKIP
...     prom.wait_for("up", lambda result: result and result[0]["value"][1] == "1")
...     prom.query('driftline_drift_statistic{feature="amount"}')
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from driftline.demo.embedded_broker import free_port, stop_process

__all__ = ["PrometheusServer", "prometheus_binary"]

log = logging.getLogger(__name__)

Result = list[dict[str, Any]]


def prometheus_binary() -> str | None:
    """The prometheus executable, or None when it is not installed."""
    return shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)


class PrometheusServer:
    """Starts Prometheus on a free 127.0.0.1 port, scraping ``targets``, in a temp dir.

    Parameters
    ----------
    targets
        ``host:port`` addresses scraped at ``/metrics`` by one job.
    job
        The scrape job's name (the alert rules expect it to start with ``driftline``).
    scrape_interval
        Seconds between scrapes (and rule evaluations).
    rule_files
        Rule files to load.
    workdir
        Where the config, the TSDB and the log go; default: a temp dir removed at stop.
    startup_timeout
        Seconds to wait for ``/-/ready``.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        job: str = "driftline",
        scrape_interval: float = 1.0,
        rule_files: Sequence[str | Path] = (),
        workdir: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.targets = list(targets)
        self.job = job
        self.scrape_interval = scrape_interval
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.startup_timeout = startup_timeout
        self._own_workdir = workdir is None
        self._workdir = workdir
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._log_file: Any = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("Prometheus is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "prometheus.log"

    def _write_config(self) -> Path:
        assert self._workdir is not None
        interval = f"{int(self.scrape_interval * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": self.rule_files,
            "scrape_configs": [
                {
                    "job_name": self.job,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        path = self._workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self) -> PrometheusServer:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError(
                "prometheus is not installed: install Debian's 'prometheus' package (make system-deps does)"
            )
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="driftline-prometheus-"))
        config = self._write_config()
        # Prometheus cannot take a bound socket: pick a free port, and pick again if
        # another process took it between the pick and Prometheus's bind.
        for attempt in range(5):
            self.port = free_port()
            self._log_file = open(self.log_path, "wb")
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            self._client = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)
            if self._wait_ready() or "address already in use" not in self._log_tail() or attempt == 4:
                break
            self.stop(keep_workdir=True)
        return self._ready_or_raise()

    def _wait_ready(self) -> bool:
        """True once Prometheus answers /-/ready; False if it exited or timed out."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        return False

    def _ready_or_raise(self) -> PrometheusServer:
        if self._proc.poll() is None:
            try:
                if self._client.get("/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
        tail = self._log_tail()
        exited = self._proc.poll() is not None
        self.stop()
        if exited:
            raise RuntimeError(f"prometheus exited at start: {tail}")
        raise TimeoutError(f"prometheus was not ready within {self.startup_timeout}s: {tail}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def query(self, promql: str) -> Result:
        """The result list of an instant query (``data.result`` of /api/v1/query)."""
        assert self._client is not None, "Prometheus is not started"
        response = self._client.get("/api/v1/query", params={"query": promql})
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {body}")
        return list(body["data"]["result"])

    def wait_for(
        self,
        promql: str,
        predicate: Callable[[Result], bool] = bool,
        timeout: float = 20.0,
    ) -> Result:
        """Query until ``predicate(result)`` holds; return that result.

        Raises
        ------
        TimeoutError
            With the last result, when the deadline passes first.
        """
        deadline = time.monotonic() + timeout
        result: Result = []
        while True:
            result = self.query(promql)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{promql!r} did not satisfy the condition within {timeout}s; last result: {result}")
            time.sleep(min(0.2, self.scrape_interval / 4))

    def active_targets(self) -> list[dict[str, Any]]:
        assert self._client is not None, "Prometheus is not started"
        return list(self._client.get("/api/v1/targets").json()["data"]["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        assert self._client is not None, "Prometheus is not started"
        return list(self._client.get("/api/v1/alerts").json()["data"]["alerts"])

    def stop(self, keep_workdir: bool = False) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None:
            stop_process(self._proc, timeout=10)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir and self._workdir is not None and not keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
