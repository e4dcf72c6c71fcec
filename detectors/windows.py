"""Count-based windows over a stream of rows, on a fixed-size ring buffer.

A window is ``size`` consecutive rows of the stream; :class:`SlidingWindow` starts a
new one every ``step`` rows and :class:`TumblingWindow` is the case ``step == size``.
``extend`` takes a batch of rows and returns every window the batch completed, as
copies, with the stream positions of their first and last rows. At most ``size``
rows are ever held, and the windows do not depend on how the stream was cut into
batches.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Self

import numpy as np

from driftline.detectors._base import check_param

__all__ = ["CompletedWindow", "SlidingWindow", "TumblingWindow"]


class CompletedWindow(NamedTuple):
    """A completed window: its rows and the stream positions of its first and last row."""

    values: np.ndarray
    first_index: int
    last_index: int


class SlidingWindow:
    """Windows of ``size`` rows starting every ``step`` rows (Tumbling when equal).

    Parameters
    ----------
    size
        Rows per window (>= 1).
    step
        Rows between the starts of consecutive windows (>= 1). ``step < size`` gives
        overlapping windows; ``step > size`` skips ``step - size`` rows between
        windows (those rows are never stored).
    n_columns
        Columns per row (>= 1).
    dtype
        Dtype of the stored rows (float64 for numeric features, int64 for category
        codes); batches are converted to it.

    Notes
    -----
    * Rows are held as given, non-finite values included: a window counts rows, and
      the statistics computed on it skip and count non-finite values.
    * ``first_index`` of each batch is the stream position of its first row; rows get
      consecutive positions ``first_index, first_index + 1, ...``. A batch may start
      after a gap (positions are then not contiguous within a window, and
      ``last_index - first_index`` exceeds ``size - 1``) but never before the end of the
      previous batch (ValueError).
    * An empty batch completes nothing.

    Examples
    --------
    >>> import numpy as np
    >>> window = SlidingWindow(size=4, step=2, n_columns=1)
    >>> [(w.first_index, w.last_index) for w in window.extend(np.arange(7.0)[:, None], 100)]
    [(100, 103), (102, 105)]
    >>> [(w.first_index, w.last_index) for w in window.extend(np.arange(2.0)[:, None], 107)]
    [(104, 107)]
    """

    def __init__(self, size: int, step: int, n_columns: int, dtype: Any = np.float64) -> None:
        size = check_param("size", size, low=1, integer=True)
        step = check_param("step", step, low=1, integer=True)
        n_columns = check_param("n_columns", n_columns, low=1, integer=True)
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise ValueError(f"dtype must be a numeric numpy dtype, got {dtype}")
        self.size = int(size)
        self.step = int(step)
        self.n_columns = int(n_columns)
        self.dtype = dtype
        self.reset()

    def reset(self) -> None:
        """Forget every held row; the next batch starts a new stream."""
        self._values = np.zeros((self.size, self.n_columns), dtype=self.dtype)
        self._indices = np.zeros(self.size, dtype=np.int64)
        self._seen = 0  # rows received since reset; row g lives at ring slot g % size
        self._next_start = 0  # row number (since reset) where the next window starts
        self._next_index: int | None = None  # smallest stream position allowed next

    def _check(self, values: Any, first_index: Any) -> np.ndarray:
        arr = values if type(values) is np.ndarray else np.asarray(values)
        if arr.ndim != 2 or arr.shape[1] != self.n_columns or arr.dtype.kind not in "biuf":
            raise ValueError(
                f"values must be a 2-D numeric array of shape (n, {self.n_columns}), "
                f"got dtype {arr.dtype} and shape {arr.shape}"
            )
        if self.dtype.kind in "iub" and arr.dtype.kind == "f":
            raise ValueError(f"values must be integers for a window of dtype {self.dtype}")
        if isinstance(first_index, bool) or not isinstance(first_index, (int, np.integer)):
            raise ValueError(f"first_index must be an integer, got {first_index!r}")
        if first_index < 0 or (self._next_index is not None and first_index < self._next_index):
            raise ValueError(
                f"first_index must be >= {self._next_index or 0} (rows before it were already "
                f"received), got {first_index}"
            )
        return arr.astype(self.dtype, copy=False)

    def extend(self, values: Any, first_index: int) -> list[CompletedWindow]:
        """Add a batch of rows; return the windows it completed, oldest first.

        Parameters
        ----------
        values
            (n, n_columns) array of rows.
        first_index
            Stream position of the batch's first row.

        Returns
        -------
        list of CompletedWindow
            ``(values, first_index, last_index)`` per completed window; ``values`` is a
            fresh (size, n_columns) array.
        """
        arr = self._check(values, first_index)
        n = arr.shape[0]
        if n == 0:
            return []
        seen, size, first = self._seen, self.size, int(first_index)
        # windows whose last row (start + size - 1) falls in this batch
        n_windows = max(0, (seen + n - size - self._next_start) // self.step + 1)
        windows: list[CompletedWindow] = []
        if n_windows:
            indices = first + np.arange(n, dtype=np.int64)
            starts = self._next_start + self.step * np.arange(n_windows, dtype=np.int64)
            rows = starts[:, None] + np.arange(size, dtype=np.int64)[None, :]
            held = rows < seen
            batch_rows = np.clip(rows - seen, 0, n - 1)
            ring_rows = rows % size
            values_out = np.where(held[:, :, None], self._values[ring_rows], arr[batch_rows])
            index_out = np.where(held, self._indices[ring_rows], indices[batch_rows])
            windows = [
                CompletedWindow(values_out[k], int(index_out[k, 0]), int(index_out[k, -1])) for k in range(n_windows)
            ]
            self._next_start += self.step * n_windows
        # keep the rows a future window may need (at most the last `size` rows): rows
        # keep_from.. go to consecutive ring slots, in two slices where the ring wraps
        keep_from = max(seen, seen + n - size, self._next_start)
        if keep_from < seen + n:
            slot, offset = keep_from % size, keep_from - seen
            head = min(n - offset, size - slot)
            self._values[slot : slot + head] = arr[offset : offset + head]
            self._indices[slot : slot + head] = np.arange(first + offset, first + offset + head, dtype=np.int64)
            if offset + head < n:  # wrapped: the rest from slot 0
                rest = n - offset - head
                self._values[:rest] = arr[offset + head :]
                self._indices[:rest] = np.arange(first + offset + head, first + n, dtype=np.int64)
        self._seen = seen + n
        self._next_index = first + n
        return windows

    # ---- state ----------------------------------------------------------------------
    def _held_rows(self) -> np.ndarray:
        """Row numbers (since reset) currently held that a future window may use."""
        return np.arange(max(self._next_start, self._seen - self.size), self._seen, dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """Parameters, counters and the held rows (oldest first), as plain values and arrays."""
        held = self._held_rows() % self.size
        return {
            "type": type(self).__name__,
            "params": self._params(),
            "seen": self._seen,
            "next_start": self._next_start,
            "next_index": self._next_index,
            "values": self._values[held].copy(),
            "indices": self._indices[held].copy(),
        }

    def _params(self) -> dict[str, Any]:
        return {"size": self.size, "step": self.step, "n_columns": self.n_columns, "dtype": self.dtype.str}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        """Rebuild a window from :meth:`state_dict` output."""
        if state.get("type") != cls.__name__:
            raise ValueError(f"state: expected a {cls.__name__} state, got {state.get('type')!r}")
        params = dict(state["params"])
        if cls is TumblingWindow:
            params.pop("step", None)
        window = cls(**params)
        window._seen = int(state["seen"])
        window._next_start = int(state["next_start"])
        window._next_index = None if state["next_index"] is None else int(state["next_index"])
        slots = window._held_rows() % window.size
        values = np.asarray(state["values"], dtype=window.dtype)
        if values.shape != (slots.size, window.n_columns):
            raise ValueError(f"state: values must have shape {(slots.size, window.n_columns)}, got {values.shape}")
        window._values[slots] = values
        window._indices[slots] = np.asarray(state["indices"], dtype=np.int64)
        return window

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class TumblingWindow(SlidingWindow):
    """Non-overlapping windows of ``size`` rows (a :class:`SlidingWindow` with
    ``step == size``).

    Examples
    --------
    >>> import numpy as np
    >>> window = TumblingWindow(size=3, n_columns=2)
    >>> [(w.first_index, w.last_index) for w in window.extend(np.zeros((7, 2)), 0)]
    [(0, 2), (3, 5)]
    """

    def __init__(self, size: int, n_columns: int, dtype: Any = np.float64) -> None:
        super().__init__(size=size, step=size, n_columns=n_columns, dtype=dtype)

    def _params(self) -> dict[str, Any]:
        params = super()._params()
        del params["step"]
        return params
