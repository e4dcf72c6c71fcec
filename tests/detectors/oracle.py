"""River as the oracle: run a river detector one sample at a time, and feed one of ours
batch by batch, both returning indices in stream coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def river_indices(detector: Any, stream: np.ndarray, warnings: bool = False) -> list[int] | tuple[list[int], list[int]]:
    """Indices where ``detector`` (a river drift detector), fed one sample at a time,
    signals a drift (and, with ``warnings``, where ``warning_detected`` is set)."""
    drifts, warns = [], []
    for i, value in enumerate(stream.tolist()):
        detector.update(value)
        if detector.drift_detected:
            drifts.append(i)
        if warnings and getattr(detector, "warning_detected", False):
            warns.append(i)
    return (drifts, warns) if warnings else drifts


def feed(detector: Any, stream: np.ndarray, cuts: Sequence[int]) -> list[int]:
    """Feed ``stream`` to one of ours cut at ``cuts``; the drift indices in stream coordinates."""
    found = []
    bounds = [0, *sorted(set(cuts)), len(stream)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        found.extend((detector.update(stream[start:stop]).drifts + start).tolist())
    return found


def river_both(detector: Any, stream: np.ndarray) -> tuple[list[int], list[int]]:
    """River's drift and warning indices (for detectors with a warning zone)."""
    return river_indices(detector, stream, warnings=True)  # type: ignore[return-value]


def feed_both(detector: Any, stream: np.ndarray, cuts: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """Our drift and warning indices, feeding ``stream`` cut at ``cuts``."""
    drifts, warnings, start = [], [], 0
    for part in np.split(stream, sorted(cuts)):
        result = detector.update(part)
        drifts += (result.drifts + start).tolist()
        warnings += (result.warnings + start).tolist()
        start += part.size
    return drifts, warnings


def error_stream(seed: int, n: int, real: bool = False) -> np.ndarray:
    """0/1 errors (or, with ``real``, values in [0, 1]) whose rate changes up and down a
    few times, abruptly or along a ramp."""
    rng = np.random.default_rng(seed)
    rate = np.full(n, rng.uniform(0, 0.6))
    for _ in range(rng.integers(0, 5)):
        at, to = int(rng.integers(0, n)), rng.uniform(0, 1)
        ramp = int(rng.integers(1, 400))
        rate[at:] = np.interp(np.arange(at, n), [at, at + ramp], [rate[at], to])
    if real:
        return np.clip(rate + rng.normal(0, 0.2, n), 0, 1)
    return (rng.random(n) < rate).astype(np.float64)
