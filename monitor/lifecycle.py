"""Model lifecycle events: the contract, its decoding and encoding, and replay files.

A lifecycle event tells the monitor what the delivery pipeline did: a version went live
(``deployed``, with its ``role``), became the stable one (``promoted``), was taken back
(``rolled_back``) or out of service (``retired``). Topic ``model-lifecycle`` by default
(``lifecycle.topic``), keyed by model and co-partitioned with predictions and feedback::

    {"model": "fraud", "version": "v8", "event": "deployed", "role": "canary",
     "traffic_share": 0.05, "ts": 1763900000.0,
     "reference": {"path": "refs/fraud-v8.jsonl"},
     "actor": "github-actions run 4711", "reason": "retrain after drift",
     "trigger": "<idempotency key of the trigger that caused it>"}

Fields
------
``model``, ``version``
    Non-empty strings of at most :data:`MAX_NAME` characters; required.
``event``
    ``deployed``, ``promoted``, ``rolled_back`` or ``retired``; required.
``ts``
    Event time, epoch seconds (finite); required: the event is ordered against the
    predictions by it, in a replay as over Kafka.
``role``
    ``stable``, ``canary`` or ``shadow``: required on ``deployed``, refused on the others.
``traffic_share``
    The share of traffic the deployment receives, ``0 < s <= 1``; optional, ``deployed``
    only.
``reference``
    ``{"path": FILE}`` (a JSONL or CSV file of past prediction events, read by the
    service: the path is the service's, not the producer's), ``{"from_stream": N}``
    (the version's first N prediction events, ``1 <= N <= 1,000,000``), or absent
    (inherit the stable version's); ``deployed`` and ``promoted`` only.
``actor``, ``reason``, ``trigger``
    Optional free text (at most :data:`MAX_ACTOR`, :data:`MAX_REASON` and
    :data:`MAX_TRIGGER` characters): who or what acted, why, and the idempotency key of
    the driftline trigger it answers (the audit trail links them by it).

Unknown top-level fields are ignored, as in the prediction contract (a newer producer
does not break an older monitor); inside ``reference`` they are refused, since the
object's keys choose what it means.

Reason codes of a dead-lettered lifecycle record (a fixed set, :data:`LIFECYCLE_REASONS`,
usable as a metric label): ``empty_value``, ``invalid_json``, ``not_an_object``,
``missing_field``, ``wrong_type`` (as for predictions, :mod:`driftline.monitor.decode`),
``invalid_value`` (a value outside its allowed set or range: an unknown event or role,
a share outside (0, 1], an empty or too long string; a number beyond float64 is
``invalid_json``, as for predictions),
``invalid_reference`` (``reference`` is not exactly one of the two forms) and
``field_not_for_event`` (``deployed`` without ``role``, or ``role``,
``traffic_share`` or ``reference`` on an event that does not take them). The detail is
the decoder's message cut to :data:`MAX_DETAIL` characters, with the field it names.

Examples
--------
>>> event = validate_lifecycle({"model": "fraud", "version": "v8", "event": "deployed",
...                             "role": "canary", "traffic_share": 0.05, "ts": 1763900000.0})
>>> event.role, event.reference is None
('canary', True)
>>> encode_lifecycle(event)
b'{"model":"fraud","version":"v8","event":"deployed","ts":1763900000.0,"role":"canary","traffic_share":0.05}'
>>> try:
...     validate_lifecycle({"model": "fraud", "version": "v8", "event": "deployed", "ts": 1.0})
... except LifecycleContractError as exc:
...     print(exc.reason, exc.field)
field_not_for_event role
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from driftline.monitor.decode import DeadLetter, RawRecord, Record, dead_letter
from driftline.monitor.exceptions import ContractError, SourceError

__all__ = [
    "LifecycleEvent",
    "Reference",
    "LifecycleBatch",
    "LifecycleContractError",
    "LIFECYCLE_EVENTS",
    "LIFECYCLE_ROLES",
    "LIFECYCLE_REASONS",
    "CLI_EVENT_NAMES",
    "MAX_NAME",
    "MAX_ACTOR",
    "MAX_REASON",
    "MAX_TRIGGER",
    "MAX_PATH",
    "MAX_FROM_STREAM",
    "MAX_DETAIL",
    "decode_lifecycle",
    "decode_lifecycle_batch",
    "validate_lifecycle",
    "encode_lifecycle",
    "lifecycle_key",
    "read_lifecycle_file",
]

LIFECYCLE_EVENTS: tuple[str, ...] = ("deployed", "promoted", "rolled_back", "retired")
LIFECYCLE_ROLES: tuple[str, ...] = ("stable", "canary", "shadow")
LIFECYCLE_REASONS: tuple[str, ...] = (
    "empty_value",
    "invalid_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "invalid_reference",
    "field_not_for_event",
)
CLI_EVENT_NAMES: dict[str, str] = {
    "deployed": "deployed",
    "promoted": "promoted",
    "rolled-back": "rolled_back",
    "retired": "retired",
}
"""The CLI's spelling of each event (``driftline lifecycle rolled-back``) -> the contract's."""

MAX_NAME = 256
"""Characters of ``model`` and ``version`` at most (they become metric labels)."""
MAX_ACTOR = 256
MAX_REASON = 1024
MAX_TRIGGER = 256
MAX_PATH = 4096
MAX_FROM_STREAM = 1_000_000
"""Events of a ``from_stream`` reference at most (the limit of ``reference.size``)."""
MAX_DETAIL = 300
"""Characters of a dead letter's detail at most (the decoder's message can quote a value)."""

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]

# Which optional fields each event takes (role is required where it is taken).
_TAKES: dict[str, frozenset[str]] = {
    "deployed": frozenset({"role", "traffic_share", "reference"}),
    "promoted": frozenset({"reference"}),
    "rolled_back": frozenset(),
    "retired": frozenset(),
}


class Reference(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Where a version's reference comes from: exactly one of ``path`` (a JSONL or CSV
    file the service reads) and ``from_stream`` (the version's first N events)."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH)] | None = None
    from_stream: Annotated[int, msgspec.Meta(ge=1, le=MAX_FROM_STREAM)] | None = None

    @property
    def kind(self) -> str:
        """``path`` or ``from_stream``."""
        return "path" if self.path is not None else "from_stream"


class LifecycleEvent(msgspec.Struct, omit_defaults=True, frozen=True, gc=False):
    """One lifecycle event (see the module docstring for the contract)."""

    model: _Name
    version: _Name
    event: Literal["deployed", "promoted", "rolled_back", "retired"]
    ts: float
    role: Literal["stable", "canary", "shadow"] | None = None
    traffic_share: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    reference: Reference | None = None
    actor: Annotated[str, msgspec.Meta(max_length=MAX_ACTOR)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)] | None = None
    trigger: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TRIGGER)] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON form (absent optional fields left out)."""
        return msgspec.to_builtins(self)


