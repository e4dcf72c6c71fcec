"""Per-model state in a compacted Kafka changelog topic, as Kafka Streams keeps its stores.

Each model's state (a dict of plain values and numpy arrays, encoded as
:mod:`driftline.monitor.checkpoint` encodes it) is one keyed record in the topic
``<group_id>-state-changelog``: key = model name, so that compaction keeps only a model's
newest state, and a tombstone (value None) deletes it. The topic has as many partitions as
the input topics, and a model's records go to the partition its input records go to (the
murmur2 hash of its name, as kafka-python's and the Java client's default partitioners
place keyed records): the instance that owns input partition *p* restores changelog
partition *p* and nothing else. Restoring is Kafka Streams' ``StoreChangelogReader`` in
miniature: a consumer outside any group, partitions assigned by hand, read from the
beginning to the end offset.

Record layout (every record carries the headers ``driftline.format`` and
``driftline.kind``)::

    key                          kind      value                 other headers
    model                        state     the encoded state     state-id, sha256, positions
                                                                 (segment-writer)
    model \\0 state-id \\0 i       chunk     part i of the state   state-id, chunk-index,
                                                                 chunk-count, sha256
    model                        manifest  JSON summary          state-id, chunk-count,
                                                                 sha256, size, positions
                                                                 (segment-writer)
    model \\0 writer \\0 sha256    segment   a segment             sha256
    model (or a chunk key)       (none)    None: a tombstone

Format 1 is all of it but segments; format 2 adds them (see below) and is used only by
the records of a state that has segments, so that a state without any is written as
before (and read by a driftline that reads format 1 only).

``positions`` are the input offsets the state corresponds to (for each input
topic-partition of the model's partition number: the next offset to apply), so a restorer
knows where the state stands in the stream and whether a local checkpoint matches it.

Large states
------------
A state whose encoding exceeds ``max_chunk_bytes`` (default 900 000 bytes, under the
broker's default ``message.max.bytes`` of 1 MiB) is written as chunks, then a manifest
under the model key, in that order, the manifest only once every chunk is acknowledged.
Chunk keys include the state id (a fresh random id per write), so a new state never
overwrites a chunk that the current manifest refers to: a crash between chunks leaves
the old manifest pointing at old chunks that are all still there, and the orphaned
chunks of the unfinished write are ignored. The chunks of a superseded state are
tombstoned only after the manifest that supersedes it is acknowledged.

Segments
--------
A stream reference that fills (an :class:`~driftline.monitor.reference.AppendLog` in the
state) is stored in segments (:class:`~driftline.monitor.checkpoint.StateEncoder`): the
state's encoding names them by SHA-256 and each is a record of its own under
``model \\0 writer \\0 sha256``, where ``writer`` is a random id of the
:class:`ChangelogStore` instance. A write sends the segments this instance has not had
acknowledged yet, then the state (or its manifest) once they are, so a full segment
is sent once, not at every write, and a write costs what was added since the last one.
A segment the newest state no longer names is tombstoned after that state is
acknowledged, as a superseded chunk is. Segment keys carry the writer's id so that an
instance only ever tombstones segments it wrote itself (another one, e.g. a zombie
after a rebalance, cannot delete those of the partition's new owner); a new owner
sends its own copies with its first write, then tombstones those it restored.

Restoring takes, per model, the newest record under the model key; a tombstone means no
state. A manifest counts only if all its chunks are present (not tombstoned) and their
concatenation has the manifest's SHA-256; otherwise the newest older complete state still
in the log is taken (with a warning), or none. Correctness does not depend on compaction,
only the topic's size does: an uncompacted topic restores the same states, reading more
(the embedded test broker, Tansu, stores ``cleanup.policy=compact`` but never compacts).
A state with segments counts only if its segments are all present and match their
SHA-256; otherwise, again, the newest older complete state.

Write volume
------------
Every write sends each model's whole encoded state (about 4/3 of its arrays' bytes, since
arrays are base64 in JSON) but the segments already acknowledged, plus under 200 bytes of
key and headers per record, plus one tombstone per chunk or segment it supersedes. :attr:`ChangelogStore.last_write` and
:attr:`ChangelogStore.written` report it per call and in total (:class:`WriteStats`), and
:func:`plan_records` gives it without a broker. At one write per checkpoint interval, the
volume per second is the sum of the models' encoded sizes divided by the interval.
Measured: one model of the demo scenario after 20 000 events encodes to 1.9 MB (the label
join's pending predictions 0.94 MB, per-version state 0.57 MB, the reference 0.32 MB),
so 0.19 MB/s per model at the default 10 s interval; ``compression_type="gzip"`` cuts
that about 4.4 times.
A model with 251 features while its 5 000-event stream reference fills holds about
15.6 KB of encoded state per pending event: a write sends the segments of the events
added since the last one (7.9 MB per 500 events), where it sent the whole buffer before
segments (70 MB at 4 500 events).

Examples
--------
>>> store = ChangelogStore(settings.kafka)                       # doctest: +SKIP
>>> store.write({"fraud": engine_state}, {("predictions", 3): 1200, ("feedback", 3): 800})  # doctest: +SKIP
>>> store.restore([3])["fraud"].positions                         # doctest: +SKIP
{('predictions', 3): 1200, ('feedback', 3): 800}
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Self

import orjson

from driftline.monitor.checkpoint import DEFAULT_SEGMENT_BYTES, StateEncoder, decode_state, encode_state
from driftline.monitor.config import KafkaSettings
from driftline.monitor.exceptions import ConfigError, SourceError

if TYPE_CHECKING:
    from driftline.monitor.kafka_client import ClientRole

__all__ = [
    "DEFAULT_MAX_CHUNK_BYTES",
    "FORMAT_VERSION",
    "SEGMENTS_FORMAT_VERSION",
    "ChangelogError",
    "ChangelogRecord",
    "ChangelogStore",
    "Reassembler",
    "RestoredState",
    "WriteStats",
    "changelog_topic",
    "encode_payload",
    "partition_for",
    "plan_records",
    "split_payload",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Format of the records of a state without segments (and of tombstones)."""
