"""TLS for Kafka tests: certificates made with ``openssl``, and a Tansu broker behind TLS.

Tansu 0.6.0 (the embedded broker) cannot serve TLS from its command line: ``--cert`` and
``--key`` refuse each other, and ``--cert`` alone still serves plain TCP. So the TLS here
is a terminating proxy, as a load balancer in front of brokers is: :class:`TlsBroker`
starts Tansu on a private port, advertising the proxy's port, and the proxy speaks TLS 1.2+
with the test CA's server certificate (for ``127.0.0.1``) and, with ``require_client_cert``,
demands a client certificate signed by the same CA (mutual TLS). A Kafka client therefore
reaches every broker it learns from metadata through TLS, and its CA, certificate, key and
key password are all checked for real by the handshake.

Examples
--------
>>> certs = make_certs(tmp_path)                                # doctest: +SKIP
>>> with TlsBroker(certs) as broker:                             # doctest: +SKIP
...     KafkaSettings(bootstrap_servers=broker.bootstrap_servers, security_protocol="SSL",
...                   ssl_cafile=certs.ca, ...)
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from driftline.demo.embedded_broker import broker_binary, free_port, stop_process


@dataclass(frozen=True)
class Certs:
    """Files of a test CA, a server certificate for 127.0.0.1 and a client certificate
    whose key is encrypted with ``key_password``."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    key_password: str
    other_ca: Path
    """A CA that signed none of these (a client trusting only it must refuse the broker)."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, key_password: str = "key-pass-5150") -> Certs:
    """Generate the CA, server and client certificates in ``directory`` (RSA 2048, 2 days)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=driftline test {ca}",
            cwd=d,
        )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        cwd=d,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-passout",
        f"pass:{key_password}",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=driftline",
        cwd=d,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.pem",
        "-days",
        "2",
        cwd=d,
    )
    return Certs(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        key_password=key_password,
        other_ca=d / "other-ca.pem",
    )


class TlsBroker:
    """Tansu on a private port behind a TLS-terminating proxy on ``port``.

    Parameters
    ----------
    certs
        From :func:`make_certs`.
    require_client_cert
        Demand a client certificate signed by the test CA (mutual TLS).
    """

    def __init__(self, certs: Certs, require_client_cert: bool = True) -> None:
        self.port = free_port()
        self._backend_port = free_port()
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._context.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        if require_client_cert:
            self._context.verify_mode = ssl.CERT_REQUIRED
            self._context.load_verify_locations(cafile=str(certs.ca))
        self._listener: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.handshakes = 0
        """TLS handshakes completed (a client that reached the broker did so through TLS)."""
        self.refused = 0
        """Handshakes that failed (an untrusted or missing client certificate, a client
        that does not trust the server)."""

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> TlsBroker:
        advertised = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self._backend_port}",
                "--advertised-listener-url",
                advertised,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self._backend_port), timeout=0.5).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError("Tansu did not start behind the TLS proxy") from None
                time.sleep(0.05)
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        if self._proc is not None:
            stop_process(self._proc)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, client)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            self.refused += 1
            raw.close()
            return
        self.handshakes += 1
        try:
            backend = socket.create_connection(("127.0.0.1", self._backend_port), timeout=10)
        except OSError:
            tls.close()
            return
        tls.setblocking(False)
        backend.setblocking(False)
        peers = {tls: backend, backend: tls}
        with selectors.DefaultSelector() as selector:
            selector.register(tls, selectors.EVENT_READ)
            selector.register(backend, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in selector.select(timeout=0.2):
                        source = key.fileobj
                        while True:  # drain what TLS already decrypted, not only the socket
                            try:
                                data = source.recv(65536)
                            except (ssl.SSLWantReadError, BlockingIOError):
                                break
                            if not data:
                                return
                            peers[source].setblocking(True)
                            peers[source].sendall(data)
                            peers[source].setblocking(False)
                            if source is backend:
                                break
            except (OSError, ssl.SSLError):
                return
            finally:
                tls.close()
                backend.close()
