"""A real webhook receiver on 127.0.0.1 for tests: verifies, de-duplicates, records.

It behaves as a careful receiving application would: it checks the
``X-Driftline-Signature`` with :func:`driftline.sinks.signing.verify` (401 when invalid), processes
each ``Idempotency-Key`` once (a repeat is answered 200 and counted as a duplicate), and
records every request. A *script* makes it misbehave first, one step per request:

- ``Reply(500)``: answer 500 without processing (also ``Reply(429, retry_after="1")``,
  ``Reply(400, echo=True)`` to echo the request body in the answer);
- ``Stall(2.0)``: process the request, then answer only after 2 s (past a client timeout,
  so the sender retries a request that was in fact processed);
- ``Reset()``: read the request and cut the connection with a TCP reset, no answer
  (``Reset(process=True)``: after processing it, so the sender retries what was done);
- ``SlowBody(0.2)``: process, then send the answer's body a byte at a time over 0.2 s;

then it answers 200. After the script, ``chooser(request, n)`` (when given) picks the
step of each request, ``n`` being how many requests with its key came before: a seeded
chooser draws faults at random yet the same for the same request whatever the timing.
Refused connections: build it with ``start=False`` (its port is chosen at once) and call
:meth:`start` later; :meth:`stop` and :meth:`start` again make an outage (same port).

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
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from driftline.sinks.signing import SIGNATURE_HEADER, verify

__all__ = ["WebhookReceiver", "ReceivedRequest", "Reply", "Stall", "Reset", "SlowBody", "Step"]


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


@dataclass(frozen=True)
class Reset:
    """Read the request, then reset the connection without answering."""

    process: bool = False
    """Process the request first (the sender cannot know it was)."""


@dataclass(frozen=True)
class SlowBody:
    """Process, then answer 200 with a body sent a byte at a time over ``seconds``."""

    seconds: float
    size: int = 8


Step = Reply | Stall | Reset | SlowBody


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
    """The status answered (0: none, the connection was reset)."""
    duplicate: bool = False
    processed: bool = False
    fault: str = "ok"
    """What the receiver did: ok, reply, stall, reset, slow_body, bad_signature."""

    @property
    def delivery_id(self) -> str | None:
        return self.headers.get("x-driftline-delivery")

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8")).items()}


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads
    receiver: WebhookReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A sender that timed out has hung up before a stalled answer: expected here.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        request = ReceivedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        receiver = self.server.receiver
        status, headers, answer, step = receiver._handle(request)
        if isinstance(step, Reset):
            # SO_LINGER 0: close() sends a RST, as a crashing proxy or receiver does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if isinstance(step, Stall):
            receiver._stopping.wait(step.seconds)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        if isinstance(step, SlowBody) and answer:
            pause = step.seconds / len(answer)
            for i in range(len(answer)):
                self.wfile.write(answer[i : i + 1])
                if receiver._stopping.wait(pause):
                    break
            return
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
    chooser
        ``chooser(request, n) -> Step | None`` for requests after the script (None: 200).
    clock
        The wall clock signatures are checked against (the sender's fake clock, in tests
        that jump hours ahead).
    """

    def __init__(
        self,
        secret: str | None = None,
        script: Sequence[Step] = (),
        *,
        port: int | None = None,
        start: bool = True,
        path: str = "/hook",
        chooser: Callable[[ReceivedRequest, int], Step | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.secret = secret
        self._script = list(script)
        self._chooser = chooser
        self._seen: dict[str, int] = {}
        # Without a port, bind one now and hold it (bound, not listening: connections are
        # refused until start()), so that no other process can take it in between.
        self._bound: _Server | None = None
        if port is None:
            self._bound = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=False)
            self._bound.server_bind()
            port = int(self._bound.server_address[1])
        self.port = port
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

    def _handle(self, request: ReceivedRequest) -> tuple[int, dict[str, str], bytes, Step | None]:
        with self._cond:
            self.requests.append(request)
            try:
                if self.secret is not None:
                    request.signature_valid = verify(
                        self.secret,
                        request.body,
                        request.headers.get(SIGNATURE_HEADER.lower()),
                        now=self._clock(),
                    )
                    if not request.signature_valid:
                        request.status = 401
                        request.fault = "bad_signature"
                        return 401, {}, b"bad signature", None
                key = request.idempotency_key or ""
                seen = self._seen.get(key, 0)
                self._seen[key] = seen + 1
                if self._script:
                    step = self._script.pop(0)
                elif self._chooser is not None:
                    step = self._chooser(request, seen)
                else:
                    step = None
                if isinstance(step, Reply):
                    request.status = step.status
                    request.fault = "reply"
                    headers = {"Retry-After": step.retry_after} if step.retry_after else {}
                    return step.status, headers, request.body if step.echo else b"", step
                if isinstance(step, Reset):
                    request.fault = "reset"
                    if step.process:
                        self._process(request)
                    return 0, {}, b"", step
                self._process(request)
                request.status = 200
                if isinstance(step, Stall):
                    request.fault = "stall"
                elif isinstance(step, SlowBody):
                    request.fault = "slow_body"
                    return 200, {}, b"ok".ljust(step.size, b"."), step
                return 200, {}, b"ok", step
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

    def wait_for(self, predicate: Callable[[WebhookReceiver], bool], timeout: float = 10.0) -> None:
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

    def start(self) -> WebhookReceiver:
        """Listen (again, after :meth:`stop`: on the same port)."""
        if self._server is not None:
            return self
        self._stopping.clear()
        if self._bound is not None:
            server, self._bound = self._bound, None
            server.server_activate()
        else:
            server = _Server(("127.0.0.1", self.port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="webhook-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop listening (connections are refused) and finish the requests in flight."""
        self._stopping.set()  # cut stalls short
        if self._bound is not None:  # never started: release the held port
            self._bound.server_close()
            self._bound = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> WebhookReceiver:
        return self.start() if self._autostart else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
