"""The shape every change detector shares: batch validation, the result type, the
column fan-out for 2-D input, and state export.

A concrete detector subclasses :class:`ChangeDetector` and writes three things:

* ``_PARAMS``: the constructor argument names (river's names), stored as public
  attributes of the same name;
* ``_STATE_KEYS`` and ``reset()``: the private fields that make up the state, all
  created in ``reset()``;
* ``_update_stream(x)``: one stream's update over a 1-D float64 array of finite
  values, returning ``(drift_indices, warning_indices)`` into ``x``.

Everything else (2-D input, non-finite values, ``state_dict``/``from_state``) is done
here, once.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from driftline.detectors._kernels import Pace

__all__ = ["ChangeDetector", "Detection", "as_batch", "check_param", "EMPTY_INDEX"]

EMPTY_INDEX = np.empty(0, dtype=np.int64)
EMPTY_INDEX.setflags(write=False)


@dataclass(frozen=True)
class Detection:
    """What one ``update`` call found.

    Attributes
    ----------
    drifts
        Row indices (into the batch passed to ``update``) at which a drift was
        signalled. For 1-D input an int64 array; for 2-D input of shape (n, d) a
        tuple of d int64 arrays, one per column.
    warnings
        Same layout as ``drifts``, for methods with a warning zone (empty otherwise).
    skipped
        How many non-finite values (NaN, +-inf) were skipped: an int for 1-D input,
        an int64 array of length d for 2-D input.

    Notes
    -----
    One rule for bad values, everywhere in ``detectors``: non-finite values are
    skipped (they do not advance the detector) and counted here. Indices always
    refer to rows of the batch as given.
    """

    drifts: Any = field(default_factory=lambda: EMPTY_INDEX)
    warnings: Any = field(default_factory=lambda: EMPTY_INDEX)
    skipped: Any = 0

    @property
    def drift_detected(self) -> bool:
        """True if any stream signalled a drift in this batch."""
        if isinstance(self.drifts, tuple):
            return any(len(d) for d in self.drifts)
        return len(self.drifts) > 0


def as_batch(values: Any, name: str = "values") -> tuple[np.ndarray, bool]:
    """Validate a batch and view it as a float64 (n, d) array.

    Returns the 2-D array and whether the input was 1-D. The caller's array is never
    written to (a float64 input is returned as a read-only view when possible).

    Raises
    ------
    ValueError
        If the input is not a 1-D or 2-D array of real numbers or booleans.
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a 1-D or 2-D array of real numbers or booleans, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"{name} must be a 1-D array (one stream) or a 2-D array of shape (n, d) "
            f"(d streams), got an array with shape {arr.shape}"
        )
    one_d = arr.ndim == 1
    arr = arr.astype(np.float64, copy=False)
    if one_d:
        arr = arr[:, None]
    return arr, one_d


def check_param(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    choices: Sequence[Any] | None = None,
    optional: bool = False,
    why: str = "",
) -> Any:
    """Validate one constructor argument; return it as a plain Python value.

    The one parameter check of every detector (as river's ``kswin.py`` writes them): a
    ``ValueError`` that names the parameter and what it may be.

    Parameters
    ----------
    name
        The parameter's name, as the constructor spells it.
    value
        The value given.
    low, high
        Bounds (None: unbounded on that side); inclusive unless ``low_open`` /
        ``high_open``.
    integer
        Whether the value must be an integer (``bool`` is not one); otherwise a finite
        real number (``bool`` is not one either).
    choices
        The allowed values (a value matches a choice of its type, or of a base type,
        that it equals, and the choice is returned; ``(True, False)`` accepts Python and
        numpy booleans); bounds and ``integer`` are then ignored.
    optional
        Whether None is allowed (and returned as is).
    why
        Appended to the message in parentheses, e.g. the bound's origin.

    Returns
    -------
    The value as ``int``, ``float``, ``bool`` or the matching choice.

    Raises
    ------
    ValueError
        ``"<name> must be <what is allowed>, got <value>"``.

    Examples
    --------
    >>> check_param("clock", 32, low=1, integer=True)
    32
    >>> check_param("delta", 2.0, low=0, high=1, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: delta must be a number in (0, 1], got 2.0
    """
    if optional and value is None:
        return None
    if choices is not None:
        if all(c is True or c is False for c in choices):
            if isinstance(value, (bool, np.bool_)) and bool(value) in choices:
                return bool(value)
        else:
            for choice in choices:
                if isinstance(value, type(choice)) and value == choice:
                    return choice
        allowed = "True or False" if set(choices) == {True, False} else f"one of {list(choices)}"
        _reject(name, value, allowed, optional, why)
    if integer:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    else:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        kind = "an integer" if integer else ("a number" if low is not None and high is not None else "a finite number")
        if low is not None and high is not None:
            what = f"{kind} in {'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
        elif low is not None:
            what = f"{kind} {'>' if low_open else '>='} {_show(low)}"
        elif high is not None:
            what = f"{kind} {'<' if high_open else '<='} {_show(high)}"
        else:
            what = kind
        _reject(name, value, what, optional, why)
    return int(value) if integer else float(value)


