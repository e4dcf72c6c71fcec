from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.monitor.decode import Schema, columnarize, decode_batch
from tests.monitor.streams import prediction_events


def _decode(values, topic="predictions"):
    recs = [
        type("R", (), dict(topic=topic, partition=0, offset=i, timestamp=1_000, key=None, value=v))()
        for i, v in enumerate(values)
    ]
    return decode_batch(recs, "predictions", "feedback")


GOOD = orjson.dumps({"model": "m", "id": "a", "features": {"x": 1.0}})


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b"", "empty_value"),
        (orjson.dumps({"id": "a", "features": {}}), "missing_field"),
        (orjson.dumps({"model": "m", "features": {}}), "missing_field"),
        (orjson.dumps({"model": "m", "id": "a"}), "missing_field"),
        (orjson.dumps({"model": 3, "id": "a", "features": {}}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": [1], "features": {}}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": "a", "features": []}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": "a", "features": {}, "ts": "yesterday"}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": "a", "features": {}, "prediction": {"p": 1}}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": "a", "features": {}, "scores": {"a": "x"}}), "wrong_type"),
        (orjson.dumps({"model": "m", "id": "a", "features": {}, "latency_ms": "fast"}), "wrong_type"),
    ],
)
def test_bad_prediction_is_dead_lettered_with_reason_and_others_survive(raw, reason):
    out = _decode([GOOD, raw, GOOD])
    assert [d.reason for d in out.dead_letters] == [reason]
    assert out.dead_letters[0].value == raw and out.dead_letters[0].offset == 1
    assert out.n_predictions == 2 and len(out.predictions["m"]) == 2


def test_feedback_contract():
    out = _decode(
        [
            orjson.dumps({"model": "m", "id": 7, "label": 1}),
            orjson.dumps({"model": "m", "id": "b"}),
            orjson.dumps({"model": "m", "id": "c", "label": {"x": 1}}),
        ],
        topic="feedback",
    )
    assert out.n_feedback == 1 and out.feedback["m"].ids == ["7"]
    assert sorted(d.reason for d in out.dead_letters) == ["missing_field", "wrong_type"]


def test_defaults_version_and_kafka_timestamp():
    out = _decode([GOOD])
    p = out.predictions["m"]
    assert p.versions == ["default"] and p.ts == [1.0]


def test_schema_inference_and_columns():
    feats = [{"a": 1.0, "b": "x", "c": True}, {"a": None, "b": "y", "c": False}, {"a": 2, "b": None}]
    schema, dropped = Schema.infer(feats, None, None, [], 10)
    assert schema.numeric == ["a", "c"] and schema.categorical == ["b"] and dropped == 0
    num, codes, bad = columnarize([{"a": 3.5, "b": "y"}, {"a": "oops", "b": "zzz"}, {"b": None, "extra": 1}], schema)
    np.testing.assert_array_equal(bad, [False, True, False])
    assert num[0, 0] == 3.5 and np.isnan(num[1, 0]) and np.isnan(num[2, 0])
    assert codes[:, 0].tolist() == [schema.vocabularies[0]["y"], 2, -1]  # 2 = unseen ("other")


def test_schema_cap_counts_dropped_features():
    feats = [{f"f{i}": float(i) for i in range(12)}]
    schema, dropped = Schema.infer(feats, None, None, [], 5)
    assert len(schema.numeric) == 5 and dropped == 7


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-1000, 1000)),
        min_size=1,
        max_size=30,
    )
)
def test_numeric_column_matches_per_value_conversion(values):
    schema = Schema(["a"], [], [])
    num, _, bad = columnarize([{"a": v} for v in values], schema)
    expected = [np.nan if v is None else float(v) for v in values]
    np.testing.assert_array_equal(num[:, 0], expected)
    assert not bad.any()


