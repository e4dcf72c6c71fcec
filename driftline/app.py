"""The service loop: poll a batch, decode, join, detect, hand alarms to sinks, flush,
checkpoint, commit — one batch through the whole line before the next is polled.

Ordering per batch (what makes "never lost" true)::

    decoded = source.poll()                    # every source decodes: bad records -> dead
                                               # letters (the Kafka consumer process decodes
                                               # batches when it has time)
    engine.apply_lifecycle(decoded.lifecycle, result)   # lifecycle events, before the
    result  = engine.process(decoded, result)  # batch's predictions: alarms
    dead_letters.write(...); sink.write(alarms) for every sink; audit.write(lifecycle, alarms)
    dead_letters.flush(); sink.flush() for every sink; audit.flush()   # durable, or SinkError
    if every flush succeeded and a checkpoint is due:
        changelog.write(changed models' states + their positions)   # kafka.changelog on
        checkpoint(engine state + offsets)     # atomically, to state_dir
        source.commit(offsets)

A sink that fails keeps its alarms and the commit is held; the next batch, or the
next empty poll while the topics are quiet, retries its flush, and no checkpoint or
commit happens on any path (batch, idle, shutdown) until every flush succeeded (a
changelog write that is not acknowledged holds it too). A crash replays from the last
committed offsets with the state written just before that commit, so nothing is
counted twice or lost.

With the changelog (``kafka.changelog``), a model's state follows its partition: the
Kafka source calls the service when partitions change owners (see
:class:`~driftline.monitor.sources.RebalanceHandler`); at a revocation the partition's
models are flushed, written and dropped before the source commits their offsets, and at
an assignment they are restored before any of their records is processed.

Process-wide settings (signals aside, which :meth:`Service.run` takes over only in the
main thread and restores) belong to the process's entry point, not to the service: the
CLI tunes the garbage collector (:func:`driftline.monitor.runtime.steady_gc`) around
``run``, and webhook secrets are read from the ``environ`` mapping the service is given.

A broker outage or a rebalance is ridden out: polls return nothing, a commit that is
refused or unanswered is retried a few seconds later (never taken as done), and the
health check every 2 seconds sets ``/readyz`` (``kafka``: the brokers answer;
``partitions``: some are assigned; ``consuming``: records arrive, or there is no lag).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from driftline.monitor.checkpoint import CheckpointStore
from driftline.monitor.config import Settings
from driftline.monitor.decode import DecodedBatch
from driftline.monitor.engine import Engine, EngineResult, ReferenceData
from driftline.monitor.reference import load_reference
from driftline.monitor.sources import KafkaSource, ProcessKafkaSource, SchemaSink, Source
from driftline.monitor.telemetry import READINESS_COMPONENTS, NullTelemetry, Readiness, ReadinessComponent, Telemetry
from driftline.sinks.deadletter import KafkaDeadLetters
from driftline.sinks.exceptions import SinkError

__all__ = ["Service", "BatchStats"]

log = logging.getLogger(__name__)

_HEALTH_INTERVAL = 2.0
"""Seconds between health checks (lag, assignment, broker reachability: asks the broker)."""
_HOLD_FIRST_DELAY = 0.5
_HOLD_MAX_DELAY = 10.0
"""Retry delays of a flush that failed, while no further batch is polled."""
_COMMIT_RETRY_SECONDS = 2.0
"""A commit that was not done (rebalance, outage) is tried again this much later."""
_WARN_EVERY = 10.0
"""A target that keeps failing to flush is warned about at most this often."""


class BatchStats:
    """Running totals, for progress lines and the demo."""

    def __init__(self) -> None:
        self.records = 0
        self.predictions = 0
        self.feedback = 0
        self.invalid = 0
        self.alarms = 0
        self.batches = 0
        self.last_batch_seconds = 0.0
        self.started = time.monotonic()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.records / elapsed if elapsed > 0 else 0.0


def _reference_loader(settings: Settings) -> Callable[..., ReferenceData | None]:
    def load(model: str, path: str | Path | None = None) -> ReferenceData | None:
        """The model's configured reference file, or ``path`` (a lifecycle event's
        reference, a path of this service's file system)."""
        cfg = settings.for_model(model)
        if path is not None:
            return load_reference(Path(path), model, cfg.reference.size)
        if cfg.reference.source != "file" or cfg.reference.path is None:
            return None
        return load_reference(cfg.reference.path, model, cfg.reference.size)

    return load


