"""State holds source records as driftline Records, whichever client read them.

kafka-python's ``ConsumerRecord`` (what the in-process source hands over with
``kafka.fast_record_parser: false``) has thirteen fields; a checkpoint taken while the
reference fills must restore from it like from driftline's own six-field Record.
"""

from __future__ import annotations

import orjson
from kafka.consumer.fetcher import ConsumerRecord

from driftline.monitor.checkpoint import decode_state, encode_state
from driftline.monitor.config import Settings
from driftline.monitor.decode import Record, decode_batch
from driftline.monitor.engine import Engine


def _consumer_records(n: int, start: int = 0) -> list[ConsumerRecord]:
    return [
        ConsumerRecord(
            "predictions",
            0,
            -1,
            i,
            1_700_000_000_000 + i,
            0,
            b"m",
            orjson.dumps({"model": "m", "id": str(i), "features": {"a": float(i % 7)}, "prediction": 0.5}),
            [],
            None,
            1,
            40,
            -1,
        )  # fmt: skip
        for i in range(start, start + n)
    ]


def test_a_reference_filling_from_consumer_records_survives_a_checkpoint() -> None:
    settings = Settings(defaults={"reference": {"size": 100}})
    engine = Engine(settings)
    engine.process(decode_batch(_consumer_records(40), "predictions", "feedback"))
    assert not engine.reference_ready
    restored = Engine(settings)
    restored.load_state(decode_state(orjson.loads(orjson.dumps(encode_state(engine.state_dict())))))
    held = restored.models["m"]._buffer
    assert [b.source for b in held] == [
        Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value) for r in _consumer_records(40)
    ]
    # the restored engine completes the reference exactly as the uninterrupted one
    a, b = (
        e.process(decode_batch(_consumer_records(100, start=40), "predictions", "feedback")) for e in (engine, restored)
    )
    assert engine.reference_ready and restored.reference_ready
    assert a.alarms == b.alarms and a.dead_letters == b.dead_letters
    assert orjson.dumps(encode_state(engine.state_dict())) == orjson.dumps(encode_state(restored.state_dict()))
