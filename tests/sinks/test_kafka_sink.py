"""driftline.sinks.kafka.KafkaAlarmSink against a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import gc
import json
import logging
import socket

import pytest

from driftline.demo.embedded_broker import EmbeddedBroker
from driftline.monitor.config import KafkaSettings
from driftline.monitor.exceptions import ConfigError
from driftline.sinks.exceptions import SinkError
from driftline.sinks.kafka import KafkaAlarmSink
from tests.support.topics import read_topic

pytestmark = pytest.mark.kafka

TOPIC = "driftline-alarms"


def test_alarms_are_published_as_json_keyed_by_model(broker: EmbeddedBroker, topics, make_alarm) -> None:
    sink = KafkaAlarmSink(
        KafkaSettings(bootstrap_servers=broker.bootstrap_servers, alarms_topic=topics["alarms"]),
        flush_timeout_seconds=10,
    )
    alarms = [make_alarm(1.0, index=0), make_alarm(2.0, index=1, model="churn", feature=None), make_alarm(3.0, index=2)]
    try:
        sink.write(alarms)
        sink.flush()
        assert sink.pending == 0
    finally:
        sink.close()
    got = read_topic(broker.bootstrap_servers, topics["alarms"], 3, timeout=20.0, decode=json.loads)
    assert sorted(got, key=lambda kv: kv[1]["first_index"]) == [
        (alarm.model.encode(), alarm.to_dict()) for alarm in alarms
    ]
    # keyed by model: a model's alarms share a partition, in order
    fraud = [value["first_index"] for key, value in got if key == b"fraud"]
    assert fraud == [0, 200]


# kafka-python 3.0 does not close a socket whose connect() was refused: the garbage
# collector does, with a ResourceWarning. It is that library's leak, not the sink's; the
# test collects those sockets while the warning is ignored, and nowhere else (its error
# logs are silenced so that no captured log record keeps the sockets alive past it).
@pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning")
def test_a_broker_that_is_down_keeps_the_alarms_until_it_is_back(make_alarm, caplog) -> None:
    caplog.set_level(logging.CRITICAL + 1, logger="kafka")
    # The port is held by a bound socket that does not listen (connections to it are
    # refused, as to a broker that is down) until the broker has bound it too
    # (SO_REUSEADDR on both): no other process can take it in between.
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", alarms_topic=TOPIC)
    sink = KafkaAlarmSink(settings, flush_timeout_seconds=1.0)
    try:
        sink.write([make_alarm(index=0)])
        with pytest.raises(SinkError, match="kept for the next flush") as refused:
            sink.flush()
        assert "Unable to bootstrap" in str(refused.value)
        del refused
        gc.collect()
        assert sink.pending == 1
        with EmbeddedBroker(port=port) as broker:
            held.close()
            broker.create_topics([TOPIC])
            sink.flush_timeout_seconds = 10.0
            sink.write([make_alarm(index=1)])
            sink.flush()
            assert sink.pending == 0
            sink.close()
            got = read_topic(broker.bootstrap_servers, TOPIC, 2, timeout=20.0, decode=json.loads)
            assert [value["first_index"] for _, value in got] == [0, 100]
    finally:
        held.close()
        sink.close()


def test_the_topic_is_required() -> None:
    with pytest.raises(ConfigError, match="kafka.alarms_topic"):
        KafkaAlarmSink(KafkaSettings())
