"""Detection quality of driftline's default configuration on generated streams, and
the quality of label-free performance estimation (CBPE).

    .venv/bin/python benchmarks/bench_quality.py [--stable-events N] [--seeds K]
    .venv/bin/python benchmarks/bench_quality.py --cbpe-only      # estimation section only
    .venv/bin/python benchmarks/bench_quality.py --estimation-only  # estimation through the engine only
    /tmp/nml/bin/python benchmarks/bench_quality.py --cbpe-only   # ... beside NannyML's CBPE

The second form needs only numpy and scipy (driftline importable, e.g.
``/tmp/nml/bin/pip install --no-deps -e .``); where ``nannyml`` is importable the CBPE
section also runs NannyML's CBPE on the same streams and reports the difference of
the estimates and the speed ratio (it says so when nannyml is absent).

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

CBPE section (:class:`driftline.detectors.estimation.PerformanceEstimator` called
directly on tumbling windows, no engine): a logistic model whose scores are
overconfident (``sigmoid(1.6 z)`` for the true ``P(y=1|x) = sigmoid(z)``), calibrated
on a labelled reference of the same distribution. Streams:

* ``stable``          no shift (long): false signals only;
* ``harmful_shift``   covariate shift toward the decision boundary (the three
                      informative features shrink to 35%): accuracy falls;
* ``benign_shift``    covariate shift along the strongest feature (+1 SD): the
                      predictions drift, accuracy does not fall;

P(y|x) never changes (CBPE's assumption). Per window: the estimated accuracy
against the realized one (mean absolute error, share of windows whose band holds
the realized value), and the signal "estimate below the reference's accuracy by
``--margin``" (the whole 95% band below ``reference - margin``): its delay after a
harmful shift, and false signals per 100,000 stable events (stable stream, the
pre-shift halves, and the benign shift's second half, where accuracy did not fall).

Estimation through the engine (``--estimation-only`` runs it alone): the CBPE streams
as JSON events (the five features and the score as the prediction) through decode,
label join and engine with ``Settings()`` defaults (estimation on: calibrated on the
first 1,000 labelled events of the 5,000-event reference, windows of 1,000 events,
margin 0.05), the labels arriving ``--lags`` events after their predictions (labels
of the last ``lag`` predictions never arrive). Per lag: the delay from the shift to
the first ``performance_estimated`` alarm and to the first labelled ``performance``
alarm (and to the first ``concept_drift`` one), counted in prediction events from the
shift to the moment the engine raised the alarm (so the labels' lag is part of it); the
mean absolute estimation error the engine reports for its labelled windows; and
``performance_estimated`` alarms per 100,000 stable events (the stable stream, the
pre-shift parts, and the benign shift's second part).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftline.detectors.estimation import PerformanceEstimator  # noqa: E402

N_NUM, N_CAT = 10, 3
CATS = np.array(["a", "b", "c", "d", "e"])
LABEL_DELAY = 500
BATCH = 5000


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def generate(kind: str, n: int, change: int, seed: int):
    """Prediction and feedback events of one scenario (lists of dicts)."""
    import orjson

    rng = np.random.default_rng(seed)
    w = rng.normal(scale=0.8, size=N_NUM)
    x = rng.normal(size=(n, N_NUM))
    cats = rng.choice(CATS, size=(n, N_CAT), p=[0.4, 0.25, 0.15, 0.12, 0.08])
    feature = int(rng.integers(N_NUM))
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
            true_score = np.where(np.arange(n)[:, None] < change, true_score[:, None], _sigmoid(x @ w_new)[:, None])[
                :, 0
            ]
        labels = (rng.random(n) < true_score).astype(int)
    t0 = 1.7e9
    preds, fb = [], []
    for i in range(n):
        f = {f"n{j}": float(x[i, j]) for j in range(N_NUM)}
        f.update({f"c{j}": str(cats[i, j]) for j in range(N_CAT)})
        preds.append(
            orjson.dumps(
                {
                    "model": "m",
                    "version": "v1",
                    "id": str(i),
                    "ts": t0 + i,
                    "features": f,
                    "prediction": float(score[i]),
                }
            )
        )
        fb.append(orjson.dumps({"model": "m", "id": str(i), "ts": t0 + i + LABEL_DELAY, "label": int(labels[i])}))
    return preds, fb


def run_stream(preds, fb, settings):
    """Interleave (feedback LABEL_DELAY records after its prediction) and run."""
    from driftline.monitor.decode import Record, decode_batch
    from driftline.monitor.engine import Engine

    records = []
    for i, p in enumerate(preds):
        records.append(Record("predictions", 0, i, -1, None, p))
        if i >= LABEL_DELAY:
            records.append(Record("feedback", 0, i, -1, None, fb[i - LABEL_DELAY]))
    engine = Engine(settings)
    alarms = []
    for s in range(0, len(records), BATCH):
        alarms += engine.process(decode_batch(records[s : s + BATCH], "predictions", "feedback")).alarms
    return alarms, len(records)


def engine_section(args: argparse.Namespace) -> list[str]:
    """The engine's alarms on the scenarios; the targets missed."""
    from driftline.monitor.config import Settings

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
        rows.append(
            (
                kind,
                len(delays),
                args.seeds,
                statistics.median(delays) if delays else None,
                max(delays) if delays else None,
                ", ".join(f"{k} x{v}" for k, v in found_by.most_common()),
            )
        )
    elapsed = time.perf_counter() - t
    print(
        f"driftline detection quality, default settings ({args.seeds} seeds x {args.length:,} events per "
        f"scenario, change at {change:,}; stable stream {args.stable_events:,} events)"
    )
    print()
    print("| scenario | detected | median delay (events) | max delay | first alarm by |")
    print("|---|---|---|---|---|")
    for kind, hit, total, med, worst, by in rows:
        print(
            f"| {kind} | {hit}/{total} | {med if med is not None else '-'} "
            f"| {worst if worst is not None else '-'} | {by} |"
        )
    fa_rate = len(false_alarms) / stable_events * 100_000
    print()
    print(f"false alarms: {len(false_alarms)} in {stable_events:,} stable events = {fa_rate:.2f} per 100,000")
    for a in false_alarms[:10]:
        print(
            f"  {a.kind}/{a.detector} {a.feature} [{a.first_index}..{a.last_index}] "
            f"stat={a.statistic:.4g} p={a.p_value}"
        )
    print(
        f"({n_records:,} records in {elapsed:.1f} s: {n_records / elapsed:,.0f} records/s through decode+join+engine)"
    )
    sudden = next(r for r in rows if r[0] == "sudden")
    missed = []
    if fa_rate > 1.0:
        missed.append(f"{fa_rate:.2f} false alarms per 100,000 stable events (target: at most 1)")
    if sudden[1] < sudden[2] or (sudden[4] is not None and sudden[4] > 5_000):
        missed.append(
            f"sudden shifts: {sudden[1]}/{sudden[2]} detected, worst delay {sudden[4]} "
            "(target: all, within 5,000 events)"
        )
    return missed


