"""A record's verdict does not depend on its batch (issue 10, item 3).

Whatever else a batch holds, each record gets what it gets alone: the same dead letter
with the same reason, or the same event with the same fields and feature columns. The
batches are built to tempt a decoder that reads a batch as one JSON array: valid events
cut at their structural commas into as many pieces as there were events (invalid alone,
valid when joined with commas), cut at random bytes, spliced, padded with whitespace,
broken UTF-8, random bytes, numbers beyond float64.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from driftline.monitor.decode import BatchDecoder, DecodedBatch, Record, Schema, columnarize_raw, decode_batch

PRED, FB = "predictions", "feedback"

_SCHEMAS = {
    "a": Schema(["x", "y"], ["c"], [{"p": 0, "q": 1}]),
    "b": Schema(["x"], ["c", "d"], [{"p": 0}, {"r": 0, "s": 1}]),
}

# strings with the bytes that matter to a JSON scanner: quotes, escapes, brackets, commas
_TEXT = st.text(alphabet=st.sampled_from(list('pq,"\\]}[{: é\u2028')), min_size=1, max_size=4)
_NUMBER = st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False), st.integers(-3, 3), st.booleans())
_CATEGORY = st.one_of(st.none(), st.sampled_from(["p", "q", "r", "s", "new"]), st.integers(0, 2), _TEXT)
_ODD = st.one_of(st.just([1]), st.just([]), st.just({"k": [1, 2]}), st.just("1.5"), _TEXT)
_FEATURES = st.fixed_dictionaries(
    {},
    optional={
        "x": st.one_of(_NUMBER, _NUMBER, _NUMBER, _ODD),
        "y": _NUMBER,
        "c": _CATEGORY,
        "d": _CATEGORY,
        "e": st.one_of(_NUMBER, _CATEGORY, _ODD),
    },
)
_ID = st.one_of(_TEXT, st.integers(0, 99))
_PREDICTION = st.fixed_dictionaries(
    {"model": st.sampled_from(["a", "a", "b", "b", "u"]), "id": _ID, "features": _FEATURES},
    optional={
        "version": st.sampled_from(["v1", "v2", ""]),
        "ts": st.floats(0, 2e9),
        "prediction": st.one_of(st.floats(0, 1), st.sampled_from(["yes", "no"])),
        "scores": st.dictionaries(st.sampled_from(["yes", "no"]), st.floats(0, 1), max_size=2),
        "latency_ms": st.floats(0, 100),
    },
)
_FEEDBACK = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["a", "b", "u"]),
        "id": _ID,
        "label": st.one_of(st.integers(0, 1), st.sampled_from(["yes", "no"]), st.floats(0, 1)),
    },
    optional={
        "version": st.sampled_from(["v1", "v2"]),
        "ts": st.floats(0, 2e9),
        "prediction": st.sampled_from(["yes", "no"]),
    },
)
_WHITESPACE = st.text(alphabet=" \t\n\r", max_size=3).map(str.encode)
_TOPIC_EVENTS = st.one_of(
    st.tuples(st.just(PRED), st.lists(_PREDICTION, min_size=1, max_size=4)),
    st.tuples(st.just(FB), st.lists(_FEEDBACK, min_size=1, max_size=3)),
)


def _structural_commas(text: bytes) -> list[int]:
    """Positions of the commas of ``text`` (compact JSON) that are not inside a string."""
    out, in_string, escaped = [], False, False
    for i, byte in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte == 0x2C:
            out.append(i)
    return out


def _cut(text: bytes, at: list[int], drop: int) -> list[bytes]:
    """``text`` cut at the sorted positions ``at``, dropping ``drop`` bytes at each cut."""
    pieces, start = [], 0
    for i in at:
        pieces.append(text[start:i])
        start = i + drop
    return pieces + [text[start:]]


@st.composite
def comma_splices(draw) -> tuple[str, list[bytes]]:
    """Events of one topic joined by commas, then cut at as many structural commas as
    there are events, less one (the commas dropped): joined again with commas inside
    brackets they are exactly as many valid events as pieces, though most pieces are
    not a JSON text alone."""
    topic, events = draw(_TOPIC_EVENTS)
    text = b",".join(map(orjson.dumps, events))
    commas = _structural_commas(text)
    k = min(len(events) - 1, len(commas)) if draw(st.booleans()) else draw(st.integers(0, min(4, len(commas))))
    at = sorted(draw(st.lists(st.sampled_from(commas), min_size=k, max_size=k, unique=True))) if k else []
    return topic, _cut(text, at, 1)


@st.composite
def byte_splices(draw) -> tuple[str, list[bytes]]:
    """Events of one topic cut at random bytes (inside a UTF-8 character, too) and
    glued back in another order."""
    topic, events = draw(_TOPIC_EVENTS)
    text = b"".join(map(orjson.dumps, events))
    at = sorted(draw(st.lists(st.integers(1, len(text) - 1), max_size=4, unique=True)))
    pieces = _cut(text, at, 0)
    return topic, draw(st.permutations(pieces)) if draw(st.booleans()) else pieces


_ODD_VALUES = st.sampled_from(
    [
        b"",
        b" ",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b"null",
        b"{}",
        b"[1]",
        b'"text"',
        b"\xff",
        b"\xef\xbb\xbf{}",
        b'{"model":"a","id":1,"features":{"c":"\xff"}}',  # broken UTF-8 in a feature
        b'{"model":"a","id":1,"features":{"z":"\xff"}}',  # ... in a feature no schema has
        b'{"model":"a\xff","id":1,"features":{}}',
        b'{"model":"a","id":1,"features":{"x":1e400}}',  # beyond float64
        b'{"model":"a","id":1,"features":{"z":-1e400}}',
        b'{"model":"b","id":1,"features":{"x":1' + b"0" * 400 + b"}}",
        b'{"model":"b","id":1,"features":{"c":1' + b"0" * 30 + b"}}",
        b'{"model":"a","id":1,"features":{"e":' + b"[" * 60 + b"]" * 60 + b"}}",
        b'{"model":"a","id":1,"features":{},"ts":1e999}',
        b'{"model":"a","id":1,"features":{"x":[1]}}',
        b'{"model":"a","id":1,"features":{"x":[[1]]}}',
        b'{"model":"a","id":1,"features":{"x":1,"x":"text"}}',
        b'{"model":"a","id":1,"features":{"x":"t","x":2}}',
        b'{"model":"a","model":"b","id":1,"features":{}}',
        b'{"model":"a","id":1,"features":{}} {"model":"a","id":2,"features":{}}',
        b'{"model":"a","id":1,"features":{}},{"model":"a","id":2,"features":{}}',
    ]
)
_NOISE = st.one_of(
    _ODD_VALUES.map(lambda v: [v]),
    st.binary(max_size=24).map(lambda v: [v]),
    st.tuples(_WHITESPACE, _PREDICTION.map(orjson.dumps), _WHITESPACE).map(lambda t: [b"".join(t)]),
)
_GROUPS = st.one_of(
    comma_splices(),
    comma_splices(),
    byte_splices(),
    st.tuples(st.sampled_from([PRED, PRED, FB]), _NOISE),
)


def _records(groups: list[tuple[str, list[bytes]]], pad: list[tuple[bytes, bytes]]) -> list[Record]:
    """The groups' pieces as records (each piece whitespace-padded as ``pad`` says), in
    order; offsets number them, timestamps differ."""
    values = [(topic, v) for topic, pieces in groups for v in pieces]
    out = []
    for i, (topic, value) in enumerate(values):
        left, right = pad[i % len(pad)] if pad else (b"", b"")
        out.append(Record(topic, 0, i, 1_000 + i, None, left + value + right if value else value))
    return out


def _nan_safe(values: Any) -> tuple:
    return tuple(None if isinstance(v, float) and v != v else v for v in values)


def _verdicts(out: DecodedBatch) -> tuple[dict[int, str], Counter, Counter]:
    """Dead letters by offset (reason), rows marked bad (offset), and the multiset of
    accepted rows: every field of a prediction (its feature columns where they were
    decoded, else its raw features) and of a feedback event."""
    dead = {d.offset: d.reason for d in out.dead_letters}
    bad: Counter = Counter()
    rows: Counter = Counter()
    for model, p in out.predictions.items():
        fields = list(
            zip(
                p.ids,
                p.versions,
                p.ts,
                p.prediction,
                p.latency_ms,
                [orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in p.scores],
                strict=False,
            )
        )
        if p.columns is None:
            feats = [(bytes(f),) for f in p.features]
            ok = np.ones(len(p), dtype=bool)
        else:
            feats = [
                _nan_safe(n) + tuple(c)
                for n, c in zip(p.columns.numeric.tolist(), p.columns.codes.tolist(), strict=False)
            ]
            ok = ~p.columns.bad
            bad.update(r.offset for r in p.columns.bad_sources)
        rows.update((PRED, model) + _nan_safe(f) + g for f, g, keep in zip(fields, feats, ok, strict=False) if keep)
    for model, f in out.feedback.items():
        rows.update(
            (FB, model) + _nan_safe(t) for t in zip(f.ids, f.ts, f.labels, f.prediction, f.versions, strict=False)
        )
    return dead, bad, rows


def _assert_alone_equals_together(decode, recs: list[Record]) -> int:
    """decode(batch) gives each record what decode([record]) gives it; returns how many
    records were accepted together."""
    together = decode(recs)
    assert together.n_records == len(recs)
    dead, bad, rows = _verdicts(together)
    alone_dead: dict[int, str] = {}
    alone_bad: Counter = Counter()
    alone_rows: Counter = Counter()
    for rec in recs:
        d, b, r = _verdicts(decode([rec]))
        alone_dead.update(d)
        alone_bad.update(b)
        alone_rows.update(r)
    assert dead == alone_dead
    assert bad == alone_bad
    assert rows == alone_rows
    assert len(dead) + sum(bad.values()) + sum(rows.values()) == len(recs)
    return sum(rows.values())


def _array_join_accepts(topic: str, pieces: list[bytes]) -> bool:
    """Whether the old decoder, one JSON array of the joined pieces with a count check,
    took these pieces as valid events."""
    from driftline.monitor.decode import FeedbackEvent, PredictionEvent

    kind = FeedbackEvent if topic == FB else PredictionEvent
    try:
        events = msgspec.json.decode(b"[" + b",".join(pieces) + b"]", type=list[kind])
    except msgspec.DecodeError:
        return False
    return len(events) == len(pieces)


def _is_merge(topic: str, pieces: list[bytes]) -> bool:
    """Pieces the old decoder accepted although one of them is not an event alone."""
    from driftline.monitor.decode import FeedbackEvent, PredictionEvent

    kind = FeedbackEvent if topic == FB else PredictionEvent

    def alone(v: bytes) -> bool:
        try:
            msgspec.json.decode(v, type=kind)
            return True
        except msgspec.DecodeError:
            return False

    return len(pieces) > 1 and _array_join_accepts(topic, pieces) and not all(map(alone, pieces))


_PADS = st.lists(st.tuples(_WHITESPACE, _WHITESPACE), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(_GROUPS, min_size=1, max_size=6), _PADS)
def test_decode_batch_verdict_is_the_records_alone(groups, pad):
    recs = _records(groups, pad)
    _assert_alone_equals_together(lambda rs: decode_batch(rs, PRED, FB), recs)


@settings(max_examples=200, deadline=None)
@given(st.lists(_GROUPS, min_size=1, max_size=6), _PADS, st.sampled_from([("a",), ("a", "b")]))
def test_batch_decoder_verdict_is_the_records_alone(groups, pad, known):
    recs = _records(groups, pad)
    decoder = BatchDecoder(PRED, FB)
    decoder.set_schemas({m: _SCHEMAS[m].to_state() for m in known})
    _assert_alone_equals_together(decoder.decode, recs)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_PREDICTION.map(orjson.dumps), st.booleans()), min_size=1, max_size=8))
def test_clean_batches_take_the_typed_pass(items):
    """Clean batches of known models still take the one typed pass (no raw features
    left), and give each record what it gets alone."""
    values = [v for v, _ in items if b'"model":"u"' not in v]
    recs = [Record(PRED, 0, i, 1_000 + i, None, v) for i, v in enumerate(values)]
    decoder = BatchDecoder(PRED, FB)
    decoder.set_schemas({m: s.to_state() for m, s in _SCHEMAS.items()})
    _assert_alone_equals_together(decoder.decode, recs)
    out = decoder.decode(recs)
    assert all(p.columns is not None and p.features == [] for p in out.predictions.values())


ISSUE_MERGE = [
    b'{"model":"m","id":1,"features":{"a":[1',
    b'2]},"prediction":0.5}, {"model":"m","id":2,"features":{"a":3}}',
]


@pytest.mark.parametrize("schemas", [{}, {"m": Schema(["a"], [], []).to_state()}])
def test_the_issues_merge_is_dead_lettered_twice(schemas):
    """The issue's two records, each invalid alone, once read as one valid event and a
    fabricated one; now both are dead letters with the reason each has alone (the
    second is not JSON either: invalid_json, not "not an object" though it starts with a
    number), whichever decoder."""
    assert _is_merge(PRED, ISSUE_MERGE)  # the old array decoder took them
    recs = [Record(PRED, 0, i, 1_000, None, v) for i, v in enumerate(ISSUE_MERGE)]
    decoder = BatchDecoder(PRED, FB)
    decoder.set_schemas(schemas)
    for out in (decode_batch(recs, PRED, FB), decoder.decode(recs)):
        assert out.n_predictions == 0 and not out.predictions
        assert [(d.offset, d.reason) for d in out.dead_letters] == [(0, "invalid_json"), (1, "invalid_json")]


def test_the_splice_strategy_makes_merges():
    """The generator of the property tests does produce pieces that the old array
    decoder took as events (so the properties above are tested on them): of 200
    groups it draws, at least 10 % are such merges."""
    merges = []

    @settings(max_examples=200, deadline=None, database=None)
    @given(comma_splices())
    def count(group):
        merges.append(_is_merge(*group))

    count()
    assert sum(merges) >= 0.1 * len(merges), f"{sum(merges)} merges in {len(merges)} groups"
    topic, pieces = find(comma_splices(), lambda g: _is_merge(*g), settings=settings(database=None))
    assert _array_join_accepts(topic, pieces)


def test_a_feature_no_decoder_takes_flags_its_row_not_the_batch():
    """A feature value that skips through the event decoder but that neither the
    schema's struct nor a dict takes (a number beyond float64, broken UTF-8) flags its
    row, in a batch that needs the row-by-row path, instead of raising."""
    schema = _SCHEMAS["a"]
    raws = [
        msgspec.Raw(v)
        for v in (
            b'{"x":1.5}',
            b'{"x":"t"}',
            b'{"z":1e400,"x":2}',
            b'{"x":1e400}',
            b'{"c":"\xff"}',
            b'{"x":1' + b"0" * 400 + b"}",
            b'{"x":[1]}',
        )
    ]
    num, codes, bad = columnarize_raw(raws, schema)
    assert bad.tolist() == [False, True, False, True, True, True, True]
    assert num[:, 0].tolist()[:1] == [1.5] and num[2, 0] == 2.0
    for i, raw in enumerate(raws):  # and each row alone gets the same
        n1, c1, b1 = columnarize_raw([raw], schema)
        assert b1[0] == bad[i] and (b1[0] or (_nan_safe(n1[0]) == _nan_safe(num[i]) and (c1[0] == codes[i]).all()))


def test_deep_nesting_is_a_dead_letter_not_a_crash():
    deep = b'{"model":"a","id":1,"features":{"e":' + b"[" * 5_000 + b"]" * 5_000 + b"}}"
    recs = [
        Record(PRED, 0, 0, 1_000, None, deep),
        Record(PRED, 0, 1, 1_000, None, b'{"model":"a","id":2,"features":{}}'),
    ]
    out = decode_batch(recs, PRED, FB)
    assert [(d.offset, d.reason) for d in out.dead_letters] == [(0, "invalid_json")]
    assert out.predictions["a"].ids == ["2"]
