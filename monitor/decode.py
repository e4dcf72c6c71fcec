"""Decoding: raw records to per-model columns, bad records to dead letters.

Two steps, both batch-at-a-time:

1. :func:`decode_batch` parses each record once (orjson) and checks the event contract
   of ``../shared/ARCHITECTURE.md`` on its top-level fields. Records that break it
   become :class:`DeadLetter` (original bytes + a fixed reason code); the others are
   grouped by model into :class:`Predictions` / :class:`Feedback` with plain Python
   lists and numpy arrays.
2. :func:`columnarize` turns one model's feature dicts into a float64 matrix of
   numeric features and an int64 matrix of categorical codes, given the model's
   :class:`Schema`. A value of the wrong type rejects its row (reason
   ``wrong_type``), never the batch.

Reason codes (the ``reason`` label of ``driftline_invalid_events_total``):
``invalid_json``, ``not_an_object``, ``missing_field``, ``wrong_type``, ``empty_value``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import orjson

__all__ = [
    "RawRecord",
    "DeadLetter",
    "Predictions",
    "Feedback",
    "DecodedBatch",
    "Schema",
    "decode_batch",
    "columnarize",
    "REASONS",
]

REASONS = ("invalid_json", "not_an_object", "missing_field", "wrong_type", "empty_value")


class RawRecord(Protocol):
    """What a source yields; kafka-python's ConsumerRecord has these attributes."""

    topic: str
    partition: int
    offset: int
    timestamp: int  # epoch milliseconds
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class FileRecord:
    """A record read from a JSONL file (the replay source)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class DeadLetter:
    """A record that broke the contract: the original bytes and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        value = self.value or b""
        try:
            text: str | None = value.decode("utf-8")
            b64 = None
        except UnicodeDecodeError:
            import base64

            text, b64 = None, base64.b64encode(value).decode("ascii")
        return {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key.decode("utf-8", "replace") if self.key else None,
            "value": text,
            "value_base64": b64,
        }


@dataclass
class Predictions:
    """One model's prediction events of a batch, in arrival order."""

    model: str
    versions: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    prediction: list[Any] = field(default_factory=list)
    scores: list[dict[str, float] | None] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    sources: list[tuple[str, int, int, bytes | None, bytes | None]] = field(default_factory=list)
    """(topic, partition, offset, key, value) of each row, to dead-letter it later."""

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, keep: np.ndarray) -> "Predictions":
        """The rows where ``keep`` is True."""
        idx = np.flatnonzero(keep).tolist()
        out = Predictions(self.model)
        for name in ("versions", "ids", "ts", "features", "prediction", "scores", "latency_ms", "sources"):
            src = getattr(self, name)
            setattr(out, name, [src[i] for i in idx])
        return out


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

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class DecodedBatch:
    predictions: dict[str, Predictions] = field(default_factory=dict)
    feedback: dict[str, Feedback] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    n_predictions: int = 0
    n_feedback: int = 0


_NUMBER = (int, float)


def _is_number(v: Any) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool)


def _id_str(v: Any) -> str | None:
    if isinstance(v, str):
        return v if v else None
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


def decode_batch(
    records: Iterable[RawRecord], predictions_topic: str, feedback_topic: str
) -> DecodedBatch:
    """Parse and check a batch of raw records.

    Records of ``predictions_topic`` are prediction events, of ``feedback_topic``
    feedback events. Every record either lands in exactly one group or becomes a
    dead letter; nothing is dropped silently.
    """
    out = DecodedBatch()
    loads = orjson.loads
    for rec in records:
        raw = rec.value
        try:
            event = loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            out.dead_letters.append(_dead(rec, "invalid_json", str(exc)))
            continue
        if not isinstance(event, dict):
            reason = "empty_value" if raw is None or raw == b"" else "not_an_object"
            out.dead_letters.append(_dead(rec, reason, f"got {type(event).__name__}"))
            continue
        if rec.topic == feedback_topic:
            problem = _add_feedback(out, event, rec)
        else:
            problem = _add_prediction(out, event, rec)
        if problem is not None:
            out.dead_letters.append(_dead(rec, *problem))
    return out


