"""Webhook secrets never reach a log line or /metrics: a real ``driftline run`` at DEBUG.

The targets' URL paths, the HMAC secret and the tokens are distinctive strings; the
receivers fail first (500, a reset, a 400 that echoes the request body with the GitLab
token in it) and one target refuses connections, so the error paths log too. Neither
the process's stdout nor its stderr (every logger, httpx, httpcore and kafka included)
nor its /metrics holds any of them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.monitor.streams import prediction_events
from tests.monitor.test_kafka import produce
from tests.support import Reply, Reset, WebhookReceiver
from tests.support.runs import QUICK_SESSION_MS

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hmacsecret-Zq81Xv-distinctive"
TOKEN = "bearertoken-Qw93Lp-distinctive"
SLACK_PATH = "/services/T0SLACKQ7/B0PATHX9/slackcredential-Rt55Mn"
GENERIC_PATH = "/hooks/genericpath-Ka27Ds"
GITLAB_PATH = "/api/v4/projects/4711/trigger/gitlabpath-Pe64Wc"
REFUSED_PATH = "/hooks/refusedpath-Hy38Gb"
MODELS = ("fraud", "churn", "ltv")


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"driftline exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


def scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return ""


def deliveries(text: str, target: str, outcome: str) -> float:
    """``driftline_webhook_deliveries_total`` for ``target`` and ``outcome``, any action."""
    total = 0.0
    for labels, value in re.findall(r"^driftline_webhook_deliveries_total\{([^}]*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if found.get("target") == target and found.get("outcome") == outcome:
            total += float(value)
    return total


def test_no_secret_or_target_url_in_any_log_line_or_metric(broker, topics, tmp_path: Path) -> None:
    events = [
        e
        for i, model in enumerate(MODELS)
        for e in prediction_events(5_000, model=model, seed=40 + i, shift_at=3_000, shift=1.5)
    ]
    produce(broker, topics["predictions"], events)
    slack = WebhookReceiver(script=[Reply(500), Reset(), Reply(503)], path=SLACK_PATH)
    generic = WebhookReceiver(secret=SECRET, script=[Reset(process=True), Reply(502)], path=GENERIC_PATH)
    gitlab = WebhookReceiver(script=[Reply(400, echo=True)] * 10, path=GITLAB_PATH)
    # A socket bound but not listening holds the port and refuses every connection.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_url = f"http://127.0.0.1:{closed.getsockname()[1]}{REFUSED_PATH}"
    metrics_port = 0  # the service binds a free port and logs it (read below): nothing to race for
    config = {
        "kafka": {
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{topics['predictions']}",
            "predictions_topic": topics["predictions"],
            "feedback_topic": topics["feedback"],
            "dead_letter_topic": topics["dead_letter"],
            "session_timeout_ms": QUICK_SESSION_MS,
            "poll_timeout_ms": 200,
        },
        "defaults": {"reference": {"size": 2000}, "window": {"size": 1000}},
        "prometheus": {"enabled": True, "host": "127.0.0.1", "port": metrics_port},
        "state_dir": str(tmp_path / "state"),
        "checkpoint_interval_seconds": 0,
        "webhooks": {
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.3,
            "targets": [
                {"name": "slack", "url": slack.url, "preset": "slack", "actions": ["retrain"], "timeout_seconds": 2},
                {
                    "name": "generic",
                    "url": generic.url,
                    "secret_env": "LOGTEST_SECRET",
                    "token_env": "LOGTEST_TOKEN",
                    "timeout_seconds": 2,
                },
                {
                    "name": "gitlab",
                    "url": gitlab.url,
                    "preset": "gitlab",
                    "token_env": "LOGTEST_TOKEN",
                    "timeout_seconds": 2,
                },
                {"name": "refused", "url": refused_url, "timeout_seconds": 2},
            ],
        },
    }
    config_file = tmp_path / "driftline.yml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "LOGTEST_SECRET": SECRET, "LOGTEST_TOKEN": TOKEN}
    env.pop("DRIFTLINE_CONFIG", None)
    # Files, not pipes: at DEBUG the output would fill a pipe nobody reads until the end.
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with closed, slack, generic, gitlab, out_path.open("wb") as out_file, err_path.open("wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "run", "--config", str(config_file), "--log-level", "DEBUG"],
            cwd=ROOT,
            env=env,
            stdout=out_file,
            stderr=err_file,
        )
        try:

            def bound_port() -> int:
                found = re.search(rb"serving /metrics, /healthz and /readyz on [^:]+:(\d+)", err_path.read_bytes())
                return int(found.group(1)) if found else 0

            wait_for(lambda: bound_port() > 0, 120, "the metrics server to log its port", proc)
            metrics_port = bound_port()

            def settled() -> bool:
                text = scrape(metrics_port)
                return (
                    len(slack.accepted) >= len(MODELS)
                    and len(generic.accepted) >= len(MODELS)
                    and deliveries(text, "gitlab", "rejected") >= len(MODELS)
                    and deliveries(text, "refused", "retried") >= 2 * len(MODELS)
                )

            try:
                wait_for(settled, 150, "every target answered (or refused) every trigger", proc)
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(
                    f"{exc}; slack {len(slack.accepted)}, generic {len(generic.accepted)} "
                    f"accepted; stderr ends with:\n{err_path.read_text()[-3000:]}"
                ) from None
            metrics_text = scrape(metrics_port)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    # The run really logged at DEBUG, and through the error paths.
    assert " DEBUG " in stderr
    assert "connection failed (ConnectError" in stderr and "retrying in" in stderr
    assert "target 'gitlab' rejected" in stderr and "[redacted]" in stderr
    assert "HTTP 500" in stderr and "delivered to target 'slack'" in stderr
    assert 'target="refused"' in metrics_text
    assert {r.headers.get("authorization") for r in generic.requests} == {f"Bearer {TOKEN}"}
    forbidden = [
        SECRET,
        TOKEN,
        slack.url,
        generic.url,
        gitlab.url,
        refused_url,
        SLACK_PATH,
        GENERIC_PATH,
        GITLAB_PATH,
        REFUSED_PATH,
        "slackcredential-Rt55Mn",
        "genericpath-Ka27Ds",
        "gitlabpath-Pe64Wc",
        "refusedpath-Hy38Gb",
        "Zq81Xv",
        "Qw93Lp",
    ]
    for value in forbidden:
        assert value not in stdout, value
        assert value not in stderr, value
        assert value not in metrics_text, value
