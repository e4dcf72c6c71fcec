"""How often river fires on a parity test's examples.

A parity test that compares two empty lists proves nothing, so each parity strategy is
checked to hold a change river detects in most of its examples: a fixed sample of the
strategy's examples (derandomized: the same on every run), drawn as hypothesis draws them
for the parity test itself. The parity tests also record ``hypothesis.event("river
fires")``, shown by ``pytest --hypothesis-show-statistics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy

__all__ = ["firing_share"]


def firing_share(strategy: SearchStrategy[Any], fires: Callable[[Any], bool], examples: int = 40) -> float:
    """The share of ``examples`` derandomized draws of ``strategy`` on which ``fires``
    (river run on the drawn stream fires at least once) is true."""
    hits: list[bool] = []

    @settings(
        derandomize=True,
        database=None,
        max_examples=examples,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(example: Any) -> None:
        hits.append(bool(fires(example)))

    draw()
    assert hits, "the strategy produced no example"
    return sum(hits) / len(hits)
