from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given, settings, strategies as st

from monitor.decode import Schema, columnarize, decode_batch
from tests.monitor.streams import prediction_events, records


def _decode(values, topic="predictions"):
    recs = [type("R", (), dict(topic=topic, partition=0, offset=i, timestamp=1_000, key=None, value=v))()
            for i, v in enumerate(values)]
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
    out = _decode([
        orjson.dumps({"model": "m", "id": 7, "label": 1}),
        orjson.dumps({"model": "m", "id": "b"}),
        orjson.dumps({"model": "m", "id": "c", "label": {"x": 1}}),
    ], topic="feedback")
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
    num, codes, bad, unexpected = columnarize(
        [{"a": 3.5, "b": "y"}, {"a": "oops", "b": "zzz"}, {"b": None, "extra": 1}], schema)
    np.testing.assert_array_equal(bad, [False, True, False])
    assert num[0, 0] == 3.5 and np.isnan(num[1, 0]) and np.isnan(num[2, 0])
    assert codes[:, 0].tolist() == [schema.vocabularies[0]["y"], 2, -1]  # 2 = unseen ("other")
    assert unexpected == 1


def test_schema_cap_counts_dropped_features():
    feats = [{f"f{i}": float(i) for i in range(12)}]
    schema, dropped = Schema.infer(feats, None, None, [], 5)
    assert len(schema.numeric) == 5 and dropped == 7


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32),
                          st.integers(-1000, 1000)), min_size=1, max_size=30))
def test_numeric_column_matches_per_value_conversion(values):
    schema = Schema(["a"], [], [])
    num, _, bad, _ = columnarize([{"a": v} for v in values], schema)
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
    schema, _ = Schema.infer([{"c": "a"}, {"c": True}, {"c": 5}], None, None, [], 10)
    assert schema.categorical == ["c"]
    vocab = schema.vocabularies[0]
    _, codes, bad, _ = columnarize([{"c": True}, {"c": 5}, {"c": "a"}, {"c": "new"}, {"c": {"x": 1}}], schema)
    assert codes[:, 0].tolist() == [vocab["true"], vocab["5"], vocab["a"], len(vocab), -1]
    assert bad.tolist() == [False, False, False, False, True]


_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1e6, 1e6, allow_nan=False),
                   st.sampled_from(["a", "b", "zz", ""]), st.just([1]), st.just({"k": 1}))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["x", "y", "c", "extra"]), _VALUE, max_size=4),
                min_size=1, max_size=12))
def test_raw_columns_equal_dict_columns(rows):
    """The fast path (features decoded into the schema's struct) and the dict path give
    the same columns and flag the same rows, whatever the values."""
    import msgspec

    schema = Schema(["x", "y"], ["c"], [{"a": 0, "b": 1, "true": 2, "5": 3}])
    raws = [msgspec.Raw(orjson.dumps(r)) for r in rows]
    from monitor.decode import columnarize_raw

    num_r, codes_r, bad_r = columnarize_raw(raws, schema)
    num_d, codes_d, bad_d, _ = columnarize(rows, schema)
    np.testing.assert_array_equal(bad_r, bad_d)
    ok = ~bad_d
    np.testing.assert_array_equal(num_r[ok], num_d[ok])
    np.testing.assert_array_equal(codes_r[ok], codes_d[ok])
