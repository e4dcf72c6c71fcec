"""Service throughput through a real broker, replay throughput, and memory over a long stream.

    .venv/bin/python benchmarks/bench_service.py [--events N] [--repeats K] [--seed S]
        [--rows GROUP,...] [--no-confluent] [--models M]
        [--memory-events E] [--no-memory] [--check]

1. Kafka: N prediction events (20 numeric and 5 categorical features) and one label per
   prediction are produced to an embedded Tansu broker (``bench`` and
   ``bench-feedback``, one partition each): 90% of the labels soon after their
   prediction, 10% late (2,000 to 5,000 predictions later), so that the label join and
   the performance detectors are in the measured path. Then the contenders (the rows,
   :data:`ROWS`) each consume all of it in a fresh consumer group and a fresh Python
   process (a bare consumer imports only its client), in an order shuffled per round
   (seeded): a bare kafka-python consumer that only reads both topics (the client's
   limit), ``driftline run`` (the Service with its Kafka source, default detectors,
   JSONL alarm sink, checkpoints), ``driftline run`` with kafka-python's own record
   parser (``kafka.fast_record_parser: false``), ``driftline run`` with 100-event windows
   (``window.size: 100``); the same for confluent-kafka (librdkafka): a bare
   confluent-kafka consumer and ``driftline run`` with ``kafka.client: confluent``, with
   the default and with 100-event windows; and a second stream of the same size spread
   over M models (``--models``, default 200; topics ``bench-m200`` and
   ``bench-m200-feedback``), read by a bare kafka-python consumer and by ``driftline run``
   (see :func:`many_models_overrides` for its per-model settings). All are clocked the
   same way: from the moment the client's poll (``KafkaConsumer.poll``,
   ``Consumer.consume``) first returns a record in the process that polls (the bare
   consumer; driftline's consumer process, or the service's own with confluent-kafka,
   whatever it prefetches after that) to the last record read (bare) or processed
   (driftline); the group join is excluded from all. Each driftline row is compared with
   the bare consumer of its own client and stream, round by round (paired ratios). One
   warm-up round runs first and is discarded (it is printed, marked so). Median of K
   rounds, and each round's ratio. ``--rows`` selects the optional row groups (default:
   all of :data:`GROUPS`); the bare kafka-python consumer and ``driftline run`` on the
   one-model stream always run.
2. Replay: the same events from a JSONL file through ``driftline replay``'s pipeline.
3. Memory: resident set size of a subprocess that runs the engine over a generated
   stream, after 1,000,000 and after E events (default 5,000,000).

``--check`` exits 1 when a target of BENCHMARKS.md is missed: ``driftline run`` (one
model, default settings, kafka-python) at least 0.8 of the bare kafka-python consumer
(ratio of the medians), memory within 10% from 1,000,000 to E events. The other rows are
reported with their ratios, not checked. ``--no-confluent`` leaves the confluent-kafka
rows out (e.g. where the extra is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_NUM, N_CAT = 20, 5
LATE_SHARE, LATE_MIN, LATE_MAX = 0.10, 2_000, 5_000
"""A tenth of the labels arrives 2,000 to 5,000 predictions after its prediction."""
TARGET_RATIO, TARGET_MEMORY_GROWTH = 0.8, 0.10
"""What ``--check`` enforces (BENCHMARKS.md): the headline row's ratio, memory growth."""
ISSUE_RATIO = 0.9
"""Issue 16's aim for the headline row with labels flowing: reported, not checked."""
SMALL_WINDOW = 100
"""``window.size`` of the small-window rows (the default is 1,000)."""

GROUPS = ("parser", "confluent", "window-100", "models")
"""Optional row groups (``--rows``): kafka-python's record parser, the confluent-kafka
client, 100-event windows, the many-model stream."""


