"""A model's reference: what identifies it, its events read from files, and what its
windows are compared with (the schema inferred from it and the references fitted on it).

Files hold past prediction events as JSONL or CSV.

JSONL: one prediction event per line (the event contract); lines of other models
are skipped when the file holds several. CSV: a header row; every column is a
feature except ``prediction`` (and ``model``, ``version``, ``id``, ``ts``, which are
ignored); empty cells are missing values, cells that parse as numbers are numbers.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from driftline.detectors.homogeneity import bucket_counts
from driftline.detectors.statistics import CategoricalReference, NumericReference
from driftline.monitor.config import ModelSettings
from driftline.monitor.decode import (
    Schema,
    bad_numeric_predictions,
    columnarize,
    infer_feature_types,
    infer_prediction_kind,
)
from driftline.monitor.encoding import Encoder
from driftline.monitor.exceptions import ReferenceLoadError

__all__ = [
    "AppendLog",
    "ReferenceData",
    "load_reference",
    "reference_fingerprint",
    "stream_fingerprint",
    "describe_fingerprint",
    "InferredSchema",
    "FittedReference",
    "infer_schema",
    "fit_reference",
]


@dataclass
class ReferenceData:
    """Reference events loaded from a file: feature dicts and predictions, and what
    identifies their source (kept in checkpoints: a changed reference is applied on
    restart)."""

    features: list[dict[str, Any]]
    prediction: list[Any]
    fingerprint: str = "given"


class AppendLog(list):
    """A list in a state dict whose items are never changed once added and which only
    grows until it is emptied or replaced: a stream reference's events while it fills.

    A plain list to everyone else (it decodes back as one). Checkpoints and the
    changelog (:mod:`~driftline.monitor.checkpoint`) store it in segments: a full
    segment is encoded, hashed and written once, and later checkpoints refer to it
    by its SHA-256, so that a checkpoint's cost follows what was added since the last
    one rather than the whole reference. They recognise an item they already encoded
    by its identity, which is why items must not be mutated (tuples of values that
    are not changed after they are added, as the engine's pending events are).

    Examples
    --------
    >>> log = AppendLog([(1, "a"), (2, "b")])
    >>> log == [(1, "a"), (2, "b")]
    True
    """

    __slots__ = ()


def stream_fingerprint(settings: ModelSettings) -> str:
    """What identifies a reference taken from the stream: its size."""
    return f"stream:{settings.reference.size}"


def describe_fingerprint(fingerprint: str) -> str:
    """A reference fingerprint for a log line (the digest shortened)."""
    kind, _, rest = fingerprint.partition(":")
    if kind == "file":
        path, size, digest = rest.rsplit(":", 2)
        return f"file {path}, {size} events, sha256 {digest[:12]}"
    return f"{kind} {rest}".strip()


_META = {"model", "version", "id", "ts", "prediction", "latency_ms", "scores"}


def _cell(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


# ---- reading ---------------------------------------------------------------------------------


def load_reference(path: Path, model: str, limit: int) -> ReferenceData:
    """Read at most ``limit`` reference events of ``model`` from ``path``.

    Raises
    ------
    ReferenceLoadError
        When the file cannot be read or holds no usable event, naming the file and line.
    """
    path = Path(path)
    features: list[dict[str, Any]] = []
    prediction: list[Any] = []
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    if row.get("model") not in (None, "", model):
                        continue
                    features.append({k: _cell(v) for k, v in row.items() if k not in _META})
                    prediction.append(_cell(row.get("prediction", "") or ""))
                    if len(features) >= limit:
                        break
        else:
            with open(path, "rb") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError as exc:
                        raise ReferenceLoadError(f"{path}:{n}: not valid JSON ({exc})") from None
                    if not isinstance(event, dict) or not isinstance(event.get("features"), dict):
                        raise ReferenceLoadError(f"{path}:{n}: expected a prediction event with a 'features' object")
                    if event.get("model", model) != model:
                        continue
                    features.append(event["features"])
                    prediction.append(event.get("prediction"))
                    if len(features) >= limit:
                        break
    except OSError as exc:
        raise ReferenceLoadError(f"cannot read reference file {path}: {exc.strerror}") from None
    if not features:
        raise ReferenceLoadError(f"reference file {path} holds no prediction events of model {model!r}")
    return ReferenceData(features, prediction, fingerprint=reference_fingerprint(path, limit))


def reference_fingerprint(path: Path, limit: int) -> str:
    """What identifies a file reference: its path, the number of events read and a
    digest of its content; a checkpoint keeps it, so that a changed file is applied
    on restart."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{Path(path).resolve()}:{limit}:{digest.hexdigest()}"


# ---- fitting ---------------------------------------------------------------------------------


class InferredSchema(NamedTuple):
    """A schema inferred from reference events, and those events as columns under it."""

    schema: Schema
    dropped_features: int
    """Features beyond ``max_features`` (folded into the overflow count)."""
    mixed_features: list[str]
    """Features (and ``prediction``) whose values mix numbers and strings, not monitored."""
    numeric: np.ndarray
    codes: np.ndarray
    bad: np.ndarray
    """Rows of the wrong type under the schema (dead letters)."""


@dataclass(frozen=True)
class FittedReference:
    """The references a model's windows are compared with."""

    num_ref: NumericReference
    cat_ref: CategoricalReference
    cat_counts: np.ndarray
    ref_missing: dict[str, float]
    pred_ref: NumericReference | CategoricalReference | None
    pred_counts: np.ndarray | None


def infer_schema(features: Sequence[dict[str, Any]], prediction: Sequence[Any], cfg: ModelSettings) -> InferredSchema:
    """Infer the schema (feature types, the prediction's kind) from reference events;
    returns it with their columns and the rows of the wrong type under it."""
    types = infer_feature_types(features, cfg.ignore_features)
    given = set(cfg.numeric_features or ()) | set(cfg.categorical_features or ())
    mixed = [n for n, t in types.items() if t == "mixed" and n not in given]
    schema, dropped = Schema.infer(
        features, cfg.numeric_features, cfg.categorical_features, cfg.ignore_features, cfg.max_features, types=types
    )
    kind = infer_prediction_kind(prediction)
    schema.prediction = kind if kind in ("numeric", "categorical") else None
    num, codes, bad = columnarize(features, schema)
    if kind == "numeric":
        bad |= bad_numeric_predictions(prediction)
    elif kind == "mixed":
        mixed.append("prediction")
    return InferredSchema(schema, dropped, mixed, num, codes, bad)


def fit_reference(
    num: np.ndarray, codes: np.ndarray, prediction: Sequence[Any], schema: Schema, pred_encoder: Encoder, psi_bins: int
) -> FittedReference:
    """Fit the references on the reference events' columns (all of the right type);
    a categorical prediction's values are coded by ``pred_encoder`` (which learns them)."""
    num_ref = NumericReference.fit(num, n_bins=psi_bins)
    cat_ref = CategoricalReference.fit(codes, [len(v) for v in schema.vocabularies])
    cat_counts = bucket_counts(codes, cat_ref.n_categories + 1)
    ref_missing = {
        n: float(np.mean(~np.isfinite(num[:, j]))) if len(num) else 0.0 for j, n in enumerate(schema.numeric)
    }
    ref_missing.update(
        {n: float(np.mean(codes[:, j] < 0)) if len(codes) else 0.0 for j, n in enumerate(schema.categorical)}
    )
    preds = [p for p in prediction if p is not None]
    pred_ref: NumericReference | CategoricalReference | None = None
    pred_counts = None
    if schema.prediction == "numeric":
        pred_ref = NumericReference.fit(np.array(preds, dtype=np.float64)[:, None], n_bins=psi_bins)
    elif schema.prediction == "categorical":
        codes_p = pred_encoder.codes(preds)[:, None].astype(np.int64)
        pred_ref = CategoricalReference.fit(codes_p, [len(pred_encoder.vocab)])
        pred_counts = bucket_counts(codes_p, pred_ref.n_categories + 1)
    return FittedReference(num_ref, cat_ref, cat_counts, ref_missing, pred_ref, pred_counts)
