"""A simulated production model: the event stream the demo and docker-compose feed driftline.

A fraud classifier (river's :class:`~river.linear_model.LogisticRegression`, trained
online on generated transactions before it "goes to production") scores a stream of
transactions. The stream carries prediction events and, some events later, feedback
events with the true label, in the format of the event contract (``ARCHITECTURE.md``).
At indices fixed by a :class:`Scenario`, the world changes in ways a drift monitor
should notice:

``feature_shift``
    one numeric feature's mean moves by ``shift_std`` standard deviations for
    ``shift_events`` events (covariate shift: label | features is unchanged);
``concept_drift``
    from ``concept_drift_at`` on, the label depends on another feature than before.
    The new rule is a permutation of the old one over i.i.d. features, so the features,
    the predictions and even the label rate keep their distributions exactly: only the
    joined labels reveal it (the model's error rate rises);
``canary``
    from ``canary_at`` on, version ``v2`` serves ``canary_share`` of the traffic. It was
    trained with a training/serving skew (it never saw ``amount``), so it errs more
    often than ``v1``, and it is slower;
``malformed``
    every ``malformed_every``-th record is broken (invalid JSON, or a missing field), as
    a faulty producer would write them; they do not count as prediction events.

Everything is driven by one seed: the same :class:`Scenario` gives the same records.
The core (:func:`generate`) is a generator with bounded memory (labels waiting for their
delay sit in a deque) and no I/O; :func:`publish` sends records to Kafka with
kafka-python, and :func:`produce_to_kafka` is the ``driftline simulate`` command.

Examples
--------
>>> scenario = Scenario(events=3000, feature_shift_at=1000, concept_drift_at=2000,
...                     canary_at=1500, seed=1)
>>> records = list(generate(scenario))
>>> sum(r.topic == "predictions" and r.value is not None for r in records)
3000
>>> [i.name for i in scenario.injections()]
['feature_shift', 'canary', 'concept_drift']
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import numpy as np

__all__ = [
    "NUMERIC_FEATURES",
    "CATEGORICAL_FEATURES",
    "Scenario",
    "Injection",
    "Record",
    "PublishStats",
    "TrafficPlan",
    "train_models",
    "reference_events",
    "generate",
    "encode",
    "publish",
    "produce_to_kafka",
]

log = logging.getLogger(__name__)

# name -> (location, scale): raw value = location + scale * z, z ~ N(0, 1)
NUMERIC_FEATURES: dict[str, tuple[float, float]] = {
    "amount": (80.0, 25.0),
    "account_age_days": (400.0, 120.0),
    "tx_last_24h": (3.0, 1.2),
    "distance_km": (20.0, 8.0),
    "merchant_risk": (0.3, 0.1),
    "hour": (13.0, 4.0),
}
CATEGORICAL_FEATURES: dict[str, dict[str, float]] = {
    "country": {"DE": 0.35, "FR": 0.25, "US": 0.2, "GB": 0.15, "BR": 0.05},
    "channel": {"web": 0.5, "app": 0.35, "pos": 0.15},
}
_NUMERIC = tuple(NUMERIC_FEATURES)
_LOC = np.array([NUMERIC_FEATURES[f][0] for f in _NUMERIC])
_SCALE = np.array([NUMERIC_FEATURES[f][1] for f in _NUMERIC])

# The true label model, on standardized numeric features (z) and categories.
# Before the concept drift "amount" drives the label; after it, "hour" does with the same
# weight. With i.i.d. N(0, 1) features, swapping the two weights leaves the distribution
# of the logit, hence of the label, unchanged.
_WEIGHTS_BEFORE = np.array([2.2, -0.8, 1.0, 0.6, 1.2, 0.0])
_WEIGHTS_AFTER = np.array([0.0, -0.8, 1.0, 0.6, 1.2, 2.2])
_INTERCEPT = -1.4
_CATEGORY_EFFECT = {"country": {"BR": 0.8, "US": 0.2}, "channel": {"web": 0.3, "pos": -0.4}}


@dataclass(frozen=True)
class Injection:
    """One change injected into the stream at a known prediction-event index.

    Attributes
    ----------
    name
        ``feature_shift``, ``concept_drift`` or ``canary``.
    index
        Index (0-based, among the model's prediction events) of the first affected event.
    end
        Index of the first event after the change ended, or None when it persists.
    description
        What changed, for humans.
    expected_kinds
        The alarm kinds that detect this change.
    feature, version
        The feature or version concerned, when there is one.
    """

    name: str
    index: int
    end: int | None
    description: str
    expected_kinds: tuple[str, ...]
    feature: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Scenario:
    """What the simulated stream looks like and where it changes (all indices count
    prediction events, 0-based).

    Attributes
    ----------
    events
        Prediction events to emit.
    seed
        Seed of every random draw.
    model
        The model name (Kafka key of every record).
    start_ts, interval_seconds
        Event time of event 0, and event time between two prediction events.
    feedback_delay
        Feedback for prediction ``i`` is emitted right after prediction
        ``i + feedback_delay`` (a label arrives later than its prediction).
    label_rate
        Share of predictions that ever get feedback.
    shifted_feature, shift_std, feature_shift_at, shift_events
        Feature shift: ``shifted_feature`` moves by ``shift_std`` of its standard
        deviations from ``feature_shift_at`` for ``shift_events`` events (None: for good).
    concept_drift_at
        First event labelled by the new rule.
    canary_at, canary_share
        First event of the canary ``v2``, and the share of traffic it takes from then on.
    missing_rate
        Share of ``account_age_days`` values that are null (constant over time).
    malformed_every
        Every n-th record (of either topic) is followed by a malformed one; 0: none.
    training_events
        Events the models are trained on (online, one at a time) before serving.
    """

    events: int = 20_000
    seed: int = 7
    model: str = "fraud"
    start_ts: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    interval_seconds: float = 0.5
    feedback_delay: int = 100
    label_rate: float = 1.0
    shifted_feature: str = "distance_km"
    shift_std: float = 1.0
    feature_shift_at: int = 4_000
    shift_events: int | None = 3_000
    concept_drift_at: int = 14_000
    canary_at: int = 8_000
    canary_share: float = 0.3
    missing_rate: float = 0.01
    malformed_every: int = 997
    training_events: int = 6_000

    def __post_init__(self) -> None:
        if self.events < 1:
            raise ValueError(f"events must be >= 1, got {self.events}")
        if self.shifted_feature not in NUMERIC_FEATURES:
            raise ValueError(f"shifted_feature must be one of {sorted(NUMERIC_FEATURES)}, got {self.shifted_feature!r}")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be in [0, 1], got {self.canary_share}")
        if not 0.0 <= self.label_rate <= 1.0:
            raise ValueError(f"label_rate must be in [0, 1], got {self.label_rate}")
        if not 0.0 <= self.missing_rate < 1.0:
            raise ValueError(f"missing_rate must be in [0, 1), got {self.missing_rate}")
        for name in ("feedback_delay", "malformed_every", "training_events"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be > 0, got {self.interval_seconds}")

    def scaled(self, events: int) -> Scenario:
        """The same story told over ``events`` events: every index scales with it."""
        f = events / self.events

        def at(i: int) -> int:
            return int(round(i * f))

        return replace(
            self,
            events=events,
            feature_shift_at=at(self.feature_shift_at),
            shift_events=None if self.shift_events is None else max(1, at(self.shift_events)),
            concept_drift_at=at(self.concept_drift_at),
            canary_at=at(self.canary_at),
        )

    def ts_of(self, index: int) -> float:
        """Event time of prediction event ``index``."""
        return self.start_ts + index * self.interval_seconds

    def index_of(self, ts: float) -> int:
        """The prediction-event index whose event time is ``ts`` (inverse of :meth:`ts_of`)."""
        return int(math.floor((ts - self.start_ts) / self.interval_seconds + 1e-6))

    def injections(self) -> list[Injection]:
        """The changes that fall inside the stream, in the order they start."""
        out = []
        if self.feature_shift_at < self.events:
            end = None if self.shift_events is None else self.feature_shift_at + self.shift_events
            out.append(
                Injection(
                    "feature_shift",
                    self.feature_shift_at,
                    end,
                    f"{self.shifted_feature} mean +{self.shift_std:g} std"
                    + (f" for {self.shift_events} events" if self.shift_events is not None else ""),
                    ("feature_drift",),
                    feature=self.shifted_feature,
                )
            )
        if self.canary_at < self.events and self.canary_share > 0:
            out.append(
                Injection(
                    "canary",
                    self.canary_at,
                    None,
                    f"canary v2 takes {self.canary_share:.0%} of traffic (more errors, slower)",
                    ("regression",),
                    version="v2",
                )
            )
        if self.concept_drift_at < self.events:
            out.append(
                Injection(
                    "concept_drift",
                    self.concept_drift_at,
                    None,
                    "label now driven by hour instead of amount (features unchanged)",
                    ("concept_drift", "performance"),
                    version="v1",
                )
            )
        return sorted(out, key=lambda i: i.index)


@dataclass(frozen=True)
class Record:
    """One record for Kafka.

    ``value`` is the event (a dict) or None for a malformed record, whose bytes are in
    ``raw``. ``index`` is the index of the last prediction event emitted when this record
    was (for feedback: later than the prediction it labels).
    """

    topic: str
    key: str
    value: dict[str, Any] | None
    index: int
    raw: bytes | None = None


@dataclass
class PublishStats:
    """What :func:`publish` sent."""

    predictions: int = 0
    feedback: int = 0
    malformed: int = 0
    seconds: float = 0.0
    by_version: dict[str, int] = field(default_factory=dict)


def _draw_z(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, len(_NUMERIC)))


def _draw_categories(rngs: dict[str, np.random.Generator], n: int) -> dict[str, np.ndarray]:
    """``n`` values of each categorical feature, each from its own generator."""
    return {
        name: rngs[name].choice(np.array(list(probs)), size=n, p=np.array(list(probs.values())))
        for name, probs in CATEGORICAL_FEATURES.items()
    }


def _category_logit(cats: dict[str, np.ndarray]) -> np.ndarray:
    """Intercept plus the categories' effects on the true label's logit."""
    n = len(next(iter(cats.values())))
    logit = np.full(n, _INTERCEPT)
    for name, effects in _CATEGORY_EFFECT.items():
        for value, effect in effects.items():
            logit += effect * (cats[name] == value)
    return logit


def _train_model(
    rng: np.random.Generator, n: int, drop: tuple[str, ...] = (), shift: tuple[str, float] | None = None
) -> Any:
    """A river pipeline trained online on ``n`` generated transactions; ``drop`` lists
    features the model was (wrongly) trained without; ``shift`` (feature, standard
    deviations) trains it on data where that feature has moved (a retrain on drifted data)."""
    from river import compose, linear_model, optim, preprocessing

    numeric = [f for f in _NUMERIC if f not in drop]
    model = (
        (compose.Select(*numeric) | preprocessing.StandardScaler())
        + (compose.Select(*CATEGORICAL_FEATURES) | preprocessing.OneHotEncoder())
    ) | linear_model.LogisticRegression(optimizer=optim.SGD(0.03))
    z = _draw_z(rng, n)
    if shift is not None:
        z[:, _NUMERIC.index(shift[0])] += shift[1]
    cats = _draw_categories({name: rng for name in CATEGORICAL_FEATURES}, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-(z @ _WEIGHTS_BEFORE + _category_logit(cats))))
    raw = _LOC + _SCALE * z
    for _ in range(2):  # two online passes: a model that has converged
        for i in range(n):
            x: dict[str, float | str] = {f: float(raw[i, j]) for j, f in enumerate(_NUMERIC)}
            x.update({c: str(cats[c][i]) for c in CATEGORICAL_FEATURES})
            model.learn_one(x, bool(y[i]))
    return model


def _malformed(k: int, model: str) -> bytes:
    kinds = (
        b'{"model": "' + model.encode() + b'", "id": "broken-' + str(k).encode() + b'", "features": {',
        b'{"model": "' + model.encode() + b'", "ts": 1.0, "prediction": 1}',  # no id, no features
        b'["not", "an", "object"]',
    )
    return kinds[k % len(kinds)]


MODEL_KINDS: dict[str, float] = {"base": 1.0, "retrained": 1.0, "skewed": 1.6}
"""The models the simulator can serve, by kind, with their latency factor: ``base`` (v1,
trained before the stream), ``retrained`` (trained on data where ``shifted_feature``
has moved: what a retrain after the feature shift gives) and ``skewed`` (trained without
``amount``, a training/serving skew: it errs more often, and is slower)."""


class TrafficPlan:
    """Which version serves each prediction event, changeable while the stream is
    generated: the demo's CI deploys a canary, promotes it or rolls it back, and
    :func:`generate` routes the next events accordingly.

    Parameters
    ----------
    kinds
        Each version the plan may serve -> its model kind (a key of :data:`MODEL_KINDS`);
        :func:`generate` trains each kind once, before the first event.
    stable
        The version serving whatever traffic the canaries do not take.

    Examples
    --------
    >>> plan = TrafficPlan({"v1": "base", "v2": "retrained"})
    >>> plan.deploy("v2", 0.05)
    >>> plan.pick(0.01), plan.pick(0.5)
    ('v2', 'v1')
    >>> plan.promote("v2")
    >>> plan.pick(0.01), plan.stable, plan.canaries
    ('v2', 'v2', {})
    """

    def __init__(self, kinds: dict[str, str], stable: str = "v1") -> None:
        unknown = sorted(k for k in kinds.values() if k not in MODEL_KINDS)
        if unknown:
            raise ValueError(f"model kinds must be among {sorted(MODEL_KINDS)}, got {unknown}")
        if stable not in kinds:
            raise ValueError(f"the stable version {stable!r} is not among the plan's versions {sorted(kinds)}")
        self.kinds = dict(kinds)
        self.stable = stable
        self.canaries: dict[str, float] = {}
        self._lock = threading.Lock()  # the CI changes it between events, maybe from another thread

    def deploy(self, version: str, share: float) -> None:
        """``version`` takes ``share`` of the traffic (a canary) from the next event on."""
        if version not in self.kinds:
            raise ValueError(f"version {version!r} is not among the plan's versions {sorted(self.kinds)}")
        with self._lock:
            if not 0.0 < share < 1.0 - sum(s for v, s in self.canaries.items() if v != version):
                raise ValueError(f"share must leave the stable version some traffic, got {share}")
            self.canaries[version] = share

    def promote(self, version: str) -> None:
        """``version`` becomes the stable one and takes the traffic it did not have."""
        with self._lock:
            self.canaries.pop(version, None)
            self.stable = version

    def remove(self, version: str) -> None:
        """``version`` gets no more traffic (rolled back)."""
        with self._lock:
            self.canaries.pop(version, None)

    def pick(self, u: float) -> str:
        """The version serving an event, from a uniform draw ``u`` in [0, 1)."""
        with self._lock:
            acc = 0.0
            for version, share in self.canaries.items():
                acc += share
                if u < acc:
                    return version
            return self.stable


def _seeds(scenario: Scenario) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(scenario.seed)
    return (rng.integers(0, 2**63, size=7).tolist(), rng.integers(0, 2**63, size=len(CATEGORICAL_FEATURES)).tolist())


def train_models(scenario: Scenario, kinds: Iterable[str] = ("base", "skewed")) -> dict[str, Any]:
    """The models of ``scenario`` by kind (see :data:`MODEL_KINDS`), trained from its seed:
    the same scenario gives the same models, and a kind's model does not depend on which
    other kinds are asked for."""
    train_seed = _seeds(scenario)[0][0]
    wanted = set(kinds)
    out: dict[str, Any] = {}
    specs: list[tuple[str, int, tuple[str, ...], tuple[str, float] | None]] = [
        ("base", scenario.training_events, (), None),
        ("skewed", scenario.training_events // 3, ("amount",), None),
        ("retrained", scenario.training_events, (), (scenario.shifted_feature, scenario.shift_std)),
    ]
    train_rng = np.random.default_rng(train_seed)
    for kind, n, drop, shift in specs:
        if kind == "retrained":  # its own generator: the other two keep the draws they always had
            train_rng = np.random.default_rng([train_seed, 1])
        if kind in wanted:
            out[kind] = _train_model(train_rng, n, drop=drop, shift=shift)
        elif kind == "base" and "skewed" in wanted:
            _train_model(train_rng, n)  # the skewed model's draws come after the base model's
    return out


def reference_events(
    scenario: Scenario, model: Any, version: str, n: int, *, shifted: bool = True
) -> list[dict[str, Any]]:
    """``n`` prediction events of ``version`` scored by ``model`` on fresh data of the
    scenario's world (with the feature shift when ``shifted``): a retrained model's
    validation predictions, to give as its reference. Drawn from their own seed, so they
    are not events of the stream; their ``ts`` lie before the stream's start."""
    rng = np.random.default_rng([scenario.seed, 4711])
    z = _draw_z(rng, n)
    if shifted:
        z[:, _NUMERIC.index(scenario.shifted_feature)] += scenario.shift_std
    cats = _draw_categories({name: rng for name in CATEGORICAL_FEATURES}, n)
    raw = _LOC + _SCALE * z
    out = []
    for i in range(n):
        x: dict[str, Any] = {f: round(float(raw[i, j]), 4) for j, f in enumerate(_NUMERIC)}
        x.update({c: str(cats[c][i]) for c in CATEGORICAL_FEATURES})
        proba = model.predict_proba_one(x).get(True, 0.0)
        out.append(
            {
                "model": scenario.model,
                "version": version,
                "id": f"{scenario.model}-{version}-ref-{i}",
                "ts": scenario.start_ts - (n - i) * scenario.interval_seconds,
                "features": x,
                "prediction": int(proba >= 0.5),
                "scores": {"0": round(1.0 - proba, 6), "1": round(proba, 6)},
            }
        )
    return out


def generate(
    scenario: Scenario, chunk: int = 1024, plan: TrafficPlan | None = None, models: dict[str, Any] | None = None
) -> Iterator[Record]:
    """The records of ``scenario``: prediction and feedback events, in emission order.

    Parameters
    ----------
    scenario
        The stream's parameters and its injected changes.
    chunk
        Random draws are made this many events at a time (the output does not depend on it).
    plan
        Route each prediction event by this plan, read when the event is generated (the
        demo's CI changes it as it deploys, promotes and rolls back), instead of the
        scenario's fixed canary.
    models
        The models by kind (:func:`train_models`), to skip training them again.

    Yields
    ------
    Record
        Prediction events on topic ``predictions``, feedback on ``feedback``, both keyed by
        the model name; malformed records have ``value=None`` and their bytes in ``raw``.

    Notes
    -----
    Memory is bounded by ``chunk`` and ``feedback_delay``: labels wait in a deque.
    Feedback still pending at the end of the stream is emitted after the last prediction.
    With a plan, the same plan changes at the same events give the same records.
    """
    seeds, cat_seeds = _seeds(scenario)
    # One generator per quantity, so that the stream does not depend on ``chunk``.
    _, z_rng, label_rng, labelled_rng, missing_rng, version_rng, latency_rng = (np.random.default_rng(s) for s in seeds)
    cat_rngs = {name: np.random.default_rng(s) for name, s in zip(CATEGORICAL_FEATURES, cat_seeds, strict=True)}
    if plan is None:
        by_kind = models if models is not None else train_models(scenario)
        served = {"v1": by_kind["base"], "v2": by_kind["skewed"]}
        slow = {"v1": 1.0, "v2": MODEL_KINDS["skewed"]}
    else:
        by_kind = models if models is not None else train_models(scenario, set(plan.kinds.values()))
        served = {v: by_kind[k] for v, k in plan.kinds.items()}
        slow = {v: MODEL_KINDS[k] for v, k in plan.kinds.items()}
    shifted = _NUMERIC.index(scenario.shifted_feature)
    shift_end = math.inf if scenario.shift_events is None else scenario.feature_shift_at + scenario.shift_events
    pending: deque[tuple[int, Record]] = deque()
    records = 0
    malformed = 0

    def emit(record: Record) -> Iterator[Record]:
        nonlocal records, malformed
        yield record
        records += 1
        if scenario.malformed_every and records % scenario.malformed_every == 0:
            yield Record(record.topic, scenario.model, None, record.index, raw=_malformed(malformed, scenario.model))
            malformed += 1

    for start in range(0, scenario.events, chunk):
        n = min(chunk, scenario.events - start)
        idx = np.arange(start, start + n)
        z = _draw_z(z_rng, n)
        cats = _draw_categories(cat_rngs, n)
        # The shift moves what the model sees and what the label rule sees alike
        # (covariate shift), so label | features does not change.
        in_shift = (idx >= scenario.feature_shift_at) & (idx < shift_end)
        z[in_shift, shifted] += scenario.shift_std
        weights = np.where((idx >= scenario.concept_drift_at)[:, None], _WEIGHTS_AFTER, _WEIGHTS_BEFORE)
        logit = np.einsum("ij,ij->i", z, weights) + _category_logit(cats)
        labels = label_rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
        labelled = labelled_rng.random(n) < scenario.label_rate
        missing = missing_rng.random(n) < scenario.missing_rate
        route = version_rng.random(n)
        canary = (idx >= scenario.canary_at) & (route < scenario.canary_share)
        latency = latency_rng.lognormal(np.log(12.0), 0.25, n)
        raw = _LOC + _SCALE * z
        for k in range(n):
            i = start + k
            x: dict[str, Any] = {f: round(float(raw[k, j]), 4) for j, f in enumerate(_NUMERIC)}
            x.update({c: str(cats[c][k]) for c in CATEGORICAL_FEATURES})
            if plan is None:
                version = "v2" if canary[k] else "v1"
            else:  # read now: the plan may have changed since the chunk was drawn
                version = plan.pick(float(route[k]))
            proba = served[version].predict_proba_one(x).get(True, 0.0)
            if missing[k]:
                x["account_age_days"] = None
            event_id = f"{scenario.model}-{scenario.seed}-{i}"
            ts = scenario.ts_of(i)
            prediction = {
                "model": scenario.model,
                "version": version,
                "id": event_id,
                "ts": ts,
                "features": x,
                "prediction": int(proba >= 0.5),
                "scores": {"0": round(1.0 - proba, 6), "1": round(proba, 6)},
                "latency_ms": round(float(latency[k]) * slow[version], 3),
            }
            yield from emit(Record("predictions", scenario.model, prediction, i))
            if labelled[k]:
                pending.append(
                    (
                        i + scenario.feedback_delay,
                        Record(
                            "feedback",
                            scenario.model,
                            {"model": scenario.model, "id": event_id, "ts": ts, "label": int(labels[k])},
                            i,
                        ),
                    )
                )
            while pending and pending[0][0] <= i:
                _, fb = pending.popleft()
                yield from emit(Record(fb.topic, fb.key, {**(fb.value or {}), "ts": ts}, i))
    last = scenario.events - 1
    while pending:
        _, fb = pending.popleft()
        yield from emit(Record(fb.topic, fb.key, {**(fb.value or {}), "ts": scenario.ts_of(last)}, last))


def encode(record: Record) -> bytes:
    """The bytes of a record's Kafka value (JSON, or the malformed bytes)."""
    if record.value is None:
        return record.raw or b""
    import orjson

    return orjson.dumps(record.value)


def publish(
    records: Iterable[Record],
    bootstrap_servers: str,
    *,
    predictions_topic: str = "predictions",
    feedback_topic: str = "feedback",
    rate: float | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[PublishStats], None] | None = None,
    progress_every: int = 2000,
    producer_config: dict[str, Any] | None = None,
) -> PublishStats:
    """Send ``records`` to Kafka with kafka-python, keyed by model.

    Parameters
    ----------
    records
        From :func:`generate`.
    bootstrap_servers
        ``host:port[,host:port]`` of the Kafka cluster.
    predictions_topic, feedback_topic
        Where prediction and feedback records go.
    rate
        Prediction events per second to pace at; None or 0: as fast as possible.
    stop
        When set, stop sending (what was sent is flushed).
    on_progress
        Called with the running stats every ``progress_every`` prediction events.
    producer_config
        Extra :class:`kafka.KafkaProducer` arguments (security settings ...).

    Returns
    -------
    PublishStats
        Counts of what was sent, after a final flush.
    """
    from kafka import KafkaProducer

    topics = {"predictions": predictions_topic, "feedback": feedback_topic}
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="driftline-simulator",
        linger_ms=20,
        batch_size=256 * 1024,
        **(producer_config or {}),
    )
    stats = PublishStats()
    started = time.monotonic()
    try:
        for record in records:
            if stop is not None and stop.is_set():
                break
            producer.send(topics[record.topic], key=record.key.encode(), value=encode(record))
            if record.value is None:
                stats.malformed += 1
            elif record.topic == "feedback":
                stats.feedback += 1
            else:
                stats.predictions += 1
                version = record.value.get("version", "default")
                stats.by_version[version] = stats.by_version.get(version, 0) + 1
                if rate:
                    ahead = stats.predictions / rate - (time.monotonic() - started)
                    if ahead > 0:
                        (stop.wait(ahead) if stop is not None else time.sleep(ahead))
                if on_progress is not None and stats.predictions % progress_every == 0:
                    stats.seconds = time.monotonic() - started
                    on_progress(stats)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=10)
    stats.seconds = time.monotonic() - started
    return stats


