"""A model zoo: generated streams of the models users actually run, for the monitor's tests.

A stream is described by a small, hashable :class:`StreamSpec` (what hypothesis draws and
shrinks: feature kinds, task, versions, label timing, invalid events) and expanded by
:func:`expand` with a seeded numpy generator into the JSONL lines of a replay (or the
records of a Kafka run), with what the service must make of them: which lines are
invalid and why, how many valid predictions and labels each (model, version) has.

Streams are stable in distribution (no change anywhere), so that any alarm on them
at the default thresholds is a false alarm:

- categorical features have at most 20 categories, each with probability >= 1 %, so
  that the default 5,000-event reference sees every one of them even when the feature
  is mostly missing (at most 80 % missing for a categorical feature); a categorical
  feature sent partly as numbers (``"103"`` and ``103``) has under 1 % numbers;
- labels are drawn from the model's own calibrated probabilities (classification) or
  as the prediction plus bounded noise (regression: uniform residuals; Gaussian ones
  would make the default MAE check, +10 % over one window of 1,000, fire by chance);
- canary and shadow versions are the same model (a shadow scores the same ids with a
  slightly perturbed prediction).

Invalid events are added at random places (inside the reference window too), each
with the reason the service must dead-letter it with. :func:`replay_stream` and
:func:`run_kafka` run a stream through ``driftline replay`` and through the service
over a broker, and return an :class:`Outcome` to compare.

Examples
--------
>>> spec = StreamSpec(models=(ModelSpec("m", (FeatureSpec("a", "normal"),), "binary_score"),), seed=1)
>>> s = expand(spec)
>>> s.valid_predictions[("m", "v1")]
6000
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import strategies as st

__all__ = [
    "FeatureSpec",
    "ModelSpec",
    "StreamSpec",
    "Stream",
    "Invalid",
    "expand",
    "stream_specs",
    "model_specs",
    "feature_specs",
    "describe",
    "events_of",
    "INVALID_KINDS",
    "EXPECTED_REASON",
    "FEATURE_KINDS",
    "NUMERIC_KINDS",
    "TASKS",
    "Outcome",
    "engine_counts",
    "replay_stream",
    "produce_stream",
    "read_dead_letter_topic",
    "run_kafka",
]

FEATURE_KINDS = ("normal", "lognormal", "count", "bool", "constant_num", "cat", "cat_numbers", "constant_cat")
"""Feature shapes: Gaussian, skewed positive (amounts), Poisson counts (ints), booleans,
a constant number; categorical strings, categorical codes sent as strings with a few
as numbers (``"3"`` and ``3``: the same category, coded by text), a constant string."""
NUMERIC_KINDS = ("normal", "lognormal", "count", "bool", "constant_num")
TASKS = ("binary_score", "binary_label", "binary_bool", "multiclass", "regression", "none")
"""``binary_score``: prediction a probability in [0, 1], labels 0/1; ``binary_label``:
prediction and label 0/1; ``binary_bool``: prediction and label booleans;
``multiclass``: string classes (``scores`` optional); ``regression``: numbers;
``none``: no ``prediction`` field at all (and no feedback)."""
INVALID_KINDS = (
    "missing_id",
    "numeric_string",
    "object_value",
    "list_value",
    "not_an_object",
    "invalid_json",
    "empty_model",
    "feedback_missing_label",
    "feedback_invalid_json",
)
"""Kinds of invalid event; :data:`EXPECTED_REASON` gives the reason of each."""
EXPECTED_REASON = {
    "missing_id": "missing_field",
    "numeric_string": "wrong_type",
    "object_value": "wrong_type",
    "list_value": "wrong_type",
    "not_an_object": "not_an_object",
    "invalid_json": "invalid_json",
    "empty_model": "wrong_type",
    "feedback_missing_label": "missing_field",
    "feedback_invalid_json": "invalid_json",
}
T0 = 1_750_000_000.0
CLASSES = ("cat", "dog", "bird", "fish", "horse", "lizard", "mouse", "snake")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    kind: str
    missing: float = 0.0
    """Probability that the value is missing (null, or the key absent)."""
    n_categories: int = 5


@dataclass(frozen=True)
class ModelSpec:
    name: str
    features: tuple[FeatureSpec, ...]
    task: str
    n_ids: int = 6000
    """Request ids scored; events = n_ids, or 2 * n_ids with a shadow version."""
    versions: str = "single"
    """``single`` (one version ``v1``), ``none`` (no ``version`` field: ``default``),
    ``canary`` (v2 takes 30 % of the ids) or ``shadow`` (v2 scores every id of v1 too)."""
    n_classes: int = 3
    scores: bool = False
    latency: bool = True
    int_ids: bool = False
    labelled: float = 1.0
    """Share of ids that get a label (0 for a label-less model)."""
    early_labels: float = 0.0
    """Share of labels whose feedback is earlier (event time) than the prediction."""
    shift_at: int | None = None
    """A change: from this id on, every ``normal`` feature moves by four standard
    deviations (None: the stream is stable)."""


@dataclass(frozen=True)
class StreamSpec:
    models: tuple[ModelSpec, ...]
    invalid: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Invalid:
    """An invalid line and the reason the service must give it."""

    topic: str
    """``predictions`` or ``feedback``."""
    key: bytes
    value: bytes
    reason: str
    kind: str


@dataclass
class Stream:
    """An expanded stream: lines (JSON bytes, event-time order) and expectations."""

    predictions: list[tuple[bytes, bytes]] = field(default_factory=list)
    """(key, value) of every prediction line, invalid ones included, in order."""
    feedback: list[tuple[bytes, bytes]] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    valid_predictions: dict[tuple[str, str], int] = field(default_factory=dict)
    """Valid prediction events per (model, version)."""
    labelled: dict[tuple[str, str], int] = field(default_factory=dict)
    """Labels that must reach each (model, version) (each shadow version gets every label)."""

    def jsonl(self, topic: str) -> bytes:
        lines = self.predictions if topic == "predictions" else self.feedback
        return b"".join(v + b"\n" for _, v in lines)

    def expected_dead_letters(self) -> list[tuple[str, str]]:
        """Sorted (value, reason) of every line that must be dead-lettered."""
        return sorted((i.value.decode(), i.reason) for i in self.invalid)


# ---- expansion ------------------------------------------------------------------------------


def _category_probabilities(rng: np.random.Generator, k: int) -> np.ndarray:
    """k probabilities, each at least 1 %, summing to 1 (Dirichlet on the remainder)."""
    return 0.01 + (1.0 - 0.01 * k) * rng.dirichlet(np.full(k, 2.0))


def _feature_column(rng: np.random.Generator, f: FeatureSpec, n: int) -> list[Any]:
    """n values of feature ``f`` (None where missing), as JSON-ready Python objects."""
    if f.kind == "normal":
        loc, scale = rng.normal(0, 50), rng.uniform(0.1, 20)
        values: list[Any] = np.round(rng.normal(loc, scale, n), 6).tolist()
    elif f.kind == "lognormal":
        values = np.round(rng.lognormal(rng.uniform(0, 5), rng.uniform(0.2, 1.5), n), 4).tolist()
    elif f.kind == "count":
        values = rng.poisson(rng.uniform(0.5, 30), n).tolist()
    elif f.kind == "bool":
        values = (rng.random(n) < rng.uniform(0.05, 0.95)).tolist()
    elif f.kind == "constant_num":
        values = [float(rng.integers(-5, 100))] * n
    elif f.kind == "cat":
        names = [
            f"{f.name}_{c}"
            for c in (
                "DE",
                "FR",
                "US",
                "GB",
                "IT",
                "ES",
                "NL",
                "PL",
                "SE",
                "AT",
                "BE",
                "CH",
                "DK",
                "FI",
                "IE",
                "PT",
                "CZ",
                "HU",
                "RO",
                "GR",
            )
        ]
        p = _category_probabilities(rng, f.n_categories)
        values = np.asarray(names[: f.n_categories], dtype=object)[rng.choice(f.n_categories, n, p=p)].tolist()
    elif f.kind == "cat_numbers":
        p = _category_probabilities(rng, f.n_categories)
        codes = (rng.choice(f.n_categories, n, p=p) + 100).tolist()
        # one value in 400 sent as a number: under 1 % of the non-null reference values
        # (the feature is at most 30 % missing), so the feature stays categorical
        values = [int(c) if i % 400 == 7 else str(c) for i, c in enumerate(codes)]
    elif f.kind == "constant_cat":
        values = ["only"] * n
    else:  # pragma: no cover - a spec error
        raise ValueError(f"unknown feature kind {f.kind!r}")
    if f.missing:
        for i in np.flatnonzero(rng.random(n) < f.missing).tolist():
            values[i] = None
    return values


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _task_columns(rng: np.random.Generator, m: ModelSpec, n: int) -> tuple[list[Any], list[Any], list[Any]]:
    """(prediction, shadow prediction, label) per id; scores are attached separately."""
    if m.task == "binary_score":
        z = rng.normal(rng.uniform(-1.5, 1.5), rng.uniform(0.5, 2.0), n)
        score = _sigmoid(z)
        shadow = _sigmoid(z + rng.normal(0, 0.05, n))
        label = (rng.random(n) < score).astype(int)
        return np.round(score, 6).tolist(), np.round(shadow, 6).tolist(), label.tolist()
    if m.task in ("binary_label", "binary_bool"):
        truth = rng.random(n) < rng.uniform(0.2, 0.8)
        pred = np.where(rng.random(n) < 0.85, truth, ~truth)
        shadow = np.where(rng.random(n) < 0.97, pred, ~pred)
        if m.task == "binary_bool":
            return pred.tolist(), shadow.tolist(), truth.tolist()
        return pred.astype(int).tolist(), shadow.astype(int).tolist(), truth.astype(int).tolist()
    if m.task == "multiclass":
        return [], [], []  # built with the scores in _multiclass
    if m.task == "regression":
        pred = rng.normal(rng.uniform(-100, 100), rng.uniform(1, 50), n)
        shadow = pred + rng.normal(0, 0.01, n)
        label = pred + rng.uniform(-1.0, 1.0, n) * rng.uniform(0.5, 5.0)
        return np.round(pred, 6).tolist(), np.round(shadow, 6).tolist(), np.round(label, 6).tolist()
    return [None] * n, [None] * n, [None] * n


def _multiclass(rng: np.random.Generator, m: ModelSpec, n: int):
    """Predicted class, shadow class, true class and scores per id (calibrated)."""
    k = m.n_classes
    classes = np.asarray(CLASSES[:k], dtype=object)
    logits = rng.normal(0, 1.5, (n, k)) + rng.normal(0, 0.5, k)
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    pred = classes[prob.argmax(axis=1)].tolist()
    shadow_logits = logits + rng.normal(0, 0.05, (n, k))
    shadow = classes[shadow_logits.argmax(axis=1)].tolist()
    cum = prob.cumsum(axis=1)
    truth_idx = np.minimum((rng.random(n)[:, None] > cum).sum(axis=1), k - 1)
    truth = classes[truth_idx].tolist()
    scores = [dict(zip(classes.tolist(), np.round(row, 6).tolist())) for row in prob]
    return pred, shadow, truth, scores


def _model_events(rng: np.random.Generator, m: ModelSpec, t_offset: float, stream: Stream):
    """(ts, key, value) of a model's prediction and feedback lines; fills expectations."""
    n = m.n_ids
    columns = {f.name: _feature_column(rng, f, n) for f in m.features}
    if m.shift_at is not None:
        for f in m.features:
            if f.kind == "normal":
                col = columns[f.name]
                scale = float(np.nanstd(np.array(col[: m.shift_at], dtype=np.float64)))
                columns[f.name] = col[: m.shift_at] + [
                    None if v is None else round(v + 4 * scale, 6) for v in col[m.shift_at :]
                ]
    drop_key = {f.name: (rng.random(n) < 0.5) for f in m.features if f.missing}  # null or absent
    scores: list[Any] = [None] * n
    if m.task == "multiclass":
        pred, shadow, label, scores = _multiclass(rng, m, n)
    else:
        pred, shadow, label = _task_columns(rng, m, n)
    latency = np.round(8.0 + rng.gamma(2.0, 2.0, n), 3).tolist()
    ids: list[Any] = (rng.permutation(10 * n)[:n] + 1).tolist() if m.int_ids else [f"{m.name}-r{i}" for i in range(n)]
    if m.versions == "canary":
        version_of = np.where(rng.random(n) < 0.3, "v2", "v1").tolist()
    else:
        version_of = ["v1"] * n
    key = m.name.encode()
    preds: list[tuple[float, bytes, bytes]] = []
    feedback: list[tuple[float, bytes, bytes]] = []
    for i in range(n):
        ts = T0 + t_offset + i
        feats = {}
        for f in m.features:
            v = columns[f.name][i]
            if v is None and drop_key.get(f.name) is not None and drop_key[f.name][i]:
                continue
            feats[f.name] = v
        event: dict[str, Any] = {"model": m.name, "id": ids[i], "ts": ts, "features": feats}
        if m.versions != "none":
            event["version"] = version_of[i]
        if m.task != "none":
            event["prediction"] = pred[i]
        if m.scores and scores[i] is not None:
            event["scores"] = scores[i]
        if m.latency:
            event["latency_ms"] = latency[i]
        preds.append((ts, key, orjson.dumps(event)))
        if m.versions == "shadow":
            shadow_event = dict(event, version="v2", ts=ts + 0.25, prediction=shadow[i])
            if m.latency:
                shadow_event["latency_ms"] = latency[(i + 1) % n]
            preds.append((ts + 0.25, key, orjson.dumps(shadow_event)))
    labelled = (rng.random(n) < m.labelled) if m.task != "none" else np.zeros(n, dtype=bool)
    early = (rng.random(n) < m.early_labels).tolist()
    delay = rng.uniform(1.0, 300.0, n).tolist()
    for i in np.flatnonzero(labelled).tolist():
        ts = T0 + t_offset + i + (-min(delay[i], 50.0) if early[i] else delay[i])
        feedback.append((ts, key, orjson.dumps({"model": m.name, "id": ids[i], "ts": round(ts, 3), "label": label[i]})))
    versions = ["v1", "v2"] if m.versions in ("canary", "shadow") else ["v1"]
    name_of = (lambda v: "default") if m.versions == "none" else (lambda v: v)  # noqa: E731
    for v in versions:
        if m.versions == "shadow":
            count, lab = n, int(labelled.sum())
        else:
            sel = np.asarray(version_of) == v
            count, lab = int(sel.sum()), int((labelled & sel).sum())
        stream.valid_predictions[(m.name, name_of(v))] = count
        stream.labelled[(m.name, name_of(v))] = lab
    return preds, feedback