class LifecycleContractError(ContractError):
    """A lifecycle event breaks the contract.

    Attributes
    ----------
    reason
        One of :data:`LIFECYCLE_REASONS`.
    field
        The field concerned (``reference.from_stream`` for a nested one), or None when
        the record as a whole is wrong (not JSON, not an object).
    detail
        What is wrong, at most :data:`MAX_DETAIL` characters.
    """

    def __init__(self, reason: str, field: str | None, detail: str) -> None:
        super().__init__(reason, detail)
        self.field = field


_DECODER = msgspec.json.Decoder(LifecycleEvent)
_ENCODER = msgspec.json.Encoder()
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def _violation(exc: Exception, raw: bytes) -> LifecycleContractError:
    """The reason code, field and detail of a record the typed decoder refused."""
    if isinstance(exc, RecursionError):
        return LifecycleContractError("invalid_json", None, "the JSON text is nested too deeply to decode")
    msg = str(exc)
    if not isinstance(exc, msgspec.ValidationError):
        return LifecycleContractError("invalid_json", None, _cut(msg))
    try:  # the typed decoder stops at the first wrong type, before a syntax error further on
        msgspec.json.decode(raw)
    except msgspec.DecodeError as syntax:
        return LifecycleContractError("invalid_json", None, _cut(str(syntax)))
    except RecursionError:
        return LifecycleContractError("invalid_json", None, "the JSON text is nested too deeply to decode")
    at = _AT.search(msg)
    path = at.group(1) if at else None
    msg = _AT.sub("", msg)  # the field is reported on its own
    missing = _MISSING.match(msg)
    if missing is not None:
        name = missing.group(1)
        name = f"{path}.{name}" if path else name
        reason = "invalid_reference" if name.startswith("reference") else "missing_field"
        return LifecycleContractError(reason, name, _cut(msg))
    if path is None and msg.startswith("Expected `object`"):
        return LifecycleContractError("not_an_object", None, _cut(msg))
    if path is not None and path.startswith("reference"):
        return LifecycleContractError("invalid_reference", path, _cut(msg))
    if msg.startswith("Expected `") and ", got `" in msg:
        return LifecycleContractError("wrong_type", path, _cut(msg))
    # a constraint (length, range), an enum value or a number beyond float64
    return LifecycleContractError("invalid_value", path, _cut(msg))


def _check(event: LifecycleEvent) -> LifecycleEvent:
    """What msgspec's types cannot say: finite times, which fields each event takes."""
    if not math.isfinite(event.ts):
        raise LifecycleContractError("invalid_value", "ts", "ts must be a finite number (epoch seconds)")
    takes = _TAKES[event.event]
    if event.event == "deployed" and event.role is None:
        raise LifecycleContractError(
            "field_not_for_event", "role", "a deployed event needs role: stable, canary or shadow"
        )
    for name in ("role", "traffic_share", "reference"):
        if name not in takes and getattr(event, name) is not None:
            raise LifecycleContractError(
                "field_not_for_event",
                name,
                f"{name} is not taken by a {event.event} event (only by "
                + (" and ".join(e for e, t in _TAKES.items() if name in t))
                + ")",
            )
    ref = event.reference
    if ref is not None and (ref.path is None) == (ref.from_stream is None):
        raise LifecycleContractError(
            "invalid_reference", "reference", 'reference must be exactly one of {"path": FILE} and {"from_stream": N}'
        )
    return event


