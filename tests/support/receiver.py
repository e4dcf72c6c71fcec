"""A real webhook receiver on 127.0.0.1 for tests: verifies, de-duplicates, records.

It behaves as a careful receiving application would: it checks the
``X-Driftline-Signature`` with :func:`sinks.signing.verify` (401 when invalid), processes
each ``Idempotency-Key`` once (a repeat is answered 200 and counted as a duplicate), and
records every request. A *script* makes it misbehave first, one step per request:

- ``Reply(500)``: answer 500 without processing (also ``Reply(429, retry_after="1")``,
  ``Reply(400, echo=True)`` to echo the request body in the answer);
- ``Stall(2.0)``: process the request, then answer only after 2 s (past a client timeout,
  so the sender retries a request that was in fact processed);

then it answers 200. Refused connections: build it with ``start=False`` (its port is
chosen at once) and call :meth:`start` later.

Examples
--------
>>> receiver = WebhookReceiver(secret="s3cret", script=[Reply(500), Reply(500)])
>>> with receiver:                                      # doctest: +SKIP
...     ...  # point a webhook target at receiver.url
...     receiver.wait_accepted(1, timeout=10)
...     assert receiver.duplicates == 0
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs

from monitor.embedded_broker import free_port
from sinks.signing import SIGNATURE_HEADER, verify

__all__ = ["WebhookReceiver", "ReceivedRequest", "Reply", "Stall"]


@dataclass(frozen=True)
class Reply:
    """Answer ``status`` without processing the request."""

    status: int
    retry_after: str | None = None
    echo: bool = False
    """Send the request body back in the answer (a receiver that echoes what it got)."""


@dataclass(frozen=True)
class Stall:
    """Process the request, then wait ``seconds`` before answering 200."""

    seconds: float


Step = Reply | Stall


@dataclass
class ReceivedRequest:
    """One request as received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    """time.monotonic() at arrival."""
    signature_valid: bool | None = None
    """None when the receiver has no secret."""
    status: int = 0
    duplicate: bool = False
    processed: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8")).items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    receiver: "WebhookReceiver"


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        request = ReceivedRequest(
            method="POST", path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body, at=time.monotonic(),
        )
        status, headers, answer, stall = self.server.receiver._handle(request)
        if stall:
            self.server.receiver._stopping.wait(stall)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the records are the log


class WebhookReceiver:
    """A webhook receiver on 127.0.0.1 (see the module docstring).

    Parameters
    ----------
    secret
        Verify signatures with it (requests without a valid one get 401).
    script
        Steps for the first requests, in order.
    port
        Default: a free port, chosen now (so :attr:`url` is known before :meth:`start`).
    start
        Start listening on ``__enter__``; False: refuse connections until :meth:`start`.
    path
        The path of :attr:`url`.
    """

    def __init__(
        self,
        secret: str | None = None,
        script: Sequence[Step] = (),
        *,
        port: int | None = None,
        start: bool = True,
        path: str = "/hook",
    ) -> None:
        self.secret = secret
        self._script = list(script)
        self.port = port if port is not None else free_port()
        self.path = path
        self._autostart = start
        self.requests: list[ReceivedRequest] = []
        self.accepted: list[ReceivedRequest] = []
        self.duplicates = 0
        self._keys: set[str] = set()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    # ---- the application -------------------------------------------------------------

    def _handle(self, request: ReceivedRequest) -> tuple[int, dict[str, str], bytes, float]:
        with self._cond:
            self.requests.append(request)
            try:
                if self.secret is not None:
                    request.signature_valid = verify(
                        self.secret, request.body, request.headers.get(SIGNATURE_HEADER.lower())
                    )
                    if not request.signature_valid:
                        request.status = 401
                        return 401, {}, b"bad signature", 0.0
                step = self._script.pop(0) if self._script else None
                if isinstance(step, Reply):
                    request.status = step.status
                    headers = {"Retry-After": step.retry_after} if step.retry_after else {}
                    return step.status, headers, request.body if step.echo else b"", 0.0
                self._process(request)
                request.status = 200
                return 200, {}, b"ok", step.seconds if isinstance(step, Stall) else 0.0
            finally:
                self._cond.notify_all()

    def _process(self, request: ReceivedRequest) -> None:
        key = request.idempotency_key
        if key is not None and key in self._keys:
            request.duplicate = True
            self.duplicates += 1
            return
        if key is not None:
            self._keys.add(key)
        request.processed = True
        self.accepted.append(request)

    # ---- waiting ------------------------------------------------------------------------

    def wait_for(
        self, predicate: Callable[["WebhookReceiver"], bool], timeout: float = 10.0
    ) -> None:
        """Block until ``predicate(self)`` holds (checked at each request).

        Raises
        ------
        TimeoutError
            When ``timeout`` seconds pass first; the message lists what was received.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self), timeout=timeout):
                raise TimeoutError(
                    f"the receiver's condition did not hold within {timeout}s; received "
                    f"{[(r.status, r.idempotency_key) for r in self.requests]}"
                )

    def wait_accepted(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until ``count`` distinct requests were processed; return them."""
        self.wait_for(lambda r: len(r.accepted) >= count, timeout)
        return list(self.accepted)

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        """Wait until ``count`` requests arrived (whatever the answer); return them."""
        self.wait_for(lambda r: len(r.requests) >= count, timeout)
        return list(self.requests)

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> "WebhookReceiver":
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="webhook-receiver", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # cut stalls short
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "WebhookReceiver":
        return self.start() if self._autostart else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
