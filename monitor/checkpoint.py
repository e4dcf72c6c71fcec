"""Checkpoints: detector state and the source offsets it corresponds to, written
together, atomically.

The file is JSON; numpy arrays are stored as ``{"__ndarray__": base64, "dtype": ...,
"shape": [...]}`` so that state round-trips bit for bit. A write goes to a temporary
file that is fsynced and renamed over the old one, so a crash leaves either the old
or the new checkpoint, never half of one.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from driftline.monitor.exceptions import CheckpointError

__all__ = ["CheckpointStore", "encode_state", "decode_state"]

log = logging.getLogger(__name__)


def encode_state(obj: Any) -> Any:
    """Plain JSON-able form of a state dict (numpy arrays and scalars included)."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype == object:
            return {"__pylist__": [encode_state(v) for v in arr.tolist()]}
        return {
            "__ndarray__": base64.b64encode(arr.tobytes()).decode("ascii"),
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return (
            {"__dict__": [[encode_state(k), encode_state(v)] for k, v in obj.items()]}
            if any(not isinstance(k, str) for k in obj)
            else {k: encode_state(v) for k, v in obj.items()}
        )
    if isinstance(obj, (list, tuple)):
        return [encode_state(v) for v in obj]
    if isinstance(obj, bytes):
        return {"__bytes__": base64.b64encode(obj).decode("ascii")}
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    return obj


def decode_state(obj: Any) -> Any:
    """Inverse of :func:`encode_state` (tuples come back as lists)."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            raw = base64.b64decode(obj["__ndarray__"])
            return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
        if "__pylist__" in obj:
            return np.array([decode_state(v) for v in obj["__pylist__"]], dtype=object)
        if "__bytes__" in obj:
            return base64.b64decode(obj["__bytes__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {_key(decode_state(k)): decode_state(v) for k, v in obj["__dict__"]}
        return {k: decode_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode_state(v) for v in obj]
    return obj


def _key(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k


class CheckpointStore:
    """One checkpoint file per consumer group under ``state_dir``."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self.path = Path(state_dir) / f"checkpoint-{name}.json"

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return decode_state(orjson.loads(self.path.read_bytes()))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {self.path} cannot be read ({exc}); move it away to start afresh from the "
                "committed offsets (each model's reference is then rebuilt from the stream)"
            ) from None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = orjson.dumps(encode_state(state), option=orjson.OPT_SERIALIZE_NUMPY)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
