"""Service throughput through a real broker, replay throughput, and memory over a long stream.

    .venv/bin/python benchmarks/bench_service.py [--events N] [--repeats K] [--memory-events M] [--no-memory]

1. Kafka: N prediction events (20 numeric and 5 categorical features) are produced to
   an embedded Tansu broker; then, in the same run, a bare kafka-python consumer that
   only reads the topic (the client's limit) and ``driftline run`` (the Service with its
   Kafka source, default detectors, JSONL alarm sink, checkpoints) each consume all of
   it in a fresh consumer group and a fresh Python process (the bare consumer's imports
   only kafka-python). Events/s is measured from the first record received to the last
   one processed (the group join is excluded from both). Median of K runs, and the
   ratio of each run pair. A third row runs driftline with kafka-python's own record
   parser (``kafka.fast_record_parser: false``).
2. Replay: the same events from a JSONL file through ``driftline replay``'s pipeline.
3. Memory: resident set size of a subprocess that runs the engine over a generated
   stream, after 1,000,000 and after M events (default 5,000,000).
"""

from __future__ import annotations

import argparse
import json
import os
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
        out.append(orjson.dumps({"model": "m", "version": "v1", "id": str(i), "ts": 1.7e9 + i,
                                 "features": f, "prediction": float(score[i]), "latency_ms": 10.0}))
    return out


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024,
                      max_request_size=8 * 1024 * 1024)
    for v in values:
        p.send(topic, key=b"m", value=v)
    p.flush()
    p.close()


def bare_consumer(bootstrap: str, topic: str, n: int, group: str) -> float:
    """Events/s of a kafka-python consumer that only reads (the service's consumer settings)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest", session_timeout_ms=6000, max_poll_records=5000)
    c.subscribe([topic, topic + "-feedback"])  # the same subscription as the service
    seen, first = 0, None
    while seen < n:
        for recs in c.poll(timeout_ms=500, max_records=5000).values():
            if first is None:
                first = time.perf_counter()
            seen += len(recs)
    rate = n / (time.perf_counter() - first)
    c.close()
    return rate


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def driftline_run(bootstrap: str, topic: str, n: int, group: str, state: Path, fast_parser: bool = True,
                  broker_pid: int | None = None) -> tuple[float, dict[str, float]]:
    """Events/s of the Service, and the CPU each process used per event (us) meanwhile."""
    from monitor.app import Service
    from monitor.config import load_settings

    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "group_id": group, "predictions_topic": topic,
               "feedback_topic": topic + "-feedback", "session_timeout_ms": 6000, "poll_timeout_ms": 500,
               "fast_record_parser": fast_parser},
        prometheus={"enabled": False}, state_dir=state, alarms_jsonl=state / "alarms.jsonl")
    stop = threading.Event()
    marks: dict[str, float] = {}

    cpu: dict[str, list[float]] = {}

    def processes() -> dict[str, int]:
        pids = {"service": os.getpid(), "consumer": svc._source._proc.pid}
        return pids | ({"broker": broker_pid} if broker_pid else {})

    def on_batch(stats) -> None:
        if "first" not in marks:
            marks["first"] = time.perf_counter() - stats.last_batch_seconds
            cpu.update({name: [cpu_seconds(pid)] for name, pid in processes().items()})
            marks["first_n"] = stats.predictions  # CPU is counted from the end of the first batch
        if stats.predictions >= n:
            marks["last"] = time.perf_counter()
            for name, pid in processes().items():
                cpu[name].append(cpu_seconds(pid))
            stop.set()

    svc = Service(settings, on_batch=on_batch)
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(timeout=600)
    per_event = {k: (b - a) / (n - marks["first_n"]) * 1e6 for k, (a, b) in cpu.items()}
    return n / (marks["last"] - marks["first"]), per_event


def run_in_process(role: str, bootstrap: str, n: int, group: str, state: Path, parser: str,
                   broker_pid: int) -> tuple[float, dict[str, float]]:
    """Events/s of one consumer run in a fresh Python process, as each runs in life (the
    bare consumer imports kafka-python only, driftline what `driftline run` imports),
    and for driftline the CPU per event of its processes and the broker's."""
    out = subprocess.run([sys.executable, __file__, "--role", role, bootstrap, str(n), group, str(state), parser,
                          str(broker_pid)], capture_output=True, text=True, check=True, timeout=900)
    result = json.loads(out.stdout.splitlines()[-1])
    return result["rate"], result["cpu"]