def _first_dense_numeric(m: ModelSpec) -> FeatureSpec | None:
    """A numeric feature that will certainly be numeric (and monitored): few missing
    values, so that a handful of strings stays under 1 % of its reference values."""
    for f in m.features[:150]:
        if f.kind in NUMERIC_KINDS and f.missing <= 0.3:
            return f
    return None


def _invalid_events(rng: np.random.Generator, spec: StreamSpec, span: float) -> list[tuple[float, Invalid]]:
    """Two of each requested kind, at random event times (inside the reference too)."""
    out = []
    serial = 0
    for kind in spec.invalid:
        for _ in range(2):
            serial += 1
            m = spec.models[int(rng.integers(len(spec.models)))]
            ts = round(T0 + float(rng.uniform(0, span)), 3)
            base: dict[str, Any] = {
                "model": m.name,
                "id": f"bad-{serial}",
                "ts": ts,
                "version": "v1",
                "features": {},
                "prediction": 0.5,
            }
            topic = "predictions"
            if kind == "missing_id":
                del base["id"]
                value = orjson.dumps(base)
            elif kind == "numeric_string":
                f = _first_dense_numeric(m)
                if f is None:
                    continue
                base["features"] = {f.name: f"abc{serial}"}
                value = orjson.dumps(base)
            elif kind in ("object_value", "list_value"):
                f = next((f for f in m.features[:100] if f.missing <= 0.3), None)
                if f is None:  # a feature surely in the schema (not past max_features)
                    continue
                base["features"] = {f.name: {"nested": serial} if kind == "object_value" else [serial, 2]}
                value = orjson.dumps(base)
            elif kind == "not_an_object":
                value = orjson.dumps([m.name, serial, ts])
            elif kind == "invalid_json":
                value = b'{"model": "%s", "ts": %.3f, "oops %d' % (m.name.encode(), ts, serial)
            elif kind == "empty_model":
                base["model"] = ""
                value = orjson.dumps(base)
            elif kind == "feedback_missing_label":
                topic = "feedback"
                value = orjson.dumps({"model": m.name, "id": f"bad-{serial}", "ts": ts})
            elif kind == "feedback_invalid_json":
                topic = "feedback"
                value = b'{"model": "%s", "id": "bad-%d", "ts": %.3f, "label": ' % (m.name.encode(), serial, ts)
            else:  # pragma: no cover
                raise ValueError(kind)
            out.append((ts, Invalid(topic, m.name.encode(), value, EXPECTED_REASON[kind], kind)))
    return out


