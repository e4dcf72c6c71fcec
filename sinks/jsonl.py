"""Alarms appended to a JSON Lines file (``Settings.alarms_jsonl``), one alarm a line.

``flush()`` writes the buffered alarms, flushes and ``fsync``s the file: when it returns
the lines are on disk. A write that fails part-way is cut back to the last complete
flush, so a retried flush does not leave a torn line or a duplicate behind.

Examples
--------
>>> sink = JsonlSink(tmp / "alarms.jsonl")          # doctest: +SKIP
>>> sink.write([alarm]); sink.flush(); sink.close()  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from driftline.monitor.alarms import Alarm
from driftline.sinks.exceptions import SinkError

__all__ = ["JsonlSink", "LineFile"]

log = logging.getLogger(__name__)


class LineFile:
    """A file of lines appended durably: :meth:`append` writes whole lines and fsyncs.

    A write that fails part-way is cut back to where it started (so a retry leaves
    neither a torn line nor a duplicate), and a line torn by a crash (a process killed
    in the middle of a write) is cut off when the file is first opened, so that the
    next line is not glued to it. The JSONL alarm sink and the dead-letter file of a
    replay both write through one.

    Parameters
    ----------
    path
        The file (and its parent directories) is created at the first append.
    what
        What the lines are, for the log line about a torn line.
    """

    def __init__(self, path: str | Path, what: str = "lines") -> None:
        self.path = Path(path)
        self.what = what
        self._file: io.FileIO | None = None

    def append(self, data: bytes) -> None:
        """Append ``data`` (whole lines) and fsync; raises OSError, the file as before."""
        start: int | None = None
        try:
            handle = self._open()
            start = handle.seek(0, os.SEEK_END)
            view = memoryview(data)
            while view:
                written = handle.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file accepted no bytes")
                view = view[written:]
            os.fsync(handle.fileno())
        except OSError:
            self._rewind(start)
            raise

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> io.FileIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: nothing is left in a Python buffer to be written later by close().
            handle = open(self.path, "ab", buffering=0)
            try:
                _cut_torn_line(handle, self.path, self.what)
            except OSError:
                handle.close()
                raise
            self._file = handle
        return self._file

    def _rewind(self, start: int | None) -> None:
        """Cut a partly written append off and reopen at the next one."""
        if self._file is None:
            return
        try:
            if start is not None:
                self._file.truncate(start)
        except OSError as exc:
            log.warning(
                "could not cut a partial write off %s (%s): the next write may follow a torn line", self.path, exc
            )
        finally:
            try:
                self._file.close()
            except OSError as exc:
                log.debug("closing %s after a failed write: %s", self.path, exc)
            self._file = None


class JsonlSink:
    """Appends alarms to ``path`` as JSON lines.

    Parameters
    ----------
    path
        The file (and its parent directories) is created on the first flush.
    """

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buffer: list[Alarm] = []
        self._lines = LineFile(self.path, "alarms")

    @property
    def pending(self) -> int:
        """Alarms written but not yet flushed."""
        return len(self._buffer)

    def write(self, alarms: Sequence[Alarm]) -> None:
        self._buffer.extend(alarms)

    def flush(self) -> None:
        """Append the buffered alarms and fsync.

        Raises
        ------
        sinks.SinkError
            When the file cannot be written; the alarms stay buffered.
        """
        if not self._buffer:
            return
        data = b"".join(
            json.dumps(a.to_dict(), separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"
            for a in self._buffer
        )
        try:
            self._lines.append(data)
        except OSError as exc:
            raise SinkError(
                f"cannot append {len(self._buffer)} alarm(s) to {str(self.path)!r} ({exc}); "
                "they are kept and retried at the next flush: check the disk and permissions"
            ) from None
        self._buffer.clear()

    def close(self) -> None:
        """Flush (logging a failure: unflushed alarms are replayed from Kafka) and close."""
        try:
            self.flush()
        except SinkError as exc:
            log.warning("JSONL sink closing with %d unwritten alarm(s): %s", len(self._buffer), exc)
        finally:
            self._lines.close()


def _cut_torn_line(handle: io.FileIO, path: Path, what: str, chunk: int = 1 << 16) -> None:
    """Cut the file back to its last complete line: a process killed in the middle of a
    write leaves part of a line, which the next one would be glued to. That write was
    never flushed, so the offsets behind it were not committed and its lines come
    again after the restart."""
    end = handle.seek(0, os.SEEK_END)
    if end == 0:
        return
    with open(path, "rb") as reader:
        position = end
        while position > 0:
            start = max(0, position - chunk)
            reader.seek(start)
            block = reader.read(position - start)
            if position == end and block.endswith(b"\n"):
                return  # the usual case: the file ends with a complete line
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            position = start
        else:
            keep = 0
    log.warning(
        "%s ended with %d bytes of an unfinished line (a write cut short by a crash); "
        "removed: those %s are written again",
        path,
        end - keep,
        what,
    )
    handle.truncate(keep)