SEGMENTS_FORMAT_VERSION = 2
"""Format of the records of a state with segments, and of segments."""
_READABLE = {str(FORMAT_VERSION).encode("ascii"), str(SEGMENTS_FORMAT_VERSION).encode("ascii")}
DEFAULT_MAX_CHUNK_BYTES = 900_000
"""Bytes of state per record: under Kafka's default ``message.max.bytes`` (1 MiB) with
room for the key and headers."""

_H = "driftline."  # header name prefix
_POLL_MS = 500
_SETTLE_MS = 200
"""The poll that confirms a restore reached the end: nothing came within this long
(the restore consumer's fetches wait at most 100 ms for data)."""
_STATE, _CHUNK, _MANIFEST, _DELETED, _SEGMENT = b"state", b"chunk", b"manifest", b"deleted", b"segment"
_STATE_ID = re.compile(rb"[0-9a-f]{32}")
_DIGEST = re.compile(rb"[0-9a-f]{64}")
_MAX_SEGMENTED_CANDIDATES = 4
"""States with segments a restore keeps per model beyond the newest self-contained one
(each holds its encoding; the older ones are needed only when the newer ones are
incomplete)."""


class ChangelogError(SourceError):
    """The changelog (state kept in Kafka, read like a source: a ``SourceError``, so
    ``driftline run`` exits 3 when Kafka cannot be reached) could not be written or read.
    A failed write means the states are not durable: hold the offset commit (as for a sink that cannot flush) and write
    again; a failed restore means the partitions' states are unknown: do not process
    their records until a restore succeeds."""


class RestoredState(NamedTuple):
    """A model's state read back from the changelog."""

    state: dict[str, Any]
    positions: dict[tuple[str, int], int]
    """The input offsets the state corresponds to: (topic, partition) -> next offset."""


@dataclass(frozen=True)
class ChangelogRecord:
    """One record to produce (``value`` None: a tombstone)."""

    key: bytes
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def size(self) -> int:
        """Bytes of key, value and headers (what the record costs on the wire, before
        Kafka's per-record and per-batch overhead)."""
        return (
            len(self.key)
            + (0 if self.value is None else len(self.value))
            + sum(len(k) + len(v) for k, v in self.headers)
        )


