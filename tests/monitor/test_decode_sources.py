"""Every source hands the service the same decoded batch, and the consumer process's
messages are typed values that cross the process boundary intact."""

from __future__ import annotations

import pickle

import numpy as np

from driftline.monitor.decode import DecodedBatch, Schema, columnarize, decode_batch, decode_features
from driftline.monitor.sources import (
    Batch,
    BrokerStatus,
    Close,
    Commit,
    GetStatus,
    JsonlSource,
    Reply,
    Request,
    SchemaSink,
    Seek,
    ShareSchemas,
)
from tests.monitor.streams import prediction_events, records, to_jsonl


def test_a_replay_source_hands_over_decoded_batches_with_columns_once_schemas_are_shared(tmp_path):
    events = prediction_events(300, seed=3)
    path = tmp_path / "p.jsonl"
    path.write_bytes(to_jsonl(events) + b"{oops\n")
    src = JsonlSource(path, None, predictions_topic="predictions", feedback_topic="feedback", batch_size=100)
    assert isinstance(src, SchemaSink)

    first = src.poll()
    assert isinstance(first, DecodedBatch) and len(first) == 100
    assert first.predictions["fraud"].columns is None  # no schema yet: raw features for the engine
    expected = decode_batch(list(records(events[:100], "predictions")), "predictions", "feedback")
    assert first.predictions["fraud"].ids == expected.predictions["fraud"].ids

    features = [f for f in decode_features(first.predictions["fraud"].features) if f is not None]
    schema, _ = Schema.infer(features, None, None, (), 100)
    assert src.share_schemas({"fraud": schema.to_state()}) is True
    second = src.poll()
    columns = second.predictions["fraud"].columns
    assert columns is not None and columns.fingerprint == schema.fingerprint()
    numeric, codes, bad = columnarize([e["features"] for e in events[100:200]], schema)
    np.testing.assert_array_equal(columns.numeric, numeric)
    np.testing.assert_array_equal(columns.codes, codes)
    assert not bad.any() and not columns.bad.any()

    assert len(src.poll()) == 100 and not src.exhausted
    last = src.poll()  # the bad line and the end of the file
    assert len(last) == 1 and [d.reason for d in last.dead_letters] == ["invalid_json"] and src.exhausted
    empty = src.poll()
    assert isinstance(empty, DecodedBatch) and not empty  # nothing more: an empty, false batch
    assert src.status().lag == {} and src.status().error is None


def test_the_consumer_process_messages_cross_a_process_boundary_intact():
    messages = [
        Request(1, Commit({("predictions", 0): 5})),
        Request(2, Seek({("predictions", 1): 7})),
        Request(3, GetStatus()),
        Request(4, ShareSchemas({"fraud": Schema(["x"], ["c"], [{"a": 0}]).to_state()})),
        Request(0, Close()),
        Reply(0),
        Reply(3, BrokerStatus({("predictions", 0): 9}, 1, None, 2)),
        Reply(1, error="KafkaTimeoutError: boom"),
        Batch([("predictions", 0, 0, -1, None, b"{}")], {("predictions", 0): 1}, [("predictions", 0)]),
    ]
    for message in messages:
        assert pickle.loads(pickle.dumps(message)) == message
    assert [Commit.name, Seek.name, GetStatus.name, ShareSchemas.name, Close.name] == [
        "commit",
        "seek",
        "status",
        "schemas",
        "close",
    ]
