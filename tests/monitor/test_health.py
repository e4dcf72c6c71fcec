"""Health that tells the truth, and requests to the consumer process matched by id.

- The consumer process's replies carry the id of their request: a late reply is
  dropped, never taken for the answer to a later request; a request that times out is
  not done (commit) or unknown (status).
- /readyz and ``driftline_ready``: ``partitions`` is false for an instance the group
  gave nothing (real broker, three instances over one partition per topic);
  ``consuming`` is false when nothing arrives for ``stall_timeout_seconds`` while
  there is lag; ``kafka`` is false when the brokers do not answer (the outage test
  freezes a real broker; here a source reports it).
"""

from __future__ import annotations

import queue
import threading
import time

import httpx
import pytest

from driftline.app import Service
from driftline.monitor.config import load_settings
from driftline.monitor.decode import BatchDecoder, DecodedBatch
from driftline.monitor.sources import (
    _TIMED_OUT,
    BrokerStatus,
    Commit,
    GetStatus,
    ProcessKafkaSource,
    Reply,
    SourceStatus,
)
from tests.support.runs import wait_for

pytestmark = [pytest.mark.timeout(180)]


class _Alive:
    exitcode = None

    def is_alive(self) -> bool:
        return True


def _source(request_timeout_ms: int = 1000) -> ProcessKafkaSource:
    """A ProcessKafkaSource whose consumer process is this test: it reads the requests
    from ``_commands`` and answers in ``_replies``."""
    import itertools

    from driftline.monitor.config import KafkaSettings

    src = ProcessKafkaSource.__new__(ProcessKafkaSource)
    src.settings = KafkaSettings(request_timeout_ms=request_timeout_ms, poll_timeout_ms=100)
    src._positions = {("p", 0): 10}
    src._ids = itertools.count(1)
    src.stale_replies = 0
    src._timeouts = 0
    src._commands, src._replies = queue.Queue(), queue.Queue()
    src._proc = _Alive()
    src._decoder = BatchDecoder("predictions", "feedback")
    return src


def test_a_late_reply_is_dropped_not_taken_for_the_next_answer():
    src = _source()
    # the consumer process is busy (a frozen broker): the status request times out
    assert src._ask(GetStatus(), timeout=0.3) is _TIMED_OUT
    first = src._commands.get_nowait()
    assert isinstance(first.command, GetStatus)
    src._replies.put(Reply(first.id, BrokerStatus({("p", 0): 50}, 1, None, 0)))  # its answer comes late

    def consumer_process():
        request = src._commands.get(timeout=5)
        assert isinstance(request.command, Commit)
        src._replies.put(Reply(request.id, False))  # the commit was refused (rebalance)

    t = threading.Thread(target=consumer_process)
    t.start()
    # order would read the late status reply (truthy) as "committed"; identity does not
    assert src.commit({("p", 0): 10}) is False
    t.join()
    assert src.stale_replies == 1


def test_a_timed_out_request_is_not_done_and_unknown():
    src = _source()
    src._patience = lambda: 0.3  # type: ignore[method-assign]
    assert src.commit({("p", 0): 10}) is False  # never assumed done
    status = src.status()
    assert status.lag is None and status.error and status.broker_errors == 2
    assert src.lag() == {}
    assert src.share_schemas({"fraud": {}}) is False
    # the three late replies, then the answer to a fresh request: only that one counts
    for request in (1, 2, 3, 4):
        src._replies.put(Reply(request, True))
    ids = [src._commands.get_nowait().id for _ in range(4)]
    assert ids == [1, 2, 3, 4]
    src._ids = iter([4])
    src._patience = lambda: 5.0  # type: ignore[method-assign]
    assert src.commit({("p", 0): 10}) is True
    assert src.stale_replies == 3


def test_an_error_reply_raises_with_the_command_named():
    from driftline.monitor.exceptions import SourceError

    src = _source()
    src._replies.put(Reply(1, error="KafkaTimeoutError: boom"))
    with pytest.raises(SourceError, match="seek failed"):
        src.seek({("p", 0): 1})


class _StuckSource:
    """Polls nothing; the broker says records wait (or does not answer)."""

    exhausted = False

    def __init__(self, status: SourceStatus) -> None:
        self.current = status
        self.commits = 0

    def poll(self):
        time.sleep(0.05)
        return DecodedBatch()

    def offsets(self):
        return {}

    def commit(self, offsets):
        self.commits += 1
        return True

    def seek(self, offsets):
        pass

    def status(self) -> SourceStatus:
        return self.current

    def lag(self):
        return self.current.lag or {}

    def close(self):
        pass


class _NoDeadLetters:
    def write(self, letters):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def _service(tmp_path, source, **kafka):
    settings = load_settings(
        kafka={"stall_timeout_seconds": 0.5, **kafka},
        prometheus={"enabled": True, "host": "127.0.0.1", "port": 0},
        state_dir=tmp_path / "state",
        checkpoint_interval_seconds=0,
    )
    svc = Service(settings, source=source, sinks=[], dead_letters=_NoDeadLetters(), checkpoint=False)
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    return svc, stop, thread


def _not_consuming_across_a_health_check(svc) -> bool:
    if "consuming" not in _readyz(svc)[1]["not_ready"]:
        return False
    time.sleep(2.1)  # the health check's interval: the next check has run
    return "consuming" in _readyz(svc)[1]["not_ready"]


def _readyz(svc) -> tuple[int, dict]:
    r = httpx.get(f"http://127.0.0.1:{svc.metrics_port}/readyz", timeout=5)
    return r.status_code, r.json()


