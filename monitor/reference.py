"""Reference data from files: past prediction events as JSONL or CSV.

JSONL: one prediction event per line (the event contract); lines of other models
are skipped when the file holds several. CSV: a header row; every column is a
feature except ``prediction`` (and ``model``, ``version``, ``id``, ``ts``, which are
ignored); empty cells are missing values, cells that parse as numbers are numbers.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import orjson

from driftline.monitor.engine import ReferenceData
from driftline.monitor.exceptions import ReferenceLoadError

__all__ = ["load_reference"]

_META = {"model", "version", "id", "ts", "prediction", "latency_ms", "scores"}


def _cell(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


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
