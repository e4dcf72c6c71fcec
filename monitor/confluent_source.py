"""A source on confluent-kafka (librdkafka): ``kafka.client: confluent``.

The optional alternative to :class:`~driftline.monitor.sources.KafkaSource` (kafka-python,
the default), with the same guarantees: auto-commit off, only the offsets the service
hands :meth:`ConfluentSource.commit` are committed (synchronously), broker outages are
ridden out (counted and reported by :meth:`ConfluentSource.status`, never raised), and
partitions that change owners go through the same
:class:`~driftline.monitor.sources.RebalanceHandler` (state that follows its partition)
or, without one, the checkpoint's offsets are applied where the group has not committed
further, and a newly assigned lifecycle partition is read to its end before the
predictions (the same :class:`~driftline.monitor.sources.LifecycleCatchUp`).

With ``kafka.consumer_process`` (the default) it runs inside
:class:`~driftline.monitor.sources.ProcessKafkaSource`'s consumer process, as the
kafka-python source does (same messages, same decoding split between the processes);
without it, in the service's process, where it decodes its batches with a
:class:`~driftline.monitor.decode.BatchDecoder` and the schemas the engine shares
(:class:`~driftline.monitor.sources.SchemaSink`). The dead-letter, alarm and changelog
producers stay kafka-python's whichever client consumes.

confluent-kafka is an extra (``pip install 'driftline[confluent]'``); this module imports
it only when a source is built, and the configuration refuses ``kafka.client: confluent``
when it is not installed.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from driftline.monitor.contract import RawRecord, Record
from driftline.monitor.decode import BatchDecoder, DecodedBatch
from driftline.monitor.exceptions import SourceError
from driftline.monitor.sources import (
    _PROBE_TIMEOUT_MS,
    _RESTORE_RETRY_SECONDS,
    LifecycleCatchUp,
    Offsets,
    RebalanceHandler,
    SourceStatus,
    _Gate,
    _lag,
    warn_if_not_copartitioned,
)

if TYPE_CHECKING:
    from driftline.monitor.config import KafkaSettings

__all__ = ["ConfluentSource", "confluent_config", "INSTALL_HINT"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'driftline[confluent]'"
"""How to install the optional client (said by every error about it missing)."""

MAX_POLL_INTERVAL_MS = 300_000
"""librdkafka's max.poll.interval.ms, as kafka-python's default: a batch (or a
rebalance step of the service: flush, changelog write, restore) may take this long
before the group takes the partitions away."""

# Commit errors a rebalance causes (librdkafka's names): the commit belongs to a
# generation the group has left; not a failure (committed again after the rejoin).
_REBALANCE_ERRORS = frozenset(
    {
        "REBALANCE_IN_PROGRESS",
        "ILLEGAL_GENERATION",
        "UNKNOWN_MEMBER_ID",
        "FENCED_INSTANCE_ID",
        "_STATE",
        "_ASSIGNMENT_LOST",
    }
)


def confluent_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka's configuration of the consumer, mapped from ``kafka`` as
    :func:`driftline.monitor.kafka_client.client_options` maps it for kafka-python.

    Group: ``group.id``, auto-commit off, ``auto.offset.reset``, session and heartbeat
    as kafka-python's consumer has them. Connection: ``bootstrap.servers``,
    ``client.id``, ``socket.timeout.ms`` (``request_timeout_ms``: it bounds a commit
    that gets no answer), socket buffers, ``client.rack``. Fetch tuning: the four
    ``fetch_*``/``max_partition_fetch_bytes`` settings. Security: TLS files and key
    password, host name check, SASL PLAIN/SCRAM user and password, OAUTHBEARER through
    a token callback fed by the same providers as kafka-python's.

    Returns
    -------
    dict
        For ``confluent_kafka.Consumer``; secrets are plain strings in it (librdkafka
        needs them): never log it.
    """
    from driftline.monitor.kafka_client import token_provider

    servers = ",".join(s.strip() for s in settings.bootstrap_servers.split(",") if s.strip())
    config: dict[str, Any] = {
        "bootstrap.servers": servers,
        "group.id": settings.group_id,
        "client.id": settings.client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": max(1000, settings.session_timeout_ms // 3),
        "max.poll.interval.ms": max(MAX_POLL_INTERVAL_MS, settings.session_timeout_ms),
        "socket.timeout.ms": settings.request_timeout_ms,
        "fetch.min.bytes": settings.fetch_min_bytes,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
        "fetch.max.bytes": settings.fetch_max_bytes,
        # librdkafka refuses a fetch.max.bytes above receive.message.max.bytes - 512 or
        # below message.max.bytes (a producer's limit, checked in the consumer too)
        "receive.message.max.bytes": max(100_000_000, settings.fetch_max_bytes + 512),
        "message.max.bytes": min(1_000_000, settings.fetch_max_bytes),
        "security.protocol": settings.security_protocol.lower(),
        # an outage's reconnects are counted by the error callback, not logged per broker
        "log.connection.close": False,
    }
    if settings.receive_buffer_bytes is not None:
        config["socket.receive.buffer.bytes"] = settings.receive_buffer_bytes
    if settings.send_buffer_bytes is not None:
        config["socket.send.buffer.bytes"] = settings.send_buffer_bytes
    if settings.client_rack:
        config["client.rack"] = settings.client_rack
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
        for name, key in (
            ("ssl_cafile", "ssl.ca.location"),
            ("ssl_certfile", "ssl.certificate.location"),
            ("ssl_keyfile", "ssl.key.location"),
        ):
            path = getattr(settings, name)
            if path is not None:
                config[key] = str(path)
        if settings.ssl_certfile is not None and settings.ssl_keyfile is None:
            config["ssl.key.location"] = str(settings.ssl_certfile)  # the key inside the certificate's file
        if settings.ssl_password is not None:
            config["ssl.key.password"] = settings.ssl_password.get_secret_value()
    if settings.sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            config["oauth_cb"] = _OAuthCallback(token_provider(settings), settings.client_id)
        else:
            config["sasl.username"] = settings.sasl_plain_username
            password = settings.sasl_plain_password
            config["sasl.password"] = None if password is None else password.get_secret_value()
    return config


