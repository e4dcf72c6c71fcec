"""sinks.jsonl.JsonlSink over real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.alarms import Alarm
from sinks.exceptions import SinkError
from sinks.jsonl import JsonlSink


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_alarms_are_appended_as_json_lines(tmp_path: Path, make_alarm) -> None:
    path = tmp_path / "out" / "alarms.jsonl"
    sink = JsonlSink(path)
    try:
        sink.write([make_alarm(1.0, index=0), make_alarm(2.0, index=1, feature=None)])
        sink.write([])
        assert not path.exists()  # nothing before flush
        sink.flush()
        sink.write([make_alarm(3.0, index=2, statistic=float("nan"))])
        sink.flush()
    finally:
        sink.close()
    lines = read(path)
    assert [line["first_index"] for line in lines] == [0, 100, 200]
    assert lines[0] == make_alarm(1.0, index=0).to_dict()
    assert lines[1]["feature"] is None and lines[2]["statistic"] is None
    assert Alarm.from_dict(lines[0]) == make_alarm(1.0, index=0)


def test_an_existing_file_is_appended_to(tmp_path: Path, make_alarm) -> None:
    path = tmp_path / "alarms.jsonl"
    for index in range(2):
        sink = JsonlSink(path)
        sink.write([make_alarm(index=index)])
        sink.close()  # close flushes
    assert [line["first_index"] for line in read(path)] == [0, 100]


def test_a_failed_flush_keeps_the_alarms_and_the_next_one_writes_them_once(
    tmp_path: Path, make_alarm
) -> None:
    path = tmp_path / "alarms.jsonl"
    path.mkdir()  # a directory where the file should be: open fails
    sink = JsonlSink(path)
    try:
        sink.write([make_alarm(index=0)])
        with pytest.raises(SinkError, match="kept and retried at the next flush"):
            sink.flush()
        assert sink.pending == 1
        sink.write([make_alarm(index=1)])
        path.rmdir()
        sink.flush()
        assert sink.pending == 0
    finally:
        sink.close()
    assert [line["first_index"] for line in read(path)] == [0, 100]


def test_a_full_disk_is_a_sink_error(make_alarm, caplog) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    sink = JsonlSink("/dev/full")
    sink.write([make_alarm()])
    with pytest.raises(SinkError, match="No space left"):
        sink.flush()
    assert sink.pending == 1
    sink.close()  # tries once more, logs, and releases the file
    assert "closing with 1 unwritten alarm(s)" in caplog.text
