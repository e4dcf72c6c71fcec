"""Decoding a batch: raw records to per-model groups of events, bad records to dead letters.

:func:`decode_batch` parses each record once against the event contract
(:mod:`driftline.monitor.contract`: msgspec structs, types checked in C). Records that
break it become :class:`~driftline.monitor.contract.DeadLetter` (original bytes + a
fixed reason code); the others are grouped by model into :class:`Predictions` /
:class:`Feedback` of a :class:`DecodedBatch`, with plain Python lists and numpy arrays.
Records of the lifecycle topic, when one is given, are split off first and decoded
against the lifecycle contract (:mod:`driftline.monitor.lifecycle`) into
``DecodedBatch.lifecycle``.

:class:`BatchDecoder` does the same and also reads the feature columns
(:mod:`driftline.monitor.schema`) of every model whose schema it was given, in one
msgspec pass when the batch is clean. Every source decodes its batches with one (the
Kafka consumer process runs one too), so that the service always gets a
:class:`DecodedBatch`.

The names of the contract and the schema modules that were defined here before the
split are re-exported, so ``from driftline.monitor.decode import Schema`` keeps working.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import msgspec
import numpy as np

from driftline.monitor.contract import (
    REASONS,
    DeadLetter,
    FeedbackEvent,
    PredictionEvent,
    RawRecord,
    Record,
    check_common,
    check_feedback,
    check_prediction,
    dead_letter,
    decode_each,
    decode_events,
    prediction_event_type,
)
from driftline.monitor.schema import (
    TYPE_SHARE,
    Schema,
    bad_numeric_predictions,
    columnarize,
    columnarize_raw,
    decode_features,
    feature_columns,
    infer_feature_types,
    infer_prediction_kind,
)

if TYPE_CHECKING:  # pragma: no cover - typing only (lifecycle imports this module)
    from driftline.monitor.lifecycle import LifecycleEvent

__all__ = [
    "Predictions",
    "Feedback",
    "DecodedBatch",
    "Columns",
    "BatchDecoder",
    "decode_batch",
    "split_lifecycle",
    # re-exported from driftline.monitor.contract
    "RawRecord",
    "Record",
    "DeadLetter",
    "REASONS",
    "dead_letter",
    "PredictionEvent",
    "FeedbackEvent",
    # re-exported from driftline.monitor.schema
    "Schema",
    "TYPE_SHARE",
    "columnarize",
    "columnarize_raw",
    "decode_features",
    "infer_feature_types",
    "infer_prediction_kind",
    "bad_numeric_predictions",
]


@dataclass
class Predictions:
    """One model's prediction events of a batch, in arrival order."""

    model: str
    versions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    features: list[Any] = field(default_factory=list)
    """Each row's ``features`` object as raw JSON (``msgspec.Raw``): a model's features
    are decoded once, against its schema, by :func:`columnarize_raw`."""
    prediction: list[Any] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    sources: list[RawRecord] = field(default_factory=list)
    """The record of each row, to dead-letter it later."""
    columns: Columns | None = None
    """The rows' feature columns when they were decoded with the model's schema where
    the batch was decoded (:class:`BatchDecoder`); ``features`` and ``sources`` are
    then empty."""
    first_position: str | None = None
    """``topic/partition/offset`` of the first row's record (a new model's origin)."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Columns:
    """One model's feature columns for a batch (see :func:`columnarize_raw`), decoded
    with the schema of the given fingerprint; ``bad_sources`` holds the records of the
    rows marked in ``bad``, in order, to dead-letter them."""

    fingerprint: str
    numeric: np.ndarray
    codes: np.ndarray
    bad: np.ndarray
    bad_sources: list[RawRecord]


@dataclass
class Feedback:
    """One model's feedback events of a batch, in arrival order."""

    model: str
    ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)  # None where absent
    versions: list[str | None] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    sources: list[RawRecord] = field(default_factory=list)
    """The record of each row, to dead-letter it later (events of a model beyond
    ``max_models``) and to place a new model's origin."""

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DecodedBatch:
    """One batch of records, decoded: what every source hands the service."""

    predictions: dict[str, Predictions] = field(default_factory=dict)
    feedback: dict[str, Feedback] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    lifecycle: list[LifecycleEvent] = field(default_factory=list)
    """Model lifecycle events of the batch (:mod:`driftline.monitor.lifecycle`), in
    arrival order; the invalid ones are among ``dead_letters``."""
    lifecycle_sources: list[RawRecord] = field(default_factory=list)
    """The record of each lifecycle event (its source position goes to the audit trail)."""
    n_predictions: int = 0
    n_feedback: int = 0
    n_records: int = 0
    """Records the batch was decoded from (events plus dead letters)."""

    def __len__(self) -> int:
        """Records the batch was decoded from: an empty poll gives an empty (false) batch."""
        return self.n_records