@dataclass(frozen=True)
class Row:
    """One contender: a consumer that reads a whole stream in its own process, each round.

    Attributes
    ----------
    key
        Short name, in the per-round lines, consumer groups and state directories.
    label
        The table's text.
    bare
        Only reads (the client's limit); else ``driftline run``.
    client
        ``kafka-python`` or ``confluent``.
    many
        Reads the many-model stream (else the one-model stream).
    window
        ``window.size``; None: the default.
    fast_parser
        ``kafka.fast_record_parser`` (kafka-python only).
    groups
        The ``--rows`` groups that must all be selected for the row to run (none: always).
    """

    key: str
    label: str
    bare: bool = False
    client: str = "kafka-python"
    many: bool = False
    window: int | None = None
    fast_parser: bool = True
    groups: frozenset[str] = frozenset()

    @property
    def baseline(self) -> str:
        """Key of the bare consumer this row is compared with (its client, its stream)."""
        return "bare" + ("-confluent" if self.client == "confluent" else "") + ("-many" if self.many else "")


def _row(key: str, label: str, *groups: str, **kw) -> Row:
    return Row(key, label, groups=frozenset(groups), **kw)


ROWS = (
    _row("bare", "bare kafka-python consumer (reads only)", bare=True),
    _row("driftline", "driftline run (default detectors)"),
    _row(
        "parser",
        "driftline run, kafka-python's record parser (`kafka.fast_record_parser: false`)",
        "parser",
        fast_parser=False,
    ),
    _row("w100", f"driftline run, `window.size: {SMALL_WINDOW}`", "window-100", window=SMALL_WINDOW),
    _row("bare-confluent", "bare confluent-kafka consumer (reads only)", "confluent", bare=True, client="confluent"),
    _row("confluent", "driftline run, `kafka.client: confluent` (default detectors)", "confluent", client="confluent"),
    _row(
        "confluent-w100",
        f"driftline run, `kafka.client: confluent`, `window.size: {SMALL_WINDOW}`",
        "confluent",
        "window-100",
        client="confluent",
        window=SMALL_WINDOW,
    ),
    _row("bare-many", "bare kafka-python consumer, {models}-model stream (reads only)", "models", bare=True, many=True),
    _row(
        "many",
        f"driftline run, {{models}} models (reference {{reference}} each, `window.size: {SMALL_WINDOW}`)",
        "models",
        many=True,
        window=SMALL_WINDOW,
    ),
)
"""Every row, in the table's order; the first two are the headline (``--check``)."""

FIRST_RECORD_ENV = "DRIFTLINE_BENCH_FIRST_RECORD"
"""A file path: the process that polls Kafka writes there the CLOCK_MONOTONIC time
(system-wide on Linux) at which ``KafkaConsumer.poll`` (or confluent-kafka's
``Consumer.consume``) first returned a record."""
CLIENT_ENV = "DRIFTLINE_BENCH_CLIENT"
"""``kafka-python`` or ``confluent``: the client whose first record starts the clock."""


def _write_first_record(path: str) -> None:
    now = time.monotonic()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return  # another poller of this run was first
    os.write(fd, repr(now).encode())
    os.close(fd)


def _clock_first_record() -> None:
    """Wrap the client's poll to record when it first returns a record.

    Installed in the bare consumer's process and in driftline's consumer process: that
    one is started with multiprocessing's spawn, which runs this script again as
    ``__mp_main__`` with the same environment, so both contenders' clocks start at the
    same event (the first record received from the broker), whatever is prefetched after.
    confluent-kafka's ``Consumer`` is a C type: the module's name is bound to a subclass
    whose ``consume`` is timed (driftline's source builds ``confluent_kafka.Consumer``)
    and asks for one record until the first one came (``consume`` waits to fill its
    batch: a first batch of 5,000 would be read before the clock starts).
    """
    path = os.environ.get(FIRST_RECORD_ENV)
    if not path:
        return
    done = [False]
    if os.environ.get(CLIENT_ENV) == "confluent":
        import confluent_kafka

        class TimedConsumer(confluent_kafka.Consumer):
            def consume(self, num_messages=1, timeout=-1):
                # until the first record: one at a time, for consume() waits to fill a
                # whole batch (up to its timeout), and the clock starts at the first record
                out = super().consume(num_messages if done[0] else 1, timeout)
                if not done[0] and any(m.error() is None for m in out):
                    done[0] = True
                    _write_first_record(path)
                return out

        confluent_kafka.Consumer = TimedConsumer
        return
    from kafka import KafkaConsumer

    poll = KafkaConsumer.poll

    def timed(self, *args, **kwargs):
        out = poll(self, *args, **kwargs)
        if out and not done[0]:
            done[0] = True
            _write_first_record(path)
        return out

    KafkaConsumer.poll = timed


