"""A model's schema and its feature columns.

:class:`Schema` says which features are numeric and which categorical, with the
category vocabularies learned from the model's reference (the inference rules:
:func:`infer_feature_types`, :func:`infer_prediction_kind`). Given a schema, a batch's
``features`` objects become a float64 matrix of numeric features and an int64 matrix
of category codes, by one of three paths that give the same result:

* :func:`columnarize`: from feature dicts (the reference, rows that fit no struct);
* :func:`columnarize_raw`: from raw JSON ``features`` objects, decoded straight into
  the schema's struct (:meth:`Schema.features_type`), row by row when one does not fit;
* the typed pass of :class:`~driftline.monitor.decode.BatchDecoder`, which decodes
  whole events into that struct (:func:`feature_columns` then reads them).

A value of the wrong type rejects its row (reason ``wrong_type``), never the batch.
"""

from __future__ import annotations

import hashlib
import operator
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import msgspec
import numpy as np
import orjson
from msgspec.structs import astuple

__all__ = [
    "Schema",
    "TYPE_SHARE",
    "infer_feature_types",
    "infer_prediction_kind",
    "bad_numeric_predictions",
    "decode_features",
    "columnarize",
    "columnarize_raw",
    "feature_columns",
]


@dataclass
class Schema:
    """A model's features: which are numeric, which categorical, and the category
    vocabularies (value -> code) learned from the reference; and the kind of its
    ``prediction`` (``numeric``, ``categorical`` or None: not monitored)."""

    numeric: list[str]
    categorical: list[str]
    vocabularies: list[dict[str, int]]
    prediction: str | None = None
    _decoder: Any = field(default=None, init=False, repr=False, compare=False)
    _features_type: Any = field(default=None, init=False, repr=False, compare=False)
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)
    _readers: Any = field(default=None, init=False, repr=False, compare=False)

    def features_type(self) -> type:
        """A struct of this schema's features (numbers for numeric features, scalars for
        categorical ones; other features are ignored), to decode into: no dict per
        event."""
        if self._features_type is None:
            num = float | bool | None
            cat = str | int | float | bool | None
            fields = [(f"f{i}", num, None) for i in range(len(self.numeric))]
            fields += [(f"c{i}", cat, None) for i in range(len(self.categorical))]
            renames = {f"f{i}": n for i, n in enumerate(self.numeric)}
            renames.update({f"c{i}": n for i, n in enumerate(self.categorical)})
            self._features_type = msgspec.defstruct("Features", fields, rename=renames, gc=False)
        return self._features_type

    def decoder(self) -> Any:
        """A msgspec decoder of a JSON array of feature objects (:meth:`features_type`)."""
        if self._decoder is None:
            self._decoder = msgspec.json.Decoder(list[self.features_type()])  # type: ignore[misc]  # a runtime type
        return self._decoder

    def readers(self) -> tuple[Any, list[tuple[Any, dict[Any, int], int]]]:
        """What :func:`feature_columns` reads the tuple of a :meth:`features_type`
        struct's fields with, made once (a model with few events per batch pays for
        them otherwise): the getter of the numeric fields' slice (None without numeric
        features) and, per categorical feature, its field's getter, its code lookup
        (the vocabulary, and None coded missing) and the code of an unseen category."""
        if self._readers is None:
            d_num = len(self.numeric)
            numeric = operator.itemgetter(slice(0, d_num)) if d_num else None
            categorical = [
                (operator.itemgetter(d_num + j), {**vocab, None: -1}, len(vocab))
                for j, vocab in enumerate(self.vocabularies)
            ]
            self._readers = (numeric, categorical)
        return self._readers

    def to_state(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "vocabularies": [dict(v) for v in self.vocabularies],
            "prediction": self.prediction,
        }

    def fingerprint(self) -> str:
        """A digest of the schema, equal across processes for equal schemas."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.blake2b(orjson.dumps(self.to_state()), digest_size=12).hexdigest()
        return self._fingerprint

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Schema:
        return cls(
            list(state["numeric"]),
            list(state["categorical"]),
            [dict(v) for v in state["vocabularies"]],
            state.get("prediction"),
        )

    @classmethod
    def infer(
        cls,
        features: Sequence[dict[str, Any]],
        numeric: list[str] | None,
        categorical: list[str] | None,
        ignore: Sequence[str],
        max_features: int,
        types: dict[str, str] | None = None,
    ) -> tuple[Schema, int]:
        """Infer the schema from reference events; returns it and how many features
        were dropped by the ``max_features`` cap (see :func:`infer_feature_types` for
        the rule, and ``types``, its result, when it was computed already; explicit
        lists win over inference, mixed features are left out)."""
        if types is None:
            types = infer_feature_types(features, ignore)
        names = list(types)
        if numeric is not None or categorical is not None:
            num = list(numeric or [])
            cat = list(categorical or [])
            given = set(num) | set(cat)
            for n in names:
                if n not in given and types[n] != "mixed":
                    (num if types[n] == "numeric" else cat).append(n)
        else:
            num = [n for n in names if types[n] == "numeric"]
            cat = [n for n in names if types[n] == "categorical"]
        dropped = max(0, len(num) + len(cat) - max_features)
        if dropped:
            keep = set((num + cat)[:max_features])
            num = [n for n in num if n in keep]
            cat = [n for n in cat if n in keep]
        vocabularies = []
        for name in cat:
            seen = {_category(v) for f in features if not isinstance(v := f.get(name), (dict, list))}
            values = sorted(c for c in seen if c is not None)
            vocabularies.append({v: i for i, v in enumerate(values)})
        return cls(num, cat, vocabularies), dropped


TYPE_SHARE = 0.99
"""The share of a feature's non-null reference values that must have one type for the
feature to take it (see :func:`infer_feature_types`)."""


def infer_feature_types(features: Sequence[dict[str, Any]], ignore: Sequence[str] = ()) -> dict[str, str]:
    """Each feature's type, from its reference values: ``numeric``, ``categorical`` or
    ``mixed``, in order of first appearance.

    A feature is numeric when at least :data:`TYPE_SHARE` (99 %) of its non-null values
    are numbers or booleans, categorical when at least 99 % are strings, and mixed
    otherwise; a feature with no non-null value is numeric. Objects and lists count for
    neither (they are always of the wrong type). So one bad record, or a few, cannot
    change a feature's type: the minority values are then of the wrong type, and the
    events holding them are dead-lettered (a string in a numeric feature) or accepted
    by the same rule as later ones (a number in a categorical feature is a category).

    Examples
    --------
    >>> rows = [{"a": 1.0, "b": "x"}] * 199 + [{"a": "abc", "b": "y"}]
    >>> infer_feature_types(rows)
    {'a': 'numeric', 'b': 'categorical'}
    >>> infer_feature_types([{"a": 1.0}] * 90 + [{"a": "x"}] * 10)
    {'a': 'mixed'}
    """
    ignored = set(ignore)
    # (name, type of value) pairs counted at C speed, in order of first appearance (a
    # name's first pair comes first), then classified once per pair rather than per value
    pairs = Counter(chain.from_iterable(zip(f, map(type, f.values())) for f in features))
    counts: dict[str, list[int]] = {}  # name -> [numbers and booleans, strings]
    for (k, t), n in pairs.items():
        c = counts.get(k)
        if c is None:
            if k in ignored:
                continue
            c = counts[k] = [0, 0]
        if issubclass(t, str):
            c[1] += n
        elif issubclass(t, (int, float)):
            c[0] += n
    types = {}
    for name, (n_num, n_str) in counts.items():
        total = n_num + n_str
        if n_num >= TYPE_SHARE * total:
            types[name] = "numeric"
        elif n_str >= TYPE_SHARE * total:
            types[name] = "categorical"
        else:
            types[name] = "mixed"
    return types


def infer_prediction_kind(values: Sequence[Any]) -> str | None:
    """The kind of a model's ``prediction`` from its reference values, by the rule of
    :func:`infer_feature_types`: ``numeric`` when at least 99 % of the non-null values
    are numbers (booleans are class labels here), ``categorical`` when at least 99 %
    are strings or booleans, ``mixed`` otherwise, None when there is none."""
    n_num = n_other = 0
    for v in values:
        if v is None:
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            n_num += 1
        else:
            n_other += 1
    total = n_num + n_other
    if total == 0:
        return None
    if n_num >= TYPE_SHARE * total:
        return "numeric"
    if n_other >= TYPE_SHARE * total:
        return "categorical"
    return "mixed"


def bad_numeric_predictions(values: Sequence[Any]) -> np.ndarray:
    """Rows whose ``prediction`` is not a number (null is fine) for a model whose
    predictions are numeric: those events are of the wrong type."""
    ok = (int, float)
    return np.fromiter(
        (v is not None and (type(v) is bool or not isinstance(v, ok)) for v in values), dtype=bool, count=len(values)
    )


def _category(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _numeric_block(features: Sequence[dict[str, Any]], names: list[str]) -> np.ndarray | None:
    """The fast path: every row has every numeric feature, all numbers or null; one
    C-level pass (itemgetter) and one conversion. None when a row lacks a key or holds
    a value numpy cannot convert (then the column path finds the rows)."""
    if not names:
        return np.empty((len(features), 0), dtype=np.float64)
    get = operator.itemgetter(*names)
    try:
        rows = list(map(get, features))
        block = np.array(rows, dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float64
        return None
    # numpy takes lists as dimensions: one list value (``[1]``) in every row would pass
    # as a number here, yet fail in a batch with other rows; a row's verdict must not
    # depend on its batch, so any other shape goes the column path, which flags it
    if block.shape != ((len(features), len(names)) if len(names) > 1 else (len(features),)):
        return None
    return block.reshape(len(features), len(names))


def _numeric_columns(features: Sequence[dict[str, Any]], names: list[str], bad: np.ndarray) -> np.ndarray:
    """Column by column, marking the rows whose value is not a number in ``bad``."""
    numeric = np.empty((len(features), len(names)), dtype=np.float64)
    for j, name in enumerate(names):
        col = [f.get(name) for f in features]
        try:
            values = np.array(col, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            values = None
        if values is not None and values.shape == (len(col),):  # not when lists became dimensions
            numeric[:, j] = values
            continue
        for i, v in enumerate(col):  # rare: only a column that holds a bad value
            try:
                if isinstance(v, (list, dict)):
                    raise TypeError("a list or an object is not a number")
                numeric[i, j] = np.float64(v) if v is not None else np.nan
            except (TypeError, ValueError, OverflowError):
                numeric[i, j] = np.nan
                bad[i] = True
    return numeric


def decode_features(raws: Sequence[Any]) -> list[dict[str, Any] | None]:
    """Raw ``features`` objects to dicts (the reference is built from these); None for
    an object that parsed as JSON but cannot be held as Python values (a number out of
    float64's range, a string that is not UTF-8, nesting too deep): its event is of the
    wrong type."""
    decode = msgspec.json.decode
    try:
        return [decode(r) for r in raws]
    except (msgspec.DecodeError, RecursionError):
        return [_decode_or_none(decode, r) for r in raws]


def _decode_or_none(decode: Any, raw: Any) -> Any:
    try:
        return decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def columnarize_raw(raws: Sequence[Any], schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`columnarize` for raw ``features`` objects, decoded straight into the
    schema's fields (about half the cost of decoding dicts). When one does not fit
    the schema's fields, the batch is decoded again row by row
    (:func:`_columnarize_rows`), which finds the rows.

    ``raws`` must each be one complete JSON value, as the ``msgspec.Raw`` objects of a
    decoded event are (:attr:`Predictions.features`).
    """
    # Joining the values into one JSON array is safe here, unlike for records
    # (_decode_each): each raw is exactly the bytes of one JSON value that msgspec has
    # already parsed whole. JSON values are self-delimiting (an object, array or string
    # ends at its closing byte, a number or literal at the first byte that cannot
    # continue it, and "," or "]" cannot), so parsing the array reads element i from
    # exactly raw i and nothing else: no raw can complete or absorb a neighbour, and row
    # i's result is the result of raw i alone.
    try:
        rows = schema.decoder().decode(b"[" + b",".join(raws) + b"]")
    except (msgspec.DecodeError, RecursionError):  # ValidationError included
        return _columnarize_rows(raws, schema)
    num, codes = feature_columns(rows, schema)
    return num, codes, np.zeros(len(rows), dtype=bool)


def _columnarize_rows(raws: Sequence[Any], schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`columnarize_raw` row by row, so that a row's columns and verdict are those
    it has alone: a row that fits the schema's fields is read from them (as in one
    pass), another from its dict (:func:`columnarize` flags its wrong-typed values),
    and a row no decoder takes (a number beyond float64, invalid UTF-8 in a string,
    nesting too deep; in a feature the schema ignores, too) is flagged bad."""
    n = len(raws)
    one: msgspec.json.Decoder[Any] = msgspec.json.Decoder(schema.features_type())
    typed: list[Any] = []
    typed_at: list[int] = []
    loose: list[dict[str, Any]] = []
    loose_at: list[int] = []
    bad = np.zeros(n, dtype=bool)
    for i, raw in enumerate(raws):  # rare: only a batch that holds a bad row
        try:
            typed.append(one.decode(raw))
            typed_at.append(i)
            continue
        except (msgspec.DecodeError, RecursionError):
            pass
        try:
            loose.append(msgspec.json.decode(raw))
            loose_at.append(i)
        except (msgspec.DecodeError, RecursionError):
            bad[i] = True
    numeric = np.full((n, len(schema.numeric)), np.nan, dtype=np.float64)
    codes = np.full((n, len(schema.categorical)), -1, dtype=np.int64)
    if typed:
        numeric[typed_at], codes[typed_at] = feature_columns(typed, schema)
    if loose:
        numeric[loose_at], codes[loose_at], bad[loose_at] = columnarize(loose, schema)
    return numeric, codes, bad


def feature_columns(rows: list[Any], schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """Numeric and code columns of decoded feature structs (:meth:`Schema.features_type`)."""
    n = len(rows)
    d_num, d_cat = len(schema.numeric), len(schema.categorical)
    get_numeric, categorical = schema.readers()
    # each struct's fields as one tuple (numeric fields first, in the schema's order):
    # astuple is a C call, several times faster than reading the fields by name
    values = list(map(astuple, rows))
    if get_numeric is not None:
        # one flat pass (None becomes NaN), no tuple of tuples for numpy to walk
        head = map(get_numeric, values) if d_cat else values
        numeric = np.fromiter(chain.from_iterable(head), dtype=np.float64, count=n * d_num).reshape(n, d_num)
    else:
        numeric = np.empty((n, 0), dtype=np.float64)
    if not d_cat:
        return numeric, np.empty((n, 0), dtype=np.int64)
    columns = []
    for j, (get, lookup, other) in enumerate(categorical):
        col = list(map(get, values))
        codes = list(map(lookup.get, col, repeat(other, n)))  # a struct's values are all hashable
        if other in codes:  # rare: unseen or non-string values
            _recode(codes, col, schema.vocabularies[j], other, None)
        columns.append(codes)
    return numeric, np.array(columns, dtype=np.int64).T.copy()  # (n, d_cat), C order as the numeric block


def _codes(col: list[Any], vocab: dict[str, int], bad: np.ndarray | None = None) -> np.ndarray:
    """Category codes of one column: known 0..K-1, unseen K, missing -1. Objects and
    lists are marked in ``bad`` (and coded missing)."""
    other = len(vocab)
    lookup: dict[Any, int] = {**vocab, None: -1}  # looked up with any value of the column
    get = lookup.get
    try:
        codes = np.fromiter(map(get, col, repeat(other, len(col))), dtype=np.int64, count=len(col))
    except TypeError:  # an unhashable value (object, list): found below
        codes = np.array([get(v, other) if not isinstance(v, (dict, list)) else other for v in col], dtype=np.int64)
    _recode(codes, col, vocab, other, bad, np.flatnonzero(codes == other).tolist())
    return codes


def _recode(
    codes: Any, col: list[Any], vocab: dict[str, int], other: int, bad: np.ndarray | None, at: list[int] | None = None
) -> None:
    """Recode the values coded ``other`` (unseen, or not strings) at ``at`` (default:
    wherever ``codes`` holds ``other``): an object or a list is missing and marked in
    ``bad``, another non-string value is looked up by its text."""
    if at is None:
        at = [i for i, c in enumerate(codes) if c == other]
    for i in at:
        v = col[i]
        if isinstance(v, (dict, list)):
            if bad is not None:
                bad[i] = True
            codes[i] = -1
        elif not isinstance(v, str):
            category = _category(v)  # not None: None is coded missing above
            codes[i] = vocab.get(category, other) if category is not None else other


def columnarize(features: Sequence[dict[str, Any]], schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One model's feature dicts to columns.

    Returns
    -------
    numeric
        float64 (n, len(schema.numeric)); missing values are NaN.
    codes
        int64 (n, len(schema.categorical)); known categories 0..K-1, unseen K, missing -1.
    bad_rows
        bool (n,): rows holding a value of the wrong type: for a numeric feature a
        string that is not a number, an object or a list; for a categorical one an
        object or a list.

    Features outside the schema are ignored.

    Notes
    -----
    Numeric strings such as ``"1.5"`` are accepted as numbers (numpy's conversion).
    """
    n = len(features)
    bad = np.zeros(n, dtype=bool)
    numeric = _numeric_block(features, schema.numeric)
    if numeric is None:
        numeric = _numeric_columns(features, schema.numeric, bad)
    codes = np.empty((n, len(schema.categorical)), dtype=np.int64)
    for j, (name, vocab) in enumerate(zip(schema.categorical, schema.vocabularies, strict=False)):
        codes[:, j] = _codes([f.get(name) if isinstance(f, dict) else None for f in features], vocab, bad)
    return numeric, codes, bad