def decode_batch(
    records: Iterable[RawRecord],
    predictions_topic: str,
    feedback_topic: str,
    lifecycle_topic: str | None = None,
) -> DecodedBatch:
    """Parse and check a batch of raw records.

    Records of ``lifecycle_topic`` (when given) are lifecycle events, decoded with
    :func:`driftline.monitor.lifecycle.decode_lifecycle_batch`; records of
    ``feedback_topic`` are feedback events, all others prediction events. Every record
    either lands in exactly one group or becomes a dead letter; nothing is dropped
    silently.
    """
    recs = list(records)
    out = DecodedBatch(n_records=len(recs))
    recs = split_lifecycle(out, recs, lifecycle_topic)
    pred_recs, fb_recs = _split(recs, feedback_topic)
    if pred_recs:
        events, kept, dead = decode_events(pred_recs, PredictionEvent)
        out.dead_letters += dead
        _group_predictions(out, events, kept)
    _decode_feedback(out, fb_recs)
    return out


def split_lifecycle(out: DecodedBatch, recs: list[RawRecord], lifecycle_topic: str | None) -> list[RawRecord]:
    """Decode the records of ``lifecycle_topic`` into ``out`` (events, or dead letters
    with their reason) and return the others.

    They are taken off before anything else is decoded: the prediction decoder takes
    every record that is not feedback for a prediction, and would dead-letter a
    lifecycle event as a prediction without ``id``.
    """
    if lifecycle_topic is None or not any(r.topic == lifecycle_topic for r in recs):
        return recs
    from driftline.monitor.lifecycle import decode_lifecycle_batch  # it imports this module

    decoded = decode_lifecycle_batch(r for r in recs if r.topic == lifecycle_topic)
    out.lifecycle += decoded.events
    out.lifecycle_sources += decoded.sources
    out.dead_letters += decoded.dead_letters
    return [r for r in recs if r.topic != lifecycle_topic]


def _split(recs: list[RawRecord], feedback_topic: str) -> tuple[list[RawRecord], list[RawRecord]]:
    fb_recs = [r for r in recs if r.topic == feedback_topic]
    return ([r for r in recs if r.topic != feedback_topic] if fb_recs else recs), fb_recs


def _decode_feedback(out: DecodedBatch, fb_recs: list[RawRecord]) -> None:
    if fb_recs:
        events, kept, dead = decode_events(fb_recs, FeedbackEvent)
        out.dead_letters += dead
        _group_feedback(out, events, kept)


def _by_model(
    out: DecodedBatch,
    events: list[Any],
    recs: list[RawRecord],
    extra: Callable[[Any], str | None] | None = None,
    extra_clean: Callable[[list[Any]], bool] | None = None,
) -> dict[str, tuple[list[Any], list[RawRecord]]]:
    """Group events by model, dead-lettering those that fail the residual checks
    (``extra`` per event; ``extra_clean``: the same check batch-wise, True when no event
    fails it)."""
    models = list(map(_MODEL, events))
    distinct = set(models)
    ids = set(map(_ID, events))
    clean = (
        "" not in distinct
        and "" not in ids
        and bool not in set(map(type, ids))
        and not np.isinf(np.array(list(map(_TS, events)), dtype=np.float64)).any()
        and (extra is None or (extra_clean(events) if extra_clean is not None else not any(map(extra, events))))
    )
    if clean:  # the common case: every check above held for every event, none to run again
        return {models[0]: (events, recs)} if len(distinct) == 1 else _group(models, events, recs)
    kept_events, kept_recs = [], []
    for e, r in zip(events, recs, strict=True):
        problem = check_common(e) or (extra(e) if extra is not None else None)
        if problem is not None:
            out.dead_letters.append(dead_letter(r, "wrong_type", problem))
        else:
            kept_events.append(e)
            kept_recs.append(r)
    return _group([e.model for e in kept_events], kept_events, kept_recs)


def _group(keys: list[str], events: list[Any], recs: list[RawRecord]) -> dict[str, tuple[list[Any], list[RawRecord]]]:
    """Events and their records by key (a model), each group in arrival order."""
    groups: dict[str, tuple[list[Any], list[RawRecord]]] = {}
    for key, e, r in zip(keys, events, recs, strict=True):
        g = groups.get(key)
        if g is None:
            g = groups[key] = ([], [])
        g[0].append(e)
        g[1].append(r)
    return groups