def expand(spec: StreamSpec) -> Stream:
    """The stream a spec describes (deterministic in ``spec``)."""
    rng = np.random.default_rng(spec.seed)
    stream = Stream()
    preds: list[tuple[float, bytes, bytes]] = []
    feedback: list[tuple[float, bytes, bytes]] = []
    for j, m in enumerate(spec.models):
        p, f = _model_events(rng, m, t_offset=j * 0.01, stream=stream)  # models interleave
        preds += p
        feedback += f
    span = max(m.n_ids for m in spec.models)
    for ts, inv in _invalid_events(rng, spec, span):
        (preds if inv.topic == "predictions" else feedback).append((ts, inv.key, inv.value))
        stream.invalid.append(inv)
    # event-time order (stable: a model's own lines keep their order)
    preds.sort(key=lambda t: t[0])
    feedback.sort(key=lambda t: t[0])
    stream.predictions = [(k, v) for _, k, v in preds]
    stream.feedback = [(k, v) for _, k, v in feedback]
    return stream


# ---- strategies -------------------------------------------------------------------------------


@st.composite
def feature_specs(draw, n: int, family: str) -> tuple[FeatureSpec, ...]:
    """n features of a family: ``numeric``, ``categorical``, ``boolean`` or ``mixed``."""
    kinds = {
        "numeric": NUMERIC_KINDS,
        "categorical": ("cat", "cat_numbers", "constant_cat"),
        "boolean": ("bool",),
        "mixed": FEATURE_KINDS,
    }[family]
    # one draw for the shape of the first few features, then a seeded pattern for the
    # rest (a 250-feature model is not 250 hypothesis draws)
    head = draw(st.lists(st.sampled_from(kinds), min_size=min(n, 1), max_size=min(n, 6)))
    missing = draw(st.sampled_from([0.0, 0.0, 0.05, 0.3, 0.8, 0.95]))
    pattern_seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(pattern_seed)
    out = []
    for i in range(n):
        kind = head[i] if i < len(head) else kinds[int(rng.integers(len(kinds)))]
        miss = missing if i % 3 == 0 else float(rng.choice([0.0, 0.01, 0.1]))
        if kind.startswith("cat"):
            miss = min(miss, 0.8)  # every category in the reference: see the module docstring
        if kind == "cat_numbers":
            miss = min(miss, 0.3)  # its numbers stay under 1 % of its values
        k = int(rng.integers(2, 21)) if kind in ("cat", "cat_numbers") else 1
        out.append(FeatureSpec(f"f{i:03d}_{kind}", kind, miss, k))
    return tuple(out)