def test_a_stalled_consumer_is_not_ready(tmp_path):
    source = _StuckSource(SourceStatus(lag={("predictions", 0): 100}, assigned=1))
    svc, stop, thread = _service(tmp_path, source)
    try:
        # consuming starts not ready (nothing polled yet): wait until a health check, which
        # runs every 2 s, has found the stall and it stays so across the next one
        wait_for(lambda: svc.metrics_port and _not_consuming_across_a_health_check(svc), 30, "consuming not ready")
        code, body = _readyz(svc)
        # (reference: no model has been seen, so no reference is built either)
        assert code == 503 and set(body["not_ready"]) == {"consuming", "reference"}
        assert svc.registry.get_sample_value("driftline_ready", {"component": "consuming"}) == 0
        assert svc.registry.get_sample_value("driftline_ready", {"component": "kafka"}) == 1
        stalled_at = svc.registry.get_sample_value("driftline_last_success_timestamp_seconds", {"what": "batch"})
        # the broker answers again with no lag: caught up, consuming again
        source.current = SourceStatus(lag={("predictions", 0): 0}, assigned=1)
        wait_for(lambda: svc.readiness()["consuming"], 30, "consuming ready again")
        # a stalled loop does not advance the batch success time; a caught-up one does
        wait_for(
            lambda: (
                (svc.registry.get_sample_value("driftline_last_success_timestamp_seconds", {"what": "batch"}) or 0)
                > (stalled_at or 0)
            ),
            30,
            "the batch success time to advance once healthy",
        )
        # unreachable brokers
        source.current = SourceStatus(lag=None, assigned=1, error="end-offset request: timed out", broker_errors=7)
        wait_for(lambda: not svc.readiness()["kafka"], 30, "kafka not ready")
        assert set(_readyz(svc)[1]["not_ready"]) == {"kafka", "reference"}
        assert svc.registry.get_sample_value("driftline_broker_errors_total") == 7
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.kafka
def test_an_instance_with_no_partition_is_not_ready(broker, tmp_path):
    """Three ``driftline run`` instances, one partition per topic: the range assignor
    gives both to one instance and nothing to the other two, which report
    ``partitions`` not ready on /readyz (with ``driftline_ready{component="partitions"}``
    and ``driftline_assigned_partitions`` 0), while the owner does not."""
    import re
    import signal
    import uuid

    from tests.support.runs import DriftlineProcess, write_config

    suffix = uuid.uuid4().hex[:8]
    topics = {k: f"{k}-{suffix}" for k in ("predictions", "feedback", "dead_letter")}
    broker.create_topics(list(topics.values()), partitions=1)

    def value(proc, name, labels=""):
        m = re.search(rf"^{name}{re.escape(labels)} (\S+)$", proc.metrics(), re.M)
        return float(m.group(1)) if m else None

    def readyz(proc):
        try:
            r = httpx.get(f"http://127.0.0.1:{proc.port}/readyz", timeout=5)
        except httpx.HTTPError:
            return None
        return r.json()

    procs = []
    try:
        for i in range(3):
            config = write_config(
                tmp_path / f"run{i}.yml",
                broker=broker,
                topics=topics,
                group=f"g-{suffix}",
                state_dir=tmp_path / f"state{i}",
            )
            procs.append(DriftlineProcess(config, tmp_path, name=f"run{i}"))

        def settled():
            for p in procs:
                assert p.proc.poll() is None, p.log()[-3000:]
            gauges = [value(p, "driftline_assigned_partitions") for p in procs]
            return sorted(g if g is not None else -1 for g in gauges) == [0, 0, 2] and gauges

        gauges = wait_for(settled, 180, "the group to settle: one owner of both partitions")
        for proc, assigned in zip(procs, gauges, strict=False):
            if assigned == 0:
                body = wait_for(
                    lambda proc=proc: (b := readyz(proc)) and "partitions" in b["not_ready"] and b,
                    30,
                    "the idle instance not ready",
                )
                assert body["components"]["kafka"] is True
                assert value(proc, "driftline_ready", '{component="partitions"}') == 0
            else:
                # ready but for the reference (no event was produced, so none is built)
                wait_for(
                    lambda proc=proc: (b := readyz(proc)) and b["not_ready"] == ["reference"], 30, "the owner ready"
                )
        # every instance stopped at once: one after the other, each leave would make the
        # others rebalance before they stop
        for proc in procs:
            proc.proc.send_signal(signal.SIGTERM)
        for proc in procs:  # (one SIGTERM each: a second one during the stop is a kill)
            assert proc.wait_exit(timeout=60) == 0, proc.log()[-3000:]
    finally:
        for proc in procs:
            proc.close()


class _RefusingSource(_StuckSource):
    """One batch of records, then quiet; the first commits are refused (a rebalance)."""

    def __init__(self, records, refusals: int) -> None:
        super().__init__(SourceStatus(lag={("predictions", 0): 0}, assigned=1))
        self.batches = [records]
        self.refusals = refusals
        self.committed: list[dict] = []

    def poll(self):
        if self.batches:
            return BatchDecoder("predictions", "feedback").decode(self.batches.pop())
        return super().poll()

    def offsets(self):
        return {("predictions", 0): 100}

    def commit(self, offsets):
        self.commits += 1
        if self.commits <= self.refusals:
            return False
        self.committed.append(dict(offsets))
        return True


def test_a_refused_commit_is_retried_not_taken_as_done(tmp_path):
    from tests.monitor.streams import prediction_events, records

    source = _RefusingSource(list(records(prediction_events(100), "predictions")), refusals=2)
    svc, stop, thread = _service(tmp_path, source)
    try:
        wait_for(lambda: source.committed, 60, "the commit retried until done")
        assert source.commits == 3 and source.committed == [{("predictions", 0): 100}]
        assert svc._committed == {("predictions", 0): 100}
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