class _OAuthCallback:
    """librdkafka's ``oauth_cb``: a token from driftline's provider (fixed, file or
    class; each token is added to the log redaction as it is handed out), with its
    expiry and principal read from the token when it is a JWT.

    librdkafka asks again at 80 % of the lifetime; a token that is not a JWT gets
    ``_OPAQUE_LIFETIME`` seconds, so that a token file rotated in place is read again
    within a minute.
    """

    _OPAQUE_LIFETIME = 60.0

    def __init__(self, provider: Any, principal: str) -> None:
        self.provider = provider
        self.principal = principal

    def __call__(self, _config: str) -> tuple[str, float, str, dict[str, str]]:
        token = self.provider.token()
        claims = _jwt_claims(token)
        expiry = claims.get("exp")
        if not isinstance(expiry, (int, float)) or expiry <= time.time():
            expiry = time.time() + self._OPAQUE_LIFETIME
        subject = claims.get("sub")
        principal = subject if isinstance(subject, str) and subject else self.principal
        extensions = dict(self.provider.extensions() or {})
        return token, float(expiry), principal, extensions

    def __repr__(self) -> str:  # never the token
        return f"_OAuthCallback({self.provider!r})"


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (unverified: only its expiry and subject are read, for
    librdkafka's refresh timer); {} for any other token."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _client() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise SourceError(
            f"kafka.client is 'confluent' but confluent-kafka is not installed: {INSTALL_HINT}, "
            "or set kafka.client: kafka-python"
        ) from None
    return confluent_kafka