def _decode_value(raw: bytes | None) -> LifecycleEvent:
    if not raw:
        raise LifecycleContractError("empty_value", None, "the record has no value")
    try:
        event = _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:  # ValidationError included
        raise _violation(exc, raw) from None
    return _check(event)


def decode_lifecycle(record: RawRecord) -> LifecycleEvent | DeadLetter:
    """One record of the lifecycle topic (or a replay file): its event, or a dead letter
    with the original bytes, a reason code of :data:`LIFECYCLE_REASONS` and the detail
    (``field: message``). Never raises for what the record holds."""
    try:
        return _decode_value(record.value)
    except LifecycleContractError as exc:
        detail = f"{exc.field}: {exc.detail}" if exc.field else exc.detail
        return dead_letter(record, exc.reason, _cut(detail))


@dataclass
class LifecycleBatch:
    """The lifecycle records of a batch, decoded: events in arrival order, each with its
    record (its source position goes to the audit trail), and the dead letters."""

    events: list[LifecycleEvent] = field(default_factory=list)
    sources: list[RawRecord] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events)


def decode_lifecycle_batch(records: Iterable[RawRecord]) -> LifecycleBatch:
    """:func:`decode_lifecycle` over a batch: every record lands either among the events
    or among the dead letters, in order. Lifecycle events are few (one per release
    step), so there is no fast path."""
    out = LifecycleBatch()
    for rec in records:
        result = decode_lifecycle(rec)
        if isinstance(result, DeadLetter):
            out.dead_letters.append(result)
        else:
            out.events.append(result)
            out.sources.append(rec)
    return out


def validate_lifecycle(value: dict[str, Any]) -> LifecycleEvent:
    """Check a lifecycle event given as Python values against the contract, exactly as a
    record of the topic is checked (the CLI validates with it before producing).

    Raises
    ------
    LifecycleContractError
        Naming the reason, the field and what was expected.
    """
    try:
        raw = _ENCODER.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:  # a value JSON cannot hold (NaN is encoded as null)
        raise LifecycleContractError("wrong_type", None, _cut(str(exc))) from None
    return _decode_value(raw)


def encode_lifecycle(event: LifecycleEvent) -> bytes:
    """The record value of ``event``: compact JSON, absent optional fields left out."""
    return _ENCODER.encode(event)


def lifecycle_key(event: LifecycleEvent) -> bytes:
    """The record key of ``event``: its model, so that it lands on the partition of the
    model's predictions and feedback."""
    return event.model.encode("utf-8")


_TS_OF = msgspec.json.Decoder(dict[str, Any])


def _line_ts(line: bytes) -> float | None:
    try:
        ts = _TS_OF.decode(line).get("ts")
    except (msgspec.DecodeError, RecursionError):
        return None
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts)
    return None


def read_lifecycle_file(path: str | Path, topic: str) -> Iterator[tuple[float, int, Record]]:
    """The records of a JSONL file of lifecycle events, for a replay.

    Yields ``(ts, line number, record)`` per non-empty line, as the prediction and
    feedback files of a replay are read (``driftline.monitor.sources.JsonlSource``):
    the record's topic is ``topic`` (the configured lifecycle topic, so the pipeline
    routes it as it would a Kafka record), partition 0, offset the line number, no
    timestamp (-1) and no key. A line without a readable ``ts`` keeps the previous
    line's, so that the file's order is kept; it still becomes a record (and a dead
    letter). Lines are read one at a time: memory does not grow with the file.

    To merge it with the other files by event time, key it ``(ts, -1, line)``: at equal
    times a lifecycle event then comes before the predictions, so that a version
    deployed at ``ts`` is known when its first prediction of ``ts`` arrives.

    Raises
    ------
    SourceError
        When the file cannot be opened (before the first record is yielded).
    """
    p = Path(path)
    if not p.is_file():
        raise SourceError(f"lifecycle file {str(p)!r} does not exist or is not a file")
    try:
        fh = open(p, "rb")  # noqa: SIM115 - the generator below owns and closes it
    except OSError as exc:
        raise SourceError(f"cannot read lifecycle file {str(p)!r}: {exc.strerror}") from None
    return _records(fh, topic)


def _records(fh: Any, topic: str) -> Iterator[tuple[float, int, Record]]:
    last_ts = float("-inf")
    with fh:
        for n, line in enumerate(fh):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            ts = _line_ts(line)
            if ts is not None:
                last_ts = ts
            yield last_ts, n, Record(topic, 0, n, -1, None, line)