if __name__ in ("__main__", "__mp_main__"):
    _clock_first_record()


def first_record_time() -> float:
    """The time :func:`_clock_first_record` wrote for this process's run."""
    return float(Path(os.environ[FIRST_RECORD_ENV]).read_text())


def model_of(i: int, models: int) -> str:
    """The model of the ``i``-th prediction: ``m`` in a one-model stream, else round
    robin over ``m000``, ``m001`` ... (each model gets the same share of the stream)."""
    return "m" if models == 1 else f"m{i % models:03d}"


def events(n: int, seed: int = 0, models: int = 1) -> list[bytes]:
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_NUM)).round(4)
    cats = rng.choice(np.array(["a", "b", "c", "d"]), size=(n, N_CAT))
    score = 1 / (1 + np.exp(-x[:, 0]))
    out = []
    for i in range(n):
        f = {f"n{j}": float(x[i, j]) for j in range(N_NUM)}
        f.update({f"c{j}": str(cats[i, j]) for j in range(N_CAT)})
        out.append(
            orjson.dumps(
                {
                    "model": model_of(i, models),
                    "version": "v1",
                    "id": str(i),
                    "ts": 1.7e9 + i,
                    "features": f,
                    "prediction": float(score[i]),
                    "latency_ms": 10.0,
                }
            )
        )
    return out


def labels(n: int, seed: int = 0, models: int = 1) -> list[tuple[int, str, bytes]]:
    """One label per prediction, each with the prediction index after which it is sent
    and its model: most right after their prediction, LATE_SHARE of them LATE_MIN to
    LATE_MAX later."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed + 1)
    x0 = np.random.default_rng(seed).normal(size=(n, N_NUM)).round(4)[:, 0]
    label = rng.random(n) < 1 / (1 + np.exp(-x0))  # a calibrated model's labels
    late = rng.random(n) < LATE_SHARE
    after = np.arange(n) + np.where(late, rng.integers(LATE_MIN, LATE_MAX + 1, n), 0)
    order = np.argsort(after, kind="stable")
    return [
        (
            int(after[i]),
            model,
            orjson.dumps({"model": model, "id": str(i), "ts": 1.7e9 + int(i) + 30.0, "label": int(label[i])}),
        )
        for i in order
        for model in (model_of(int(i), models),)
    ]


def produce(
    bootstrap: str, topic: str, values: list[bytes], feedback: list[tuple[int, str, bytes]], models: int = 1
) -> None:
    """Predictions to ``topic``, each label to ``topic-feedback`` once the prediction it
    is due after has been sent (late ones at the end if the stream ends first); keyed
    by model."""
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, max_request_size=8 * 1024 * 1024
    )
    k = 0
    for i, v in enumerate(values):
        p.send(topic, key=model_of(i, models).encode(), value=v)
        while k < len(feedback) and feedback[k][0] <= i:
            _, model, label = feedback[k]
            p.send(topic + "-feedback", key=model.encode(), value=label)
            k += 1
    for _, model, label in feedback[k:]:
        p.send(topic + "-feedback", key=model.encode(), value=label)
    p.flush()
    p.close()


def bare_consumer(bootstrap: str, topic: str, n: int, group: str) -> float:
    """Records/s of a kafka-python consumer that only reads ``n`` records (predictions
    and labels; the service's consumer settings), from its first record received."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        max_poll_records=5000,
    )
    c.subscribe([topic, topic + "-feedback"])  # the same subscription as the service
    seen = 0
    while seen < n:
        for recs in c.poll(timeout_ms=500, max_records=5000).values():
            seen += len(recs)
    rate = n / (time.monotonic() - first_record_time())
    c.close()
    return rate