class ConfluentSource:
    """Consume predictions and feedback with a confluent-kafka consumer group.

    The same contract as :class:`~driftline.monitor.sources.KafkaSource`: offsets are
    committed only through :meth:`commit` (which the service calls after the sinks
    flushed and the checkpoint or changelog was written); a poll that fails returns
    no records (librdkafka reconnects by itself) and a refused or unanswered commit
    returns False; :meth:`status` says whether the brokers answer.

    Rebalance callbacks run inside :meth:`poll` (librdkafka serves them from
    ``consume``), in the thread that polls, after every batch handed over before them
    was processed: the :class:`~driftline.monitor.sources.RebalanceHandler` is called
    there directly. At a revocation only the offsets the handler returns are committed
    (none without a handler); a failure there is logged, never raised.

    Parameters
    ----------
    settings
        ``kafka`` of the configuration.
    lifecycle_topic
        Also consume this topic when the brokers know it (see
        :func:`driftline.monitor.sources._lifecycle_subscription`).
    handover
        What the service does when partitions change owners (None: the checkpoint's
        offsets, given by :meth:`seek`, are applied at assignment).
    """

    def __init__(
        self, settings: KafkaSettings, lifecycle_topic: str | None = None, handover: RebalanceHandler | None = None
    ) -> None:
        ck = _client()
        self._ck = ck
        self.settings = settings
        self.exhausted = False
        self.handover = handover
        self.closing = False
        self.broker_errors = 0
        self._last_error: str | None = None
        self._warned = 0.0
        self._positions: Offsets = {}
        self._pending_seek: Offsets = {}
        self._to_seek: list[tuple[str, int]] = []  # assigned, paused: their checkpoint seek is due
        self._gates: dict[tuple[str, int], _Gate] = {}
        self._awaiting: list[tuple[str, int]] = []  # assigned but paused: their restore failed
        self._retry_restore_at = 0.0
        self._assigned: list[tuple[str, int]] = []
        self._committing: threading.Thread | None = None  # a commit still waiting for an answer
        self.delivered: Offsets = {}  # next offset handed over (the consumer process's bookkeeping)
        config = confluent_config(settings)
        config["error_cb"] = self._on_error
        config["on_commit"] = self._on_commit  # the outcome of a revocation's commit
        config["logger"] = logging.getLogger(f"{__name__}.librdkafka")
        try:
            self._consumer = ck.Consumer(config)
        except ck.KafkaException as exc:
            raise SourceError(f"the confluent-kafka consumer refused its configuration: {exc}") from None
        try:
            metadata = self._consumer.list_topics(timeout=settings.bootstrap_timeout_ms / 1000)
        except ck.KafkaException as exc:
            self._consumer.close()
            raise SourceError(f"cannot connect to Kafka at {settings.bootstrap_servers}: {exc}") from None
        self.lifecycle_topic = _lifecycle_subscription(metadata, settings, lifecycle_topic)
        # a newly assigned lifecycle partition is read up to its end before its predictions
        self.catch_up = LifecycleCatchUp(settings, self.lifecycle_topic) if self.lifecycle_topic else None
        self._decoder = BatchDecoder(settings.predictions_topic, settings.feedback_topic, self.lifecycle_topic)
        topics = [settings.predictions_topic, settings.feedback_topic]
        self._consumer.subscribe(
            topics + ([self.lifecycle_topic] if self.lifecycle_topic else []),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- errors ---------------------------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        """librdkafka's error callback (a broker down, all brokers down, a failed
        authentication): counted and logged; librdkafka retries by itself."""
        self._broker_failed("request", err)
        if err.fatal():
            log.error(
                "confluent-kafka reports a fatal error (%s): consuming cannot go on with this "
                "consumer; restart the service",
                err.str(),
            )

    def _broker_failed(self, what: str, err: Any) -> str:
        """Count a failed request to the brokers and log it (a warning at most every 10 s)."""
        self.broker_errors += 1
        text = err.str() if hasattr(err, "str") else str(err)
        name = err.name() if hasattr(err, "name") else type(err).__name__
        self._last_error = f"{what}: {name}: {text}"
        now = time.monotonic()
        if now - self._warned >= 10.0:
            self._warned = now
            log.warning("Kafka %s failed (%s); retrying: librdkafka reconnects by itself", what, self._last_error)
        else:
            log.debug("Kafka %s failed: %s", what, self._last_error)
        return self._last_error

    def _error_of(self, exc: Exception) -> Any:
        """The ``KafkaError`` inside a ``KafkaException`` (or the exception itself)."""
        return exc.args[0] if exc.args and isinstance(exc.args[0], self._ck.KafkaError) else exc

    # -- polling --------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return bool(self._assigned)

    def poll(self) -> DecodedBatch:
        """The next batch of records, decoded (empty when none came within the poll
        timeout, or the brokers are away)."""
        records = self.poll_records()
        return self._decoder.decode(records) if records else DecodedBatch()

    def share_schemas(self, schemas: dict[str, dict[str, Any]]) -> bool:
        """Decode these models' feature columns from now on (see
        :class:`~driftline.monitor.sources.SchemaSink`)."""
        self._decoder.set_schemas(schemas)
        return True

    def poll_records(self) -> list[RawRecord]:
        """Up to ``max_poll_records`` records, as they came."""
        ck = self._ck
        if self._commit_in_flight():
            # confluent-kafka's consume() waits for a synchronous commit in flight: the
            # brokers are away, nothing to fetch until it is answered
            time.sleep(self.settings.poll_timeout_ms / 1000)
            return []
        if self._awaiting and time.monotonic() >= self._retry_restore_at:
            self._restore_again()
        if self._to_seek:
            self._apply_seeks()
        try:
            messages = self._fetched()
        except ck.KafkaException as exc:  # the brokers are away: nothing fetched this time
            self._broker_failed("poll", self._error_of(exc))
            time.sleep(min(1.0, self.settings.poll_timeout_ms / 1000))  # do not spin on a dead broker
            return []
        if not messages and not (self.catch_up is not None and self.catch_up.due):
            return []
        records: list[Any] = []  # Records: RawRecords, read-only
        positions = self._positions
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != ck.KafkaError._PARTITION_EOF:
                    self._broker_failed("fetch", err)
                continue
            offset = m.offset()
            records.append(Record(m.topic(), m.partition(), offset, m.timestamp()[1], m.key(), m.value()))
        if self.catch_up is not None and (self.catch_up.due or self.catch_up.read_until):
            records = self._align_lifecycle(records)
        for r in records:  # after the loop: the last record of each partition wins
            positions[(r.topic, r.partition)] = r.offset + 1
        if self._gates:
            records = self._through_gates(records)
        return records

    def _fetched(self) -> list[Any]:
        """Up to ``max_poll_records`` messages, as soon as there are any (or none after
        the poll timeout), as kafka-python's poll returns them.

        ``consume(n, timeout)`` waits until it has ``n`` messages or the timeout passed:
        a batch smaller than ``n`` (the consumer has caught up) would always wait the
        whole poll timeout. So: what is fetched already; if nothing, wait for one
        message, then take what came with it.
        """
        consume, n = self._consumer.consume, self.settings.max_poll_records
        messages: list[Any] = consume(n, 0)
        if messages:
            return messages
        messages = list(consume(1, self.settings.poll_timeout_ms / 1000))
        if messages and n > 1:
            messages.extend(consume(n - 1, 0))
        return messages

    def _align_lifecycle(self, records: list[Any]) -> list[Any]:
        """Drop the lifecycle records read aside before; read the backlog of newly
        assigned lifecycle partitions aside and put it first in this batch (see
        :class:`~driftline.monitor.sources.LifecycleCatchUp`). In the polling thread,
        before any record of the batch is handed over."""
        cu = self.catch_up
        assert cu is not None
        topic = cu.topic
        fetched: dict[int, list[Any]] = {}
        for r in records:
            if r.topic == topic:
                fetched.setdefault(r.partition, []).append(r)
        kept, aside = cu.align(
            fetched, lambda: self._assigned, [*self._awaiting, *self._to_seek], self._lifecycle_starts
        )
        handed = {id(r) for recs in kept.values() for r in recs}
        return [r for p in sorted(aside) for r in aside[p]] + [
            r for r in records if r.topic != topic or id(r) in handed
        ]

    def _lifecycle_starts(self, partitions: list[int]) -> dict[int, int | None]:
        """Where the consumer starts these lifecycle partitions: a checkpoint's seek or
        a restore's resume point, else the group's commit (None: no commit, where
        ``auto_offset_reset`` says); those of neither kind left out when the group
        coordinator does not answer."""
        assert self.catch_up is not None
        topic = self.catch_up.topic
        starts: dict[int, int | None] = {
            p: self._positions[(topic, p)] for p in partitions if (topic, p) in self._positions
        }
        unknown = [p for p in partitions if p not in starts]
        committed = self._committed([self._ck.TopicPartition(topic, p) for p in unknown]) if unknown else {}
        if committed is not None:
            starts.update({p: committed.get((topic, p)) for p in unknown})
        return starts

    def _through_gates(self, records: list[RawRecord]) -> list[RawRecord]:
        """Drop records read again after a restore that their model's state holds already."""
        out = []
        for r in records:
            key = (r.topic, r.partition)
            gate = self._gates.get(key)
            if gate is None or r.offset >= gate.until:
                out.append(r)
            elif gate.admit([r]):
                out.append(r)
        for key, gate in list(self._gates.items()):
            if self._positions.get(key, 0) >= gate.until:
                del self._gates[key]  # past every restored state: nothing more to filter
        return out

    # -- rebalances (served inside consume(), in the service's thread) ----------------------
    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = sorted((tp.topic, tp.partition) for tp in partitions)
        self._assigned = sorted(set(self._assigned) | set(tps))
        if self.catch_up is not None:
            self.catch_up.assigned(tps)
        if self.closing or not partitions:
            return
        try:
            if self.handover is not None:
                self._assign_with_handover(self.handover, consumer, partitions, tps)
            else:
                self._assign_with_checkpoint(consumer, partitions)
        except self._ck.KafkaException as exc:  # never fatal: paused, tried again at the next polls
            self._broker_failed("assignment", self._error_of(exc))

    def _assign_with_checkpoint(self, consumer: Any, partitions: list[Any]) -> None:
        """Start partitions with a checkpoint offset there (unless the group committed
        further since: another instance owned them meanwhile); the others from the
        group's commit. When the group does not answer, those partitions stay paused
        and the seek is done at a later poll."""
        due = [tp for tp in partitions if (tp.topic, tp.partition) in self._pending_seek]
        committed = self._committed(due) if due else {}
        waiting = []
        for tp in due:
            key = (tp.topic, tp.partition)
            if committed is None:
                waiting.append(tp)
                continue
            tp.offset = self._seek_target(key, committed.get(key))
            del self._pending_seek[key]
            self._positions[key] = tp.offset
        consumer.assign(partitions)
        if waiting:
            consumer.pause(waiting)
            self._to_seek.extend((tp.topic, tp.partition) for tp in waiting)

    def _seek_target(self, key: tuple[str, int], committed: int | None) -> int:
        off = self._pending_seek[key]
        if committed is not None and committed > off:
            log.warning(
                "%s/%d: the group committed offset %d, past this instance's checkpoint (%d); resuming from the commit",
                key[0],
                key[1],
                committed,
                off,
            )
            return committed
        return off

    def _apply_seeks(self) -> None:
        """The checkpoint seeks that waited for the group's commit (partitions paused)."""
        ck = self._ck
        tps = [ck.TopicPartition(t, p) for t, p in self._to_seek]
        committed = self._committed(tps)
        if committed is None:
            return
        done = []
        for tp in tps:
            key = (tp.topic, tp.partition)
            off = self._seek_target(key, committed.get(key))
            try:
                self._consumer.seek(ck.TopicPartition(tp.topic, tp.partition, off))
            except ck.KafkaException as exc:  # not fetching yet: again at the next poll
                log.debug("seek of %s/%d not done yet: %s", tp.topic, tp.partition, exc)
                continue
            del self._pending_seek[key]
            self._positions[key] = off
            if self.catch_up is not None:
                self.catch_up.moved([key])
            done.append(tp)
        if done:
            self._consumer.resume(done)
            self._to_seek = [k for k in self._to_seek if k not in {(t.topic, t.partition) for t in done}]

    def _committed(self, tps: list[Any]) -> dict[tuple[str, int], int | None] | None:
        """The group's committed offset per partition (None for none); None when the
        group coordinator does not answer."""
        ck = self._ck
        try:
            found = self._consumer.committed(
                [ck.TopicPartition(tp.topic, tp.partition) for tp in tps],
                timeout=self.settings.request_timeout_ms / 1000,
            )
        except ck.KafkaException as exc:
            self._broker_failed("reading the committed offsets", self._error_of(exc))
            return None
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in found}

    def _assign_with_handover(
        self, handover: RebalanceHandler, consumer: Any, partitions: list[Any], tps: list[tuple[str, int]]
    ) -> None:
        """Restore the partitions' models (the handler) before any of their records is
        read, then start each at the lowest of the group's commit and the restored
        states' positions; a failed restore leaves them paused, asked again later."""
        restored = handover.assigned(tps)
        committed = self._committed(partitions) if restored else {}
        if restored is None or committed is None:
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._awaiting.extend(tp for tp in tps if tp not in self._awaiting)
            self._retry_restore_at = time.monotonic() + _RESTORE_RETRY_SECONDS
            log.warning(
                "restoring the state of partitions %s failed: they stay paused and the restore "
                "is tried again in %.0f s",
                tps,
                _RESTORE_RETRY_SECONDS,
            )
            return
        for tp in partitions:
            start = self._resume_point((tp.topic, tp.partition), restored, committed)
            if start is not None:
                tp.offset = start
        consumer.assign(partitions)

    def _resume_point(
        self, key: tuple[str, int], restored: dict[str, Offsets], committed: dict[tuple[str, int], int | None]
    ) -> int | None:
        """Where to start a partition after a restore (None: at the group's commit, or
        the reset policy), with a gate for the records read again; see
        :meth:`driftline.monitor.sources.KafkaSource._resume_at`."""
        states = {m: pos[key] for m, pos in restored.items() if key in pos}
        if not states:
            return None
        floor = committed.get(key) or 0
        start = min(floor, *states.values())
        gate = _Gate(floor, states)
        if gate.until > start:
            self._gates[key] = gate
        self._positions[key] = start
        if committed.get(key) is not None and start < floor:
            log.info(
                "%s/%d: resuming at %d, before the group's commit (%d): some restored states are "
                "older; each model's records apply from its own state's position",
                key[0],
                key[1],
                start,
                floor,
            )
        return start

    def _restore_again(self) -> None:
        """Ask the handler again for the partitions whose restore failed; resume them
        once it succeeds (paused until then: never processed without their state)."""
        ck = self._ck
        waiting = list(self._awaiting)
        restored = self.handover.assigned(waiting) if self.handover is not None else {}
        tps = [ck.TopicPartition(t, p) for t, p in waiting]
        committed = self._committed(tps) if restored else {}
        if restored is None or committed is None:
            self._retry_restore_at = time.monotonic() + _RESTORE_RETRY_SECONDS
            return
        for key in waiting:
            start = self._resume_point(key, restored, committed)
            if start is not None:
                try:
                    self._consumer.seek(ck.TopicPartition(key[0], key[1], start))
                except ck.KafkaException as exc:
                    log.info("seek of %s/%d after the restore not done yet (%s): restoring again", key[0], key[1], exc)
                    self._retry_restore_at = time.monotonic() + _RESTORE_RETRY_SECONDS
                    return
                if self.catch_up is not None:
                    self.catch_up.moved([key])
        self._awaiting = [tp for tp in self._awaiting if tp not in waiting]
        self._consumer.resume(tps)
        log.info("restored the state of partitions %s: consuming them again", waiting)

    def _forget(self, partitions: list[tuple[str, int]]) -> None:
        gone = set(partitions)
        for tp in partitions:
            self._positions.pop(tp, None)
            self._gates.pop(tp, None)
            self.delivered.pop(tp, None)
        self._awaiting = [tp for tp in self._awaiting if tp not in gone]
        self._to_seek = [tp for tp in self._to_seek if tp not in gone]
        self._assigned = [tp for tp in self._assigned if tp not in gone]
        if self.catch_up is not None:
            self.catch_up.forget(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Hand the partitions' state over (with a handler) and commit only the offsets
        it returns, still in the old generation; without one, commit nothing (the new
        owner resumes from the service's last commit)."""
        tps = sorted((tp.topic, tp.partition) for tp in partitions)
        if self.handover is not None and not self.closing and tps:
            offsets = self.handover.revoked(tps)
            if offsets:
                sent = self._commit_at_revocation(
                    [self._ck.TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in set(tps)]
                )
                log.info(
                    "partitions %s revoked: state written, offsets %s",
                    tps,
                    "sent for commit" if sent else "not committed",
                )
        self._forget(tps)

    def _commit_at_revocation(self, tps: list[Any]) -> bool:
        """Commit asynchronously from the polling thread, inside the revocation callback.

        confluent-kafka lets no other thread call the consumer while ``consume`` runs a
        rebalance callback: :meth:`_commit_list`'s worker would wait there for the whole
        ``request_timeout_ms`` (30 s by default) and commit only after the rejoin, the
        group's rebalance held up meanwhile. Sent from here, the commit leaves before
        this member rejoins (in the old generation) and never blocks on a coordinator
        that does not answer; :meth:`_on_commit` logs a refusal.
        """
        if self._commit_in_flight():  # commits stay in order
            return False
        try:
            self._consumer.commit(offsets=tps, asynchronous=True)
        except self._ck.KafkaException as exc:
            self._broker_failed("revocation", self._error_of(exc))
            return False
        return True

    def _on_commit(self, err: Any, partitions: list[Any]) -> None:
        """librdkafka's answer to an asynchronous commit (served inside ``consume``)."""
        error = err or next((tp.error for tp in partitions or [] if tp.error is not None), None)
        if error is not None:
            log.info(
                "the commit at a revocation was not done (%s): the new owner resumes from the states' "
                "positions in the changelog",
                error.str() if hasattr(error, "str") else error,
            )

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Taken away without a revocation: forget them, write and commit nothing."""
        tps = sorted((tp.topic, tp.partition) for tp in partitions)
        self._forget(tps)
        if self.handover is not None and not self.closing and tps:
            self.handover.lost(tps)

    # -- commits, seeks, status -----------------------------------------------------------
    def offsets(self) -> Offsets:
        return dict(self._positions)

    def commit(self, offsets: Offsets) -> bool:
        """Commit the offsets of the partitions this instance owns (synchronously);
        False when not done: refused by a rebalance or not answered. Never raises."""
        mine = set(self._assigned)
        tps = [self._ck.TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in mine]
        if not tps:
            return True
        return self._commit_list(tps, "commit")

    def _commit_in_flight(self) -> bool:
        """Whether a commit that timed out still waits for the group coordinator (the
        consumer's other calls would wait for it: they are not made meanwhile)."""
        if self._committing is None:
            return False
        if self._committing.is_alive():
            return True
        self._committing = None
        log.info("the commit that waited for the group coordinator is answered: consuming again")
        return False

    def _commit_list(self, tps: list[Any], what: str) -> bool:
        """Commit synchronously, waiting at most ``request_timeout_ms``.

        librdkafka's synchronous commit has no timeout of its own: with the group
        coordinator unreachable it waits until it is back. So it runs in a worker
        thread: unanswered in time, it counts as not done (the service commits again
        later), and no other commit starts while it is still in flight (commits stay
        in order; the late one only ever commits offsets the service handed over).
        """
        ck = self._ck
        if self._commit_in_flight():
            log.debug("an earlier commit is still waiting for the group coordinator: %s not done", what)
            return False
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"] = self._consumer.commit(offsets=tps, asynchronous=False)
            except ck.KafkaException as exc:
                box["error"] = self._error_of(exc)
            except RuntimeError as exc:  # the consumer was closed meanwhile
                box["error"] = exc

        worker = threading.Thread(target=work, name="driftline-confluent-commit", daemon=True)
        worker.start()
        worker.join(self.settings.request_timeout_ms / 1000)
        if worker.is_alive():
            self._committing = worker
            self.broker_errors += 1
            self._last_error = f"{what}: no answer within {self.settings.request_timeout_ms} ms"
            log.warning(
                "Kafka %s not answered within kafka.request_timeout_ms (%d ms): not done, committed again later",
                what,
                self.settings.request_timeout_ms,
            )
            return False
        if "error" in box:
            err = box["error"]
            name = err.name() if hasattr(err, "name") else type(err).__name__
            if name in _REBALANCE_ERRORS:
                log.info("%s refused by a rebalance (%s); committing again after the rejoin", what, name)
            else:
                self._broker_failed(what, err)
            return False
        failed = [tp for tp in box.get("result") or [] if tp.error is not None]
        if failed:
            log.info(
                "%s not done for %s (%s); committing again later",
                what,
                [(tp.topic, tp.partition) for tp in failed],
                failed[0].error,
            )
            return False
        return True

    def seek(self, offsets: Offsets) -> None:
        """Start at these offsets (a checkpoint's): applied when the partitions are
        assigned (at once for those assigned already), unless the group committed further."""
        self._pending_seek.update(offsets)
        ready = [tp for tp in self._assigned if tp in self._pending_seek and tp not in self._to_seek]
        if ready:
            try:
                self._consumer.pause([self._ck.TopicPartition(t, p) for t, p in ready])
            except self._ck.KafkaException as exc:  # not assigned any more: applied at the next assignment
                log.debug("pausing %s for the checkpoint's seek failed: %s", ready, exc)
                return
            self._to_seek.extend(ready)
            self._apply_seeks()

    def assignment(self) -> list[tuple[str, int]]:
        return list(self._assigned)

    def probe(self) -> tuple[Offsets | None, int, str | None]:
        """Ask the group coordinator for the committed offsets of the assigned partitions
        (for the predictions topic's metadata when none is assigned, so that an outage
        shows either way), with their end offsets: ``(ends or None, partitions assigned,
        error or None)``; at most 5 s in all.

        The end offsets are the ones the fetches last brought (librdkafka's cache), asked
        for only where none came yet: on the fetch connection each request waits behind
        a fetch held up to ``fetch_max_wait_ms`` (one per partition added up past the
        5 s, and the service's loop waited meanwhile); the coordinator answers at once.
        """
        ck = self._ck
        assigned = list(self._assigned)
        if self._commit_in_flight():
            self.broker_errors += 1
            return (
                None,
                len(assigned),
                "a commit has waited for the group coordinator longer than "
                f"kafka.request_timeout_ms ({self.settings.request_timeout_ms} ms)",
            )
        deadline = time.monotonic() + min(self.settings.request_timeout_ms, _PROBE_TIMEOUT_MS) / 1000
        ends: Offsets = {}
        try:
            if not assigned:
                self._consumer.list_topics(
                    self.settings.predictions_topic, timeout=max(0.1, deadline - time.monotonic())
                )
            else:
                self._consumer.committed(
                    [ck.TopicPartition(t, p) for t, p in assigned], timeout=max(0.1, deadline - time.monotonic())
                )
            for t, p in assigned:
                _, high = self._consumer.get_watermark_offsets(ck.TopicPartition(t, p), cached=True)
                if high < 0:  # nothing fetched yet (just assigned, or paused)
                    _, high = self._consumer.get_watermark_offsets(
                        ck.TopicPartition(t, p), timeout=max(0.1, deadline - time.monotonic()), cached=False
                    )
                ends[(t, p)] = high
        except ck.KafkaException as exc:
            return None, len(assigned), self._broker_failed("end-offset request", self._error_of(exc))
        return ends, len(assigned), None

    def status(self) -> SourceStatus:
        ends, assigned, error = self.probe()
        lag = None if ends is None else _lag(ends, self._positions)
        return SourceStatus(lag, assigned, error, self.broker_errors)

    def lag(self) -> Offsets:
        return self.status().lag or {}

    def close(self) -> None:
        self.closing = True  # the revocation at close is not a handover: the service checkpointed
        try:
            self._consumer.close()
        except RuntimeError:  # closed already
            pass


def _lifecycle_subscription(metadata: Any, settings: KafkaSettings, topic: str | None) -> str | None:
    """``topic`` when the brokers know it, else None; as
    :func:`driftline.monitor.sources._lifecycle_subscription` decides, from the cluster
    metadata read at start."""
    if not topic:
        return None
    known = metadata.topics
    if topic not in known or known[topic].error is not None:
        log.warning(
            "the lifecycle topic %r does not exist: model lifecycle events (deployed, "
            "promoted, rolled_back, retired) are not consumed. Create it with the partition "
            "count of %r and restart to use them (lifecycle.topic)",
            topic,
            settings.predictions_topic,
        )
        return None
    ours = known[topic].partitions
    theirs = known[settings.predictions_topic].partitions if settings.predictions_topic in known else {}
    warn_if_not_copartitioned(topic, ours, settings.predictions_topic, theirs)
    return topic
