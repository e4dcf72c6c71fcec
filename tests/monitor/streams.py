"""Generated event streams with known change points, for the monitor's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson


def prediction_events(
    n: int,
    *,
    model: str = "fraud",
    version: str = "v1",
    seed: int = 0,
    shift_at: int | None = None,
    shift: float = 1.0,
    start: int = 0,
    n_numeric: int = 3,
    id_prefix: str = "p",
    t0: float = 1_700_000_000.0,
) -> list[dict[str, Any]]:
    """Prediction events; from ``shift_at`` on, feature ``x0``'s mean moves by ``shift``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_numeric))
    if shift_at is not None:
        x[shift_at:, 0] += shift
    country = rng.choice(["DE", "FR", "US"], size=n, p=[0.5, 0.3, 0.2])
    score = 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))
    events = []
    for i in range(n):
        feats = {f"x{j}": float(x[i, j]) for j in range(n_numeric)}
        feats["country"] = str(country[i])
        events.append(
            {
                "model": model,
                "version": version,
                "id": f"{id_prefix}-{model}-{start + i}",
                "ts": t0 + start + i,
                "features": feats,
                "prediction": float(score[i]),
                "latency_ms": float(10 + rng.exponential(2.0)),
            }
        )
    return events


def feedback_for(
    events: list[dict[str, Any]], *, seed: int = 1, flip_after: int | None = None, delay: float = 30.0
) -> list[dict[str, Any]]:
    """Labels for ``events``: drawn from the model's score (a calibrated model); after
    ``flip_after`` (position in ``events``) the labels are inverted (a concept drift)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, e in enumerate(events):
        label = int(rng.random() < e["prediction"])
        if flip_after is not None and i >= flip_after:
            label = 1 - label
        out.append({"model": e["model"], "id": e["id"], "ts": e["ts"] + delay, "label": label})
    return out


def to_jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def records(events: list[dict[str, Any]], topic: str) -> Iterator[Any]:
    from driftline.monitor.decode import Record

    for i, e in enumerate(events):
        value = e if isinstance(e, bytes) else orjson.dumps(e)
        yield Record(topic, 0, i, -1, None, value)