def test_every_record_accounted_for():
    events = prediction_events(50)
    raw = [orjson.dumps(e) for e in events]
    raw[10] = b"garbage"
    raw[20] = orjson.dumps({"model": "fraud"})
    out = _decode(raw)
    assert out.n_predictions + len(out.dead_letters) == len(raw)


def test_categorical_values_that_are_not_strings_use_their_text():
    # a third strings: mixed by inference (not monitored), categorical when configured
    assert Schema.infer([{"c": "a"}, {"c": True}, {"c": 5}], None, None, [], 10)[0].categorical == []
    schema, _ = Schema.infer([{"c": "a"}, {"c": True}, {"c": 5}], None, ["c"], [], 10)
    assert schema.categorical == ["c"]
    vocab = schema.vocabularies[0]
    _, codes, bad = columnarize([{"c": True}, {"c": 5}, {"c": "a"}, {"c": "new"}, {"c": {"x": 1}}], schema)
    assert codes[:, 0].tolist() == [vocab["true"], vocab["5"], vocab["a"], len(vocab), -1]
    assert bad.tolist() == [False, False, False, False, True]


_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["a", "b", "zz", ""]),
    st.just([1]),
    st.just({"k": 1}),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(["x", "y", "c", "extra"]), _VALUE, max_size=4), min_size=1, max_size=12)
)
def test_raw_columns_equal_dict_columns(rows):
    """The fast path (features decoded into the schema's struct) and the dict path give
    the same columns and flag the same rows, whatever the values."""
    import msgspec

    schema = Schema(["x", "y"], ["c"], [{"a": 0, "b": 1, "true": 2, "5": 3}])
    raws = [msgspec.Raw(orjson.dumps(r)) for r in rows]
    from driftline.monitor.decode import columnarize_raw

    num_r, codes_r, bad_r = columnarize_raw(raws, schema)
    num_d, codes_d, bad_d = columnarize(rows, schema)
    np.testing.assert_array_equal(bad_r, bad_d)
    ok = ~bad_d
    np.testing.assert_array_equal(num_r[ok], num_d[ok])
    np.testing.assert_array_equal(codes_r[ok], codes_d[ok])


# ---- BatchDecoder: the consumer process's decoder -------------------------------------------

_SCHEMAS = {
    "a": Schema(["x", "y"], ["c"], [{"p": 0, "q": 1}]),
    "b": Schema(["x"], ["c", "d"], [{"p": 0}, {"r": 0, "s": 1}]),
}
_NUMBER = st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False), st.integers(-3, 3), st.booleans())
_CATEGORY = st.one_of(st.none(), st.sampled_from(["p", "q", "r", "s", "new"]), st.integers(0, 2))
_FEATURE = st.one_of(_NUMBER, _CATEGORY)
_FEATURES = st.fixed_dictionaries(
    {}, optional={"x": _NUMBER, "y": _NUMBER, "c": _CATEGORY, "d": _CATEGORY, "e": _FEATURE}
)
_EVENT = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["a"] * 12 + ["b"] * 12 + ["u"]),
        "id": st.one_of(st.text(min_size=1, max_size=3), st.integers(0, 9), st.text(max_size=1)),
        "features": st.one_of(
            _FEATURES,
            _FEATURES,
            _FEATURES,
            st.dictionaries(st.sampled_from(["x", "y", "c", "d", "e"]), _FEATURE, max_size=5),
        ),
    },
    optional={
        "version": st.sampled_from(["v1", "v2"] * 10 + [""]),
        "ts": st.floats(0, 2e9),
        "prediction": st.one_of(st.floats(0, 1), st.sampled_from(["yes", "no"])),
        "latency_ms": st.floats(0, 100),
    },
)
_RAW = st.one_of(
    *[_EVENT.map(orjson.dumps)] * 40,
    st.sampled_from(
        [
            b"{not json",
            b"[1]",
            b"",
            b'{"id": "1", "features": {}}',
            b'{"model": "", "id": 1, "features": {}}',
            b'{"model": "a", "id": 1, "features": {"x": "text"}}',
            b'{"model": "a", "id": 1, "features": 3}',
            b'{"model": "a", "id": 1, "features": {}, "ts": 1e999}',
        ]
    ),
)


