"""The metrics and health HTTP server.

Routes:

- ``GET /metrics``: the registry in the Prometheus text format (or OpenMetrics when the
  scraper asks for it in ``Accept``);
- ``GET /healthz``: 200 while the process and the server thread are alive (liveness);
- ``GET /readyz``: 200 when every component of ``readiness()`` is ready, else 503; the JSON
  body says which are not: ``{"ready": false, "not_ready": ["kafka"], "components":
  {"kafka": false, "reference": true, "consuming": true}}``.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> from driftline.monitor.config import PrometheusSettings
>>> settings = PrometheusSettings(host="127.0.0.1", port=0)
>>> with MetricsServer(settings, CollectorRegistry(), lambda: {"kafka": True}) as server:
...     server.port > 0
True
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from driftline.monitor.config import PrometheusSettings

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    readiness: Callable[[], Mapping[str, bool]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that hangs up mid-answer is not worth a traceback on stderr.
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            self._readyz()
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        try:
            body = encoder(self.server.registry)
        except Exception:
            # The scrape fails visibly (Prometheus marks the target down); the cause is logged.
            log.exception("collecting metrics failed")
            self._send(500, b"collecting metrics failed: see the driftline log\n", "text/plain; charset=utf-8")
            return
        self._send(200, body, content_type)

    def _readyz(self) -> None:
        try:
            components = {str(k): bool(v) for k, v in self.server.readiness().items()}
        except Exception:
            log.exception("the readiness check failed")
            body = {"ready": False, "error": "the readiness check failed: see the driftline log"}
            self._send(503, json.dumps(body).encode(), "application/json")
            return
        not_ready = sorted(name for name, ok in components.items() if not ok)
        body = {"ready": not not_ready, "not_ready": not_ready, "components": components}
        self._send(200 if not not_ready else 503, json.dumps(body).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        log.debug("metrics server: " + format, *args)


class MetricsServer:
    """Serves /metrics, /healthz and /readyz on a daemon thread.

    Parameters
    ----------
    settings
        ``prometheus`` of the configuration (``host``, ``port``; port 0 picks a free one).
    registry
        The registry to expose.
    readiness
        Returns ``{component: ready}``; /readyz is 200 only when all are True.
    """

    def __init__(
        self,
        settings: PrometheusSettings,
        registry: CollectorRegistry,
        readiness: Callable[[], Mapping[str, bool]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.readiness = readiness
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when the settings said 0)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started: call start() first")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self) -> MetricsServer:
        """Bind and serve.

        Raises
        ------
        OSError
            When the address is in use or not available; the message names it.
        """
        if self._server is not None:
            return self
        address = (self.settings.host, self.settings.port)
        try:
            server = _Server(address, _Handler)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {self.settings.host}:{self.settings.port} "
                f"({exc.strerror}): set prometheus.port to a free port (0 picks one) or "
                "prometheus.host",
            ) from None
        server.registry = self.registry
        server.readiness = self.readiness
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="driftline-metrics",
            daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.settings.host, self.port)
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