# ---- label-free performance estimation (CBPE) ----------------------------------------------
CBPE_WEIGHTS = np.array([1.5, -1.0, 0.8, 0.0, 0.0])
OVERCONFIDENCE = 1.6
CBPE_KINDS = ("stable", "harmful_shift", "benign_shift")


def cbpe_stream(kind: str, n: int, change: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (overconfident) and labels (from the true P(y|x)) of one CBPE stream."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, CBPE_WEIGHTS.size))
    if kind == "harmful_shift":
        x[change:, :3] *= 0.35
    elif kind == "benign_shift":
        x[change:, 0] += 1.0
    z = x @ CBPE_WEIGHTS
    labels = (rng.random(n) < _sigmoid(z)).astype(np.int64)
    return _sigmoid(OVERCONFIDENCE * z), labels


def _windows(n: int, window: int) -> list[slice]:
    return [slice(s, s + window) for s in range(0, n - window + 1, window)]


NML_METRICS = ("accuracy", "f1", "roc_auc")


def _nannyml_estimates(nml, ref_scores, ref_labels, scores, window):
    """NannyML's CBPE estimates per chunk of ``window`` rows ({metric: array}), and the seconds it took."""
    import pandas as pd

    reference = pd.DataFrame({"p": ref_scores, "y_pred": (ref_scores >= 0.5).astype(int), "y": ref_labels})
    analysis = pd.DataFrame({"p": scores, "y_pred": (scores >= 0.5).astype(int)})
    t = time.perf_counter()
    cbpe = nml.CBPE(
        y_pred_proba="p",
        y_pred="y_pred",
        y_true="y",
        problem_type="classification_binary",
        metrics=list(NML_METRICS),
        chunk_size=window,
    )
    cbpe.fit(reference)
    result = cbpe.estimate(analysis).filter(period="analysis").to_df()
    elapsed = time.perf_counter() - t
    return {m: result[(m, "value")].to_numpy(dtype=float) for m in NML_METRICS}, elapsed


def cbpe_section(args: argparse.Namespace) -> list[str]:
    """Estimated against realized accuracy per window, signals, and NannyML beside it."""
    try:
        import warnings

        os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # nannyml would send usage analytics
        import nannyml as nml

        warnings.filterwarnings("ignore")  # nannyml and pandas are chatty; this is a script
    except ImportError:
        nml = None
    window, margin, change = args.window, args.margin, args.cbpe_length // 2
    rows = []
    stable_events = false_signals = 0
    ours_seconds = nml_seconds = 0.0
    nml_diffs: dict[str, list[float]] = {m: [] for m in NML_METRICS}
    nml_errors: list[float] = []
    for k, kind in enumerate(CBPE_KINDS):
        errors: list[float] = []
        covered = signals_after = 0
        delays: list[int] = []
        before: list[float] = []
        after: list[float] = []
        for seed in range(args.seeds):
            n = args.cbpe_stable_events if kind == "stable" else args.cbpe_length
            at = n if kind == "stable" else change
            ref_scores, ref_labels = cbpe_stream("stable", args.reference, args.reference, 10_000 + 17 * seed + k)
            scores, labels = cbpe_stream(kind, n, at, 20_000 + 17 * seed + k)
            t = time.perf_counter()
            estimator = PerformanceEstimator().fit(ref_scores, ref_labels)
            estimates = [estimator.estimate(scores[w]) for w in _windows(n, window)]
            ours_seconds += time.perf_counter() - t
            reference = estimator.reference
            first_signal = None
            for w, e in zip(_windows(n, window), estimates, strict=True):
                realized = estimator.realized(scores[w], labels[w]).accuracy.value
                errors.append(abs(e.accuracy.value - realized))
                covered += e.accuracy.low <= realized <= e.accuracy.high
                (after if w.start >= at else before).append(realized)
                signal = e.below(reference, margin)
                if w.stop <= at:
                    stable_events += window
                    false_signals += signal
                elif kind == "benign_shift" and w.start >= at:
                    stable_events += window
                    false_signals += signal
                    signals_after += signal
                elif kind == "harmful_shift" and signal and first_signal is None:
                    first_signal = w.stop - at
            if first_signal is not None:
                delays.append(first_signal)
            if nml is not None:
                theirs, seconds = _nannyml_estimates(nml, ref_scores, ref_labels, scores, window)
                nml_seconds += seconds
                m = min(len(estimates), theirs["accuracy"].size)  # nannyml may merge a short last chunk
                for metric in NML_METRICS:
                    ours = np.array([getattr(e, metric).value for e in estimates[:m]])
                    nml_diffs[metric] += np.abs(ours - theirs[metric][:m]).tolist()
                realized_all = np.array(
                    [estimator.realized(scores[w], labels[w]).accuracy.value for w in _windows(n, window)[:m]]
                )
                nml_errors += np.abs(theirs["accuracy"][:m] - realized_all).tolist()
        rows.append(
            (
                kind,
                float(np.mean(errors)),
                covered / len(errors),
                len(errors),
                float(np.mean(before)) if before else float("nan"),
                float(np.mean(after)) if after else float("nan"),
                delays,
                signals_after,
            )
        )
    print()
    print(
        f"CBPE: estimated vs realized accuracy per {window:,}-event window ({args.seeds} seeds; reference "
        f"{args.reference:,} labelled events; shifts at {change:,} of {args.cbpe_length:,}; stable stream "
        f"{args.cbpe_stable_events:,}; signal = 95% band below reference - {margin})"
    )
    print()
    print(
        "| stream | windows | MAE of estimate | band holds realized | realized acc. before / after shift "
        "| signal delay (events) | signals after shift |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind, mae, cover, count, acc_before, acc_after, delays, sig_after in rows:
        delay = "-"
        if kind == "harmful_shift":
            delay = (
                f"median {statistics.median(delays):,.0f}, max {max(delays):,} ({len(delays)}/{args.seeds})"
                if delays
                else f"none ({0}/{args.seeds})"
            )
        after_text = "-" if kind == "stable" else f"{acc_after:.3f}"
        print(
            f"| {kind} | {count} | {mae:.4f} | {cover:.1%} | {acc_before:.3f} / {after_text} | {delay} "
            f"| {sig_after if kind == 'benign_shift' else '-'} |"
        )
    rate = false_signals / stable_events * 100_000
    print()
    print(f"false signals: {false_signals} in {stable_events:,} stable events = {rate:.2f} per 100,000")
    if nml is None:
        print("nannyml: not importable here, no comparison (run with /tmp/nml/bin/python, see the docstring)")
    else:
        diffs = ", ".join(f"{m} {np.mean(v):.2g} (max {np.max(v):.2g})" for m, v in nml_diffs.items())
        print(
            f"nannyml {nml.__version__} CBPE on the same streams and windows ({len(nml_errors)}): "
            f"mean |ours - nannyml| estimate: {diffs}; nannyml's accuracy MAE against realized "
            f"{np.mean(nml_errors):.4f}; fit + estimate time ours {ours_seconds:.2f} s (all five metrics), "
            f"nannyml {nml_seconds:.2f} s ({', '.join(NML_METRICS)}; incl. DataFrame building): "
            f"nannyml / ours = {nml_seconds / ours_seconds:.0f}x"
        )
    missed = []
    if rate > 1.0:
        missed.append(f"{rate:.2f} false CBPE signals per 100,000 stable events (target: at most 1)")
    harmful = next(r for r in rows if r[0] == "harmful_shift")
    if len(harmful[6]) < args.seeds:
        missed.append(f"harmful shifts signalled {len(harmful[6])}/{args.seeds}")
    return missed


# ---- estimation through the engine -------------------------------------------------------
ENGINE_BATCH = 1000


def estimation_events(kind: str, n: int, change: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """The CBPE stream ``kind`` as prediction and feedback records (JSON bytes)."""
    import orjson

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, CBPE_WEIGHTS.size))
    if kind == "harmful_shift":
        x[change:, :3] *= 0.35
    elif kind == "benign_shift":
        x[change:, 0] += 1.0
    z = x @ CBPE_WEIGHTS
    labels = (rng.random(n) < _sigmoid(z)).astype(int)
    scores = _sigmoid(OVERCONFIDENCE * z)
    t0 = 1.7e9
    preds = [
        orjson.dumps(
            {
                "model": "m",
                "version": "v1",
                "id": str(i),
                "ts": t0 + i,
                "features": {f"n{j}": float(x[i, j]) for j in range(x.shape[1])},
                "prediction": float(scores[i]),
            }
        )
        for i in range(n)
    ]
    fb = [orjson.dumps({"model": "m", "id": str(i), "ts": t0 + i, "label": int(labels[i])}) for i in range(n)]
    return preds, fb


def run_lagged(preds: list[bytes], fb: list[bytes], lag: int, settings) -> tuple[list, list[float], int]:
    """Run with each label ``lag`` predictions after its own; returns (alarm, predictions
    seen when it was raised) pairs, the estimation errors of the labelled windows, and
    the records processed."""
    from driftline.monitor.decode import Record, decode_batch
    from driftline.monitor.engine import Engine

    records = []
    for i, p in enumerate(preds):
        records.append(Record("predictions", 0, i, -1, None, p))
        if i >= lag:
            records.append(Record("feedback", 0, i, -1, None, fb[i - lag]))
    engine = Engine(settings)
    raised: list = []
    errors: dict[int, float] = {}
    windows = settings.for_model("m").performance.window
    for s in range(0, len(records), ENGINE_BATCH):
        out = engine.process(decode_batch(records[s : s + ENGINE_BATCH], "predictions", "feedback"))
        seen = engine.models["m"].n_events
        raised += [(a, seen) for a in out.alarms]
        for snap in engine.snapshot():
            if snap.estimation is not None and "accuracy" in snap.estimation.error:
                errors[snap.labelled // windows] = snap.estimation.error["accuracy"]
    return raised, list(errors.values()), len(records)


def estimation_engine_section(args: argparse.Namespace) -> list[str]:
    """Delays of performance_estimated against the labelled alarms, through the engine."""
    from driftline.monitor.config import Settings

    settings = Settings()
    change = args.cbpe_length // 2
    missed = []
    print()
    print(
        f"Estimation through the engine (Settings() defaults; {args.seeds} seeds x {args.cbpe_length:,} events, "
        f"shift at {change:,}; stable stream {args.estimation_stable_events:,} events; batches of "
        f"{ENGINE_BATCH:,} records; delays in prediction events from the shift to the alarm)"
    )
    print()
    print(
        "| label lag | harmful shift: `performance_estimated` delay | labelled `performance` delay "
        "| `concept_drift` delay | MAE of estimate (labelled windows) | `performance_estimated` false alarms "
        "per 100,000 stable events |"
    )
    print("|---|---|---|---|---|---|")
    t = time.perf_counter()
    n_records = 0

    def delay_text(values: list[int]) -> str:
        if not values:
            return f"none (0/{args.seeds})"
        return f"median {statistics.median(values):,.0f}, max {max(values):,} ({len(values)}/{args.seeds})"

    for lag in args.lags:
        stable_events = false_alarms = 0
        delays: dict[str, list[int]] = {"performance_estimated": [], "performance": [], "concept_drift": []}
        errors: list[float] = []
        preds, fb = estimation_events(
            "stable", args.estimation_stable_events, args.estimation_stable_events, seed=30_000 + lag
        )
        raised, errs, n = run_lagged(preds, fb, lag, settings)
        n_records += n
        errors += errs
        stable_events += args.estimation_stable_events
        false_alarms += sum(a.kind == "performance_estimated" for a, _ in raised)
        for k, kind in enumerate(("harmful_shift", "benign_shift")):
            for seed in range(args.seeds):
                preds, fb = estimation_events(kind, args.cbpe_length, change, seed=40_000 + 100 * k + seed)
                raised, errs, n = run_lagged(preds, fb, lag, settings)
                n_records += n
                errors += errs
                estimated = [(a, at) for a, at in raised if a.kind == "performance_estimated"]
                false_alarms += sum(a.last_index < change for a, _ in estimated)
                stable_events += change
                if kind == "benign_shift":
                    false_alarms += sum(a.last_index >= change for a, _ in estimated)
                    stable_events += args.cbpe_length - change
                    continue
                for wanted in delays:
                    first = [at for a, at in raised if a.kind == wanted and a.last_index >= change]
                    if first:
                        delays[wanted].append(min(first) - change)
        rate = false_alarms / stable_events * 100_000
        print(
            f"| {lag:,} | {delay_text(delays['performance_estimated'])} | {delay_text(delays['performance'])} "
            f"| {delay_text(delays['concept_drift'])} | {np.mean(np.abs(errors)):.4f} ({len(errors)} windows) "
            f"| {false_alarms} in {stable_events:,} = {rate:.2f} |"
        )
        if rate > 1.0:
            missed.append(
                f"lag {lag}: {rate:.2f} false performance_estimated alarms per 100,000 stable events "
                "(target: at most 1)"
            )
        if len(delays["performance_estimated"]) < args.seeds:
            missed.append(
                f"lag {lag}: harmful shifts found by performance_estimated "
                f"{len(delays['performance_estimated'])}/{args.seeds}"
            )
    elapsed = time.perf_counter() - t
    print()
    print(
        f"({n_records:,} records in {elapsed:.1f} s: {n_records / elapsed:,.0f} records/s through "
        "decode+join+engine with estimation on)"
    )
    return missed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stable-events", type=int, default=600_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--length", type=int, default=40_000)
    ap.add_argument("--cbpe-only", action="store_true", help="only the CBPE section (needs numpy and scipy only)")
    ap.add_argument("--estimation-only", action="store_true", help="only the estimation-through-the-engine section")
    ap.add_argument(
        "--lags",
        type=int,
        nargs="+",
        default=[1_000, 10_000],
        help="label lags (in prediction events) of the estimation-through-the-engine section",
    )
    ap.add_argument("--estimation-stable-events", type=int, default=100_000)
    ap.add_argument("--cbpe-stable-events", type=int, default=300_000)
    ap.add_argument("--cbpe-length", type=int, default=40_000)
    ap.add_argument("--reference", type=int, default=10_000, help="labelled reference events for CBPE")
    ap.add_argument("--window", type=int, default=1_000, help="CBPE window (performance.window's default)")
    ap.add_argument("--margin", type=float, default=0.1, help="CBPE signal margin (performance.max_drop's default)")
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when a target is missed: at most 1 false alarm (and CBPE signal) per 100,000 "
        "stable events, every sudden shift detected within 5,000 events, every harmful "
        "shift signalled by CBPE and by performance_estimated through the engine",
    )
    args = ap.parse_args()
    if args.estimation_only:
        missed = estimation_engine_section(args)
    else:
        missed = [] if args.cbpe_only else engine_section(args)
        missed += cbpe_section(args)
        if not args.cbpe_only:
            missed += estimation_engine_section(args)
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
    if args.check and missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
