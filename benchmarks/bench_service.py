"""Service throughput through a real broker, replay throughput, and memory over a long stream.

    .venv/bin/python benchmarks/bench_service.py [--events N] [--repeats K] [--seed S]
        [--memory-events M] [--no-memory] [--check]

1. Kafka: N prediction events (20 numeric and 5 categorical features) and one label per
   prediction are produced to an embedded Tansu broker (``bench`` and
   ``bench-feedback``, one partition each): 90% of the labels soon after their
   prediction, 10% late (2,000 to 5,000 predictions later), so that the label join and
   the performance detectors are in the measured path. Then a bare kafka-python consumer
   that only reads both topics (the client's limit), ``driftline run`` (the Service with
   its Kafka source, default detectors, JSONL alarm sink, checkpoints) and ``driftline
   run`` with kafka-python's own record parser (``kafka.fast_record_parser: false``),
   and the same pair for confluent-kafka (librdkafka): a bare confluent-kafka consumer
   and ``driftline run`` with ``kafka.client: confluent``, each consume all of it in a
   fresh consumer group and a fresh Python process (a bare consumer imports only its
   client), in an order shuffled per round (seeded). All are clocked the same way: from
   the moment the client's poll (``KafkaConsumer.poll``, ``Consumer.consume``) first
   returns a record in the process that polls (the bare consumer; driftline's consumer
   process, or the service's own with confluent-kafka, whatever it prefetches after
   that) to the last record read (bare) or processed (driftline); the group join is
   excluded from all. Each driftline run is compared with the bare consumer of its own
   client. One warm-up round runs first and is discarded (it is printed, marked so).
   Median of K rounds, and each round's ratio.
2. Replay: the same events from a JSONL file through ``driftline replay``'s pipeline.
3. Memory: resident set size of a subprocess that runs the engine over a generated
   stream, after 1,000,000 and after M events (default 5,000,000).

``--check`` exits 1 when a target of BENCHMARKS.md is missed: driftline at least 0.8 of
the bare kafka-python consumer (ratio of the medians), memory within 10% from 1,000,000
to M events (the confluent-kafka rows are reported, not checked). ``--no-confluent``
leaves the confluent-kafka rows out (e.g. where the extra is not installed).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_NUM, N_CAT = 20, 5
LATE_SHARE, LATE_MIN, LATE_MAX = 0.10, 2_000, 5_000
"""A tenth of the labels arrives 2,000 to 5,000 predictions after its prediction."""
TARGET_RATIO, TARGET_MEMORY_GROWTH = 0.8, 0.10

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


def events(n: int, seed: int = 0) -> list[bytes]:
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
                    "model": "m",
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


def labels(n: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """One label per prediction, each with the prediction index after which it is sent:
    most right after their prediction, LATE_SHARE of them LATE_MIN to LATE_MAX later."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed + 1)
    x0 = np.random.default_rng(seed).normal(size=(n, N_NUM)).round(4)[:, 0]
    label = rng.random(n) < 1 / (1 + np.exp(-x0))  # a calibrated model's labels
    late = rng.random(n) < LATE_SHARE
    after = np.arange(n) + np.where(late, rng.integers(LATE_MIN, LATE_MAX + 1, n), 0)
    order = np.argsort(after, kind="stable")
    return [
        (int(after[i]), orjson.dumps({"model": "m", "id": str(i), "ts": 1.7e9 + int(i) + 30.0, "label": int(label[i])}))
        for i in order
    ]


def produce(bootstrap: str, topic: str, values: list[bytes], feedback: list[tuple[int, bytes]]) -> None:
    """Predictions to ``topic``, each label to ``topic-feedback`` once the prediction it
    is due after has been sent (late ones at the end if the stream ends first)."""
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, max_request_size=8 * 1024 * 1024
    )
    k = 0
    for i, v in enumerate(values):
        p.send(topic, key=b"m", value=v)
        while k < len(feedback) and feedback[k][0] <= i:
            p.send(topic + "-feedback", key=b"m", value=feedback[k][1])
            k += 1
    for _, v in feedback[k:]:
        p.send(topic + "-feedback", key=b"m", value=v)
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
) -> tuple[float, dict[str, float]]:
    """Records/s of the Service over ``n`` predictions and their ``n`` labels (from the
    first record its consumer received), and the CPU each process used per record (us)
    from the end of its first batch."""
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


