"""Process settings for a long-running service."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["steady_gc", "tune_gc"]

GC_THRESHOLDS = (10_000, 10, 10)
"""Allocations between young collections (CPython's default is 700), and young
collections per older one."""


@contextmanager
def steady_gc() -> Iterator[None]:
    """Tune CPython's cycle collector for a batch pipeline.

    Every batch allocates tens of thousands of short-lived objects (decoded events,
    record tuples) that hold no reference cycles. With the default thresholds they set
    off a young collection every 700 allocations and frequent full ones, and a full
    collection walks every object alive, including the ~10^5 the imports created: a
    fifth to a third of the consumer's time (see BENCHMARKS.md). Here everything alive
    at start is frozen (never scanned again) and collections run less often. Cycles are
    still collected, so memory stays bounded. Undone on exit.
    """
    old = tune_gc()
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


def tune_gc() -> tuple[int, int, int]:
    """:func:`steady_gc` for the rest of the process's life (the Kafka consumer
    process); returns the thresholds it replaced."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return old