def _dead(rec: RawRecord, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(rec.topic, rec.partition, rec.offset, rec.key, rec.value, reason, detail)


def _common(event: dict[str, Any], rec: RawRecord) -> tuple[str, str, float] | tuple[str, str]:
    model = event.get("model")
    if model is None:
        return ("missing_field", "model is required")
    if not isinstance(model, str) or not model:
        return ("wrong_type", "model must be a non-empty string")
    if "id" not in event:
        return ("missing_field", "id is required")
    pid = _id_str(event["id"])
    if pid is None:
        return ("wrong_type", "id must be a non-empty string or an integer")
    ts = event.get("ts")
    if ts is None:
        ts = rec.timestamp / 1000.0 if rec.timestamp is not None and rec.timestamp >= 0 else 0.0
    elif not _is_number(ts) or not math.isfinite(ts):
        return ("wrong_type", "ts must be a finite number (epoch seconds)")
    return (model, pid, float(ts))


def _add_prediction(out: DecodedBatch, event: dict[str, Any], rec: RawRecord) -> tuple[str, str] | None:
    common = _common(event, rec)
    if len(common) == 2:
        return common  # type: ignore[return-value]
    model, pid, ts = common  # type: ignore[misc]
    features = event.get("features")
    if features is None:
        return ("missing_field", "features is required")
    if not isinstance(features, dict):
        return ("wrong_type", "features must be an object")
    version = event.get("version", "default")
    if not isinstance(version, str) or not version:
        return ("wrong_type", "version must be a non-empty string")
    prediction = event.get("prediction")
    if prediction is not None and not isinstance(prediction, (int, float, str, bool)):
        return ("wrong_type", "prediction must be a number, a string or a boolean")
    scores = event.get("scores")
    if scores is not None and not (
        isinstance(scores, dict) and all(_is_number(v) for v in scores.values())
    ):
        return ("wrong_type", "scores must be an object of numbers")
    latency = event.get("latency_ms")
    if latency is None:
        latency = math.nan
    elif not _is_number(latency):
        return ("wrong_type", "latency_ms must be a number")
    group = out.predictions.get(model)
    if group is None:
        group = out.predictions[model] = Predictions(model)
    group.versions.append(version)
    group.ids.append(pid)
    group.ts.append(ts)
    group.features.append(features)
    group.prediction.append(prediction)
    group.scores.append(scores)
    group.latency_ms.append(float(latency))
    group.sources.append((rec.topic, rec.partition, rec.offset, rec.key, rec.value))
    out.n_predictions += 1
    return None


def _add_feedback(out: DecodedBatch, event: dict[str, Any], rec: RawRecord) -> tuple[str, str] | None:
    common = _common(event, rec)
    if len(common) == 2:
        return common  # type: ignore[return-value]
    model, pid, ts = common  # type: ignore[misc]
    if "label" not in event or event["label"] is None:
        return ("missing_field", "label is required")
    label = event["label"]
    if not isinstance(label, (int, float, str, bool)):
        return ("wrong_type", "label must be a number, a string or a boolean")
    prediction = event.get("prediction")
    if prediction is not None and not isinstance(prediction, (int, float, str, bool)):
        return ("wrong_type", "prediction must be a number, a string or a boolean")
    version = event.get("version")
    if version is not None and (not isinstance(version, str) or not version):
        return ("wrong_type", "version must be a non-empty string")
    scores = event.get("scores")
    if scores is not None and not (
        isinstance(scores, dict) and all(_is_number(v) for v in scores.values())
    ):
        return ("wrong_type", "scores must be an object of numbers")
    group = out.feedback.get(model)
    if group is None:
        group = out.feedback[model] = Feedback(model)
    group.ids.append(pid)
    group.ts.append(ts)
    group.labels.append(label)
    group.prediction.append(prediction)
    group.versions.append(version)
    group.scores.append(scores)
    out.n_feedback += 1
    return None


# ---- columns -----------------------------------------------------------------------------


@dataclass
class Schema:
    """A model's features: which are numeric, which categorical, and the category
    vocabularies (value -> code) learned from the reference."""

    numeric: list[str]
    categorical: list[str]
    vocabularies: list[dict[str, int]]

    def to_state(self) -> dict[str, Any]:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical),
                "vocabularies": [dict(v) for v in self.vocabularies]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Schema":
        return cls(list(state["numeric"]), list(state["categorical"]),
                   [dict(v) for v in state["vocabularies"]])

    @classmethod
    def infer(
        cls,
        features: Sequence[dict[str, Any]],
        numeric: list[str] | None,
        categorical: list[str] | None,
        ignore: Sequence[str],
        max_features: int,
    ) -> tuple["Schema", int]:
        """Infer the schema from reference events; returns it and how many features
        were dropped by the ``max_features`` cap.

        A feature is numeric when every non-null value is a number or a boolean,
        categorical otherwise; explicit lists win over inference.
        """
        ignored = set(ignore)
        seen: dict[str, bool] = {}  # name -> all numeric so far (insertion = first seen)
        for f in features:
            for k, v in f.items():
                if k in ignored:
                    continue
                if isinstance(v, str):
                    seen[k] = False
                else:  # numbers and booleans; null, lists and objects say nothing
                    seen.setdefault(k, True)
        names = list(seen)
        if numeric is not None or categorical is not None:
            num = list(numeric or [])
            cat = list(categorical or [])
            given = set(num) | set(cat)
            for n in names:
                if n not in given:
                    (num if seen[n] else cat).append(n)
        else:
            num = [n for n in names if seen[n]]
            cat = [n for n in names if not seen[n]]
        dropped = max(0, len(num) + len(cat) - max_features)
        if dropped:
            keep = set((num + cat)[:max_features])
            num = [n for n in num if n in keep]
            cat = [n for n in cat if n in keep]
        vocabularies = []
        for name in cat:
            values = sorted({_category(f.get(name)) for f in features} - {None})
            vocabularies.append({v: i for i, v in enumerate(values)})
        return cls(num, cat, vocabularies), dropped