@st.composite
def model_specs(draw, name: str) -> ModelSpec:
    family = draw(st.sampled_from(["numeric", "categorical", "boolean", "mixed", "mixed"]))
    n_features = draw(st.one_of(st.integers(1, 8), st.integers(1, 30), st.sampled_from([60, 120, 250])))
    features = draw(feature_specs(n_features, family))
    task = draw(st.sampled_from(TASKS))
    versions = draw(st.sampled_from(["single", "single", "none", "canary", "shadow"]))
    n_ids = draw(st.integers(3000, 6000)) if versions == "shadow" else draw(st.integers(6000, 12000))
    if n_features > 100:
        n_ids = min(n_ids, 7000) if versions != "shadow" else min(n_ids, 3500)
    return ModelSpec(
        name=name,
        features=features,
        task=task,
        n_ids=n_ids,
        versions=versions,
        n_classes=draw(st.integers(3, 8)),
        scores=draw(st.booleans()) if task == "multiclass" else False,
        latency=draw(st.booleans()),
        int_ids=draw(st.booleans()),
        labelled=0.0 if task == "none" else draw(st.sampled_from([1.0, 1.0, 0.6, 0.0])),
        early_labels=draw(st.sampled_from([0.0, 0.0, 0.2, 1.0])),
    )


