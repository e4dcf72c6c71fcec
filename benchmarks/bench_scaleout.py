"""Scale-out: aggregate throughput of 1, 2 and 3 ``driftline run`` processes in one group.

    .venv/bin/python benchmarks/bench_scaleout.py [--events N] [--repeats K] [--seed S]
        [--instances 1,2,3] [--models M] [--check]

(defaults: 300,000 predictions and as many labels, 3 rounds, 12 models)

Set-up (shared by every section): an embedded Tansu broker; N prediction events (20
numeric and 5 categorical features) of M models (default 12), keyed by model name, are
produced to ``scaleout`` (6 partitions) and one label per prediction to
``scaleout-feedback`` (6 partitions, co-partitioned): 90% of the labels soon after their
prediction, 10% late (2,000 to 5,000 predictions later), as in bench_service.py. The
model names are chosen so that Kafka's default partitioner (murmur2 of the key) puts the
same number of models in every partition: 1, 2 and 3 instances then get equal shares,
whatever a hash would have done to twelve names. Everything is produced before any
instance starts.

1. Scale-out. For each instance count in ``--instances``, that many ``python -m
   driftline.cli run --config ...`` subprocesses (default detectors, JSONL alarm sink,
   checkpoints in a state directory of their own, /metrics on a port picked for each)
   are started together in a fresh consumer group and consume everything. Clock: from
   the first record received by any instance's Kafka consumer to the end of the last
   batch any instance processed, once every instance holds partitions and none has
   processed anything for a while (so a rebalance is inside the clock, and events that
   a rebalance makes an instance process again are counted: at-least-once). Start-up and
   the group's first join are before the first record, outside the clock (each round's
   line prints how long they took, and each instance's share of the events: an instance
   that starts late joins a group whose members are already consuming, and with a small
   --events may find nothing left). Events/s = produced events (predictions and labels)
   / that time. CPU: ``/proc/<pid>/stat`` of each instance's service process, its Kafka
   consumer process and the broker, sampled every 50 ms by this script, over the same
   window: per event the instance processed (broker: per event processed by all; "all
   processes": everything, per event produced). Each round runs every instance count once, in
   an order shuffled per round (seeded); one warm-up round first, printed and discarded;
   medians of K rounds, and each round's ratio to one instance (paired, same round).

   The two marks come from the processes themselves: a ``sitecustomize`` module that this
   script writes into its temporary directory and puts on the instances' PYTHONPATH (the
   command line stays ``python -m driftline.cli run``) wraps ``KafkaConsumer.poll`` (first
   record, assignment) and passes ``Service`` an ``on_batch`` callback (events processed,
   end of the last batch), each writing a small JSON file per process. The events each
   instance processed are then read from its /metrics (``driftline_events_consumed_total``)
   and must agree with those files.

Further sections (the time to restore a model's state from the changelog against its
size, issue 14) go after section 1 in :func:`main`: they get the broker, the produced
topics and the run's temporary directory, and add their lines to the ``failures`` list.

``--check`` exits 1 when an instance exits with an error, or when the events processed
(the sum over instances) differ from the events produced: lost, or processed twice (also
when an instance's /metrics disagrees with its marks, or it dead-lettered events). There
is no throughput target: on this machine's two cores (shared, and the broker needs CPU
too) more instances contend for the same cores, so a target would measure the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPIC, PARTITIONS = "scaleout", 6
N_NUM, N_CAT = 20, 5
LATE_SHARE, LATE_MIN, LATE_MAX = 0.10, 2_000, 5_000
"""A tenth of the labels arrives 2,000 to 5,000 predictions after its prediction."""
SAMPLE_SECONDS = 0.05
"""How often this script samples the processes' CPU and progress."""
SETTLE_SECONDS = 3.0
"""Done when every instance holds partitions and none processed anything for this long
(longer than a poll timeout; a group whose members all hold partitions does not rebalance)."""
STUCK_SECONDS = 30.0
"""Given up (events lost) when nothing was processed for this long and some are missing."""
STARTUP_SECONDS = 180.0
"""Given up when no instance received a record this long after the start."""
MARKS_ENV = "BENCH_SCALEOUT_MARKS"
"""Directory where the instances' processes write their marks (see SITECUSTOMIZE)."""