def produce_to_kafka(
    bootstrap_servers: str = "localhost:9092",
    events: int = 20_000,
    seed: int = 7,
    rate: float = 0.0,
    predictions_topic: str = "predictions",
    feedback_topic: str = "feedback",
    repeat: bool = False,
    stream: TextIO | None = None,
    stop: threading.Event | None = None,
) -> int:
    """``driftline simulate``: produce the simulated stream to an existing Kafka.

    Returns the exit code (0). The injected changes are written to ``stream`` (stdout by
    default) first, so a log shows where to look.
    """
    out = stream if stream is not None else sys.stdout
    run = 0
    while True:
        scenario = Scenario(seed=seed + run).scaled(events)
        if run:
            # Each run continues the timeline and uses fresh ids.
            scenario = replace(scenario, start_ts=scenario.start_ts + run * events * scenario.interval_seconds)
        for inj in scenario.injections():
            out.write(f"injecting {inj.name} at event {inj.index}: {inj.description}\n")
        out.flush()
        stats = publish(
            generate(scenario),
            bootstrap_servers,
            predictions_topic=predictions_topic,
            feedback_topic=feedback_topic,
            rate=rate or None,
            stop=stop,
        )
        out.write(
            f"sent {stats.predictions} predictions, {stats.feedback} feedback, "
            f"{stats.malformed} malformed records in {stats.seconds:.1f}s\n"
        )
        out.flush()
        run += 1
        if not repeat or (stop is not None and stop.is_set()):
            return 0