@st.composite
def stream_specs(draw, max_models: int = 3) -> StreamSpec:
    n_models = draw(st.integers(1, max_models))
    names = draw(
        st.lists(
            st.sampled_from(["fraud", "churn", "eta", "ranker", "pricing", "spam"]),
            min_size=n_models,
            max_size=n_models,
            unique=True,
        )
    )
    models = tuple(draw(model_specs(name)) for name in names)
    if sum(len(m.features) for m in models) > 300:  # keep a replay within seconds
        models = models[:1]
    invalid = draw(
        st.one_of(
            st.just(()),
            st.lists(st.sampled_from(INVALID_KINDS), max_size=4, unique=True).map(tuple),
            st.just(INVALID_KINDS),
        )
    )
    return StreamSpec(models=models, invalid=invalid, seed=draw(st.integers(0, 2**31)))


def events_of(lines: list[tuple[bytes, bytes]]) -> Iterator[dict[str, Any]]:
    """The decoded JSON objects among ``lines`` (invalid ones skipped)."""
    for _, v in lines:
        try:
            obj = orjson.loads(v)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def describe(spec: StreamSpec) -> str:
    """One line per model, for failure messages."""
    lines = []
    for m in spec.models:
        kinds: dict[str, int] = {}
        for f in m.features:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        lines.append(
            f"{m.name}: {len(m.features)} features {kinds}, task={m.task}, versions={m.versions}, "
            f"n_ids={m.n_ids}, scores={m.scores}, labelled={m.labelled}, early={m.early_labels}, "
            f"int_ids={m.int_ids}, shift_at={m.shift_at}"
        )
    lines.append(f"invalid={spec.invalid} seed={spec.seed}")
    return "\n".join(lines)