def _category(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def columnarize(
    features: Sequence[dict[str, Any]], schema: Schema
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One model's feature dicts to columns.

    Returns
    -------
    numeric
        float64 (n, len(schema.numeric)); missing values are NaN.
    codes
        int64 (n, len(schema.categorical)); known categories 0..K-1, unseen K, missing -1.
    bad_rows
        bool (n,): rows holding a value of the wrong type: for a numeric feature a
        string that is not a number, an object or a list; for a categorical one an
        object or a list.
    unexpected
        How many feature values had a name outside the schema (counted, not used).
        Counted exactly whenever the number of keys differs from the schema's width;
        a row that both lacks one feature and adds another is not seen.

    Notes
    -----
    Numeric strings such as ``"1.5"`` are accepted as numbers (numpy's conversion).
    """
    n = len(features)
    numeric = np.empty((n, len(schema.numeric)), dtype=np.float64)
    bad = np.zeros(n, dtype=bool)
    for j, name in enumerate(schema.numeric):
        col = [f.get(name) for f in features]
        try:
            numeric[:, j] = np.array(col, dtype=np.float64)
        except (TypeError, ValueError):
            for i, v in enumerate(col):  # rare: only a column that holds a bad value
                try:
                    numeric[i, j] = np.float64(v) if v is not None else np.nan
                except (TypeError, ValueError):
                    numeric[i, j] = np.nan
                    bad[i] = True
    codes = np.empty((n, len(schema.categorical)), dtype=np.int64)
    for j, (name, vocab) in enumerate(zip(schema.categorical, schema.vocabularies)):
        other = len(vocab)
        get = vocab.get
        col = [f.get(name) for f in features]
        codes[:, j] = [-1 if v is None else get(v if isinstance(v, str) else _category(v), other) for v in col]
        for i in np.flatnonzero(codes[:, j] == other).tolist():  # rare: unseen values only
            if isinstance(col[i], (dict, list)):
                bad[i] = True
                codes[i, j] = -1
    width = len(schema.numeric) + len(schema.categorical)
    unexpected = 0
    if sum(map(len, features)) != n * width:  # the common case skips the exact count
        known = set(schema.numeric) | set(schema.categorical)
        unexpected = sum(1 for f in features for k in f if k not in known)
    return numeric, codes, bad, unexpected