def bare_confluent_consumer(bootstrap: str, topic: str, n: int, group: str) -> float:
    """Records/s of a confluent-kafka consumer that only reads ``n`` records, with the
    settings driftline's confluent source gives librdkafka (group, no auto-commit, the
    default fetch tuning of ``kafka``) and its batch size, from its first record received."""
    import confluent_kafka

    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 2000,
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 500,
            "max.partition.fetch.bytes": 1_048_576,
            "fetch.max.bytes": 52_428_800,
        }
    )
    c.subscribe([topic, topic + "-feedback"])
    seen = 0
    while seen < n:
        # as driftline's source polls: what is fetched already (up to 5,000), else wait
        # for one and take what came with it (consume(5000, timeout) would wait to fill)
        batch = c.consume(5000, 0) or c.consume(1, 0.5)
        if len(batch) == 1:
            batch.extend(c.consume(4999, 0))
        for m in batch:
            if m.error() is None:
                seen += 1
    rate = n / (time.monotonic() - first_record_time())
    c.close()
    return rate


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def driftline_run(
    bootstrap: str,
    topic: str,
    n: int,
    group: str,
    state: Path,
    fast_parser: bool = True,
    broker_pid: int | None = None,
    client: str = "kafka-python",
    settings: dict | None = None,
) -> tuple[float, dict[str, float]]:
    """Records/s of the Service over ``n`` predictions and their ``n`` labels (from the
    first record its consumer received), and the CPU each process used per record (us)
    from the end of its first batch. ``settings``: more settings (e.g. ``defaults``,
    ``max_models``)."""
    from driftline.app import Service
    from driftline.monitor.config import load_settings
    from driftline.monitor.runtime import steady_gc

    settings = load_settings(
        kafka={
            "bootstrap_servers": bootstrap,
            "group_id": group,
            "predictions_topic": topic,
            "feedback_topic": topic + "-feedback",
            "session_timeout_ms": 6000,
            "poll_timeout_ms": 500,
            "fast_record_parser": fast_parser,
            "client": client,
        },
        prometheus={"enabled": False},
        state_dir=state,
        alarms_jsonl=state / "alarms.jsonl",
        **(settings or {}),
    )
    stop = threading.Event()
    marks: dict[str, float] = {}

    cpu: dict[str, list[float]] = {}

    def processes() -> dict[str, int]:
        pids = {"service": os.getpid()}
        if hasattr(svc._source, "_proc"):  # kafka-python's consumer process (confluent-kafka: none)
            pids["consumer"] = svc._source._proc.pid
        return pids | ({"broker": broker_pid} if broker_pid else {})

    def on_batch(stats) -> None:
        if "first_n" not in marks:
            cpu.update({name: [cpu_seconds(pid)] for name, pid in processes().items()})
            marks["first_n"] = stats.predictions + stats.feedback  # CPU from the end of the first batch
        if stats.predictions >= n and stats.feedback >= n:
            marks["last"] = time.monotonic()
            for name, pid in processes().items():
                cpu[name].append(cpu_seconds(pid))
            stop.set()

    svc = Service(settings, on_batch=on_batch)
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    with steady_gc():  # as `driftline run` does: the entry point tunes the collector, not the Service
        thread.start()
        thread.join(timeout=600)
    after_first = max(1, 2 * n - marks["first_n"])  # a tiny run may fit in its first batch
    per_record = {k: (b - a) / after_first * 1e6 for k, (a, b) in cpu.items()}
    return 2 * n / (marks["last"] - first_record_time()), per_record