def _show(bound: float) -> str:
    """A bound as written in a message: 1 rather than 1.0."""
    return str(int(bound)) if float(bound).is_integer() else repr(bound)


def _reject(name: str, value: Any, what: str, optional: bool, why: str) -> None:
    allowed = f"None or {what}" if optional else what
    raise ValueError(f"{name} must be {allowed}{f' ({why})' if why else ''}, got {value!r}")


def _plain(value: Any) -> Any:
    """Numpy scalars to Python scalars, so that state dicts are JSON-able."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


class ChangeDetector:
    """Base of the batch-vectorized change detectors (see the module docstring)."""

    _PARAMS: ClassVar[tuple[str, ...]] = ()
    _STATE_KEYS: ClassVar[tuple[str, ...]] = ()

    # ---- to be written by each detector -------------------------------------------------
    def reset(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _update_stream(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------
    def _reset_columns(self) -> None:
        """Called by ``reset()`` of subclasses: forget any 2-D fan-out."""
        self._columns: list[ChangeDetector] | None = None

    def _pace(self) -> Pace:
        """The restart loop's chunk-size hint (:class:`~driftline.detectors._kernels.Pace`),
        kept across calls and resets. Not state: it changes no result."""
        pace: Pace | None = self.__dict__.get("_restart_pace")
        if pace is None:
            pace = self._restart_pace = Pace()
        return pace

    def params(self) -> dict[str, Any]:
        """The constructor arguments, by river's names."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def _clone_fresh(self) -> ChangeDetector:
        return type(self)(**self.params())

    def update(self, values: Any) -> Detection:
        """Feed a batch; return where the detector fired within it.

        Parameters
        ----------
        values
            A 1-D array (one stream) or a 2-D array of shape (n, d) (d independent
            streams). The first call fixes whether the detector is 1-D or d-column.
        """
        arr, one_d = as_batch(values)
        if getattr(self, "_columns", None) is None and not one_d:
            if self._stream_started():
                raise ValueError("values: this detector was fed a 1-D stream; a 2-D batch cannot follow")
            self._columns = [self._clone_fresh() for _ in range(arr.shape[1])]
        if self._columns is not None:
            if one_d or arr.shape[1] != len(self._columns):
                raise ValueError(
                    f"values must have shape (n, {len(self._columns)}) like the earlier "
                    f"batches, got {np.asarray(values).shape}"
                )
            parts = [col._update_column(arr[:, j]) for j, col in enumerate(self._columns)]
            return Detection(
                drifts=tuple(p[0] for p in parts),
                warnings=tuple(p[1] for p in parts),
                skipped=np.array([p[2] for p in parts], dtype=np.int64),
            )
        drifts, warnings, skipped = self._update_column(arr[:, 0])
        return Detection(drifts=drifts, warnings=warnings, skipped=skipped)

    def _stream_started(self) -> bool:
        """Whether the 1-D stream has seen data; subclasses with a cheap counter may
        override. Used only to reject a switch from 1-D to 2-D input."""
        fresh = self._clone_fresh()
        return any(not _equal(getattr(self, k), getattr(fresh, k)) for k in self._STATE_KEYS)

    def _update_column(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        finite = np.isfinite(column)
        if finite.all():
            x = column
            rows = None
        else:
            rows = np.flatnonzero(finite)
            x = column[rows]
        if x.size == 0:
            return EMPTY_INDEX, EMPTY_INDEX, int(column.size - x.size)
        drifts, warnings = self._update_stream(np.ascontiguousarray(x, dtype=np.float64))
        drifts = np.asarray(drifts, dtype=np.int64)
        warnings = np.asarray(warnings, dtype=np.int64)
        if rows is not None:
            drifts, warnings = rows[drifts], rows[warnings]
        return drifts, warnings, int(column.size - x.size)

    # ---- state export -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this detector is: parameters and
        state fields, as plain Python values and numpy arrays."""
        state: dict[str, Any] = {
            "type": type(self).__name__,
            "params": _plain(self.params()),
        }
        columns: list[ChangeDetector] | None = getattr(self, "_columns", None)
        if columns is not None:
            state["columns"] = [c.state_dict() for c in columns]
        else:
            state["fields"] = {k.lstrip("_"): _plain(getattr(self, k)) for k in self._STATE_KEYS}
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChangeDetector:
        """Rebuild a detector from :meth:`state_dict` output."""
        if state.get("type") not in (None, cls.__name__):
            raise ValueError(f"state: expected a {cls.__name__} state, got {state.get('type')!r}")
        det = cls(**state["params"])
        if "columns" in state:
            det._columns = [cls.from_state(c) for c in state["columns"]]
        else:
            for k in cls._STATE_KEYS:
                value = _plain(state["fields"][k.lstrip("_")])
                fresh = getattr(det, k)
                if isinstance(fresh, np.ndarray) and not isinstance(value, np.ndarray):
                    # a trip through JSON turns arrays into lists
                    value = np.asarray(value, dtype=fresh.dtype)
                setattr(det, k, value)
        return det

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - exotic field types: treat as changed
        return False
