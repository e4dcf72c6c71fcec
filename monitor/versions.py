"""Per-version lifecycle state of one model: roles, references, timers.

What :meth:`Engine.apply_lifecycle <driftline.monitor.engine.Engine.apply_lifecycle>`
keeps per model, as plain values (checkpointed with the rest of the model's state):

* ``roles``, ``shares``, ``stable``: each version's role (``stable``, ``canary``,
  ``shadow``) and announced traffic share, and the stable version set by a lifecycle
  event (it wins over ``regression.stable_version`` and the most-events default);
* ``refs``: each version's own reference (:class:`VersionReference`); a version without
  one is measured against the model's (the stable version's) reference;
* ``queue``: lifecycle events waiting for their event time (see the ordering rule of
  ``Engine.apply_lifecycle``);
* timers on the model's event clock (``clock``, the latest prediction event time):
  ``stall`` (a canary's traffic check), ``rollbacks`` (pending rollback confirmations),
  ``free_at`` (versions whose state is freed at the end of their grace period);
* gauges' flags: ``stalled`` and ``unconfirmed`` versions.

Nothing here does I/O; the engine decides and this module remembers.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from driftline.detectors.statistics import CategoricalReference, NumericReference
from driftline.monitor.lifecycle import LifecycleEvent
from driftline.monitor.reference import FittedReference

MAX_FREED = 32
"""Freed versions remembered per model (their late labels are dropped)."""

__all__ = ["VersionReference", "VersionLifecycle", "fitted_state", "fitted_from_state", "labels_needed"]


def fitted_state(f: FittedReference) -> dict[str, Any]:
    """A fitted reference as plain values and arrays."""
    return {
        "num_ref": f.num_ref.to_state(),
        "cat_ref": f.cat_ref.to_state(),
        "cat_counts": f.cat_counts,
        "ref_missing": dict(f.ref_missing),
        "pred_ref": None if f.pred_ref is None else f.pred_ref.to_state(),
        "pred_kind": None if f.pred_ref is None else type(f.pred_ref).__name__,
        "pred_counts": f.pred_counts,
    }


def fitted_from_state(s: dict[str, Any]) -> FittedReference:
    """Inverse of :func:`fitted_state`."""
    pred_ref: NumericReference | CategoricalReference | None = None
    if s["pred_ref"] is not None:
        cls = NumericReference if s["pred_kind"] == "NumericReference" else CategoricalReference
        pred_ref = cls.from_state(s["pred_ref"])
    counts = s["pred_counts"]
    return FittedReference(
        NumericReference.from_state(s["num_ref"]),
        CategoricalReference.from_state(s["cat_ref"]),
        np.asarray(s["cat_counts"]),
        dict(s["ref_missing"]),
        pred_ref,
        None if counts is None else np.asarray(counts),
    )


@dataclass
class VersionReference:
    """A version's own reference.

    Attributes
    ----------
    fingerprint
        What identifies it (``file:...`` as for the model's reference, or
        ``from_stream:<version>:<N>``).
    fitted
        The references its windows are compared with; None while a ``from_stream``
        reference is collecting, or while a file reference waits for the model's schema.
    path
        The file of a file reference (reloaded, through the loader, when it becomes the
        stable one and its features differ from the model's schema).
    rebuild
        The file holds other features (or categories) than the model's schema: it is
        fitted under the schema while it is a canary's, and the schema is rebuilt from
        it when it becomes the stable version's.
    size, rows, count
        A ``from_stream`` reference: events wanted, the accepted events collected so far
        (numeric, codes, predictions per batch), and how many.
    """

    fingerprint: str
    fitted: FittedReference | None = None
    path: str | None = None
    rebuild: bool = False
    size: int = 0
    rows: list[tuple[np.ndarray, np.ndarray, list[Any]]] = field(default_factory=list)
    count: int = 0

    @property
    def collecting(self) -> bool:
        return self.fitted is None and self.size > 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "fitted": None if self.fitted is None else fitted_state(self.fitted),
            "path": self.path,
            "rebuild": self.rebuild,
            "size": self.size,
            "rows": [[num, codes, list(preds)] for num, codes, preds in self.rows],
            "count": self.count,
        }

    @classmethod
    def from_state(cls, s: dict[str, Any], d_num: int, d_cat: int) -> VersionReference:
        rows = [
            (
                np.asarray(num, dtype=np.float64).reshape(-1, d_num),
                np.asarray(codes, dtype=np.int64).reshape(-1, d_cat),
                list(preds),
            )
            for num, codes, preds in s["rows"]
        ]
        return cls(
            s["fingerprint"],
            None if s["fitted"] is None else fitted_from_state(s["fitted"]),
            s["path"],
            bool(s["rebuild"]),
            int(s["size"]),
            rows,
            int(s["count"]),
        )


class VersionLifecycle:
    """One model's lifecycle state (see the module docstring)."""

    def __init__(self) -> None:
        self.roles: dict[str, str] = {}
        self.shares: dict[str, float] = {}
        self.stable: str | None = None
        self.refs: dict[str, VersionReference] = {}
        self.queue: list[LifecycleEvent] = []
        self.clock = -math.inf
        self.stall: dict[str, list[float]] = {}  # version -> [deadline, events at deployment, fired 0/1]
        self.stalled: set[str] = set()
        self.rollbacks: dict[str, list[float]] = {}  # version -> [alarm ts, deadline, alarm's last index]
        self.unconfirmed: set[str] = set()
        self.free_at: dict[str, float] = {}
        self.rebased = False  # the model's reference came from a lifecycle event (it wins over the configured one)
        self.fresh_from: dict[str, int] = {}  # a version made stable: the prediction index its fresh state starts at
        self.freed: list[str] = []  # versions freed lately, whose late labels are dropped (bounded)

    def next_due(self) -> float:
        """The earliest event time at which something is due: a queued event or a timer."""
        times = [self.queue[0].ts] if self.queue else []
        times += [x[0] for x in self.stall.values() if not x[2]]
        times += [x[1] for x in self.rollbacks.values()]
        times += list(self.free_at.values())
        return min(times, default=math.inf)

    def enqueue(self, event: LifecycleEvent) -> None:
        """Queue an event in event-time order (ties: after those already queued)."""
        bisect.insort_right(self.queue, event, key=lambda e: e.ts)

    def due(self, ts: float) -> list[LifecycleEvent]:
        """Take the queued events with ``event.ts <= ts``, in order."""
        cut = bisect.bisect_right(self.queue, ts, key=lambda e: e.ts)
        out, self.queue = self.queue[:cut], self.queue[cut:]
        return out

    def mark_freed(self, version: str) -> None:
        """Remember (boundedly) that a version was freed, so that its late labels do not
        bring its state back."""
        if version not in self.freed:
            self.freed = [*self.freed[-(MAX_FREED - 1) :], version]

    def forget(self, version: str) -> None:
        """Drop everything about a version (it is freed)."""
        for d in (self.roles, self.shares, self.refs, self.stall, self.rollbacks, self.free_at, self.fresh_from):
            d.pop(version, None)
        self.stalled.discard(version)
        self.unconfirmed.discard(version)
        if self.stable == version:
            self.stable = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "roles": dict(self.roles),
            "shares": dict(self.shares),
            "stable": self.stable,
            "refs": {v: r.state_dict() for v, r in self.refs.items()},
            "queue": [msgspec.to_builtins(e) for e in self.queue],
            "clock": None if self.clock == -math.inf else self.clock,
            "stall": {v: list(x) for v, x in self.stall.items()},
            "stalled": sorted(self.stalled),
            "rollbacks": {v: list(x) for v, x in self.rollbacks.items()},
            "unconfirmed": sorted(self.unconfirmed),
            "free_at": dict(self.free_at),
            "rebased": self.rebased,
            "fresh_from": dict(self.fresh_from),
            "freed": list(self.freed),
        }

    @classmethod
    def from_state(cls, s: dict[str, Any] | None, d_num: int, d_cat: int) -> VersionLifecycle:
        """Rebuild from :meth:`state_dict`; None (a format-2 state) gives a fresh one."""
        lc = cls()
        if s is None:
            return lc
        lc.roles, lc.shares, lc.stable = dict(s["roles"]), {k: float(v) for k, v in s["shares"].items()}, s["stable"]
        lc.refs = {v: VersionReference.from_state(r, d_num, d_cat) for v, r in s["refs"].items()}
        lc.queue = [msgspec.convert(e, LifecycleEvent) for e in s["queue"]]
        lc.clock = -math.inf if s["clock"] is None else float(s["clock"])
        lc.stall = {v: [float(a) for a in x] for v, x in s["stall"].items()}
        lc.stalled = set(s["stalled"])
        lc.rollbacks = {v: [float(a) for a in x] for v, x in s["rollbacks"].items()}
        lc.unconfirmed = set(s["unconfirmed"])
        lc.free_at = {k: float(v) for k, v in s["free_at"].items()}
        lc.rebased = bool(s["rebased"])
        lc.fresh_from = {k: int(v) for k, v in s["fresh_from"].items()}
        lc.freed = list(s["freed"])
        return lc