# ---- running a stream -------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a run of the service made of a stream."""

    code: int | None
    alarms: list[dict[str, Any]]
    dead_letters: list[tuple[str, str]]
    """Sorted (value, reason) of every dead letter."""
    versions: dict[tuple[str, str], tuple[int, int]]
    """(prediction events, labelled events) per (model, version), from the engine."""
    models: set[str]
    engine: Any = None
    """The run's engine (for its metrics), or None."""

    def alarm_keys(self) -> list[tuple]:
        return sorted(
            (a["model"], a["version"], a["kind"], a["detector"], a["feature"] or "", a["first_index"], a["last_index"])
            for a in self.alarms
        )


def engine_counts(engine: Any) -> dict[tuple[str, str], tuple[int, int]]:
    """(events, labelled) per (model, version) as the metrics show them."""
    return {(s.model, s.version): (int(s.events), int(s.labelled)) for s in engine.snapshot()}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def replay_stream(
    stream: Stream, workdir: Path, *, config: dict[str, Any] | None = None, extra_args: tuple[str, ...] = ()
) -> Outcome:
    """``driftline replay`` of ``stream`` in-process through the CLI (``driftline.cli.main``),
    keeping a handle on the service it builds to read the engine afterwards."""
    from unittest import mock

    import yaml

    import driftline.app
    import driftline.cli
    from driftline.cli import main

    workdir.mkdir(parents=True, exist_ok=True)
    p, f, out = workdir / "p.jsonl", workdir / "f.jsonl", workdir / "alarms.jsonl"
    dead = workdir / "dead.jsonl"
    p.write_bytes(stream.jsonl("predictions"))
    f.write_bytes(stream.jsonl("feedback"))
    argv = [
        "replay",
        "--predictions",
        str(p),
        "--feedback",
        str(f),
        "--alarms",
        str(out),
        "--dead-letters",
        str(dead),
        "--quiet",
        "--log-level",
        "WARNING",
        *extra_args,
    ]
    if config:
        cfg = workdir / "config.yml"
        cfg.write_text(yaml.safe_dump(config))
        argv += ["--config", str(cfg)]
    built: list[Any] = []

    class Capturing(driftline.app.Service):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    # The CLI replaces the root logger's handlers, as an entry point does; here the test's
    # (pytest's capture, caplog) stay, so that a test can read what the service logged.
    with (
        mock.patch.object(driftline.app, "Service", Capturing),
        mock.patch.object(driftline.cli, "_setup_logging", lambda *args, **kwargs: None),
    ):
        code = main(argv)
    engine = built[0].engine
    return Outcome(
        code,
        _read_jsonl(out),
        sorted((d["value"], d["reason"]) for d in _read_jsonl(dead)),
        engine_counts(engine),
        set(engine.models),
        engine,
    )


