"""driftline.sinks.jsonl.JsonlSink over real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftline.monitor.alarms import Alarm
from driftline.sinks.exceptions import SinkError
from driftline.sinks.jsonl import JsonlSink


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


def test_a_failed_flush_keeps_the_alarms_and_the_next_one_writes_them_once(tmp_path: Path, make_alarm) -> None:
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


def test_a_line_torn_by_a_crash_is_cut_back_before_appending(tmp_path, caplog):
    path = tmp_path / "alarms.jsonl"
    path.write_bytes(b'{"model":"a"}\n{"model":"fra')  # killed in the middle of a write
    alarm = Alarm("fraud", "v1", "feature_drift", "ks", "x0", 0.3, 1e-5, 1e-9, 0, 999, 1.0, "retrain")
    sink = JsonlSink(path)
    with caplog.at_level("WARNING", logger="driftline.sinks.jsonl"):
        sink.write([alarm])
        sink.flush()
    sink.close()
    lines = path.read_bytes().splitlines()
    assert lines[0] == b'{"model":"a"}' and len(lines) == 2
    assert json.loads(lines[1]) == alarm.to_dict()
    assert "unfinished line" in caplog.text


def test_a_file_that_is_only_a_torn_line_is_emptied_first(tmp_path):
    path = tmp_path / "alarms.jsonl"
    path.write_bytes(b'{"model":"fra')
    sink = JsonlSink(path)
    sink.write([Alarm("m", "v", "data_quality", "missing_rate", "a", 0.5, 0.1, None, 0, 9, 1.0)])
    sink.flush()
    sink.close()
    (line,) = path.read_bytes().splitlines()
    assert json.loads(line)["model"] == "m"