_ID, _VERSION, _TS, _PREDICTION, _SCORES, _LATENCY, _FEATURES, _LABEL, _MODEL = map(
    operator.attrgetter, ("id", "version", "ts", "prediction", "scores", "latency_ms", "features", "label", "model")
)
_FIRST_BYTE = operator.itemgetter(0)
_VIEW: Callable[[Any], memoryview] = memoryview  # typed once: mypy cannot infer map(memoryview, ...)


def _ts(events: list[Any], recs: list[RawRecord]) -> list[float]:
    """Event times: the event's ``ts``, else the record's timestamp (ms), else 0."""
    ts = list(map(_TS, events))
    if None in ts:
        ts = [
            t if t is not None else (r.timestamp / 1000.0 if r.timestamp is not None and r.timestamp >= 0 else 0.0)
            for t, r in zip(ts, recs, strict=True)
        ]
    return ts


def _ids(events: list[Any]) -> list[str]:
    ids = list(map(_ID, events))
    if set(map(type, ids)) != {str}:  # integer ids become their text
        ids = [i if type(i) is str else str(i) for i in ids]
    return ids


def _predictions(model: str, evs: list[Any], rs: list[RawRecord], **rest: Any) -> Predictions:
    """One model's rows of decoded prediction events (``rest``: features and sources, or
    columns)."""
    latency = list(map(_LATENCY, evs))
    if None in latency:
        latency = [math.nan if v is None else v for v in latency]
    versions = list(map(_VERSION, evs))
    if versions and versions.count(versions[0]) == len(versions):
        versions = [versions[0]] * len(versions)  # one object: later comparisons are by identity
    return Predictions(
        model,
        versions=versions,
        ids=_ids(evs),
        ts=_ts(evs, rs),
        prediction=list(map(_PREDICTION, evs)),
        scores=list(map(_SCORES, evs)),
        latency_ms=latency,
        first_position=f"{rs[0].topic}/{rs[0].partition}/{rs[0].offset}" if rs else None,
        **rest,
    )


def _predictions_clean(events: list[Any]) -> bool:
    """:func:`~driftline.monitor.contract.check_prediction` batch-wise, at C speed: True
    when every event's ``features`` is an object and its version is not empty."""
    first_bytes = set(map(_FIRST_BYTE, map(_VIEW, map(_FEATURES, events))))
    return first_bytes <= {0x7B} and "" not in set(map(_VERSION, events))  # 0x7B: "{"


def _feedback_clean(events: list[Any]) -> bool:
    """:func:`~driftline.monitor.contract.check_feedback` batch-wise: no empty version."""
    return "" not in set(map(_VERSION, events))


def _group_predictions(out: DecodedBatch, events: list[Any], recs: list[RawRecord]) -> None:
    for model, (evs, rs) in _by_model(out, events, recs, check_prediction, _predictions_clean).items():
        group = out.predictions[model] = _predictions(model, evs, rs, features=list(map(_FEATURES, evs)), sources=rs)
        out.n_predictions += len(group)


def _group_feedback(out: DecodedBatch, events: list[FeedbackEvent], recs: list[RawRecord]) -> None:
    for model, (evs, rs) in _by_model(out, events, recs, check_feedback, _feedback_clean).items():
        group = out.feedback[model] = Feedback(
            model,
            ids=_ids(evs),
            ts=_ts(evs, rs),
            labels=list(map(_LABEL, evs)),
            prediction=list(map(_PREDICTION, evs)),
            versions=list(map(_VERSION, evs)),
            scores=list(map(_SCORES, evs)),
            sources=rs,
        )
        out.n_feedback += len(group)


