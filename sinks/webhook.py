"""The webhook sink: retrain / rollback triggers, recorded durably, delivered with retries.

Per batch (the :class:`driftline.sinks.base.Sink` order):

1. ``write(alarms)`` runs the :class:`driftline.sinks.policy.TriggerPolicy` and keeps the
   triggers it returns in memory;
2. ``flush()`` inserts one outbox row per (trigger, target receiving its action) in a
   single SQLite transaction and returns only when it is committed; the service commits
   Kafka offsets after that, so a trigger is on disk before its offsets are committed.
   A trigger already in the outbox (a replay) is not added again;
3. a background :class:`driftline.sinks.delivery.Deliverer` sends the rows and retries them.

With ``webhooks.policy.dry_run`` the sink logs each request it would record and counts
it as ``dry_run``; nothing is written or sent.

Examples
--------
>>> from driftline.monitor.config import WebhookSettings, WebhookTarget
>>> settings = WebhookSettings(targets=[WebhookTarget(name="ci", url="http://127.0.0.1:9/hook")])
>>> sink = WebhookSink(settings, outbox=tmp / "outbox.sqlite3")   # doctest: +SKIP
>>> sink.write(alarms); sink.flush()                                   # doctest: +SKIP
>>> sink.close()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from driftline.monitor.alarms import Alarm
from driftline.monitor.config import WebhookSettings, WebhookTarget
from driftline.monitor.exceptions import ConfigError
from driftline.sinks.delivery import (
    Deliverer,
    DeliveryOutcome,
    NullWebhookTelemetry,
    ResolvedTarget,
    WebhookTelemetry,
)
from driftline.sinks.exceptions import SinkError
from driftline.sinks.outbox import Outbox, OutboxEntry
from driftline.sinks.policy import Trigger, TriggerPolicy
from driftline.sinks.presets import TOKEN_REQUIRED, render, trigger_payload

__all__ = ["WebhookSink", "resolve_targets"]

log = logging.getLogger(__name__)


def _read_env(target: WebhookTarget, field_name: str, variable: str | None, environ: Mapping[str, str]) -> str | None:
    if variable is None:
        return None
    value = environ.get(variable)
    if not value:
        raise ConfigError(
            f"webhooks.targets[{target.name!r}].{field_name} names the environment variable "
            f"{variable!r}, which is not set or empty: set it to the "
            f"{'HMAC secret' if field_name == 'secret_env' else 'token'} for this target, "
            f"or remove {field_name}"
        )
    return value


def resolve_targets(targets: Sequence[WebhookTarget], environ: Mapping[str, str]) -> dict[str, ResolvedTarget]:
    """Read each target's secret and token from ``environ``.

    Raises
    ------
    ConfigError
        A target name used twice, a named variable missing, or a GitHub / GitLab target
        without ``token_env``. The message names the target and the variable, never a
        value.
    """
    resolved: dict[str, ResolvedTarget] = {}
    for target in targets:
        if target.name in resolved:
            raise ConfigError(
                f"webhooks.targets: the name {target.name!r} is used twice; give each target "
                "its own name (it keys the outbox and the metrics)"
            )
        if target.preset in TOKEN_REQUIRED and target.token_env is None:
            raise ConfigError(
                f"webhooks.targets[{target.name!r}].token_env is required for preset "
                f"{target.preset!r}: name the environment variable that holds the token"
            )
        resolved[target.name] = ResolvedTarget(
            target=target,
            secret=_read_env(target, "secret_env", target.secret_env, environ),
            token=_read_env(target, "token_env", target.token_env, environ),
        )
    return resolved


class WebhookSink:
    """Sends retrain / rollback triggers to the configured webhook targets.

    Parameters
    ----------
    settings
        ``webhooks`` of the configuration (targets, policy, backoff).
    outbox
        The SQLite outbox file, normally ``<state_dir>/outbox.sqlite3``, or an open
        :class:`driftline.sinks.outbox.Outbox` (the sink closes it in :meth:`close`).
    telemetry
        Delivery counters, pending and failed gauges and trigger counter.
    policy
        The trigger policy (pass one rebuilt from a checkpoint); default: a new one from
        ``settings.policy``. Its state is :attr:`policy`, to checkpoint with the offsets.
    environ
        Where ``secret_env`` / ``token_env`` are looked up (read once, here).
    clock, rng
        Wall clock and jitter source of the delivery thread.
    transport
        The delivery thread's httpx transport (default: httpx's); tests wrap it.
    start
        Start the delivery thread now (rows pending from an earlier run are delivered).
    on_triggers
        Called at each flush with the triggers about to be recorded in the outbox
        (those already there too: a replay) and their reasons, or decided in a dry run;
        the audit trail records them durably before the outbox does
        (:class:`driftline.sinks.audit.AuditRecorder`). What it raises fails the flush
        (the triggers stay pending).
    on_delivery
        The delivery thread's ``on_outcome`` (:class:`driftline.sinks.delivery.Deliverer`).

    Raises
    ------
    ConfigError
        See :func:`resolve_targets`.
    sinks.SinkError
        When the outbox file cannot be opened.
    """

    name = "webhook"

    def __init__(
        self,
        settings: WebhookSettings,
        *,
        outbox: Outbox | str | Path,
        telemetry: WebhookTelemetry | None = None,
        policy: TriggerPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        start: bool = True,
        on_triggers: Callable[[Sequence[Trigger], Sequence[str | None]], None] | None = None,
        on_delivery: Callable[[DeliveryOutcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_triggers = on_triggers
        self.telemetry: WebhookTelemetry = telemetry or NullWebhookTelemetry()
        self.policy = policy if policy is not None else TriggerPolicy(settings.policy)
        self.targets = resolve_targets(settings.targets, os.environ if environ is None else environ)
        self._clock = clock
        self._pending: list[Trigger] = []
        self._closed = False
        for name, resolved in self.targets.items():
            self.telemetry.declare_webhook_target(name, resolved.target.actions)
        if isinstance(outbox, Outbox):
            self.outbox = outbox
        else:
            try:
                self.outbox = Outbox(outbox, clock=clock)
            except sqlite3.Error as exc:
                raise SinkError(
                    f"cannot open the webhook outbox {str(outbox)!r} ({exc}): check that "
                    "state_dir exists and is writable"
                ) from None
        self.deliverer = Deliverer(
            self.outbox,
            self.targets,
            self.telemetry,
            retry_base_seconds=settings.retry_base_seconds,
            retry_max_seconds=settings.retry_max_seconds,
            clock=clock,
            rng=rng,
            transport=transport,
            on_outcome=on_delivery,
        )
        if start and not settings.policy.dry_run:
            self.deliverer.start()

    @property
    def pending_triggers(self) -> tuple[Trigger, ...]:
        """Triggers written but not yet recorded in the outbox."""
        return tuple(self._pending)

    def write(self, alarms: Sequence[Alarm]) -> None:
        """Run the trigger policy over ``alarms`` and keep the triggers for :meth:`flush`."""
        self._pending.extend(self.policy.observe(alarms))

    def _entries(self, trigger: Trigger, payload: dict[str, Any]) -> list[OutboxEntry]:
        return [
            OutboxEntry(name, trigger.idempotency_key, trigger.model, trigger.action, payload)
            for name, resolved in self.targets.items()
            if trigger.action in resolved.target.actions
        ]

    def flush(self) -> None:
        """Record the pending triggers in the outbox (one transaction) and wake delivery.

        Raises
        ------
        sinks.SinkError
            When the outbox transaction fails (the triggers stay pending for the next
            flush), or when the delivery thread has died (a bug: see the log).
        """
        if self.deliverer.died:
            raise SinkError(
                "the webhook delivery thread is not running (see the error logged before); "
                "restart driftline: pending triggers are kept in the outbox"
            )
        if not self._pending:
            return
        created_at = self._clock()
        payloads = [trigger_payload(t, created_at) for t in self._pending]
        if self.on_triggers is not None:
            # the audit trail first, durably (write-ahead): a crash between the two leaves
            # a trigger the audit names and the outbox lacks (a replay adds the row, or the
            # audit shows it was decided and never sent), never a delivered trigger the audit
            # does not know (a replay after a crash need not decide it again: labels can
            # come in another order)
            self.on_triggers(self._pending, [p["reason"] for p in payloads])
        if self.settings.policy.dry_run:
            self._dry_run(self._pending, payloads)
            self._pending = []
            return
        per_trigger = [(t, p, self._entries(t, p)) for t, p in zip(self._pending, payloads)]
        entries = [e for _, _, es in per_trigger for e in es]
        try:
            added = {(e.target, e.idempotency_key) for e in self.outbox.add(entries)}
        except sqlite3.Error as exc:
            raise SinkError(
                f"cannot record {len(self._pending)} webhook trigger(s) in the outbox "
                f"{str(self.outbox.path)!r} ({exc}); they are kept and retried at the next "
                "flush: check the disk space and permissions of state_dir"
            ) from None
        for trigger, payload, trigger_entries in per_trigger:
            if not trigger_entries:
                log.warning(
                    "%s trigger for %s (key %s): no webhook target receives %r; add it "
                    "to a target's actions to send it",
                    trigger.action,
                    trigger.model,
                    trigger.idempotency_key[:12],
                    trigger.action,
                )
                continue
            if not any((e.target, e.idempotency_key) in added for e in trigger_entries):
                log.info(
                    "%s trigger for %s (key %s) is already in the outbox (a replay): not recorded again",
                    trigger.action,
                    trigger.model,
                    trigger.idempotency_key[:12],
                )
                continue
            self.telemetry.record_trigger(trigger.model, trigger.action)
            log.info(
                "recorded %s trigger for %s %s (key %s) for %d target(s): %s",
                trigger.action,
                trigger.model,
                trigger.version,
                trigger.idempotency_key[:12],
                len(trigger_entries),
                payload["reason"],
            )
        self._pending = []
        self.deliverer.report_pending()
        self.deliverer.notify()

    # -- pending deliveries that follow their model's partition (monitor.changelog) ----------
    def pending_for(self, models: Sequence[str]) -> list[dict[str, Any]]:
        """The outbox rows of ``models`` not yet delivered, for their changelog record
        (call it after :meth:`flush`)."""
        return self.outbox.pending_for(models)

    def adopt(self, rows: Sequence[dict[str, Any]]) -> None:
        """Deliver another instance's pending rows (same idempotency keys: the receiver
        dedupes a row both instances sent). Raises :class:`SinkError` when the outbox
        cannot take them."""
        try:
            added = self.outbox.adopt(rows)
        except sqlite3.Error as exc:
            raise SinkError(
                f"cannot take over {len(rows)} pending webhook delivery(ies) into the outbox "
                f"{str(self.outbox.path)!r} ({exc}): check the disk space and permissions "
                "of state_dir"
            ) from None
        if added:
            log.info("took over %d pending webhook delivery(ies) of a moved partition", added)
            self.deliverer.report_pending()
            self.deliverer.notify()

    def drop(self, models: Sequence[str]) -> None:
        """Forget ``models``' pending deliveries (their new owner delivers them)."""
        self.outbox.drop(models)
        self.deliverer.report_pending()

    def _dry_run(self, triggers: Sequence[Trigger], payloads: Sequence[dict[str, Any]]) -> None:
        for trigger, payload in zip(triggers, payloads, strict=True):
            for name, resolved in self.targets.items():
                if trigger.action not in resolved.target.actions:
                    continue
                rendered = render(resolved.target, payload, resolved.token)
                log.info(
                    "dry run: would send %s for %s %s (key %s) to target %r (preset %s, %d-byte body): %s",
                    trigger.action,
                    trigger.model,
                    trigger.version,
                    trigger.idempotency_key[:12],
                    name,
                    resolved.target.preset,
                    len(rendered.body),
                    payload["reason"],
                )
                self.telemetry.record_webhook(name, trigger.action, "dry_run")

    def close(self) -> None:
        """Record what is pending (if possible), stop delivery and close the outbox.

        Rows not yet delivered stay in the outbox and are delivered by the next sink
        built over the same file. Closing twice does nothing more.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
        except SinkError as exc:
            # Nothing is lost: the offsets of these triggers were not committed, so the
            # alarms are replayed at the next start and raise the same triggers.
            log.warning("webhook sink closing without recording %d trigger(s): %s", len(self._pending), exc)
        finally:
            self.deliverer.stop()
            self.outbox.close()
