"""The per-event cost of segments: ``driftline replay`` of the same files with
``segments`` off and on (one segment feature, ``top_k`` 10).

The stream: prediction events with 10 numeric features and two categorical ones
(``country``: 40 values with Zipf-like shares, ``channel``: 3), a score, and a label
for every prediction 100 events later. Rounds alternate off/on after a discarded
warm-up; the best round of each is reported. The machine is shared, so the wall-clock
difference between two replays is noisy; the time spent inside the segment code
(``VersionSegments.predictions`` and ``.labelled``, timed by wrappers this script
installs) is reported too, per prediction event: that is the cost segments add.

    .venv/bin/python benchmarks/bench_segments.py [--events 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

import driftline.monitor.segments as segments
from driftline.cli import main

BASE = {"reference": {"size": 5000}, "window": {"size": 1000}, "performance": {"window": 1000}}
SEGMENTS = {**BASE, "segments": {"features": ["country"], "top_k": 10}}


def write_stream(directory: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10))
    shares = 1.0 / np.arange(1, 41)
    country = rng.choice([f"c{i:02d}" for i in range(40)], size=n, p=shares / shares.sum())
    channel = rng.choice(["web", "app", "pos"], size=n)
    score = 1 / (1 + np.exp(-(x[:, 0] - x[:, 1])))
    label = (rng.random(n) < score).astype(int)
    t0 = 1_700_000_000.0
    preds, fb = directory / "p.jsonl", directory / "f.jsonl"
    with preds.open("wb") as p, fb.open("wb") as f:
        for i in range(n):
            feats = {f"x{j}": float(x[i, j]) for j in range(10)}
            feats["country"], feats["channel"] = str(country[i]), str(channel[i])
            p.write(
                orjson.dumps(
                    {
                        "model": "fraud",
                        "version": "v1",
                        "id": i,
                        "ts": t0 + i,
                        "features": feats,
                        "prediction": float(score[i]),
                    }
                )
                + b"\n"
            )
            f.write(orjson.dumps({"model": "fraud", "id": i, "ts": t0 + i + 100.5, "label": int(label[i])}) + b"\n")
    return preds, fb


INSIDE = {"seconds": 0.0}


def _timed(method):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            INSIDE["seconds"] += time.perf_counter() - start

    return wrapper


def replay(directory: Path, preds: Path, fb: Path, defaults: dict) -> tuple[float, int]:
    cfg = directory / "cfg.yml"
    cfg.write_text("defaults:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in defaults.items()))
    out = directory / "alarms.jsonl"
    start = time.perf_counter()
    code = main(
        [
            "replay",
            "--predictions",
            str(preds),
            "--feedback",
            str(fb),
            "--config",
            str(cfg),
            "--alarms",
            str(out),
            "--quiet",
        ]
    )
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"replay failed with exit code {code}")
    return seconds, sum(1 for _ in out.open()) if out.exists() else 0


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    segments.VersionSegments.predictions = _timed(segments.VersionSegments.predictions)
    segments.VersionSegments.labelled = _timed(segments.VersionSegments.labelled)
    inside = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        preds, fb = write_stream(d, args.events)
        replay(d, preds, fb, BASE)  # warm-up, discarded
        best = {"off": float("inf"), "on": float("inf")}
        alarms = {}
        for _ in range(args.rounds):
            for name, defaults in (("off", BASE), ("on", SEGMENTS)):
                INSIDE["seconds"] = 0.0
                seconds, alarms[name] = replay(d, preds, fb, defaults)
                best[name] = min(best[name], seconds)
                if name == "on":
                    inside = min(inside, INSIDE["seconds"])
        n = args.events
        for name in ("off", "on"):
            print(
                f"segments {name:3}: {best[name]:6.2f} s for {n} predictions + {n} labels, "
                f"{best[name] / n * 1e6:5.2f} us per prediction event, {n / best[name]:8.0f} events/s, "
                f"{alarms[name]} alarms"
            )
        extra = (best["on"] - best["off"]) / n * 1e6
        print(
            f"segments on (1 feature, top_k 10) cost {extra:+.2f} us per prediction event "
            f"({best['on'] / best['off'] - 1:+.1%}) wall clock; inside the segment code: "
            f"{inside / n * 1e6:.2f} us per prediction event ({inside / best['off']:.1%} of the replay without)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run())