SITECUSTOMIZE = r'''
"""Written by benchmarks/bench_scaleout.py for the `driftline run` processes it starts:
marks for its clock, one JSON file per process in $BENCH_SCALEOUT_MARKS (imported at
start-up by every Python process of the instance, the Kafka consumer process too)."""
import os

_dir = os.environ.get("BENCH_SCALEOUT_MARKS")
if _dir:
    import json
    import time

    def _write(name, doc):
        path = os.path.join(_dir, name)
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)  # the reader never sees half a file

    from kafka import KafkaConsumer

    _poll = KafkaConsumer.poll
    _consumer = {"n": 0, "assigned": 0}

    def _timed_poll(self, *args, **kwargs):
        out = _poll(self, *args, **kwargs)
        if self.config.get("group_id") is None:
            return out  # not the group's consumer (e.g. one that restores state from a changelog)
        n = sum(map(len, out.values())) if out else 0
        assigned = len(self.assignment())
        if n or assigned != _consumer["assigned"]:
            if n and "first" not in _consumer:
                _consumer["first"] = time.monotonic()  # CLOCK_MONOTONIC: system-wide on Linux
            _consumer["n"] += n
            _consumer["assigned"] = assigned
            _write("consumer-%d-%d.json" % (os.getppid(), os.getpid()), _consumer)
        return out

    KafkaConsumer.poll = _timed_poll

    from driftline.app import Service

    _init = Service.__init__

    def _init_with_marks(self, settings, **kwargs):
        own = kwargs.get("on_batch")

        def on_batch(stats):
            _write("service-%d.json" % os.getpid(),
                   {"n": stats.predictions + stats.feedback, "last": time.monotonic()})
            if own is not None:
                own(stats)

        _init(self, settings, **{**kwargs, "on_batch": on_batch})

    Service.__init__ = _init_with_marks
'''


# ---- events -------------------------------------------------------------------------


def model_names(count: int, partitions: int = PARTITIONS) -> list[str]:
    """``count`` model names that Kafka's default partitioner spreads evenly (the
    same number per partition, give or take one)."""
    from kafka.partitioner.default import murmur2

    per = dict.fromkeys(range(partitions), 0)
    names: list[str] = []
    i = 0
    while len(names) < count:  # fill the partitions level by level
        name = f"model-{i:03d}"
        p = (murmur2(name.encode()) & 0x7FFFFFFF) % partitions
        if per[p] == min(per.values()):
            per[p] += 1
            names.append(name)
        i += 1
    return names


def events(
    n: int, models: list[str], seed: int = 0
) -> tuple[list[tuple[bytes, bytes]], list[tuple[int, bytes, bytes]]]:
    """``n`` predictions (key, value), models taking turns, and one label per prediction
    (the prediction index after which it is sent, key, value), in sending order."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_NUM)).round(4)
    cats = rng.choice(np.array(["a", "b", "c", "d"]), size=(n, N_CAT))
    score = 1 / (1 + np.exp(-x[:, 0]))
    label = rng.random(n) < score  # a calibrated model's labels
    late = rng.random(n) < LATE_SHARE
    after = np.arange(n) + np.where(late, rng.integers(LATE_MIN, LATE_MAX + 1, n), 0)
    keys = [m.encode() for m in models]
    predictions = []
    for i in range(n):
        f = {f"n{j}": float(x[i, j]) for j in range(N_NUM)}
        f.update({f"c{j}": str(cats[i, j]) for j in range(N_CAT)})
        predictions.append(
            (
                keys[i % len(models)],
                orjson.dumps(
                    {
                        "model": models[i % len(models)],
                        "version": "v1",
                        "id": str(i),
                        "ts": 1.7e9 + i,
                        "features": f,
                        "prediction": float(score[i]),
                        "latency_ms": 10.0,
                    }
                ),
            )
        )
    labels = [
        (
            int(after[i]),
            keys[i % len(models)],
            orjson.dumps(
                {"model": models[i % len(models)], "id": str(i), "ts": 1.7e9 + int(i) + 30.0, "label": int(label[i])}
            ),
        )
        for i in np.argsort(after, kind="stable")
    ]
    return predictions, labels


def produce(bootstrap: str, predictions: list[tuple[bytes, bytes]], labels: list[tuple[int, bytes, bytes]]) -> None:
    """Predictions to TOPIC and each label to TOPIC-feedback once the prediction it is
    due after has been sent; keyed by model (the default partitioner places them)."""
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024, max_request_size=8 * 1024 * 1024
    )
    k = 0
    for i, (key, value) in enumerate(predictions):
        p.send(TOPIC, key=key, value=value)
        while k < len(labels) and labels[k][0] <= i:
            p.send(TOPIC + "-feedback", key=labels[k][1], value=labels[k][2])
            k += 1
    for _, key, value in labels[k:]:
        p.send(TOPIC + "-feedback", key=key, value=value)
    p.flush()
    p.close()


# ---- processes ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of a process (its Kafka consumer process, multiprocessing's helper)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def scrape(port: int) -> dict[str, float]:
    """The counters this benchmark checks, from one instance's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {"events": 0.0, "invalid": 0.0, "assigned": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "driftline_events_consumed_total":
                out["events"] += s.value
            elif s.name == "driftline_invalid_events_total":
                out["invalid"] += s.value
            elif s.name == "driftline_assigned_partitions":
                out["assigned"] = s.value
    return out