def row_settings(row: Row, many: dict) -> dict:
    """The settings a driftline row adds to the benchmark's (``many``: those of the
    many-model stream, :func:`many_models_overrides`)."""
    out = dict(many) if row.many else {}
    if row.window is not None:
        defaults = out.get("defaults", {})
        out["defaults"] = defaults | {"window": defaults.get("window", {}) | {"size": row.window}}
    return out


def run_in_process(spec: dict) -> tuple[float, dict[str, float]]:
    """Records/s of one consumer run in a fresh Python process, as each runs in life (the
    bare consumer imports its client only, driftline what `driftline run` imports),
    and for driftline the CPU per record of its processes and the broker's. ``spec``:
    :func:`consume`'s arguments (JSON). The process gets a fresh file in FIRST_RECORD_ENV
    for its first-record clock."""
    clock = Path(tempfile.mkdtemp(prefix="bench-clock-")) / "first-record"
    out = subprocess.run(
        [sys.executable, __file__, "--role", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, FIRST_RECORD_ENV: str(clock), CLIENT_ENV: spec["client"]},
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {spec['key']} run failed with exit {out.returncode}:\n{out.stderr[-3000:]}")
    clock.unlink()
    clock.parent.rmdir()
    result = json.loads(out.stdout.splitlines()[-1])
    return result["rate"], result["cpu"]


def consume(
    key: str,
    bare: bool,
    client: str,
    bootstrap: str,
    topic: str,
    n: int,
    group: str,
    state: str,
    fast_parser: bool,
    broker_pid: int,
    settings: dict,
) -> tuple[float, dict[str, float]]:
    """One row's run (in the process :func:`run_in_process` starts): records/s, CPU."""
    if bare:
        read = bare_confluent_consumer if client == "confluent" else bare_consumer
        return read(bootstrap, topic, 2 * n, group), {}
    return driftline_run(
        bootstrap,
        topic,
        n,
        group,
        Path(state),
        fast_parser=fast_parser,
        broker_pid=broker_pid,
        client=client,
        settings=settings,
    )


def replay(path: Path, feedback: Path, state: Path) -> float:
    """Records/s (predictions and labels) through ``driftline replay``."""
    from driftline.cli import main

    t = time.perf_counter()
    code = main(
        [
            "replay",
            "--predictions",
            str(path),
            "--feedback",
            str(feedback),
            "--alarms",
            str(state / "replay-alarms.jsonl"),
            "--quiet",
        ]
    )
    assert code == 0
    records = sum(1 for _ in open(path, "rb")) + sum(1 for _ in open(feedback, "rb"))
    return records / (time.perf_counter() - t)


MEMORY_CHILD = r"""
import sys, resource
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from bench_service import events
from driftline.monitor.config import Settings
from driftline.monitor.decode import Record, decode_batch
from driftline.monitor.engine import Engine
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
block = events(20_000, seed=7)
engine = Engine(Settings())
marks = {{}}
n = 0
while n < {total}:
    # fresh ids each round, so that the label join's buffer fills up to its bound
    values = [v.replace(b'"id":"', b'"id":"%d-' % n, 1) for v in block]
    for s in range(0, len(values), 5000):
        recs = [Record("predictions", 0, n + i, -1, None, v) for i, v in enumerate(values[s:s + 5000])]
        engine.process(decode_batch(recs, "predictions", "feedback"))
        n += len(recs)
    if n in (1_000_000, {total}):
        marks[n] = rss_mb()
print(marks[1_000_000], marks[{total}])
"""


def memory(total: int) -> tuple[float, float]:
    code = MEMORY_CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), total=total)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    a, b = out.stdout.split()
    return float(a), float(b)


