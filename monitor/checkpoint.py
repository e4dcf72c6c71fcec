"""Checkpoints: detector state and the source offsets it corresponds to, written
together, atomically.

A state is encoded as JSON; numpy arrays are stored as ``{"__ndarray__": base64,
"dtype": ..., "shape": [...]}`` so that state round-trips bit for bit.

Segments
--------
A list marked :class:`~driftline.monitor.reference.AppendLog` (a stream reference's
events while it fills: 5 000 events of a model with 251 features encode to 70 MB) is
not written inline. :class:`StateEncoder` cuts it into segments of about
``segment_bytes``, each a JSON list of consecutive items, and puts
``{"__segments__": [sha256, ...]}`` in its place. A segment is named by the SHA-256 of
its bytes; a full segment never changes, so the stores write it once and later
checkpoints only refer to it, and the encoder keeps (by the items' identity) which
items it already cut into which segment, so that it does not encode them again. A
checkpoint then costs what was added since the last one, plus the open (last)
segment, plus the rest of the state.

Files (format 2)
----------------
``checkpoint-<name>.json`` holds ``{"__checkpoint__": 2, "segments": [...], "state":
...}`` and ``checkpoint-<name>.segments/<sha256>.json`` one segment each. A save
writes the segments it does not find (each to a temporary file, fsynced, renamed),
then the checkpoint file (the same way: a crash leaves the old or the new one, never
half of one), and only then deletes the segments the new checkpoint no longer names:
whichever checkpoint file a crash leaves, its segments are there. A load checks each
segment against its SHA-256.

A checkpoint file written before segments existed (format 1: the encoded state itself,
without ``__checkpoint__``) loads as it always did.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from driftline.monitor.exceptions import CheckpointError
from driftline.monitor.reference import AppendLog

__all__ = [
    "CHECKPOINT_FORMAT",
    "DEFAULT_SEGMENT_BYTES",
    "CheckpointStore",
    "EncodedState",
    "SaveStats",
    "StateEncoder",
    "encode_state",
    "decode_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2
"""Format of the checkpoint files written: 2 = with segments (see the module docstring);
format 1 files (the encoded state alone) are read too."""
DEFAULT_SEGMENT_BYTES = 262_144
"""Target size of a segment: small enough that the open segment, encoded again at every
checkpoint, costs little, and that a segment fits in one changelog record."""

_DIGEST = re.compile(r"[0-9a-f]{64}")


def encode_state(obj: Any, segments: Callable[[AppendLog], Any] | None = None) -> Any:
    """Plain JSON-able form of a state dict (numpy arrays and scalars included).

    ``segments``: what an :class:`~driftline.monitor.reference.AppendLog` becomes (see
    :meth:`StateEncoder.encode`); None: a plain list.
    """
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype == object:
            return {"__pylist__": [encode_state(v, segments) for v in arr.tolist()]}
        return {
            "__ndarray__": base64.b64encode(arr.tobytes()).decode("ascii"),
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return (
            {"__dict__": [[encode_state(k, segments), encode_state(v, segments)] for k, v in obj.items()]}
            if any(not isinstance(k, str) for k in obj)
            else {k: encode_state(v, segments) for k, v in obj.items()}
        )
    if isinstance(obj, (list, tuple)):
        if segments is not None and type(obj) is AppendLog:
            return segments(obj)
        return [encode_state(v, segments) for v in obj]
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def decode_state(obj: Any, segment: Callable[[str], bytes] | None = None) -> Any:
    """Inverse of :func:`encode_state` (tuples come back as lists, an
    :class:`~driftline.monitor.reference.AppendLog` as a list).

    ``segment`` gives a segment's bytes by its SHA-256 (a state of
    :meth:`StateEncoder.encode` refers to its segments so).

    Raises
    ------
    ValueError
        When a segment is named but ``segment`` is None, or its bytes do not have their
        SHA-256 (``segment`` raises what it raises for one it cannot find).
    """
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            raw = base64.b64decode(obj["__ndarray__"])
            return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        if "__pylist__" in obj:
            return np.array([decode_state(v, segment) for v in obj["__pylist__"]], dtype=object)
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {_key(decode_state(k, segment)): decode_state(v, segment) for k, v in obj["__dict__"]}
        if "__segments__" in obj:
            return _join_segments(obj["__segments__"], segment)
        return {k: decode_state(v, segment) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v, segment) for v in obj]
    return obj


def _join_segments(digests: list[str], segment: Callable[[str], bytes] | None) -> list[Any]:
    if segment is None:
        raise ValueError("the state refers to segments, but none were given")
    out: list[Any] = []
    for digest in digests:
        data = segment(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"segment {digest[:12]} does not match its SHA-256")
        out.extend(decode_state(v) for v in orjson.loads(data))
    return out


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


# ---- encoding with segments ----------------------------------------------------------------


def _encode_item(item: Any) -> bytes:
    return orjson.dumps(encode_state(item), option=orjson.OPT_SERIALIZE_NUMPY)


class _Sealed(NamedTuple):
    """A full segment: its items (held so that their identities stay theirs) and digest."""

    items: tuple[Any, ...]
    digest: str


@dataclass(frozen=True)
class EncodedState:
    """A state as :meth:`StateEncoder.encode` gives it.

    Attributes
    ----------
    main
        The state's JSON, each ``AppendLog`` replaced by ``{"__segments__": [...]}``.
    segments
        The SHA-256 digests of the segments ``main`` refers to, each once, in order.
    """

    main: bytes
    segments: tuple[str, ...]
    _sources: dict[str, bytes | tuple[Any, ...]] = field(repr=False)

    def segment(self, digest: str) -> bytes:
        """A segment's bytes (encoded again from its items if this encoding did not
        produce them: only a store that lost it needs it)."""
        found = self._sources[digest]
        if isinstance(found, bytes):
            return found
        return _segment_bytes([_encode_item(v) for v in found])


def _segment_bytes(encoded: Iterable[bytes]) -> bytes:
    return b"[" + b",".join(encoded) + b"]"


class StateEncoder:
    """:func:`encode_state` that stores :class:`~driftline.monitor.reference.AppendLog`
    lists as segments and remembers the full ones (see the module docstring).

    Parameters
    ----------
    segment_bytes
        Target size of a segment: one is full once the next item would take it past
        this (a single larger item makes a segment of its own).

    Notes
    -----
    Where a list is cut depends only on its items' encodings, so a fresh encoder (after
    a restart) cuts the same list into the same segments. The encoder holds the items
    of the lists it last encoded (no more: what a state no longer holds is let go at
    the next :meth:`encode`). Not thread-safe.
    """

    def __init__(self, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        self.segment_bytes = segment_bytes
        # per list (the identity of its first item): its full segments, in order
        self._sealed: dict[int, tuple[Any, list[_Sealed]]] = {}
        # items of open segments: identity -> (item, its JSON)
        self._open: dict[int, tuple[Any, bytes]] = {}

    def encode(self, state: Any) -> EncodedState:
        """``state`` as JSON bytes with its append logs as segments."""
        sealed: dict[int, tuple[Any, list[_Sealed]]] = {}
        open_items: dict[int, tuple[Any, bytes]] = {}
        sources: dict[str, bytes | tuple[Any, ...]] = {}
        order: dict[str, None] = {}  # every segment named, once, in order

        def cut(items: AppendLog) -> Any:
            if not items:
                return []
            first = items[0]
            known = self._sealed.get(id(first))
            kept: list[_Sealed] = []
            pos = 0
            if known is not None and known[0] is first:
                for seg in known[1]:  # the full segments whose items are still these, in place
                    n = len(seg.items)
                    if pos + n > len(items) or any(a is not b for a, b in zip(seg.items, items[pos : pos + n])):
                        break
                    kept.append(seg)
                    sources.setdefault(seg.digest, seg.items)
                    pos += n
            current: list[Any] = []
            encoded: list[bytes] = []
            size = 1
            for item in items[pos:]:
                memo = self._open.get(id(item))
                data = memo[1] if memo is not None and memo[0] is item else _encode_item(item)
                if encoded and size + len(data) + 1 > self.segment_bytes:
                    body = _segment_bytes(encoded)
                    digest = hashlib.sha256(body).hexdigest()
                    kept.append(_Sealed(tuple(current), digest))
                    sources[digest] = body
                    current, encoded, size = [], [], 1
                current.append(item)
                encoded.append(data)
                size += len(data) + 1
            digests = [s.digest for s in kept]
            if encoded:  # the open segment: written whole each time, its items remembered
                body = _segment_bytes(encoded)
                digest = hashlib.sha256(body).hexdigest()
                sources[digest] = body
                digests.append(digest)
                open_items.update((id(i), (i, d)) for i, d in zip(current, encoded, strict=True))
            sealed[id(first)] = (first, kept)
            order.update(dict.fromkeys(digests))
            return {"__segments__": digests}

        main = orjson.dumps(encode_state(state, cut), option=orjson.OPT_SERIALIZE_NUMPY)
        self._sealed, self._open = sealed, open_items
        return EncodedState(main, tuple(order), sources)

    def clear(self) -> None:
        """Forget every list (the items it held are let go)."""
        self._sealed, self._open = {}, {}


# ---- the store ------------------------------------------------------------------------------


@dataclass
class SaveStats:
    """What one :meth:`CheckpointStore.save` wrote."""

    bytes: int = 0
    """Bytes written: the checkpoint file and the segments not already on disk."""
    segments_written: int = 0
    segments_kept: int = 0
    """Segments the checkpoint refers to that were on disk already."""
    segments_deleted: int = 0
    seconds: float = 0.0


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` to a temporary file, fsynced, renamed over ``path`` (the directory's
    fsync is the caller's)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointStore:
    """One checkpoint file per consumer group under ``state_dir``, and its segments
    (see the module docstring).

    Parameters
    ----------
    state_dir, name
        Where, and the consumer group it is for.
    segment_bytes
        Target size of a segment (see :class:`StateEncoder`).
    """

    def __init__(self, state_dir: Path, name: str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.path = Path(state_dir) / f"checkpoint-{name}.json"
        self.segments_dir = Path(state_dir) / f"checkpoint-{name}.segments"
        self._encoder = StateEncoder(segment_bytes)
        self.last_save = SaveStats()
        """What the last :meth:`save` wrote."""

    def load(self) -> dict[str, Any] | None:
        """The saved state; None when there is none.

        Raises
        ------
        CheckpointError
            When the checkpoint (or one of its segments) cannot be read, saying what to do.
        """
        if not self.path.exists():
            return None
        try:
            raw = orjson.loads(self.path.read_bytes())
            if isinstance(raw, dict) and "__checkpoint__" in raw:
                if raw["__checkpoint__"] != CHECKPOINT_FORMAT:
                    raise ValueError(
                        f"format {raw['__checkpoint__']!r}; this driftline reads formats 1 and {CHECKPOINT_FORMAT}"
                    )
                return decode_state(raw["state"], self._read_segment)
            return decode_state(raw)  # format 1: the encoded state itself
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as exc:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be read ({exc}); move it away to start afresh from the "
                "committed offsets (each model's reference is then rebuilt from the stream)"
            ) from None

    def _read_segment(self, digest: str) -> bytes:
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"malformed segment name {digest[:80]!r}")
        return (self.segments_dir / f"{digest}.json").read_bytes()

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (see the module docstring for the order that keeps it crash-safe)."""
        started = time.monotonic()
        stats = SaveStats()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        encoded = self._encoder.encode(state)
        if encoded.segments or self.segments_dir.exists():
            self.segments_dir.mkdir(exist_ok=True)
            for digest in encoded.segments:
                target = self.segments_dir / f"{digest}.json"
                if target.exists():  # named by its content, renamed into place whole: the same bytes
                    stats.segments_kept += 1
                    continue
                data = encoded.segment(digest)
                _write_atomically(target, data)
                stats.segments_written += 1
                stats.bytes += len(data)
            if stats.segments_written:
                _fsync_dir(self.segments_dir)
        data = b"".join(
            (
                b'{"__checkpoint__":',
                str(CHECKPOINT_FORMAT).encode("ascii"),
                b',"segments":',
                orjson.dumps(list(encoded.segments)),
                b',"state":',
                encoded.main,
                b"}",
            )
        )
        _write_atomically(self.path, data)
        _fsync_dir(self.path.parent)
        stats.bytes += len(data)
        # only now: the checkpoint that named the old segments is gone (and a crash's
        # temporary files are garbage)
        if self.segments_dir.exists():
            named = set(encoded.segments)
            for path in self.segments_dir.iterdir():
                if path.suffix != ".json" or path.stem not in named:
                    path.unlink(missing_ok=True)
                    stats.segments_deleted += path.suffix == ".json"
        stats.seconds = time.monotonic() - started
        self.last_save = stats