def run_in_process(
    role: str, bootstrap: str, n: int, group: str, state: Path, parser: str, broker_pid: int
) -> tuple[float, dict[str, float]]:
    """Records/s of one consumer run in a fresh Python process, as each runs in life (the
    bare consumer imports kafka-python only, driftline what `driftline run` imports),
    and for driftline the CPU per record of its processes and the broker's. The process
    gets a fresh file in FIRST_RECORD_ENV for its first-record clock."""
    clock = Path(tempfile.mkdtemp(prefix="bench-clock-")) / "first-record"
    client = "confluent" if role == "bare-confluent" or parser == "confluent" else "kafka-python"
    out = subprocess.run(
        [sys.executable, __file__, "--role", role, bootstrap, str(n), group, str(state), parser, str(broker_pid)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, FIRST_RECORD_ENV: str(clock), CLIENT_ENV: client},
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"the {role} run ({parser or 'bare'}) failed with exit {out.returncode}:\n{out.stderr[-3000:]}"
        )
    clock.unlink()
    clock.parent.rmdir()
    result = json.loads(out.stdout.splitlines()[-1])
    return result["rate"], result["cpu"]


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the contenders' order per round")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is missed (BENCHMARKS.md)")
    ap.add_argument("--memory-events", type=int, default=5_000_000)
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--no-confluent", action="store_true", help="leave out the confluent-kafka rows")
    ap.add_argument("--role", nargs=7, help=argparse.SUPPRESS)  # one consumer run, in its own process
    args = ap.parse_args()
    if args.role:
        role, bootstrap, n, group, state, fast, broker_pid = args.role
        if role == "bare":
            rate, cpu = bare_consumer(bootstrap, "bench", 2 * int(n), group), {}
        elif role == "bare-confluent":
            rate, cpu = bare_confluent_consumer(bootstrap, "bench", 2 * int(n), group), {}
        else:
            rate, cpu = driftline_run(
                bootstrap,
                "bench",
                int(n),
                group,
                Path(state),
                fast_parser=fast == "fast",
                broker_pid=int(broker_pid),
                client="confluent" if fast == "confluent" else "kafka-python",
            )
        print(json.dumps({"rate": rate, "cpu": cpu}))
        return

    from driftline.demo.embedded_broker import EmbeddedBroker

    values = events(args.events)
    feedback = labels(args.events)
    results: dict[str, list[float]] = {"bare": [], "driftline": [], "kafka-python parser": []}
    if not args.no_confluent:
        results.update({"bare confluent": [], "driftline confluent": []})
    cpu: dict[str, list[dict[str, float]]] = {"driftline": [], "driftline confluent": []}
    shuffle = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        tmp = Path(tmp)
        broker.create_topics(["bench", "bench-feedback"], partitions=1)
        t = time.perf_counter()
        produce(broker.bootstrap_servers, "bench", values, feedback)
        print(
            f"produced {args.events:,} predictions and {len(feedback):,} labels "
            f"({LATE_SHARE:.0%} late) in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        pid = broker._proc.pid
        contenders = {
            "bare": ("bare", ""),
            "driftline": ("driftline", "fast"),
            "kafka-python parser": ("driftline", "kafka-python"),
            "bare confluent": ("bare-confluent", ""),
            "driftline confluent": ("driftline", "confluent"),
        }
        contenders = {name: c for name, c in contenders.items() if name in results}
        for k in range(args.repeats + 1):  # round 0 is the warm-up, discarded
            order = list(contenders)
            shuffle.shuffle(order)
            got = {}
            for name in order:
                role, parser = contenders[name]
                got[name], used = run_in_process(
                    role,
                    broker.bootstrap_servers,
                    args.events,
                    f"{name.replace(' ', '-')}-{k}",
                    tmp / f"{role}-{parser}-{k}",
                    parser,
                    pid,
                )
                if name in cpu and k > 0:
                    cpu[name].append(used)
            if k > 0:
                for name, rate in got.items():
                    results[name].append(rate)
            print(
                f"{'warm-up (discarded)' if k == 0 else f'round {k}'}, order {' / '.join(order)}: "
                f"bare {got['bare']:,.0f}/s, driftline {got['driftline']:,.0f}/s, "
                f"with kafka-python's parser {got['kafka-python parser']:,.0f}/s"
                + (
                    f"; bare confluent-kafka {got['bare confluent']:,.0f}/s, driftline with confluent-kafka "
                    f"{got['driftline confluent']:,.0f}/s"
                    if "bare confluent" in got
                    else ""
                ),
                file=sys.stderr,
            )
        path, labels_path = tmp / "events.jsonl", tmp / "labels.jsonl"
        path.write_bytes(b"\n".join(values) + b"\n")
        labels_path.write_bytes(b"\n".join(v for _, v in feedback) + b"\n")
        rep = [replay(path, labels_path, tmp) for _ in range(args.repeats)]
    bare, ours, slow = results["bare"], results["driftline"], results["kafka-python parser"]
    b, o, r = statistics.median(bare), statistics.median(ours), statistics.median(rep)
    sl = statistics.median(slow)
    ratios = sorted(x / y for x, y in zip(ours, bare))
    print(
        f"driftline service throughput ({args.events:,} predictions + {args.events:,} labels, "
        f"{LATE_SHARE:.0%} of them late; {N_NUM} numeric + {N_CAT} categorical features; "
        f"median of {args.repeats} rounds after one warm-up round, discarded)"
    )
    print()
    print("| what | records/s | ratio |")
    print("|---|---|---|")
    print(f"| bare kafka-python consumer (reads only) | {b:,.0f} | 1.00 |")
    print(f"| driftline run (default detectors) | {o:,.0f} | {o / b:.2f} |")
    print(
        f"| driftline run, kafka-python's record parser (`kafka.fast_record_parser: false`) "
        f"| {sl:,.0f} | {sl / b:.2f} |"
    )
    if "bare confluent" in results:
        cb, co = statistics.median(results["bare confluent"]), statistics.median(results["driftline confluent"])
        print(f"| bare confluent-kafka consumer (reads only) | {cb:,.0f} | 1.00 |")
        print(f"| driftline run, `kafka.client: confluent` (default detectors) | {co:,.0f} | {co / cb:.2f} |")
    print(f"| driftline replay (JSONL files, predictions and labels) | {r:,.0f} | - |")
    print()
    print("driftline/bare per round (paired, same round): " + ", ".join(f"{x:.2f}" for x in ratios))
    if "bare confluent" in results:
        paired = sorted(x / y for x, y in zip(results["driftline confluent"], results["bare confluent"]))
        print("driftline confluent/bare confluent per round (paired): " + ", ".join(f"{x:.2f}" for x in paired))
    for name, used in cpu.items():
        if used:
            print(
                f"CPU per record during {name} run (median us): "
                + ", ".join(f"{proc} {statistics.median(c[proc] for c in used):.2f}" for proc in used[0])
            )
    missed = []
    if o / b < TARGET_RATIO:
        missed.append(f"driftline run is {o / b:.2f} of the bare consumer (target: at least {TARGET_RATIO})")
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