def _records(values, topics):
    from driftline.monitor.decode import Record

    return [Record(t, 0, i, 1_000 + i, None, v) for i, (v, t) in enumerate(zip(values, topics, strict=False))]


def _same(x, y):
    return x == y or (isinstance(x, float) and isinstance(y, float) and np.isnan(x) and np.isnan(y))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_RAW, st.sampled_from(["predictions"] * 5 + ["feedback"])), min_size=1, max_size=12),
    st.sampled_from([(), ("a",), ("a", "b")]),
)
def test_batch_decoder_equals_decode_batch_then_columns(items, known):
    """Whichever path a batch takes (one typed pass, or the general one), the consumer
    process's decoder gives what decode_batch plus columnarize_raw give: the same dead
    letters, the same rows, the same columns."""
    from driftline.monitor.decode import BatchDecoder, columnarize_raw

    recs = _records([v for v, _ in items], [t for _, t in items])
    decoder = BatchDecoder("predictions", "feedback")
    decoder.set_schemas({m: _SCHEMAS[m].to_state() for m in known})
    got = decoder.decode(recs)
    want = decode_batch(recs, "predictions", "feedback")
    assert got.n_records == want.n_records == len(recs)
    assert sorted((d.offset, d.reason) for d in got.dead_letters) == sorted(
        (d.offset, d.reason) for d in want.dead_letters
    )
    assert got.predictions.keys() == want.predictions.keys()
    for model, w in want.predictions.items():
        g = got.predictions[model]
        for name in ("versions", "ids", "ts", "prediction", "scores", "latency_ms"):
            got_values, want_values = getattr(g, name), getattr(w, name)
            assert all(map(_same, got_values, want_values)) and len(got_values) == len(want_values)
        if model not in known:
            assert g.columns is None and [bytes(f) for f in g.features] == [bytes(f) for f in w.features]
            continue
        num, codes, bad = columnarize_raw(w.features, _SCHEMAS[model])
        assert g.columns.fingerprint == _SCHEMAS[model].fingerprint()
        np.testing.assert_array_equal(g.columns.bad, bad)
        np.testing.assert_array_equal(g.columns.numeric[~bad], num[~bad])
        np.testing.assert_array_equal(g.columns.codes[~bad], codes[~bad])
        assert [r.offset for r in g.columns.bad_sources] == [w.sources[i].offset for i in np.flatnonzero(bad)]
    assert {m: f.ids for m, f in got.feedback.items()} == {m: f.ids for m, f in want.feedback.items()}


def test_batch_decoder_takes_one_pass_when_every_model_has_a_schema():
    """The fast path is taken (no raw features left to decode) for a clean batch of
    known models, and not when one record belongs to a model without a schema."""
    from driftline.monitor.decode import BatchDecoder

    events = [{"model": m, "id": i, "features": {"x": 1.5, "c": "p"}} for i, m in enumerate("abab")]
    decoder = BatchDecoder("predictions", "feedback")
    decoder.set_schemas({m: s.to_state() for m, s in _SCHEMAS.items()})
    out = decoder.decode(_records([orjson.dumps(e) for e in events], ["predictions"] * 4))
    assert {m: p.columns.numeric[:, 0].tolist() for m, p in out.predictions.items()} == {
        "a": [1.5, 1.5],
        "b": [1.5, 1.5],
    }
    assert all(p.sources == [] and p.features == [] for p in out.predictions.values())
    events.append({"model": "u", "id": 9, "features": {"x": 1.0}})
    out = decoder.decode(_records([orjson.dumps(e) for e in events], ["predictions"] * 5))
    assert out.predictions["u"].columns is None and len(out.predictions["u"].features) == 1
    assert out.predictions["a"].columns is not None