def _log_lambda(delta: float, variance: float, tau: float) -> float:
    tau2 = tau * tau
    return 0.5 * math.log(variance / (variance + tau2)) + tau2 * delta * delta / (2 * variance * (variance + tau2))


def labels_needed(
    delta: float, var_candidate: float, var_stable: float, share: float, tau: float, alpha: float, min_samples: int
) -> float:
    """Labelled events (both versions together, from the start of the comparison) an
    mSPRT needs to decide, if the difference it tests stays ``delta`` (> 0, in its
    favoured direction) and the per-event variances stay as observed.

    Approximation: with ``N`` labels split as the traffic (``share`` to the candidate),
    the variance of the difference is ``V(N) = var_c / (s N) + var_s / ((1 - s) N)``;
    the test fires when ``log Lambda(delta, V) >= log(1 / alpha)``, solved for ``V`` by
    bisection (``log Lambda`` falls as ``V`` grows, for ``V`` below ``delta^2``). It
    plugs in today's estimates and ignores their noise (the test fires at the first
    crossing of a noisy path): a number to plan with, not a promise. Returns ``inf``
    when ``delta <= 0`` (no decision is coming at this difference) or ``share`` is not
    in (0, 1).
    """
    if not (delta > 0 and 0 < share < 1):
        return math.inf
    target = -math.log(alpha)
    lo, hi = math.log(1e-14), math.log(max(delta * delta, 1e-12))
    if _log_lambda(delta, math.exp(lo), tau) < target:
        return math.inf
    for _ in range(80):  # bisection on log V: the largest V whose statistic still reaches the threshold
        mid = 0.5 * (lo + hi)
        if _log_lambda(delta, math.exp(mid), tau) >= target:
            lo = mid
        else:
            hi = mid
    v_star = math.exp(lo)
    var_c, var_s = max(var_candidate, 1e-6), max(var_stable, 1e-6)
    n = (var_c / share + var_s / (1 - share)) / v_star
    return max(n, min_samples / share, min_samples / (1 - share))
