"""Events as numbers for the checks: class codes and the layout of a window's rows.

Labels arrive as JSON values: ``1``, ``1.0``, ``True`` and ``"1"`` may all name one
class. :func:`canonical_label` folds them to one key and :class:`Encoder` gives each
key a code, in order of first appearance, so that codes survive a checkpoint. The
constants bound how many classes are coded, scored and reported.

A version's windows are float64 rows, one per event. A prediction row:
``[index, ts, latency_ms, prediction, numeric features..., category codes...]``; a
labelled row: ``[index, ts, y_true, y_pred, score, error, class scores...]``. The engine
builds them, the checks read them; both name the columns from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "Encoder",
    "canonical_label",
    "MAX_CLASSES",
    "SCORED_CLASSES",
    "CLASS_RECALLS",
    "IDX",
    "TS",
    "LAT",
    "PRED",
    "FIXED",
    "L_IDX",
    "L_TS",
    "L_TRUE",
    "L_PRED",
    "L_SCORE",
    "L_ERR",
    "L_SCORES",
]

MAX_CLASSES = 1000
"""Distinct class labels (or categorical predictions) coded per model; further values
share the code ``MAX_CLASSES`` (bounds memory whatever the labels hold)."""
SCORED_CLASSES = 20
"""Classes whose scores are kept for one-vs-rest ROC-AUC (a model with more classes
gets the other multi-class metrics, not that one)."""
CLASS_RECALLS = 10
"""Classes (the most frequent of each window) whose recall is exposed."""

# A prediction row: these columns, then the numeric block, then the categorical one.
IDX, TS, LAT, PRED = 0, 1, 2, 3
FIXED = 4
"""Columns before the numeric and categorical blocks."""
# A labelled row.
L_IDX, L_TS, L_TRUE, L_PRED, L_SCORE, L_ERR = range(6)
L_SCORES = 6
"""Then, for classification, the score of each class code below
:data:`SCORED_CLASSES`."""


def canonical_label(v: Any) -> Any:
    """One value per class: booleans and integral floats become ints (``True``, ``1.0``
    and ``1`` are one class); anything else is returned as it is."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


class Encoder:
    """Values to stable float codes (class labels, categorical predictions), at most
    :data:`MAX_CLASSES` of them.

    Parameters
    ----------
    vocab
        A previous encoder's ``vocab`` (from a checkpoint): ``{str(canonical value): code}``.

    Examples
    --------
    >>> enc = Encoder()
    >>> enc.codes([1, True, "cat", 1.0]).tolist()
    [0.0, 0.0, 1.0, 0.0]
    """

    def __init__(self, vocab: dict[str, int] | None = None) -> None:
        self.vocab: dict[str, int] = dict(vocab or {})

    def code(self, v: Any) -> int:
        """The code of ``v``, given it a new one when it is new (and room is left)."""
        key = str(canonical_label(v))
        code = self.vocab.get(key)
        if code is None:
            if len(self.vocab) >= MAX_CLASSES:
                return MAX_CLASSES
            code = self.vocab[key] = len(self.vocab)
        return code

    def codes(self, values: Sequence[Any]) -> np.ndarray:
        """The codes of ``values`` as float64 (the dtype of the labelled rows)."""
        return np.array([self.code(v) for v in values], dtype=np.float64)
