"""Edge-triggered alarms with hysteresis.

A check alarms when it *enters* the alarming state, not in every window that finds it
there; it re-arms after :data:`REARM_WINDOWS` consecutive normal windows, so that a
statistic hovering at its threshold does not alarm every other window. The gauges of
the snapshot show the ongoing state; the alarms mark its edges.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["REARM_WINDOWS", "AlarmStates", "edge"]

REARM_WINDOWS = 3
"""Consecutive normal windows after which an alarming check is re-armed (hysteresis,
so that a drift hovering at the threshold does not alarm every other window)."""


def edge(state: dict[str, int], key: str, alarming: bool) -> bool:
    """Edge trigger: True when ``key`` enters the alarming state.

    Parameters
    ----------
    state
        Maps each alarming key to its run of normal windows since; updated in place.
    key
        The check (``feature_drift:amount``, ``performance:accuracy``, ...).
    alarming
        Whether this window finds the check alarming.

    Examples
    --------
    >>> s = {}
    >>> [edge(s, "k", x) for x in (True, True, False, True, False, False, False, True)]
    [True, False, False, False, False, False, False, True]
    """
    if alarming:
        fresh = key not in state
        state[key] = 0
        return fresh
    if key in state:
        state[key] += 1
        if state[key] >= REARM_WINDOWS:
            del state[key]
    return False


class AlarmStates:
    """The alarming checks of one (model, version) and their runs of normal windows.

    Parameters
    ----------
    runs
        A previous ``runs`` (from a checkpoint): ``{key: normal windows since it alarmed}``.
    """

    def __init__(self, runs: dict[str, int] | None = None) -> None:
        self.runs: dict[str, int] = dict(runs or {})

    def edge(self, key: str, alarming: bool) -> bool:
        """True when ``key`` enters the alarming state (see :func:`edge`)."""
        return edge(self.runs, key, alarming)

    def forget(self, prefixes: Iterable[str]) -> None:
        """Drop the checks whose key starts with one of ``prefixes`` (their reference
        changed: they start afresh, armed)."""
        prefixes = tuple(prefixes)
        self.runs = {k: v for k, v in self.runs.items() if not k.startswith(prefixes)}

    def state_dict(self) -> dict[str, int]:
        return dict(self.runs)