def produce_stream(broker: Any, topics: dict[str, str], stream: Stream) -> int:
    """Produce every line of ``stream`` (keyed by model) to its topic; returns how many."""
    from tests.support.topics import produce

    return sum(
        produce(broker.bootstrap_servers, topics[topic], lines)
        for topic, lines in (("predictions", stream.predictions), ("feedback", stream.feedback))
    )


def read_dead_letter_topic(broker: Any, topic: str, expected: int, timeout: float) -> list[tuple[str, str]]:
    """Sorted (value, reason) of the dead-letter topic; reads until ``expected`` letters
    (or ``timeout`` seconds), then a little longer to see any extra."""
    import time

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )
    letters: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            got = False
            for m in consumer:
                got = True
                letters.append((m.value.decode("utf-8", "replace"), dict(m.headers)["driftline-reason"].decode()))
            if len(letters) >= expected:
                if quiet_until is None:
                    quiet_until = time.monotonic() + 2.0
                if not got and time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return sorted(letters)


def run_kafka(
    broker: Any, topics: dict[str, str], stream: Stream, workdir: Path, *, timeout: float = 240.0, **settings: Any
) -> Outcome:
    """The :class:`driftline.app.Service` over the embedded broker on ``stream`` (default
    thresholds): produce, consume until every record is processed, stop; its outcome."""
    import threading
    import time

    from driftline.app import Service
    from driftline.monitor.config import load_settings
    from tests.support.runs import QUICK_SESSION_MS

    total = produce_stream(broker, topics, stream)
    base: dict[str, Any] = dict(
        kafka={
            "bootstrap_servers": broker.bootstrap_servers,
            "group_id": f"g-{topics['predictions']}",
            "predictions_topic": topics["predictions"],
            "feedback_topic": topics["feedback"],
            "dead_letter_topic": topics["dead_letter"],
            "session_timeout_ms": QUICK_SESSION_MS,
            "poll_timeout_ms": 200,
        },
        prometheus={"enabled": False},
        state_dir=workdir / "state",
        alarms_jsonl=workdir / "kafka-alarms.jsonl",
        checkpoint_interval_seconds=0,
    )
    base.update(settings)
    service = Service(load_settings(**base))
    stop = threading.Event()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.run(stop)), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while service.stats.records < total and thread.is_alive():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the service processed {service.stats.records} of {total} records within {timeout}s"
                )
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive(), "the service did not stop within 60 s"
    dead = read_dead_letter_topic(broker, topics["dead_letter"], len(stream.invalid), timeout=30)
    return Outcome(
        codes[0] if codes else None,
        _read_jsonl(workdir / "kafka-alarms.jsonl"),
        dead,
        engine_counts(service.engine),
        set(service.engine.models),
        service.engine,
    )