@dataclass
class Instance:
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen | None = None
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds, latest sample


@dataclass
class Outcome:
    """One run of N instances."""

    n: int
    rate: float = 0.0
    seconds: float = 0.0
    start_delay: float = 0.0
    processed: list[int] = field(default_factory=list)
    cpu_us: list[dict[str, float]] = field(default_factory=list)  # per instance: service, consumer, other
    broker_us: float = 0.0
    all_us: float = 0.0  # every process's CPU (instances and broker) per event produced
    cores_busy: float = 0.0
    errors: list[str] = field(default_factory=list)


def run_instances(n: int, bootstrap: str, broker_pid: int, produced: int, workdir: Path, site: Path) -> Outcome:
    """Start ``n`` `driftline run` processes in a fresh group, wait until the events are
    processed, stop them (SIGTERM) and measure (see the module docstring). ``site`` holds
    the SITECUSTOMIZE module."""
    marks = workdir / "marks"
    marks.mkdir(parents=True)
    group = f"scaleout-{n}-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        MARKS_ENV: str(marks),
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
    }
    out = Outcome(n)
    instances: list[Instance] = []
    for i, port in enumerate(free_ports(n)):
        state = workdir / f"instance-{i}"
        state.mkdir()
        config = state / "driftline.yaml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "kafka": {
                        "bootstrap_servers": bootstrap,
                        "group_id": group,
                        "predictions_topic": TOPIC,
                        "feedback_topic": TOPIC + "-feedback",
                        "session_timeout_ms": 6000,
                    },
                    "prometheus": {"enabled": True, "host": "127.0.0.1", "port": port},
                    "state_dir": str(state / "state"),
                    "alarms_jsonl": str(state / "alarms.jsonl"),
                }
            )
        )
        instances.append(Instance(config, port, state / "driftline.log"))
    launched = time.monotonic()
    for inst in instances:  # together: one after the other, nothing in between
        with open(inst.log, "wb") as log:  # the child has its own descriptor
            inst.proc = subprocess.Popen(
                [sys.executable, "-m", "driftline.cli", "run", "--config", str(inst.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=workdir,
            )
    history: list[tuple[float, dict[int, float]]] = []  # (time, {pid: CPU s}) of every sample
    last_change, last_view, deadline_hit = time.monotonic(), None, False
    try:
        while True:
            now = time.monotonic()
            sample = {broker_pid: cpu_seconds(broker_pid) or 0.0}
            for inst in instances:
                for pid in [inst.proc.pid, *children(inst.proc.pid)]:
                    c = cpu_seconds(pid)
                    if c is not None:
                        inst.cpu[pid] = sample[pid] = c
            history.append((now, sample))
            dead = [inst for inst in instances if inst.proc.poll() is not None]
            if dead:
                out.errors += [
                    f"instance {instances.index(i)} exited with code {i.proc.returncode}; its log ends: {tail(i.log)}"
                    for i in dead
                ]
                break
            services, consumers = read_marks(marks)
            view = (sorted(services.items()), sorted((k, v["n"], v["assigned"]) for k, v in consumers.items()))
            if view != last_view:
                last_view, last_change = view, now
            done = sum(s["n"] for s in services.values())
            holding = {ppid for (ppid, _), v in consumers.items() if v["assigned"] > 0}
            quiet = now - last_change
            if done >= produced and holding >= {i.proc.pid for i in instances} and quiet >= SETTLE_SECONDS:
                break
            started = any("first" in v for v in consumers.values())
            if quiet >= (STUCK_SECONDS if started else STARTUP_SECONDS):
                deadline_hit = True
                break
            time.sleep(SAMPLE_SECONDS)
        scraped = []
        for i, inst in enumerate(instances if not out.errors else []):
            try:
                scraped.append(scrape(inst.port))
            except OSError as exc:
                out.errors.append(f"instance {i}: /metrics on port {inst.port} did not answer ({exc})")
    finally:
        for inst in instances:
            if inst.proc.poll() is None:
                inst.proc.send_signal(signal.SIGTERM)  # the service finishes, flushes, commits
        for inst in instances:
            try:
                code = inst.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                code = inst.proc.wait()
                out.errors.append(f"instance {instances.index(inst)} did not stop within 60 s of SIGTERM")
            if code != 0 and not out.errors:  # (after an error, the others are stopped before they are up)
                out.errors.append(
                    f"instance {instances.index(inst)} exited with code {code} after SIGTERM; "
                    f"its log ends: {tail(inst.log)}"
                )
    if out.errors:
        return out
    services, consumers = read_marks(marks)
    out.processed = [int(services.get(inst.proc.pid, {"n": 0})["n"]) for inst in instances]
    for i, (inst, m) in enumerate(zip(instances, scraped)):
        if int(m["events"]) != out.processed[i]:
            out.errors.append(
                f"instance {i}: /metrics says {int(m['events']):,} events consumed, its on_batch {out.processed[i]:,}"
            )
        if m["invalid"]:
            out.errors.append(f"instance {i}: {int(m['invalid'])} events dead-lettered; its log ends: {tail(inst.log)}")
    if deadline_hit:
        out.errors.append(
            f"gave up waiting (nothing processed for {STUCK_SECONDS:.0f} s, or no record "
            f"{STARTUP_SECONDS:.0f} s after the start) with {sum(out.processed):,} of "
            f"{produced:,} events processed"
        )
    if not services:
        out.errors.append(f"no instance's on_batch mark in {marks} (did sitecustomize load? see the logs)")
        return out
    first = min(c["first"] for c in consumers.values() if "first" in c)
    end = max(s["last"] for s in services.values())
    out.seconds = end - first
    out.start_delay = first - launched
    out.rate = produced / out.seconds
    # CPU over the clocked window: the last sample at or before its start, the first at or after its end
    before = max((h for h in history if h[0] <= first), key=lambda h: h[0], default=history[0])[1]
    after = min((h for h in history if h[0] >= end), key=lambda h: h[0], default=history[-1])[1]
    total = 0.0
    for inst, processed in zip(instances, out.processed):
        consumer = [pid for (ppid, pid) in consumers if ppid == inst.proc.pid]
        used = {pid: after.get(pid, inst.cpu.get(pid, 0.0)) - before.get(pid, 0.0) for pid in inst.cpu}
        total += sum(used.values())
        roles = {"service": used.get(inst.proc.pid, 0.0), "consumer": sum(used.get(p, 0.0) for p in consumer)}
        roles["other"] = sum(used.values()) - roles["service"] - roles["consumer"]
        out.cpu_us.append({k: v / max(processed, 1) * 1e6 for k, v in roles.items()})
    broker = after[broker_pid] - before[broker_pid]
    out.broker_us = broker / max(sum(out.processed), 1) * 1e6
    out.all_us = (total + broker) / produced * 1e6
    out.cores_busy = (total + broker) / out.seconds
    return out


def tail(log: Path, lines: int = 5) -> str:
    """The last lines of an instance's log (it is deleted with the run's directory)."""
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:]) or "(empty)"