class _StateHandover:
    """The service's :class:`~driftline.monitor.sources.RebalanceHandler`: the Kafka source
    calls it when partitions change owners (after the batches handed over before)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def revoked(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        return self.service._partitions_revoked(partitions)

    def assigned(self, partitions: list[tuple[str, int]]) -> dict[str, dict[tuple[str, int], int]] | None:
        return self.service._partitions_assigned(partitions)

    def lost(self, partitions: list[tuple[str, int]]) -> None:
        self.service._partitions_lost(partitions)


def _preload() -> None:
    """Import the modules the detectors load when first used (``Service.run`` runs this
    in a thread while the consumer joins its group, so that the first windows do not
    wait for them)."""
    import scipy.stats  # noqa: F401


class Service:
    """driftline's long-running service.

    Parameters
    ----------
    settings
        All configuration.
    source
        Where decoded batches come from; default a
        :class:`~driftline.monitor.sources.ProcessKafkaSource` (a
        :class:`~driftline.monitor.sources.KafkaSource` when
        ``kafka.consumer_process`` is off).
    sinks
        Alarm outputs; default built from ``settings`` (JSONL, Kafka, webhooks).
    dead_letters
        Where bad records go; default the Kafka dead-letter topic.
    registry
        A prometheus_client registry; default a fresh one (metrics served only when
        ``settings.prometheus.enabled``).
    checkpoint
        Write and restore checkpoints under ``settings.state_dir`` (off for replays).
    on_batch
        Called after each batch with the running :class:`BatchStats`.
    environ
        Where the default sinks read webhook secrets and tokens; default ``os.environ``
        (the demo passes its per-run secret here rather than setting it process-wide).
    audit
        The audit trail (:class:`~driftline.sinks.audit.AuditLog`): every alarm,
        trigger, delivery outcome and lifecycle event is appended to it, flushed after
        the sinks and before the commit. Default: built from ``settings`` (``audit.*``)
        when ``checkpoint`` is on (the service proper); ``False``: none.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        sinks: Sequence[Any] | None = None,
        dead_letters: Any = None,
        registry: Any = None,
        checkpoint: bool = True,
        on_batch: Callable[[BatchStats], None] | None = None,
        environ: Mapping[str, str] | None = None,
        audit: Any = None,
    ) -> None:
        self.settings = settings
        self._source = source
        self._dead_letters = dead_letters
        self.on_batch = on_batch
        self.stats = BatchStats()
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self.telemetry: Telemetry = NullTelemetry()
        if settings.prometheus.enabled:
            from prometheus_client import CollectorRegistry

            from driftline.sinks.prometheus import PrometheusTelemetry

            self.registry = registry if registry is not None else CollectorRegistry()
            self.telemetry = PrometheusTelemetry(self.registry)
        else:
            self.registry = registry
        loader = _reference_loader(settings)
        references = {}
        for name in settings.models:  # fail fast on a named model's unreadable reference
            ref = loader(name)
            if ref is not None:
                references[name] = ref
        self.engine = Engine(settings, references=references, reference_loader=loader)
        if audit is None and checkpoint:
            from driftline.sinks.audit import AuditLog

            audit = AuditLog.from_settings(settings)
        self.audit: Any = audit or None
        self._recorder: Any = None
        if self.audit is not None:
            from driftline.sinks.audit import AuditRecorder

            self._recorder = AuditRecorder(self.audit, settings, self.engine)
        if sinks is None:
            from driftline.sinks.factory import build_sinks

            recorder = self._recorder
            sinks = build_sinks(
                settings,
                self.telemetry,
                state_dir=Path(settings.state_dir),
                environ=environ,
                on_triggers=recorder.on_triggers if recorder else None,
                on_delivery=recorder.on_delivery if recorder else None,
            )
        self.sinks = list(sinks)
        self._store = CheckpointStore(Path(settings.state_dir), settings.kafka.group_id) if checkpoint else None
        self._ready: dict[str, bool] = dict.fromkeys(READINESS_COMPONENTS, False)
        # when the loop entered a blocking call to the brokers (a changelog write), so
        # that /readyz, served by another thread, sees a broker that does not answer
        # while the loop waits for it (up to kafka.changelog.timeout_seconds per write)
        self._kafka_call_since: float | None = None
        self._last_checkpoint = 0.0
        self._last_health = 0.0
        self._last_progress = time.monotonic()  # a record arrived, or the lag was 0
        self._behind = 0  # total lag at the last health check that knew it
        self._broker_errors = 0  # the source's running total, as last reported
        self._assigned = 0  # partitions assigned at the last health check
        self._flushed = True  # the last flush of every sink and the dead letters succeeded
        self._flush_warned: dict[str, float] = {}
        self._retry_commit_at = 0.0
        self._committed: dict[tuple[str, int], int] = {}
        self._shared: set[str] = set()  # models whose schema the source's decoder knows
        # state that follows its partition (kafka.changelog): the store, the input
        # positions of the states restored at assignments, the models changed since
        # their last changelog write
        self._changelog: Any = None
        self._applied: dict[str, dict[tuple[str, int], int]] = {}
        self._dirty: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------
    def readiness(self) -> dict[str, bool]:
        """What /readyz reports (called from the metrics server's thread): the health
        checks' verdicts, and kafka not ready while the loop has waited on the brokers
        for longer than ``kafka.request_timeout_ms`` (the health check cannot run then)."""
        ready = dict(self._ready)
        since = self._kafka_call_since
        if since is not None and time.monotonic() - since > self.settings.kafka.request_timeout_ms / 1000:
            ready[Readiness.KAFKA] = False
            self.telemetry.set_ready(Readiness.KAFKA, False)  # set again by the next health check
        return ready

    def _set_ready(self, component: ReadinessComponent, value: bool) -> None:
        self._ready[component] = value
        self.telemetry.set_ready(component, value)

    def _start_metrics(self) -> None:
        if not self.settings.prometheus.enabled or self._metrics_server is not None:
            return
        from driftline.sinks.factory import start_metrics_server

        self._metrics_server = start_metrics_server(
            self.settings.prometheus,
            self.registry,
            self.engine.snapshot,
            self.readiness,
            on_overflow=self.telemetry.record_feature_overflow,
        )
        self.metrics_port = self._metrics_server.port

    def run(self, stop: threading.Event | None = None) -> int:
        """Consume until ``stop`` is set (or SIGTERM/SIGINT, in the main thread) or a
        finite source is exhausted; finish the current batch, flush, commit, return 0."""
        stop = stop or threading.Event()
        restore = self._install_signals(stop)
        # what the first windows need is imported while the consumer joins its group
        # (scipy.stats, about 0.6 s: imported where first used, so not at start)
        preload = threading.Thread(target=_preload, name="driftline-preload", daemon=True)
        preload.start()
        try:
            self._start_metrics()
            if self._source is None:
                kafka = self.settings.kafka
                lifecycle = self.settings.lifecycle.topic
                handover = self._open_changelog()
                if kafka.consumer_process:  # either client, in the consumer process
                    self._source = ProcessKafkaSource(kafka, lifecycle, handover)
                elif kafka.client == "confluent":
                    from driftline.monitor.confluent_source import ConfluentSource

                    self._source = ConfluentSource(kafka, lifecycle, handover)
                else:
                    self._source = KafkaSource(kafka, lifecycle, handover)
            source = self._source
            if self._dead_letters is None:
                self._dead_letters = KafkaDeadLetters(self.settings.kafka)
            self._restore(source)
            self._share_schemas(source)
            self._last_checkpoint = time.monotonic()  # the first checkpoint comes one interval in
            self._set_ready(Readiness.KAFKA, True)
            while not stop.is_set():
                batch = source.poll()
                if batch:  # records came (a batch of dead letters only, too)
                    self._process(batch, source)
                    if not self._flushed:
                        self._hold(source, stop)
                elif source.exhausted:
                    break
                else:
                    self._idle(source)
                self._set_ready(Readiness.REFERENCE, self.engine.reference_ready)
            self._finish(source)
            return 0
        finally:
            restore()
            self.close()
            preload.join(timeout=10)  # an exit right after the start does not cut an import short

    def _process(self, decoded: DecodedBatch, source: Source) -> None:
        t0 = time.perf_counter()
        recorder = self._recorder
        if recorder is not None:
            recorder.before_batch(decoded)
        result = EngineResult()
        self.engine.apply_lifecycle(decoded.lifecycle, result)  # before the batch's predictions
        result = self.engine.process(decoded, result)
        self._share_schemas(source)
        dead = decoded.dead_letters + result.dead_letters
        tel = self.telemetry
        tel.record_events("predictions", decoded.n_predictions)
        tel.record_events("feedback", decoded.n_feedback)
        for d in dead:
            tel.record_invalid(d.reason)
        for outcome, count in result.join.items():
            tel.record_join(outcome, count)
        for model, count in result.feature_overflow.items():
            tel.record_feature_overflow(model, count)
        for alarm in result.alarms:
            tel.record_alarm(alarm.model, alarm.kind)
            log.info(
                "alarm %s %s/%s %s %s=%.4g [%d..%d]",
                alarm.kind,
                alarm.model,
                alarm.version,
                alarm.feature,
                alarm.detector,
                alarm.statistic,
                alarm.first_index,
                alarm.last_index,
            )
        for event in decoded.lifecycle:
            log.info(
                "lifecycle %s %s/%s%s%s",
                event.event,
                event.model,
                event.version,
                f" as {event.role}" if event.role else "",
                f" (answers trigger {event.trigger[:12]})" if event.trigger else "",
            )
        if result.lifecycle:  # what the lifecycle events and timers did (applied, queued, confirmed ...)
            log.info("lifecycle outcomes: %s", ", ".join(f"{k} {v}" for k, v in sorted(result.lifecycle.items())))
        self._dead_letters.write(dead)
        for sink in self.sinks:
            sink.write(result.alarms)
        if recorder is not None:
            recorder.after_batch(decoded, result.alarms, source.offsets())
        if self._changelog is not None:  # written at the next checkpoint
            self._dirty.update(decoded.predictions)
            self._dirty.update(decoded.feedback)
            self._dirty.update(event.model for event in decoded.lifecycle)
        flushed = self._flush_all()
        st = self.stats
        st.records += decoded.n_records
        st.predictions += decoded.n_predictions
        st.feedback += decoded.n_feedback
        st.invalid += len(dead)
        st.alarms += len(result.alarms)
        st.batches += 1
        st.last_batch_seconds = time.perf_counter() - t0
        tel.observe_batch(st.last_batch_seconds, decoded.n_records)
        tel.mark_success("batch")
        self._last_progress = time.monotonic()
        self._set_ready(Readiness.CONSUMING, True)
        if flushed:
            self._maybe_checkpoint(source, force=False)
        self._check_health(source)
        if self.on_batch is not None:
            self.on_batch(st)

    def _hold(self, source: Source, stop: threading.Event) -> None:
        """A sink or the dead-letter writer could not flush: poll no further batch until
        it can, so that what they hold stays bounded (one batch's alarms and dead
        letters) however long the outage; retry with a capped backoff. The commit waits
        too; /readyz reports ``consuming`` false meanwhile."""
        delay = _HOLD_FIRST_DELAY
        self._set_ready(Readiness.CONSUMING, False)
        while not stop.wait(delay):
            if self._flush_all():
                self._set_ready(Readiness.CONSUMING, True)
                self._maybe_checkpoint(source, force=False)
                return
            delay = min(delay * 2, _HOLD_MAX_DELAY)

    def _idle(self, source: Source) -> None:
        """An empty poll: retry a failed flush, then checkpoint and commit only if every
        flush succeeded (a quiet topic must not commit past alarms or dead letters
        that are not durable yet), and check health."""
        if self._flush_all():
            self._maybe_checkpoint(source, force=False)
        self._check_health(source)
        if all(self._ready[c] for c in (Readiness.KAFKA, Readiness.PARTITIONS, Readiness.CONSUMING)):
            # a quiet topic is a healthy (empty) batch, for the DriftlineNotConsuming
            # alert; an unreachable broker, no partition or a stall is not
            self.telemetry.mark_success("batch")

    def _share_schemas(self, source: Source) -> None:
        """Give the source's decoder (:class:`~driftline.monitor.sources.SchemaSink`) the
        schemas the engine learned since the last batch."""
        if len(self._shared) == len(self.engine.models) or not isinstance(source, SchemaSink):
            return
        new = {
            name: mm.schema.to_state()
            for name, mm in self.engine.models.items()
            if name not in self._shared and mm.schema is not None
        }
        if new:
            if not source.share_schemas(new):
                return  # not taken in time: shared again after the next batch
            self._shared.update(new)

    def _check_health(self, source: Source) -> None:
        """At most every 2 seconds (it asks the broker): consumer lag per partition, and
        readiness: ``kafka`` (the brokers answered), ``partitions`` (some assigned),
        ``consuming`` (false when nothing arrived for ``kafka.stall_timeout_seconds``
        while the partitions have lag)."""
        now = time.monotonic()
        if now - self._last_health < _HEALTH_INTERVAL:
            return
        self._last_health = now
        status = source.status()
        tel = self.telemetry
        if status.broker_errors > self._broker_errors:
            tel.record_broker_errors(status.broker_errors - self._broker_errors)
        self._broker_errors = status.broker_errors
        reachable = status.error is None
        if reachable != self._ready[Readiness.KAFKA]:
            if reachable:
                log.info("Kafka answers again: consuming on")
            else:
                log.warning(
                    "Kafka does not answer (%s): /readyz reports kafka not ready; "
                    "offsets are committed once it is back",
                    status.error,
                )
        self._set_ready(Readiness.KAFKA, reachable)
        if status.assigned is not None:
            tel.set_assigned_partitions(status.assigned)
            if status.assigned != self._assigned and reachable:
                log.log(
                    logging.INFO if status.assigned else logging.WARNING,
                    "%d partition(s) assigned to this instance%s",
                    status.assigned,
                    "" if status.assigned else ": /readyz reports partitions not ready",
                )
                self._assigned = status.assigned
            self._set_ready(Readiness.PARTITIONS, status.assigned > 0)
        if status.lag is not None:
            for (topic, partition), lag in status.lag.items():
                tel.set_lag(topic, partition, lag)
            self._behind = sum(status.lag.values())
            if self._behind == 0:
                self._last_progress = now  # caught up: a quiet topic is not a stall
        idle = now - self._last_progress
        stalled = self._behind > 0 and idle > self.settings.kafka.stall_timeout_seconds
        if stalled and self._ready[Readiness.CONSUMING]:
            log.warning(
                "nothing consumed for %.0f s while %d record(s) wait: /readyz reports "
                "consuming not ready (kafka.stall_timeout_seconds)",
                idle,
                self._behind,
            )
        self._set_ready(Readiness.CONSUMING, not stalled)

    def _flush_all(self) -> bool:
        """Flush the dead letters and every sink; whether all succeeded (remembered:
        no checkpoint or commit is taken while it is False)."""
        ok = True
        now = time.monotonic()
        audit = [self.audit] if self.audit is not None else []  # last: the webhook sink's triggers go to it
        for target in [self._dead_letters, *self.sinks, *audit]:
            name = getattr(target, "name", type(target).__name__)
            try:
                target.flush()
            except SinkError as exc:
                ok = False
                # warned once per 10 s: an idle loop retries twice a second
                warn = now - self._flush_warned.get(name, -_WARN_EVERY) >= _WARN_EVERY
                level = logging.WARNING if warn else logging.DEBUG
                if warn:
                    self._flush_warned[name] = now
                log.log(level, "%s could not flush (offsets not committed until it does; retrying): %s", name, exc)
            else:
                if self._flush_warned.pop(name, None) is not None:
                    log.info("%s flushed again: offsets are committed from now on", name)
        self._flushed = ok
        return ok

    def _maybe_checkpoint(self, source: Source, force: bool) -> bool:
        """Checkpoint and commit when due (always when ``force``), and only if the last
        flush succeeded; whether the offsets are committed now."""
        if not self._flushed:
            return False  # on every path: never past an alarm or a dead letter not yet durable
        now = time.monotonic()
        if not force and (
            now - self._last_checkpoint < self.settings.checkpoint_interval_seconds or now < self._retry_commit_at
        ):
            return False
        offsets = source.offsets()
        if offsets == self._committed and not force:
            return True
        if self._changelog is not None:
            # sinks flushed -> changed models' states written -> offsets committed
            if not self._write_changelog(sorted(self._dirty & set(self.engine.model_names())), offsets):
                self._retry_commit_at = now + _COMMIT_RETRY_SECONDS
                return False
        if self._store is not None:
            # with the changelog, a local copy for operators (not read back: the changelog's
            # states are the ones restored, per partition)
            policies = {
                getattr(sink, "name", str(i)): sink.policy.state_dict()
                for i, sink in enumerate(self.sinks)
                if hasattr(sink, "policy")
            }
            self._store.save(
                {"version": 1, "offsets": offsets, "engine": self.engine.state_dict(), "policies": policies}
            )
            self.telemetry.mark_success("checkpoint")
        if source.commit(offsets) is False:
            # refused by a rebalance or unanswered: not done. The checkpoint stands (a
            # restart resumes from it); the commit is tried again shortly.
            self._retry_commit_at = now + _COMMIT_RETRY_SECONDS
            return False
        self._committed = offsets
        self._last_checkpoint = now
        self.telemetry.mark_success("commit")
        return True

    # -- state that follows its partition (kafka.changelog) ------------------------------------
    def _open_changelog(self) -> Any:
        """The changelog store and the source's rebalance handler, when state follows
        its partition (``kafka.changelog.enabled``, the service proper); else None."""
        cfg = self.settings.kafka.changelog
        if self._store is None or not cfg.enabled:
            return None
        from driftline.monitor.changelog import ChangelogStore

        self._changelog = ChangelogStore(
            self.settings.kafka, cfg.topic, compression_type=cfg.compression_type, timeout_seconds=cfg.timeout_seconds
        )
        log.info("model states follow their partitions through the changelog topic %s", self._changelog.topic)
        return _StateHandover(self)

    def _positions_of(self, model: str, offsets: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """The input positions ``model``'s state stands at: the offsets handed over of
        its partition, or its restored state's where those are further (records of
        other models re-read after a restore do not move it back)."""
        partition = self._changelog.partition_of(model)
        positions = {(tp[0], tp[1]): off for tp, off in offsets.items() if tp[1] == partition}
        for tp, off in self._applied.get(model, {}).items():
            positions[tp] = max(positions.get(tp, 0), off)
        return positions

    def _model_record(self, model: str) -> dict[str, Any]:
        """What follows a model to its partition's next owner: its engine state (detectors,
        references, join buffers), and per sink its trigger-policy evidence and the
        deliveries not yet acknowledged."""
        sinks: dict[str, Any] = {}
        for i, sink in enumerate(self.sinks):
            part: dict[str, Any] = {}
            if hasattr(sink, "policy") and hasattr(sink.policy, "state_for"):
                part["policy"] = sink.policy.state_for([model])
            if hasattr(sink, "pending_for"):
                part["pending"] = sink.pending_for([model])
            if part:
                sinks[getattr(sink, "name", str(i))] = part
        return {"engine": self.engine.model_state(model), "sinks": sinks}

    def _write_changelog(self, models: Sequence[str], offsets: Mapping[tuple[str, int], int]) -> bool:
        """Write these models' records with their positions; whether all were acknowledged
        (if not, the commit is held, as for a sink that cannot flush)."""
        from driftline.monitor.changelog import ChangelogError

        if not models:
            return True
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for model in models:  # one write per distinct positions (most often: per partition)
            key = tuple(sorted(self._positions_of(model, offsets).items()))
            groups.setdefault(key, {})[model] = self._model_record(model)
        self._kafka_call_since = time.monotonic()
        try:
            for key, states in groups.items():
                self._changelog.write(states, dict(key))
        except ChangelogError as exc:
            log.warning("%s: offsets not committed until it is written", exc)
            self._last_health = 0.0  # the next loop asks the brokers (and says so if they do not answer)
            return False
        finally:
            self._kafka_call_since = None
        self._dirty.difference_update(models)
        self.telemetry.mark_success("checkpoint")
        return True

    def _drop_models(self, models: Sequence[str], *, keep_pending: bool) -> None:
        for model in models:
            self.engine.drop_model(model)
            self._applied.pop(model, None)
            self._dirty.discard(model)
            self._shared.discard(model)
        for sink in self.sinks:
            if hasattr(sink, "policy") and hasattr(sink.policy, "drop"):
                sink.policy.drop(models)
            if not keep_pending and hasattr(sink, "pending_for"):
                sink.drop(models)  # written to the changelog: the new owner delivers them

    def _models_of(self, partitions: Sequence[tuple[str, int]]) -> tuple[set[int], list[str]]:
        numbers = {p for _, p in partitions}
        return numbers, [m for m in self.engine.model_names() if self._changelog.partition_of(m) in numbers]

    def _partitions_revoked(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int] | None:
        """Every batch before the revocation is processed: flush, write the partitions'
        models (whatever the checkpoint interval), let them go; the offsets to commit
        (None when the flush or the write failed: their new owner then resumes from the
        last commit and the last states written)."""
        numbers, models = self._models_of(partitions)
        mine = set(map(tuple, partitions))
        assert self._source is not None  # a revocation comes from the running source
        offsets = {(tp[0], tp[1]): off for tp, off in self._source.offsets().items() if tuple(tp) in mine}
        commit = None
        if not self._flush_all():
            log.warning(
                "partitions %s revoked while a sink could not flush: nothing committed for them; "
                "their new owner resumes from the last commit",
                sorted(numbers),
            )
        elif self._write_changelog(models, offsets):
            commit = offsets
        self._drop_models(models, keep_pending=commit is None)
        self._changelog.forget(numbers)
        log.info("partitions %s revoked: %d model state(s) handed over", sorted(numbers), len(models))
        return commit

    def _partitions_lost(self, partitions: list[tuple[str, int]]) -> None:
        """Taken away without a revocation (this instance was expired): forget their
        models; nothing written or committed (the new owner restores the last states)."""
        numbers, models = self._models_of(partitions)
        self._drop_models(models, keep_pending=True)
        self._changelog.forget(numbers)
        log.warning(
            "partitions %s lost (this instance was expired from the group): %d model state(s) "
            "dropped, their new owner restores them from the changelog",
            sorted(numbers),
            len(models),
        )

    def _partitions_assigned(self, partitions: list[tuple[str, int]]) -> dict[str, dict[tuple[str, int], int]] | None:
        """Restore the partitions' models before any of their records is processed;
        per model, the positions its state stands at (None: the restore failed, the
        source keeps the partitions paused and asks again)."""
        from driftline.monitor.changelog import ChangelogError
        from driftline.monitor.exceptions import CheckpointError

        numbers = sorted({p for _, p in partitions})
        started = time.monotonic()
        try:
            restored = self._changelog.restore(numbers)
        except ChangelogError as exc:
            log.warning("%s", exc)
            return None
        out: dict[str, dict[tuple[str, int], int]] = {}
        for model, found in restored.items():
            record = found.state
            try:
                self.engine.restore_model(model, record["engine"])
            except (CheckpointError, KeyError, TypeError) as exc:
                log.error(
                    "the changelog state of model %r cannot be used (%s): the model is rebuilt from the stream",
                    model,
                    exc,
                )
                self.engine.drop_model(model)
                continue
            try:
                for i, sink in enumerate(self.sinks):
                    part = (record.get("sinks") or {}).get(getattr(sink, "name", str(i))) or {}
                    if part.get("policy") and hasattr(sink, "policy") and hasattr(sink.policy, "adopt"):
                        sink.policy.adopt(part["policy"])
                    if part.get("pending") and hasattr(sink, "adopt"):
                        sink.adopt(part["pending"])
            except SinkError as exc:
                log.warning("%s: restoring again", exc)
                self._drop_models(list(out) + [model], keep_pending=True)
                return None
            self._applied[model] = dict(found.positions)
            out[model] = dict(found.positions)
        log.info(
            "partitions %s assigned: %d model state(s) restored from the changelog in %.2f s",
            numbers,
            len(out),
            time.monotonic() - started,
        )
        return out

    def _restore(self, source: Source) -> None:
        if self._store is None or self._changelog is not None:
            return  # with the changelog, states are restored per partition at assignment
        state = self._store.load()
        if state is None:
            return
        self.engine.load_state(state["engine"])
        from driftline.sinks.policy import TriggerPolicy

        for i, sink in enumerate(self.sinks):  # evidence and cooldowns of the trigger policy
            saved = state.get("policies", {}).get(getattr(sink, "name", str(i)))
            if saved is not None and hasattr(sink, "policy"):
                sink.policy = TriggerPolicy.from_state(self.settings.webhooks.policy, saved)
        source.seek({tuple(k) if isinstance(k, list) else k: v for k, v in state["offsets"].items()})
        self._committed = dict(state["offsets"])
        log.info("restored checkpoint %s (%d models)", self._store.path, len(self.engine.models))

    def _finish(self, source: Source) -> None:
        st = self.stats
        log.info(
            "stopping after %d predictions, %d feedback events and %d invalid records (%d alarms)",
            st.predictions,
            st.feedback,
            st.invalid,
            st.alarms,
        )
        if self._flush_all():
            if not self._maybe_checkpoint(source, force=True):
                log.warning(
                    "the offsets could not be committed at shutdown (see above): this "
                    "instance resumes from the checkpoint just written; an instance that "
                    "takes its partitions over consumes again from the group's last commit"
                )
            return
        offsets = source.offsets()
        behind = sum(max(0, off - self._committed.get(tp, 0)) for tp, off in offsets.items() if tp in self._committed)
        log.error(
            "a sink or the dead-letter writer could not flush at shutdown: offsets stay at the "
            "last commit, so the %d event(s) consumed since (and any partition never committed) "
            "will be consumed again at the next start, and their alarms and dead letters "
            "written then",
            behind,
        )

    def close(self) -> None:
        for target in [*self.sinks, self._dead_letters, self.audit]:  # the audit last: sinks write to it
            if target is None:
                continue
            try:
                target.close()
            except SinkError as exc:
                log.error("%s: %s", getattr(target, "name", type(target).__name__), exc)
        self.sinks = []
        self._dead_letters = None
        self.audit = None
        if self._source is not None:
            self._source.close()
            self._source = None
        if self._changelog is not None:
            self._changelog.close()
            self._changelog = None
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None

    @staticmethod
    def _install_signals(stop: threading.Event) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            log.info("received %s: finishing the current batch", signal.Signals(signum).name)
            stop.set()

        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for sig, h in old.items():
                signal.signal(sig, h)

        return restore