@dataclass
class WriteStats:
    """What one :meth:`ChangelogStore.write` (or all of them) produced."""

    models: int = 0
    records: int = 0
    chunks: int = 0
    segments: int = 0
    """Segments sent (those already acknowledged are not sent again)."""
    tombstones: int = 0
    bytes: int = 0
    """Key, value and header bytes of every record sent (see :attr:`ChangelogRecord.size`)."""
    seconds: float = 0.0

    def add(self, other: WriteStats) -> None:
        for name in ("models", "records", "chunks", "segments", "tombstones", "bytes", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


# ---- pure functions: naming, partitioning, encoding, chunking --------------------------


def changelog_topic(group_id: str) -> str:
    """The default changelog topic of a consumer group."""
    return f"{group_id}-state-changelog"


def partition_for(model: str, partitions: int) -> int:
    """The partition of ``model``'s records in a topic of ``partitions`` partitions, as
    kafka-python's (and the Java client's) default partitioner places a record keyed by
    the model's UTF-8 name: murmur2, sign bit cleared, modulo the partition count."""
    from kafka.partitioner.default import murmur2

    return (murmur2(model.encode("utf-8")) & 0x7FFFFFFF) % partitions


def encode_payload(state: Mapping[str, Any]) -> bytes:
    """The bytes a state is stored as: orjson of :func:`~driftline.monitor.checkpoint.encode_state`."""
    return orjson.dumps(encode_state(dict(state)), option=orjson.OPT_SERIALIZE_NUMPY)


def split_payload(payload: bytes, max_chunk_bytes: int) -> list[bytes]:
    """``payload`` cut into pieces of at most ``max_chunk_bytes`` (at least one piece)."""
    if max_chunk_bytes < 1:
        raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
    return [payload[i : i + max_chunk_bytes] for i in range(0, len(payload), max_chunk_bytes)] or [b""]


def _positions_header(positions: Mapping[tuple[str, int], int]) -> bytes:
    return orjson.dumps(sorted([t, int(p), int(o)] for (t, p), o in positions.items()))


def _chunk_key(model: bytes, state_id: bytes, index: int) -> bytes:
    return b"\x00".join((model, state_id, str(index).encode("ascii")))


def _segment_key(model: bytes, writer: bytes, digest: bytes) -> bytes:
    return b"\x00".join((model, writer, digest))


def plan_records(
    model: str,
    payload: bytes,
    positions: Mapping[tuple[str, int], int],
    *,
    state_id: str,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
    writer: str | None = None,
    segments: Iterable[tuple[str, bytes]] = (),
) -> list[ChangelogRecord]:
    """The records that store ``payload`` (an :func:`encode_payload` result, or the
    ``main`` of a :class:`~driftline.monitor.checkpoint.EncodedState`) for ``model``:
    the ``segments`` given, then one ``state`` record when the payload fits in
    ``max_chunk_bytes``, else its chunks followed by their manifest. The last record
    (state or manifest) is sent only once the others are acknowledged.

    ``state_id`` must be new for every write (32 lowercase hex digits, e.g.
    ``uuid.uuid4().hex``): chunk keys include it so that they never overwrite another
    state's chunks. ``writer`` (32 lowercase hex digits): the id under which the
    payload's segments are stored, None when it names none; ``segments``: (SHA-256,
    bytes) of those of them to send (the others must be in the changelog already).
    """
    sid = state_id.encode("ascii")
    if not _STATE_ID.fullmatch(sid):
        raise ValueError(f"state_id must be 32 lowercase hex digits, got {state_id!r}")
    key = model.encode("utf-8")
    digest = hashlib.sha256(payload).hexdigest().encode("ascii")
    version = FORMAT_VERSION if writer is None else SEGMENTS_FORMAT_VERSION
    fmt = (_H + "format", str(version).encode("ascii"))
    where: tuple[tuple[str, bytes], ...] = ((_H + "positions", _positions_header(positions)),)
    records: list[ChangelogRecord] = []
    if writer is not None:
        wid = writer.encode("ascii")
        if not _STATE_ID.fullmatch(wid):
            raise ValueError(f"writer must be 32 lowercase hex digits, got {writer!r}")
        where += ((_H + "segment-writer", wid),)
        for name, data in segments:
            if len(data) > max_chunk_bytes:
                raise ValueError(f"segment {name[:12]} has {len(data)} bytes, more than max_chunk_bytes")
            records.append(
                ChangelogRecord(
                    _segment_key(key, wid, name.encode("ascii")),
                    data,
                    (fmt, (_H + "kind", _SEGMENT), (_H + "sha256", name.encode("ascii"))),
                )
            )
    elif segments:
        raise ValueError("segments need the writer whose id their keys carry")
    if len(payload) <= max_chunk_bytes:
        records.append(
            ChangelogRecord(
                key, payload, (fmt, (_H + "kind", _STATE), (_H + "state-id", sid), (_H + "sha256", digest), *where)
            )
        )
        return records
    pieces = split_payload(payload, max_chunk_bytes)
    count = str(len(pieces)).encode("ascii")
    records += [
        ChangelogRecord(
            _chunk_key(key, sid, i),
            piece,
            (
                fmt,
                (_H + "kind", _CHUNK),
                (_H + "state-id", sid),
                (_H + "chunk-index", str(i).encode("ascii")),
                (_H + "chunk-count", count),
                (_H + "sha256", digest),
            ),
        )
        for i, piece in enumerate(pieces)
    ]
    summary = orjson.dumps(
        {"state_id": state_id, "chunks": len(pieces), "size": len(payload), "sha256": digest.decode("ascii")}
    )
    records.append(
        ChangelogRecord(
            key,
            summary,
            (
                fmt,
                (_H + "kind", _MANIFEST),
                (_H + "state-id", sid),
                (_H + "chunk-count", count),
                (_H + "sha256", digest),
                (_H + "size", str(len(payload)).encode("ascii")),
                *where,
            ),
        )
    )
    return records


def _tombstone(key: bytes, kind: bytes) -> ChangelogRecord:
    return ChangelogRecord(key, None, ((_H + "format", str(FORMAT_VERSION).encode("ascii")), (_H + "kind", kind)))


# ---- reassembly (pure: records in, states out) -------------------------------------------


@dataclass
class _Candidate:
    """A model-key record that may hold the model's state."""

    state_id: bytes
    sha256: str
    positions: dict[tuple[str, int], int]
    payload: bytes | None = None  # a state record's value; None for a manifest
    chunks: int = 0  # a manifest's chunk count
    writer: bytes | None = None  # the id its segments are stored under; None: it has none


@dataclass
class _ModelLog:
    candidates: list[_Candidate] = field(default_factory=list)  # oldest first, since the last tombstone
    deleted: bool = False


class Reassembler:
    """Rebuilds models' states from changelog records fed in log order (one partition's
    order; partitions are independent since a model lives in one).

    Pure: no Kafka, so that reassembly can be tested on any sequence of records. Memory
    holds the chunks that are present (not tombstoned) and, per model, the newest
    self-contained state and the manifests written after it (metadata only).

    Examples
    --------
    >>> r = Reassembler()
    >>> for rec in plan_records("m", encode_payload({"a": 1}), {("p", 0): 5}, state_id="0" * 32):
    ...     r.feed(rec.key, rec.value, rec.headers)
    >>> r.result()["m"]
    RestoredState(state={'a': 1}, positions={('p', 0): 5})
    """

    def __init__(self) -> None:
        self._models: dict[str, _ModelLog] = {}
        self._chunks: dict[bytes, bytes] = {}  # chunk key -> value, present ones only
        self._chunk_model: dict[bytes, str] = {}
        self._segments: dict[bytes, bytes] = {}  # segment key -> value, present ones only
        self._segment_model: dict[bytes, str] = {}
        self.skipped = 0
        """Records ignored: not driftline's, or of an unknown format version."""
        self.winners: dict[str, tuple[bytes, int]] = {}
        """After :meth:`result`: per model, the state id and chunk count it restored."""

    def feed(self, key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes]]) -> None:
        """Take the next record of a partition."""
        if key is None:
            self.skipped += 1
            return
        h = dict(headers or ())
        fmt, kind = h.get(_H + "format"), h.get(_H + "kind")
        if fmt is not None and fmt not in _READABLE:
            self.skipped += 1  # a newer writer's record: never guess at its meaning
            log.warning(
                "changelog record of format %r skipped (this driftline reads formats %d and %d): upgrade driftline",
                fmt,
                FORMAT_VERSION,
                SEGMENTS_FORMAT_VERSION,
            )
            return
        if value is None:
            self._tombstone(key, kind)
            return
        if fmt is None:
            self.skipped += 1
            return
        try:
            if kind == _CHUNK:
                model, _, _ = _split_chunk_key(key)
                if model is None:
                    raise ValueError("malformed chunk key")
                self._chunks[key] = value
                self._chunk_model[key] = model
            elif kind == _SEGMENT:
                model, _ = _split_segment_key(key)
                if model is None:
                    raise ValueError("malformed segment key")
                self._segments[key] = value
                self._segment_model[key] = model
            elif kind in (_STATE, _MANIFEST):
                self._model_record(key.decode("utf-8"), kind, value, h)
            else:
                self.skipped += 1
        except (ValueError, KeyError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            self.skipped += 1
            log.warning("malformed changelog record skipped (%s)", exc)

    def _tombstone(self, key: bytes, kind: bytes | None) -> None:
        if kind == _CHUNK or (kind is None and key in self._chunks):
            self._chunks.pop(key, None)
            self._chunk_model.pop(key, None)
            return
        if kind == _SEGMENT or (kind is None and key in self._segments):
            self._segments.pop(key, None)
            self._segment_model.pop(key, None)
            return
        if kind is None and (_split_chunk_key(key)[0] is not None or _split_segment_key(key)[0] is not None):
            return  # a chunk's (segment's) tombstone without headers, for one not present: nothing to drop
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped += 1
            return
        self._models[name] = _ModelLog(deleted=True)

    def _model_record(self, model: str, kind: bytes, value: bytes, h: dict[str, bytes]) -> None:
        cand = _Candidate(
            state_id=h[_H + "state-id"],
            sha256=h[_H + "sha256"].decode("ascii"),
            positions={(t, int(p)): int(o) for t, p, o in orjson.loads(h[_H + "positions"])},
            writer=h.get(_H + "segment-writer"),
        )
        if cand.writer is not None and not _STATE_ID.fullmatch(cand.writer):
            raise ValueError("malformed segment-writer header")
        entry = self._models.setdefault(model, _ModelLog())
        entry.deleted = False
        if kind == _STATE:
            cand.payload = value
            if hashlib.sha256(value).hexdigest() == cand.sha256:
                if cand.writer is None:
                    # complete by itself: nothing older can ever be needed again
                    entry.candidates = [cand]
                    return
                # complete only with its segments: the ones before stay, in case one is missing
                entry.candidates.append(cand)
                held = [c for c in entry.candidates if c.payload is not None and c.writer is not None]
                for old in held[:-_MAX_SEGMENTED_CANDIDATES]:
                    entry.candidates.remove(old)
                return
            log.warning(
                "changelog state of %r (state id %s) does not match its SHA-256: ignored", model, cand.state_id.decode()
            )
            return
        cand.chunks = int(h[_H + "chunk-count"])
        entry.candidates.append(cand)

    def _assemble(self, model: str, cand: _Candidate) -> bytes | None:
        if cand.payload is not None:
            return cand.payload
        key = model.encode("utf-8")
        parts = [self._chunks.get(_chunk_key(key, cand.state_id, i)) for i in range(cand.chunks)]
        if any(p is None for p in parts):
            return None
        payload = b"".join(parts)  # type: ignore[arg-type]
        return payload if hashlib.sha256(payload).hexdigest() == cand.sha256 else None

    def result(self) -> dict[str, RestoredState]:
        """Per model, the newest complete state (see the module's docstring); models
        deleted or without a complete state are absent."""
        out: dict[str, RestoredState] = {}
        self.winners = {}
        for model, entry in self._models.items():
            if entry.deleted:
                continue
            for age, cand in enumerate(reversed(entry.candidates)):
                payload = self._assemble(model, cand)
                if payload is None:
                    log.warning(
                        "changelog state of %r (state id %s) is incomplete or does not match its SHA-256: %s",
                        model,
                        cand.state_id.decode(),
                        "trying the one before"
                        if age + 1 < len(entry.candidates)
                        else "no complete state left; it is rebuilt from the stream",
                    )
                    continue
                try:
                    state = decode_state(orjson.loads(payload), self._segment_reader(model, cand.writer))
                except _MissingSegment as exc:
                    log.warning(
                        "changelog state of %r (state id %s) lacks segment %s: %s",
                        model,
                        cand.state_id.decode(),
                        exc,
                        "trying the one before"
                        if age + 1 < len(entry.candidates)
                        else "no complete state left; it is rebuilt from the stream",
                    )
                    continue
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    log.warning("changelog state of %r cannot be decoded (%s): ignored", model, exc)
                    continue
                if age:
                    log.warning("restored an older state of %r (%d newer ones incomplete)", model, age)
                out[model] = RestoredState(state, cand.positions)
                self.winners[model] = (cand.state_id, cand.chunks)
                break
        return out

    def _segment_reader(self, model: str, writer: bytes | None) -> Callable[[str], bytes] | None:
        if writer is None:
            return None
        prefix = model.encode("utf-8")

        def read(digest: str) -> bytes:
            found = self._segments.get(_segment_key(prefix, writer, digest.encode("ascii")))
            if found is None:
                raise _MissingSegment(digest[:12])
            return found

        return read

    def present_chunks(self) -> dict[str, set[bytes]]:
        """Per model, the chunk keys present (not tombstoned) in what was fed."""
        out: dict[str, set[bytes]] = {}
        for key, model in self._chunk_model.items():
            out.setdefault(model, set()).add(key)
        return out

    def present_segments(self) -> dict[str, set[bytes]]:
        """Per model, the segment keys present (not tombstoned) in what was fed."""
        out: dict[str, set[bytes]] = {}
        for key, model in self._segment_model.items():
            out.setdefault(model, set()).add(key)
        return out


class _MissingSegment(Exception):
    """A state names a segment that is not in the changelog (tombstoned, or never acknowledged)."""


def _split_segment_key(key: bytes) -> tuple[str | None, bytes | None]:
    """(model, writer) of a segment key; Nones when ``key`` is not one."""
    parts = key.rsplit(b"\x00", 2)
    if len(parts) != 3 or not _STATE_ID.fullmatch(parts[1]) or not _DIGEST.fullmatch(parts[2]):
        return None, None
    try:
        return parts[0].decode("utf-8"), parts[1]
    except UnicodeDecodeError:
        return None, None


def _split_chunk_key(key: bytes) -> tuple[str | None, bytes | None, int | None]:
    """(model, state id, index) of a chunk key; Nones when ``key`` is not one."""
    parts = key.rsplit(b"\x00", 2)
    if len(parts) != 3 or not _STATE_ID.fullmatch(parts[1]) or not parts[2].isdigit():
        return None, None, None
    try:
        return parts[0].decode("utf-8"), parts[1], int(parts[2])
    except UnicodeDecodeError:
        return None, None, None


# ---- the store (Kafka) ---------------------------------------------------------------------


@dataclass
class _Written:
    """What this instance knows of a model's records in the changelog."""

    current: set[bytes] = field(default_factory=set)  # chunk keys of the newest acknowledged state
    superseded: set[bytes] = field(default_factory=set)  # chunk (segment) keys to tombstone after the next one
    segments: set[bytes] = field(default_factory=set)  # this writer's segment keys acknowledged, not tombstoned


class ChangelogStore:
    """Write, delete and restore per-model states in a compacted changelog topic.

    Parameters
    ----------
    settings
        Kafka connection settings (``settings.kafka``); the topic defaults to
        ``<group_id>-state-changelog``.
    topic
        Changelog topic name (default: :func:`changelog_topic` of the group id).
    partitions
        Partition count of the changelog; default: that of ``predictions_topic`` (the
        changelog is co-partitioned with the input topics). A changelog topic that exists
        with another partition count is a :class:`~driftline.monitor.exceptions.ConfigError`.
    max_chunk_bytes
        Largest state stored in one record; larger ones are split into chunks this size.
        Keep it under the broker's ``message.max.bytes`` (and the topic's
        ``max.message.bytes``) minus a few hundred bytes of key and headers.
    replication_factor
        For a topic this store creates (-1: the broker's default).
    timeout_seconds
        How long a write may wait for acknowledgements, and a restore for the end of
        its partitions.
    compression_type
        The producer's compression (``"gzip"`` needs nothing more; kafka-python's
        ``"lz4"``, ``"snappy"`` and ``"zstd"`` need their packages). A model's state is
        base64 in JSON: gzip makes it about 4 times smaller on the wire and on disk.

    Notes
    -----
    Not thread-safe: call it from one thread (the one that runs the pipeline).
    Writers are not fenced: an instance that lost its partitions but keeps writing (a
    zombie, e.g. after a long pause) can still write a model's state; the newest
    complete state wins. Kafka Streams fences zombies with transactions (exactly-once
    mode); here the caller stops writing a model once its partition is revoked.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str | None = None,
        *,
        partitions: int | None = None,
        max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
        replication_factor: int = -1,
        timeout_seconds: float = 30.0,
        compression_type: str | None = None,
    ) -> None:
        if max_chunk_bytes < 1024:
            raise ConfigError(f"max_chunk_bytes must be at least 1024, got {max_chunk_bytes}")
        self.settings = settings
        self.topic = topic or changelog_topic(settings.group_id)
        self.max_chunk_bytes = max_chunk_bytes
        self.timeout_seconds = timeout_seconds
        self.compression_type = compression_type
        self.partitions = self._ensure_topic(partitions, replication_factor)
        self._producer = None
        self._consumer = None
        self._written: dict[str, _Written] = {}
        self.writer_id = uuid.uuid4().hex
        """The id this instance's segment keys carry (see the module's docstring)."""
        # per model: its full segments, so that they are not encoded again; a segment
        # must fit in a record, with room for the state's other records' overhead
        self._encoders: dict[str, StateEncoder] = {}
        self._segment_bytes = min(DEFAULT_SEGMENT_BYTES, max_chunk_bytes // 2)
        self.last_write = WriteStats()
        """What the last :meth:`write` sent."""
        self.written = WriteStats()
        """What every :meth:`write` and :meth:`delete` sent, in total."""

    # -- topic --------------------------------------------------------------------------------
    def _ensure_topic(self, partitions: int | None, replication_factor: int) -> int:
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError, TopicAlreadyExistsError

        admin = self._open(
            KafkaAdminClient,
            "admin",
            {},
            f"to open the changelog {self.topic!r}; check kafka.bootstrap_servers and that the brokers answer",
        )
        try:
            existing = _partition_count(admin, self.topic)
            if partitions is None:
                partitions = _partition_count(admin, self.settings.predictions_topic)
                if partitions is None:
                    raise ConfigError(
                        f"the changelog takes its partition count from kafka.predictions_topic "
                        f"{self.settings.predictions_topic!r}, which does not exist: create the input "
                        "topics first, or pass partitions"
                    )
            if existing is None:
                try:
                    admin.create_topics(
                        {
                            self.topic: {
                                "num_partitions": partitions,
                                "replication_factor": replication_factor,
                                "configs": {"cleanup.policy": "compact"},
                            }
                        }
                    )
                    log.info("created the changelog topic %s (%d partitions, compacted)", self.topic, partitions)
                except TopicAlreadyExistsError:  # another instance created it meanwhile
                    existing = _partition_count(admin, self.topic)
            if existing is not None and existing != partitions:
                raise ConfigError(
                    f"the changelog topic {self.topic!r} has {existing} partitions but the input topics "
                    f"have {partitions}: a model's state must sit at its input partition's number. "
                    "Delete the changelog topic (the states are rebuilt) or give another topic name"
                )
            if existing is not None:
                self._check_compacted(admin)
        except KafkaError as exc:
            raise ChangelogError(
                f"cannot open the changelog {self.topic!r} ({type(exc).__name__}: {exc}); check that the brokers answer"
            ) from None
        finally:
            admin.close()
        return partitions

    def _check_compacted(self, admin) -> None:
        from kafka.admin import ConfigResource, ConfigResourceType

        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, self.topic)], config_filter="all")
        policy = found.get("topic", {}).get(self.topic, {}).get("cleanup.policy", {}).get("value")
        if policy is not None and "compact" not in policy:
            log.warning(
                "the changelog topic %s has cleanup.policy=%s: it keeps every state ever written "
                "(restores read all of it) or deletes states by age; set cleanup.policy=compact",
                self.topic,
                policy,
            )

    def _open(self, cls: Any, role: ClientRole, config: dict[str, Any], purpose: str) -> Any:
        """A kafka-python client with driftline's connection options for ``role`` (TLS,
        SASL: :func:`~driftline.monitor.kafka_client.client_options`) and ``config``; its
        network client closed again when it cannot bootstrap (kafka-python 3.0 leaves it
        open). Raises :class:`ChangelogError` naming ``purpose``."""
        from kafka.errors import KafkaError
        from kafka.net.compat import KafkaNetClient

        from driftline.monitor.kafka_client import client_options  # imports kafka: only when used

        clients: list[Any] = []

        def client(**cfg: Any) -> Any:
            clients.append(KafkaNetClient(**cfg))
            return clients[-1]

        options = {
            **client_options(self.settings, role),
            "client_id": f"{self.settings.client_id}-changelog",
            # kafka.bootstrap_timeout_ms bounds the first connection, as for the consumer:
            # an unreachable broker fails the start as fast as the user asked
            "bootstrap_timeout_ms": int(min(self.timeout_seconds * 1000, self.settings.bootstrap_timeout_ms)),
            **config,
        }
        try:
            return cls(**options, kafka_client=client)
        except KafkaError as exc:
            for opened in clients:
                opened.close()
            raise ChangelogError(
                f"cannot connect to Kafka at {self.settings.bootstrap_servers} {purpose} ({type(exc).__name__}: {exc})"
            ) from None

    def partition_of(self, model: str) -> int:
        """The changelog (and input) partition of ``model``."""
        return partition_for(model, self.partitions)

    # -- writing ------------------------------------------------------------------------------
    def _ensure_producer(self):
        if self._producer is None:
            from kafka import KafkaProducer

            timeout_ms = int(self.timeout_seconds * 1000)
            # one request in flight: a retried record never lands after a later one, so an
            # older state whose write timed out cannot supersede a newer one
            self._producer = self._open(
                KafkaProducer,
                "producer",
                {
                    "acks": "all",
                    "linger_ms": 5,
                    "max_in_flight_requests_per_connection": 1,
                    "compression_type": self.compression_type,
                    "max_request_size": max(1_048_576, self.max_chunk_bytes + 65_536),
                    "max_block_ms": timeout_ms,
                    "request_timeout_ms": timeout_ms,
                },
                "to write the changelog: the states are not durable, hold the commit",
            )
        return self._producer

    def _send(self, records: list[tuple[int, ChangelogRecord]]) -> list[bool]:
        """Produce and wait for the acknowledgements: per record, whether it is durable
        (False also when unknown: it timed out, and may still land)."""
        from kafka.errors import KafkaError

        producer = self._ensure_producer()
        futures = []
        for partition, rec in records:
            try:
                futures.append(
                    producer.send(
                        self.topic, key=rec.key, value=rec.value, headers=list(rec.headers), partition=partition
                    )
                )
            except KafkaError as exc:
                log.debug("changelog send refused: %s", exc)
                futures.append(None)
        try:
            producer.flush(timeout=self.timeout_seconds)
        except KafkaError as exc:
            log.debug("changelog flush timed out: %s", exc)
        return [f is not None and f.succeeded() for f in futures]

    def write(self, states: Mapping[str, Mapping[str, Any]], positions: Mapping[tuple[str, int], int]) -> None:
        """Store each model's state with the input positions it corresponds to.

        Returns once every state is acknowledged by all in-sync replicas (acks=all).
        ``positions`` maps (topic, partition) to the next offset to apply; each model's
        record keeps the entries of its own partition number.

        Raises
        ------
        ChangelogError
            When some state was not acknowledged (the message names the models): those
            models' previous states stay the restorable ones; hold the offset commit and
            write again. Models not named were written.
        """
        started = time.monotonic()
        stats = WriteStats(models=len(states))
        planned: dict[str, tuple[int, list[ChangelogRecord]]] = {}
        needed: dict[str, set[bytes]] = {}  # per model, the segment keys its new state names
        for model, state in states.items():
            partition = self.partition_of(model)
            mine = {tp: off for tp, off in positions.items() if tp[1] == partition}
            known = self._written.setdefault(model, _Written())
            encoder = self._encoders.setdefault(model, StateEncoder(self._segment_bytes))
            encoded = encoder.encode(state)
            payload = encoded.main
            key = model.encode("utf-8")
            keys = {d: _segment_key(key, self.writer_id.encode("ascii"), d.encode("ascii")) for d in encoded.segments}
            new = [(d, encoded.segment(d)) for d, k in keys.items() if k not in known.segments]
            if any(len(data) > self.max_chunk_bytes for _, data in new):
                # one item larger than a record (a huge event): this state goes without segments
                payload, keys, new = encode_payload(state), {}, []
            needed[model] = set(keys.values())
            planned[model] = (
                partition,
                plan_records(
                    model,
                    payload,
                    mine,
                    state_id=uuid.uuid4().hex,
                    max_chunk_bytes=self.max_chunk_bytes,
                    writer=self.writer_id if keys else None,
                    segments=new,
                ),
            )
        # 1. segments, chunks and the states that need no other record; 2. the last record
        # (a manifest, or a state naming new segments) once its model's others are acknowledged
        first = [(m, p, r) for m, (p, recs) in planned.items() for r in (recs if len(recs) == 1 else recs[:-1])]
        ok = self._send([(p, r) for _, p, r in first])
        failed = {m for (m, _, _), good in zip(first, ok) if not good}
        second = [(m, p, recs[-1]) for m, (p, recs) in planned.items() if len(recs) > 1 and m not in failed]
        ok_second = self._send([(p, r) for _, p, r in second])
        for (m, _, _), good in zip(second, ok_second):
            if not good:
                failed.add(m)
        for (model, _partition, r), good in zip([*first, *second], [*ok, *ok_second], strict=True):
            stats.records += 1
            stats.bytes += r.size
            kind = dict(r.headers)[_H + "kind"]
            stats.chunks += kind == _CHUNK
            stats.segments += kind == _SEGMENT
            if kind == _SEGMENT:
                # acknowledged: present, reusable by the next states; else it may have
                # landed: tombstoned after the next state unless that one names it
                (self._written[model].segments if good else self._written[model].superseded).add(r.key)
        # 3. the chunks and segments the new states supersede: garbage now, so tombstones may fail
        garbage: list[tuple[str, int, bytes]] = []
        for model, (partition, recs) in planned.items():
            known = self._written[model]
            chunks = {r.key for r in recs[:-1] if dict(r.headers)[_H + "kind"] == _CHUNK}
            if model in failed:
                known.superseded |= chunks  # they may have landed: tombstone them after the next state
                continue
            known.superseded |= known.current
            known.current = chunks
            garbage.extend(
                (model, partition, key) for key in sorted((known.superseded | known.segments) - needed[model])
            )
        if garbage:
            self._tombstone_chunks(garbage, stats)
        stats.seconds = time.monotonic() - started
        self.last_write = stats
        self.written.add(stats)
        if failed:
            raise ChangelogError(
                f"the changelog {self.topic!r} did not acknowledge the state of {len(failed)} model(s) "
                f"({', '.join(sorted(failed)[:5])}{', ...' if len(failed) > 5 else ''}) within "
                f"{self.timeout_seconds:.0f} s: their previous states stay current; hold the commit and "
                "write again (check that the brokers answer)"
            )

    def _tombstone_chunks(self, garbage: list[tuple[str, int, bytes]], stats: WriteStats) -> None:
        records = [
            (p, _tombstone(key, _SEGMENT if _split_segment_key(key)[0] is not None else _CHUNK))
            for _, p, key in garbage
        ]
        for model, _, key in garbage:  # whether its tombstone lands or not, a segment no longer counts as present
            self._written[model].segments.discard(key)
        for (model, _, key), (_, rec), good in zip(garbage, records, self._send(records)):
            stats.records += 1
            stats.tombstones += 1
            stats.bytes += rec.size
            if good:
                self._written[model].superseded.discard(key)
            else:
                self._written[model].superseded.add(key)
        left = sum(len(w.superseded) for w in self._written.values())
        if left:
            log.warning(
                "%d superseded changelog chunk(s) or segment(s) not yet tombstoned (retried at the next write): "
                "they take space until then, and are never restored",
                left,
            )

    def delete(self, model: str) -> None:
        """Delete ``model``'s state: a tombstone under its key, then tombstones for the
        chunks and segments this instance knows of (written or restored by it).

        Raises
        ------
        ChangelogError
            When the tombstone was not acknowledged; the state may still be restored.
        """
        partition = self.partition_of(model)
        started = time.monotonic()
        stats = WriteStats(models=1, records=1, tombstones=1)
        tomb = _tombstone(model.encode("utf-8"), _DELETED)
        stats.bytes += tomb.size
        if not self._send([(partition, tomb)])[0]:
            raise ChangelogError(
                f"the changelog {self.topic!r} did not acknowledge the deletion of {model!r}; "
                "delete it again (check that the brokers answer)"
            )
        mine = self._written.pop(model, _Written())
        self._encoders.pop(model, None)
        keys = mine.current | mine.superseded | mine.segments
        if keys:
            self._written[model] = _Written(superseded=keys)
            self._tombstone_chunks([(model, partition, k) for k in sorted(keys)], stats)
            if not self._written[model].superseded:
                del self._written[model]
        stats.seconds = time.monotonic() - started
        self.written.add(stats)

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop what this instance knows of the models of ``partitions`` (call it when
        they are revoked: their new owner restores them and cleans up after itself)."""
        gone = set(partitions)
        for model in [m for m in self._written if self.partition_of(m) in gone]:
            del self._written[model]
        for model in [m for m in self._encoders if self.partition_of(m) in gone]:
            del self._encoders[model]

    # -- restoring ----------------------------------------------------------------------------
    def _ensure_consumer(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = self._open(
                KafkaConsumer,
                "consumer",
                {
                    "group_id": None,
                    "enable_auto_commit": False,
                    "auto_offset_reset": "earliest",
                    "max_partition_fetch_bytes": max(1_048_576, 2 * self.max_chunk_bytes),
                    "fetch_max_wait_ms": 100,
                },
                "to restore from the changelog: the states are unknown, check that the brokers answer, "
                "then restore again",
            )
        return self._consumer

    def restore(self, partitions: Iterable[int], *, timeout_seconds: float | None = None) -> dict[str, RestoredState]:
        """The states of the models in these changelog partitions, read from the beginning
        to the end.

        The end is the end offset asked when the restore starts; since a broker may
        report it a little low, reading stops only once every partition has reached it
        and a poll then returns nothing.

        Raises
        ------
        ChangelogError
            When the end was not reached within ``timeout_seconds`` (default: the store's
            timeout): the states are unknown; do not process these partitions' records
            (try again).
        """
        from kafka import TopicPartition
        from kafka.errors import KafkaError

        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if not tps:
            return {}
        bad = [tp.partition for tp in tps if not 0 <= tp.partition < self.partitions]
        if bad:
            raise ValueError(f"the changelog {self.topic!r} has partitions 0..{self.partitions - 1}, not {bad}")
        consumer = self._ensure_consumer()
        patience = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        deadline = time.monotonic() + patience
        reassembler = Reassembler()
        read = 0
        try:
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps, timeout_ms=int(patience * 1000))

            def behind() -> dict[int, tuple[int, int]]:
                """Partitions short of their end offset: partition -> (position, end)."""
                wait = int(max(1.0, deadline - time.monotonic()) * 1000)
                return {
                    tp.partition: (pos, ends[tp])
                    for tp in tps
                    if (pos := consumer.position(tp, timeout_ms=wait)) < ends[tp]
                }

            at_end = not behind()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChangelogError(
                        f"restoring {self.topic!r} partitions {[tp.partition for tp in tps]} did not reach the end "
                        f"in {patience:.0f} s ({read} records read; partition: (position, end offset) "
                        f"{behind()}); the states are unknown: check that the brokers answer, then restore again"
                    )
                # at the end offset, one more (shorter) poll: the broker may report it a little low,
                # and records past it come back at once if there are any
                wait = _SETTLE_MS if at_end else _POLL_MS
                batch = consumer.poll(timeout_ms=int(min(wait, remaining * 1000)), max_records=2000)
                for tp in tps:  # one partition's records in order; partitions are independent
                    for rec in batch.get(tp, ()):
                        reassembler.feed(rec.key, rec.value, rec.headers)
                        read += 1
                if not batch and at_end:
                    break
                at_end = not behind()
        except KafkaError as exc:
            raise ChangelogError(
                f"restoring {self.topic!r} failed ({type(exc).__name__}: {exc}); the states "
                "are unknown: check that the brokers answer, then restore again"
            ) from None
        finally:
            consumer.assign([])
        states = reassembler.result()
        present = reassembler.present_chunks()
        for model, keys in present.items():
            sid, count = reassembler.winners.get(model, (None, 0))
            current = {_chunk_key(model.encode("utf-8"), sid, i) for i in range(count)} if sid else set()
            # chunks of older or unfinished states: tombstoned after this instance's next write
            self._written[model] = _Written(current=current, superseded=keys - current)
        for model in reassembler.winners:
            if model not in present:
                self._written[model] = _Written()
        writer = self.writer_id.encode("ascii")
        for model, keys in reassembler.present_segments().items():
            # this instance's own (the partition came back): present, reusable; others'
            # (the restored state may name them): tombstoned after this instance's next write
            known = self._written.setdefault(model, _Written())
            own = {k for k in keys if _split_segment_key(k)[1] == writer}
            known.segments |= own
            known.superseded |= keys - own
        if reassembler.skipped:
            log.warning(
                "restoring %s: %d record(s) skipped (not driftline's changelog format %d)",
                self.topic,
                reassembler.skipped,
                FORMAT_VERSION,
            )
        log.info(
            "restored %d model state(s) from %s partitions %s (%d records)",
            len(states),
            self.topic,
            [tp.partition for tp in tps],
            read,
        )
        return states

    def close(self) -> None:
        """Close the producer and the restore consumer (unacknowledged writes are not waited for)."""
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _partition_count(admin, topic: str) -> int | None:
    """Partitions of ``topic``; None when it does not exist."""
    found = admin.describe_topics([topic])
    if not found or found[0].get("error_code") or not found[0].get("partitions"):
        return None
    return len(found[0]["partitions"])