def read_marks(marks: Path) -> tuple[dict[int, dict], dict[tuple[int, int], dict]]:
    """The instances' marks: service pid -> {n, last}; (service pid, consumer pid) ->
    {n, assigned, first}."""
    services: dict[int, dict] = {}
    consumers: dict[tuple[int, int], dict] = {}
    for path in marks.glob("*.json"):
        doc = json.loads(path.read_text())
        parts = path.stem.split("-")
        if parts[0] == "service":
            services[int(parts[1])] = doc
        else:
            consumers[(int(parts[1]), int(parts[2]))] = doc
    return services, consumers


# ---- sections -----------------------------------------------------------------------


def scaleout(args: argparse.Namespace, bootstrap: str, broker_pid: int, produced: int, tmp: Path) -> list[str]:
    """Section 1: print the scale-out table; returns what --check fails on."""
    counts = [int(c) for c in args.instances.split(",")]
    results: dict[int, list[Outcome]] = {c: [] for c in counts}
    failures: list[str] = []
    shuffle = random.Random(args.seed)
    load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    for k in range(args.repeats + 1):  # round 0 is the warm-up, discarded
        order = list(counts)
        shuffle.shuffle(order)
        got: dict[int, Outcome] = {}
        for c in order:
            got[c] = o = run_instances(c, bootstrap, broker_pid, produced, tmp / f"round-{k}" / f"n{c}", tmp / "site")
            if o.errors:
                failures += [f"round {k}, {c} instance(s): {e}" for e in o.errors]
            elif sum(o.processed) != produced:
                failures.append(
                    f"round {k}, {c} instance(s): {sum(o.processed):,} events processed, "
                    f"{produced:,} produced ({sum(o.processed) - produced:+,})"
                )
        if k > 0:
            for c, o in got.items():
                results[c].append(o)
        print(
            f"{'warm-up (discarded)' if k == 0 else f'round {k}'}, order {' / '.join(map(str, order))}: "
            + "; ".join(
                f"{c}: "
                + (
                    f"ERROR {'; '.join(o.errors)}"
                    if o.errors
                    else f"{o.rate:,.0f}/s in {o.seconds:.2f} s (first record {o.start_delay:.1f} s after start; "
                    f"processed {' + '.join(f'{p:,}' for p in o.processed)})"
                )
                for c, o in sorted(got.items())
            ),
            file=sys.stderr,
        )
    ok = {c: [o for o in os_ if not o.errors] for c, os_ in results.items()}
    if not all(ok.values()):
        print("no measured round without errors for some instance count: no table", file=sys.stderr)
        return failures or ["no measured round completed"]
    from driftline.monitor.config import KafkaSettings, ModelSettings

    cores = len(os.sched_getaffinity(0))
    base = statistics.median(o.rate for o in ok[counts[0]])
    defaults = ModelSettings()
    changelog = getattr(getattr(KafkaSettings(), "changelog", None), "enabled", False)
    print(
        f"driftline scale-out: {', '.join(map(str, counts))} `driftline run` processes in one consumer "
        f"group over {PARTITIONS}+{PARTITIONS} partitions, {args.models} models keyed by name (spread "
        f"evenly), {args.events:,} predictions + {args.events:,} labels ({LATE_SHARE:.0%} of them late), "
        f"{args.events // args.models:,} predictions per model (reference {defaults.reference.size:,}, "
        f"windows of {defaults.window.size:,}), default settings (detectors; state changelog "
        f"{'on' if changelog else 'off'}); median of {args.repeats} round(s) after one warm-up round, "
        f"discarded; {cores} cores, load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} "
        "at the end"
    )
    print()
    print(
        f"| instances | events/s | ratio to {counts[0]} | processed / produced | cores busy "
        "| CPU us/event: service | consumer | broker | all processes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def med(values) -> float:
        return statistics.median(list(values))

    for c in counts:
        rs = ok[c]
        rate = med(o.rate for o in rs)
        print(
            f"| {c} | {rate:,.0f} | {rate / base:.2f} | {med(sum(o.processed) / produced for o in rs):.3f} "
            f"| {med(o.cores_busy for o in rs):.2f} "
            f"| {med(statistics.mean(u['service'] for u in o.cpu_us) for o in rs):.1f} "
            f"| {med(statistics.mean(u['consumer'] for u in o.cpu_us) for o in rs):.1f} "
            f"| {med(o.broker_us for o in rs):.1f} | {med(o.all_us for o in rs):.1f} |"
        )
    print()
    for c in counts[1:]:
        ratios = [o.rate / b.rate for o, b in zip(results[c], results[counts[0]]) if not (o.errors or b.errors)]
        print(f"{c} instances / {counts[0]}, per round (paired): " + ", ".join(f"{r:.2f}" for r in ratios))
    print(
        "events/s: events produced (predictions and labels) / seconds from the first record any instance "
        "received to the end of the last batch any instance processed. CPU per event, from /proc/<pid>/stat "
        "over that window: 'service' (the process that runs the detectors) and 'consumer' (its Kafka "
        "consumer process, which also decodes while the service is busy) per event that instance processed, "
        "mean over the instances; 'broker' per event processed by all; 'all processes' every process's CPU "
        "(instances and broker) per event produced. 'processed / produced' above 1.000: events processed "
        "twice after a rebalance handed their partition over from its last commit (at-least-once)."
    )
    one = ok[counts[0]]
    per_event = med(o.all_us for o in one)
    print(
        f"What {cores} cores allow: each instance is two busy processes (service and Kafka consumer) and "
        f"the broker needs CPU too. With {counts[0]} instance(s), {med(o.cores_busy for o in one):.2f} of "
        f"{cores} cores are busy and all processes together use {per_event:.1f} us of CPU per event, so "
        f"{cores} cores cannot go beyond ~{cores / per_event * 1e6:,.0f} events/s however many instances "
        f"run, less what other jobs on this shared machine take. The ratios measure what more instances "
        f"cost on the same cores (the group's rebalance, more processes taking turns), not the capacity "
        f"scale-out adds where each process has a core of its own. No throughput target is checked: on "
        f"{cores} shared cores it would measure the machine, not driftline."
    )
    return failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=300_000, help="prediction events (and as many labels)")
    ap.add_argument("--repeats", type=int, default=3, help="measured rounds (after one warm-up round)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the instance counts' order per round")
    ap.add_argument("--instances", default="1,2,3", help="instance counts, comma-separated (the first is the base)")
    ap.add_argument("--models", type=int, default=12, help="models (keyed by name, spread evenly)")
    ap.add_argument(
        "--check", action="store_true", help="exit 1 when an instance fails or events are lost or processed twice"
    )
    args = ap.parse_args()

    from driftline.demo.embedded_broker import EmbeddedBroker
    from driftline.monitor.config import ModelSettings

    defaults = ModelSettings()
    enough = args.models * (defaults.reference.size + 5 * defaults.window.size)
    if args.events < enough:
        print(
            f"note: {args.events // args.models:,} predictions per model; the reference takes the first "
            f"{defaults.reference.size:,}, so the drift detectors see few or no windows: figures from runs "
            f"of --events {enough:,} or more",
            file=sys.stderr,
        )
    names = model_names(args.models)
    predictions, labels = events(args.events, names)
    produced = len(predictions) + len(labels)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp, EmbeddedBroker() as broker:
        tmp = Path(tmp)
        (tmp / "site").mkdir()
        (tmp / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        broker.create_topics([TOPIC, TOPIC + "-feedback"], partitions=PARTITIONS)
        t = time.perf_counter()
        produce(broker.bootstrap_servers, predictions, labels)
        print(
            f"produced {len(predictions):,} predictions and {len(labels):,} labels ({LATE_SHARE:.0%} late) "
            f"of {len(names)} models in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        del predictions, labels
        pid = broker._proc.pid

        # 1. Scale-out.
        failures += scaleout(args, broker.bootstrap_servers, pid, produced, tmp)
        # Further sections go here (e.g. the restore time from the changelog, issue 14):
        # same broker, topics and tmp; print a table and add to `failures`.

    if failures:
        print("check failed: " + "; ".join(failures), file=sys.stderr)
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