def replay(path: Path, state: Path) -> float:
    from monitor.cli import main

    t = time.perf_counter()
    code = main(["replay", "--predictions", str(path), "--alarms", str(state / "replay-alarms.jsonl"), "--quiet"])
    assert code == 0
    return sum(1 for _ in open(path, "rb")) / (time.perf_counter() - t)


MEMORY_CHILD = r"""
import sys, resource
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from bench_service import events
from monitor.config import Settings
from monitor.decode import Record, decode_batch
from monitor.engine import Engine
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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-events", type=int, default=5_000_000)
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--role", nargs=7, help=argparse.SUPPRESS)  # one consumer run, in its own process
    args = ap.parse_args()
    if args.role:
        role, bootstrap, n, group, state, fast, broker_pid = args.role
        if role == "bare":
            rate, cpu = bare_consumer(bootstrap, "bench", int(n), group), {}
        else:
            rate, cpu = driftline_run(bootstrap, "bench", int(n), group, Path(state), fast_parser=fast == "fast",
                                      broker_pid=int(broker_pid))
        print(json.dumps({"rate": rate, "cpu": cpu}))
        return

    from monitor.embedded_broker import EmbeddedBroker

    values = events(args.events)
    bare, ours, slow, cpu = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        tmp = Path(tmp)
        broker.create_topics(["bench", "bench-feedback"], partitions=1)
        t = time.perf_counter()
        produce(broker.bootstrap_servers, "bench", values)
        print(f"produced {args.events:,} events in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for k in range(args.repeats):
            pid = broker._proc.pid
            bare.append(run_in_process("bare", broker.bootstrap_servers, args.events, f"bare-{k}", tmp, "", pid)[0])
            rate, used = run_in_process("driftline", broker.bootstrap_servers, args.events, f"ours-{k}",
                                        tmp / f"s{k}", "fast", pid)
            ours.append(rate)
            cpu.append(used)
            slow.append(run_in_process("driftline", broker.bootstrap_servers, args.events, f"slow-{k}",
                                       tmp / f"p{k}", "kafka-python", pid)[0])
            print(f"run {k}: bare {bare[-1]:,.0f}/s, driftline {ours[-1]:,.0f}/s, "
                  f"with kafka-python's parser {slow[-1]:,.0f}/s", file=sys.stderr)
        path = tmp / "events.jsonl"
        path.write_bytes(b"\n".join(values) + b"\n")
        rep = [replay(path, tmp) for _ in range(args.repeats)]
    b, o, r = statistics.median(bare), statistics.median(ours), statistics.median(rep)
    sl = statistics.median(slow)
    ratios = sorted(x / y for x, y in zip(ours, bare))
    print(f"driftline service throughput ({args.events:,} events, {N_NUM} numeric + {N_CAT} categorical "
          f"features, median of {args.repeats})")
    print()
    print("| what | events/s | ratio |")
    print("|---|---|---|")
    print(f"| bare kafka-python consumer (reads only) | {b:,.0f} | 1.00 |")
    print(f"| driftline run (default detectors) | {o:,.0f} | {o / b:.2f} |")
    print(f"| driftline run, kafka-python's record parser (`kafka.fast_record_parser: false`) "
          f"| {sl:,.0f} | {sl / b:.2f} |")
    print(f"| driftline replay (JSONL file) | {r:,.0f} | - |")
    print()
    print("driftline/bare per run (paired, same run): " + ", ".join(f"{x:.2f}" for x in ratios))
    print("CPU per event during driftline run (median us): " + ", ".join(
        f"{name} {statistics.median(c[name] for c in cpu):.2f}" for name in cpu[0]))
    if not args.no_memory:
        m1, m5 = memory(args.memory_events)
        print(f"resident memory: {m1:.0f} MB after 1,000,000 events, {m5:.0f} MB after "
              f"{args.memory_events:,} ({(m5 / m1 - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