def many_models_overrides(events: int, models: int) -> tuple[dict, str]:
    """Settings of the many-model stream's driftline row, and their description.

    Each model sees ``events / models`` predictions (1,000 at 200,000 events over 200
    models) and fills its own stream reference from its first fifth of them (at least
    100, the smallest ``reference.size``), so that four fifths of the events are
    monitored. The default 1,000-event windows would never fill in the rest, so the row
    runs 100-event windows (its ``window`` field), performance windows of 100 labels, and
    label-free estimation calibrated on 100 labels (the smallest
    ``min_reference_labels``; the default 1,000 exceeds the reference), so that every
    per-model detector works during the run, as with one model at the default sizes.
    """
    per_model = events // models
    reference = max(100, per_model // 5)
    calibration = 100
    settings = {
        "max_models": max(models, 100),
        "defaults": {
            "reference": {"size": reference},
            "performance": {"window": SMALL_WINDOW, "estimation": {"min_reference_labels": calibration}},
        },
    }
    monitored = max(0, per_model - reference) / max(1, per_model)
    about = (
        f"{per_model:,} predictions each, reference {reference} ({monitored:.0%} of the events monitored), "
        f"`window.size: {SMALL_WINDOW}`, `performance.window: {SMALL_WINDOW}`, "
        f"estimation calibrated on {calibration} labels"
    )
    return settings, about


def _groups(text: str) -> tuple[str, ...]:
    chosen = tuple(g for g in text.split(",") if g)
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown row group(s) {sorted(unknown)}: choose among {', '.join(GROUPS)}")
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the contenders' order per round")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed (BENCHMARKS.md)")
    ap.add_argument("--memory-events", type=int, default=5_000_000)
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--no-confluent", action="store_true", help="leave out the confluent-kafka rows")
    ap.add_argument(
        "--rows",
        type=_groups,
        default=GROUPS,
        help=f"optional row groups, comma-separated (default: all of {','.join(GROUPS)}; an empty string: "
        "the headline pair only); bare kafka-python and driftline run on one model always run",
    )
    ap.add_argument("--models", type=int, default=200, help="models of the many-model stream (default 200)")
    ap.add_argument("--role", help=argparse.SUPPRESS)  # one consumer run, in its own process
    args = ap.parse_args()
    if args.role:
        rate, cpu = consume(**json.loads(args.role))
        print(json.dumps({"rate": rate, "cpu": cpu}))
        return
    if args.models < 2:
        ap.error("--models: at least 2 (the one-model stream is the headline's)")

    from driftline.demo.embedded_broker import EmbeddedBroker

    selected = set(args.rows) - ({"confluent"} if args.no_confluent else set())
    rows = [row for row in ROWS if row.groups <= selected]
    many, many_about = many_models_overrides(args.events, args.models)
    streams = {False: ("bench", 1)}  # by Row.many: the topic and number of models of each stream read
    if any(row.many for row in rows):
        streams[True] = (f"bench-m{args.models}", args.models)
    values = events(args.events)
    feedback = labels(args.events)
    results: dict[str, list[float]] = {row.key: [] for row in rows}
    cpu: dict[str, list[dict[str, float]]] = {row.key: [] for row in rows if not row.bare}
    shuffle = random.Random(args.seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        tmp = Path(tmp)
        for topic, models in streams.values():
            broker.create_topics([topic, topic + "-feedback"], partitions=1)
            t = time.perf_counter()
            these = (
                (values, feedback)
                if models == 1
                else (events(args.events, models=models), labels(args.events, models=models))
            )
            produce(broker.bootstrap_servers, topic, *these, models=models)
            print(
                f"produced {args.events:,} predictions and {len(these[1]):,} labels ({LATE_SHARE:.0%} late) "
                f"of {models} model(s) to {topic} in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
        pid = broker._proc.pid
        for k in range(args.repeats + 1):  # round 0 is the warm-up, discarded
            order = list(rows)
            shuffle.shuffle(order)
            got = {}
            t = time.perf_counter()
            for row in order:
                got[row.key], used = run_in_process(
                    {
                        "key": row.key,
                        "bare": row.bare,
                        "client": row.client,
                        "bootstrap": broker.bootstrap_servers,
                        "topic": streams[row.many][0],
                        "n": args.events,
                        "group": f"{row.key}-{k}",
                        "state": str(tmp / f"{row.key}-{k}"),
                        "fast_parser": row.fast_parser,
                        "broker_pid": pid,
                        "settings": row_settings(row, many),
                    }
                )
                if not row.bare and k > 0:
                    cpu[row.key].append(used)
            if k > 0:
                for key, rate in got.items():
                    results[key].append(rate)
            print(
                f"{'warm-up (discarded)' if k == 0 else f'round {k}'}, order {' / '.join(r.key for r in order)}: "
                + ", ".join(f"{key} {got[key]:,.0f}/s" for key in results)
                + f" ({time.perf_counter() - t:.0f} s)",
                file=sys.stderr,
            )
        path, labels_path = tmp / "events.jsonl", tmp / "labels.jsonl"
        path.write_bytes(b"\n".join(values) + b"\n")
        labels_path.write_bytes(b"\n".join(v for _, _, v in feedback) + b"\n")
        rep = [replay(path, labels_path, tmp) for _ in range(args.repeats)]
    median = {key: statistics.median(rates) for key, rates in results.items()}
    print(
        f"driftline service throughput ({args.events:,} predictions + {args.events:,} labels, "
        f"{LATE_SHARE:.0%} of them late; {N_NUM} numeric + {N_CAT} categorical features; "
        f"median of {args.repeats} rounds after one warm-up round, discarded)"
    )
    if True in streams:
        print(f"{args.models}-model stream (the same size, models round robin): {many_about}")
    print()
    print("| what | records/s | ratio |")
    print("|---|---|---|")
    for row in rows:
        ratio = 1.0 if row.bare else median[row.key] / median[row.baseline]
        label = row.label.format(models=args.models, reference=many["defaults"]["reference"]["size"])
        print(f"| {label} | {median[row.key]:,.0f} | {ratio:.2f} |")
    print(f"| driftline replay (JSONL files, predictions and labels) | {statistics.median(rep):,.0f} | - |")
    print()
    for row in rows:
        if not row.bare:
            paired = sorted(x / y for x, y in zip(results[row.key], results[row.baseline]))
            print(f"{row.key}/{row.baseline} per round (paired, same round): " + ", ".join(f"{x:.2f}" for x in paired))
    for key, used in cpu.items():
        if used:
            print(
                f"CPU per record during {key} run (median us): "
                + ", ".join(f"{proc} {statistics.median(c[proc] for c in used):.2f}" for proc in used[0])
            )
    headline = median["driftline"] / median["bare"]
    print(
        f"headline (driftline run / bare kafka-python consumer): {headline:.2f}; --check's target {TARGET_RATIO} "
        f"{'met' if headline >= TARGET_RATIO else 'missed'}, issue 16's {ISSUE_RATIO} "
        f"{'met' if headline >= ISSUE_RATIO else 'missed'} (reported, not checked)"
    )
    missed = []
    if headline < TARGET_RATIO:
        missed.append(f"driftline run is {headline:.2f} of the bare consumer (target: at least {TARGET_RATIO})")
    print(f"consumer rounds and replays took {time.perf_counter() - began:.0f} s", file=sys.stderr)
    if not args.no_memory:
        m1, m5 = memory(args.memory_events)
        print(
            f"resident memory: {m1:.0f} MB after 1,000,000 events, {m5:.0f} MB after "
            f"{args.memory_events:,} ({(m5 / m1 - 1) * 100:+.1f}%)"
        )
        if m5 / m1 - 1 > TARGET_MEMORY_GROWTH:
            missed.append(f"memory grew {(m5 / m1 - 1) * 100:+.1f}% (target: within {TARGET_MEMORY_GROWTH:.0%})")
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
