"""Detection quality of driftline's default configuration on generated streams.

    .venv/bin/python benchmarks/bench_quality.py [--stable-events N] [--seeds K]

Streams with known change points go through the real pipeline (JSON records ->
decode -> label join -> engine) with ``Settings()`` defaults: 10 numeric and 3
categorical features, a logistic model whose score is the prediction, labels that
arrive 500 events after their prediction. Scenarios:

* ``stable``         no change at all (long): false alarms only;
* ``sudden``         one numeric feature's mean moves by 0.5 standard deviations;
* ``gradual``        one feature's mean ramps to +1 SD over 10,000 events;
* ``label_shift``    the share of positive labels moves from 0.3 to 0.6 (features
                     follow the class-conditional distributions);
* ``concept``        the labels' dependence on the features changes; features and
                     predictions do not (only labels reveal it).

For each change: detected (an alarm whose evidence ends after the change point),
delay (alarm ``last_index`` minus the change point, in prediction events, for the
first such alarm), and which kind of alarm found it. False alarms: alarms whose
evidence ends before the change point, and every alarm of the stable stream, per
100,000 stable events.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftline.monitor.config import Settings  # noqa: E402
from driftline.monitor.decode import Record, decode_batch  # noqa: E402
from driftline.monitor.engine import Engine  # noqa: E402

N_NUM, N_CAT = 10, 3
CATS = np.array(["a", "b", "c", "d", "e"])
LABEL_DELAY = 500
BATCH = 5000


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def generate(kind: str, n: int, change: int, seed: int):
    """Prediction and feedback events of one scenario (lists of dicts)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(scale=0.8, size=N_NUM)
    x = rng.normal(size=(n, N_NUM))
    cats = rng.choice(CATS, size=(n, N_CAT), p=[0.4, 0.25, 0.15, 0.12, 0.08])
    feature = int(rng.integers(N_NUM))
    y_logit = None
    if kind == "sudden":
        x[change:, feature] += 0.5
    elif kind == "gradual":
        ramp = np.minimum(np.arange(n - change) / 10_000, 1.0)
        x[change:, feature] += ramp
    elif kind == "label_shift":
        prior = np.where(np.arange(n) < change, 0.3, 0.6)
        y = (rng.random(n) < prior).astype(int)
        x[:, :2] += 0.8 * y[:, None]
    score = _sigmoid(x @ w)
    if kind == "label_shift":
        labels = y
    else:
        w_true = w.copy()
        true_score = _sigmoid(x @ w_true)
        if kind == "concept":
            w_new = w.copy()
            w_new[np.argsort(-np.abs(w))[:2]] *= -1  # the two strongest effects reverse
            true_score = np.where(np.arange(n)[:, None] < change, true_score[:, None],
                                  _sigmoid(x @ w_new)[:, None])[:, 0]
        labels = (rng.random(n) < true_score).astype(int)
    t0 = 1.7e9
    preds, fb = [], []
    for i in range(n):
        f = {f"n{j}": float(x[i, j]) for j in range(N_NUM)}
        f.update({f"c{j}": str(cats[i, j]) for j in range(N_CAT)})
        preds.append(orjson.dumps({"model": "m", "version": "v1", "id": str(i), "ts": t0 + i,
                                   "features": f, "prediction": float(score[i])}))
        fb.append(orjson.dumps({"model": "m", "id": str(i), "ts": t0 + i + LABEL_DELAY, "label": int(labels[i])}))
    return preds, fb


def run_stream(preds, fb, settings):
    """Interleave (feedback LABEL_DELAY records after its prediction) and run."""
    records = []
    for i, p in enumerate(preds):
        records.append(Record("predictions", 0, i, -1, None, p))
        if i >= LABEL_DELAY:
            records.append(Record("feedback", 0, i, -1, None, fb[i - LABEL_DELAY]))
    engine = Engine(settings)
    alarms = []
    for s in range(0, len(records), BATCH):
        alarms += engine.process(decode_batch(records[s:s + BATCH], "predictions", "feedback")).alarms
    return alarms, len(records)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stable-events", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--length", type=int, default=40_000)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a target is missed: at most 1 false alarm per 100,000 stable "
                         "events, every sudden shift detected within 5,000 events")
    args = ap.parse_args()
    settings = Settings()
    change = args.length // 2
    rows = []
    stable_events = 0
    false_alarms: list = []
    t = time.perf_counter()
    n_records = 0
    preds, fb = generate("stable", args.stable_events, args.stable_events, seed=1000)
    alarms, n = run_stream(preds, fb, settings)
    n_records += n
    stable_events += args.stable_events
    false_alarms += alarms
    for k, kind in enumerate(("sudden", "gradual", "label_shift", "concept")):
        delays, found_by = [], Counter()
        for seed in range(args.seeds):
            preds, fb = generate(kind, args.length, change, seed=100 * (k + 1) + seed)
            alarms, n = run_stream(preds, fb, settings)
            n_records += n
            stable_events += change
            false_alarms += [a for a in alarms if a.last_index < change]
            after = sorted((a for a in alarms if a.last_index >= change), key=lambda a: a.last_index)
            if after:
                delays.append(after[0].last_index - change)
                found_by[f"{after[0].kind}/{after[0].detector}"] += 1
        rows.append((kind, len(delays), args.seeds, statistics.median(delays) if delays else None,
                     max(delays) if delays else None, ", ".join(f"{k} x{v}" for k, v in found_by.most_common())))
    elapsed = time.perf_counter() - t
    print(f"driftline detection quality, default settings ({args.seeds} seeds x {args.length:,} events per "
          f"scenario, change at {change:,}; stable stream {args.stable_events:,} events)")
    print()
    print("| scenario | detected | median delay (events) | max delay | first alarm by |")
    print("|---|---|---|---|---|")
    for kind, hit, total, med, worst, by in rows:
        print(f"| {kind} | {hit}/{total} | {med if med is not None else '-'} | {worst if worst is not None else '-'} | {by} |")
    fa_rate = len(false_alarms) / stable_events * 100_000
    print()
    print(f"false alarms: {len(false_alarms)} in {stable_events:,} stable events = {fa_rate:.2f} per 100,000")
    for a in false_alarms[:10]:
        print(f"  {a.kind}/{a.detector} {a.feature} [{a.first_index}..{a.last_index}] stat={a.statistic:.4g} p={a.p_value}")
    print(f"({n_records:,} records in {elapsed:.1f} s: {n_records / elapsed:,.0f} records/s through decode+join+engine)")
    sudden = next(r for r in rows if r[0] == "sudden")
    missed = []
    if fa_rate > 1.0:
        missed.append(f"{fa_rate:.2f} false alarms per 100,000 stable events (target: at most 1)")
    if sudden[1] < sudden[2] or (sudden[4] is not None and sudden[4] > 5_000):
        missed.append(f"sudden shifts: {sudden[1]}/{sudden[2]} detected, worst delay {sudden[4]} "
                      "(target: all, within 5,000 events)")
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