class BatchDecoder:
    """:func:`decode_batch`, plus the feature columns of every model whose schema it
    was given (:meth:`set_schemas`).

    Every source decodes with one (:mod:`driftline.monitor.sources`), the Kafka
    consumer process too, so that decoding overlaps detection in the service process.
    Schemas are learned by the engine from each model's reference and shared once
    (:class:`~driftline.monitor.sources.SchemaSink`); a batch decoded before its
    model's schema was shared carries raw features, which the engine decodes itself.

    Once every model of a batch has a schema, the batch is parsed in one pass into
    structs made for those schemas (a union tagged by ``model``), features included.
    Any record that does not fit (a bad record, a model without a schema yet) sends the
    batch down the general path, which finds it.
    """

    def __init__(self, predictions_topic: str, feedback_topic: str, lifecycle_topic: str | None = None) -> None:
        self.predictions_topic = predictions_topic
        self.feedback_topic = feedback_topic
        self.lifecycle_topic = lifecycle_topic
        self._schemas: dict[str, tuple[str, Schema]] = {}
        self._typed: tuple[Any, dict[type, str]] | None = None

    def set_schemas(self, states: dict[str, dict[str, Any]]) -> None:
        """Schemas by model, as :meth:`Schema.to_state` gives them."""
        for model, state in states.items():
            schema = Schema.from_state(state)
            self._schemas[model] = (schema.fingerprint(), schema)
        self._typed = None

    def decode(self, records: Iterable[RawRecord]) -> DecodedBatch:
        recs = list(records)
        if self._schemas and recs:
            out = DecodedBatch(n_records=len(recs))
            rest = split_lifecycle(out, recs, self.lifecycle_topic)
            pred_recs, fb_recs = _split(rest, self.feedback_topic)
            if pred_recs and self._decode_typed(pred_recs, out):
                _decode_feedback(out, fb_recs)
                return self._known_feedback(out)
        out = decode_batch(recs, self.predictions_topic, self.feedback_topic, self.lifecycle_topic)
        for model, p in out.predictions.items():
            known = self._schemas.get(model)
            if known is None:
                continue
            fingerprint, schema = known
            num, codes, bad = columnarize_raw(p.features, schema)
            if schema.prediction == "numeric":  # as the typed pass, whose struct wants a number
                bad |= bad_numeric_predictions(p.prediction)
            bad_sources = [p.sources[i] for i in np.flatnonzero(bad).tolist()]
            p.columns = Columns(fingerprint, num, codes, bad, bad_sources)
            p.features, p.sources = [], []
        return self._known_feedback(out)

    def _known_feedback(self, out: DecodedBatch) -> DecodedBatch:
        """Feedback of models with a schema needs no records: the engine knows them (the
        records are kept for new models, whose events may be refused by ``max_models``);
        fewer bytes to hand from the consumer process to the service."""
        for model, fb in out.feedback.items():
            if model in self._schemas:
                fb.sources = []
        return out

    def _decoder(self) -> tuple[Any, dict[type, str]]:
        if self._typed is None:
            types = {_typed_prediction(model, schema): model for model, (_, schema) in self._schemas.items()}
            # the empty model is not a model: its struct exists so that a record without
            # "model" fails to decode (one tagged struct alone takes a missing tag)
            union = Union[tuple(types) + (_EmptyModel,)]  # type: ignore[valid-type]  # noqa: UP007 - of a tuple
            self._typed = (msgspec.json.Decoder(union), types)  # one record at a time: decode_each
        return self._typed

    def _decode_typed(self, recs: list[RawRecord], out: DecodedBatch) -> bool:
        """The one-pass path; False (``out`` untouched) when the batch needs the other."""
        decoder, types = self._decoder()
        events = decode_each(decoder, [r.value for r in recs])
        if events is None:
            return False
        kinds = set(map(type, events))
        if _EmptyModel in kinds:
            return False
        if len(kinds) == 1:
            groups = {types[kinds.pop()]: (events, recs)}
        else:
            groups = _group([types[type(e)] for e in events], events, recs)
        built = []
        for model, (evs, rs) in groups.items():
            p = _predictions(model, evs, rs)
            if "" in p.ids or "" in p.versions or np.isinf(np.array(p.ts, dtype=np.float64)).any():
                return False  # the general path dead-letters them
            built.append((p, evs))
        for p, evs in built:
            fingerprint, schema = self._schemas[p.model]
            num, codes = feature_columns(list(map(_FEATURES, evs)), schema)
            p.columns = Columns(fingerprint, num, codes, np.zeros(len(evs), dtype=bool), [])
            out.predictions[p.model] = p
            out.n_predictions += len(p)
        return True


class _EmptyModel(msgspec.Struct, tag_field="model", tag="", gc=False):
    pass


def _typed_prediction(model: str, schema: Schema) -> type:
    """A prediction event of ``model`` with its features as ``schema``'s struct (and a
    numeric prediction a number: msgspec's float takes integers, not booleans or
    strings, as :func:`bad_numeric_predictions`)."""
    prediction = float | None if schema.prediction == "numeric" else None
    return prediction_event_type(schema.features_type(), prediction, model=model)
