"""Delivery of outbox rows to webhook targets, on a background thread.

Each due row is sent once per attempt, with::

    Idempotency-Key: <trigger key>          the same on every attempt and after restarts
    X-Driftline-Event: retrain | rollback
    X-Driftline-Delivery: <uuid4>           new on every attempt
    X-Driftline-Signature: t=...,v1=...     when the target has a secret (driftline.sinks.signing)

Outcomes (counted as ``driftline_webhook_deliveries_total{outcome}``):

- ``delivered``: a 2xx answer; the row is never sent again.
- ``retried``: a connection error, a timeout, a 5xx or a 429; the row is tried again
  after an exponential backoff with full jitter (``retry_base_seconds * 2**(attempt-1)``
  capped at ``retry_max_seconds``, a uniform draw below that), or after the
  ``Retry-After`` the target asked for (seconds or an HTTP date). No retry is put off
  past the row's horizon (``queued_at + target.max_retry_seconds``): the last attempt
  comes at the horizon.
- ``failed``: the same, but the horizon has passed (by default 3 days after the
  trigger was recorded), or ``target.max_attempts`` attempts were made when it is set.
  The row stays in the outbox as ``failed`` (counted by the
  ``driftline_webhook_outbox_failed`` gauge, logged at ERROR) until ``driftline webhooks
  resend`` makes it pending again.
- ``rejected``: any other answer (4xx other than 429, 3xx): the target refuses the
  request as configured; it is logged as a configuration error and not retried.

Every outcome (and the row's attempt count and stored error) is also handed to the
``on_outcome`` callback when one is given (the audit trail records it), from the
delivery thread, after the outbox row was updated.

Rows are delivered at least once; a receiver that drops repeats of an
``Idempotency-Key`` sees each trigger exactly once.

Logs and stored errors name the target, the action and the key; never the URL (a
Slack webhook URL is itself a credential), a header, the body, a token or a secret.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import httpx

from driftline.monitor.config import WebhookTarget
from driftline.sinks.exceptions import DeliveryError
from driftline.sinks.outbox import Outbox, OutboxRow
from driftline.sinks.presets import render
from driftline.sinks.signing import SIGNATURE_HEADER, sign

__all__ = [
    "WebhookTelemetry",
    "NullWebhookTelemetry",
    "ResolvedTarget",
    "Deliverer",
    "DeliveryOutcome",
    "backoff_delay",
    "parse_retry_after",
    "OUTCOMES",
]

log = logging.getLogger(__name__)

OUTCOMES: tuple[str, ...] = ("delivered", "retried", "failed", "rejected", "dry_run")

_USER_AGENT = "driftline-webhook/1"
_RETENTION_SECONDS = 30 * 24 * 3600.0
"""Delivered and failed rows are kept this long (de-duplication of replays, inspection)."""
_PRUNE_EVERY_SECONDS = 3600.0
_RESPONSE_SNIPPET = 200


@runtime_checkable
class WebhookTelemetry(Protocol):
    """What the webhook sink and its delivery thread report (PrometheusTelemetry has it)."""

    def record_webhook(self, target: str, action: str, outcome: str) -> None:
        """One delivery attempt (or dry-run) of ``action`` to ``target`` ended in ``outcome``."""

    def declare_webhook_target(self, target: str, actions: Sequence[str]) -> None:
        """``target`` receives ``actions``: its delivery counters exist from now on, at 0."""

    def set_outbox_pending(self, count: int) -> None:
        """Rows waiting in the outbox."""

    def set_outbox_failed(self, count: int) -> None:
        """Rows in the outbox that failed for good (until re-sent)."""

    def record_trigger(self, model: str, action: str) -> None:
        """A trigger was recorded in the outbox."""

    def mark_success(self, what: str) -> None:
        """``what`` (here: ``webhook``) just succeeded."""


class NullWebhookTelemetry:
    """Webhook telemetry that records nothing."""

    def record_webhook(self, target: str, action: str, outcome: str) -> None:
        pass

    def declare_webhook_target(self, target: str, actions: Sequence[str]) -> None:
        pass

    def set_outbox_pending(self, count: int) -> None:
        pass

    def set_outbox_failed(self, count: int) -> None:
        pass

    def record_trigger(self, model: str, action: str) -> None:
        pass

    def mark_success(self, what: str) -> None:
        pass


@dataclass(frozen=True)
class ResolvedTarget:
    """A target with its secret and token read from the environment (never printed)."""

    target: WebhookTarget
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def redact(self, text: str) -> str:
        """``text`` with the secret, the token and the URL replaced by ``[redacted]``."""
        for value in (self.secret, self.token, self.target.url):
            if value:
                text = text.replace(value, "[redacted]")
        return text


class DeliveryOutcome(NamedTuple):
    """One delivery attempt's outcome, as the ``on_outcome`` callback of
    :class:`Deliverer` receives it (no URL, header, body or secret: ``error`` is the
    outbox's stored, redacted error)."""

    target: str
    idempotency_key: str
    model: str
    version: str | None
    action: str
    outcome: str
    """One of :data:`OUTCOMES`."""
    attempts: int
    at: float
    """Wall clock of the outcome."""
    error: str | None = None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter.

    A uniform draw in ``[0, min(cap, base * 2**(attempt - 1))]`` ("exponential backoff
    and jitter", AWS Architecture Blog, 2015): spreads the retries of many senders.

    Examples
    --------
    >>> rng = random.Random(0)
    >>> 0 <= backoff_delay(3, base=1.0, cap=300.0, rng=rng) <= 4.0
    True
    """
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return rng.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    Returns None when the header is absent or unreadable; a date in the past gives 0.

    Examples
    --------
    >>> parse_retry_after("7", now=0.0)
    7.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is always GMT
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Unreachable(DeliveryError):
    """The target did not answer at all (refused, or no answer in time): not this row's fault."""


def _duration(seconds: float) -> str:
    """``seconds`` for a log line: 45s, 12m, 3.5h."""
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


class Deliverer:
    """Sends due outbox rows on a daemon thread until :meth:`stop`.

    Parameters
    ----------
    outbox
        The outbox to read and update.
    targets
        Resolved targets by name; a row whose target is no longer configured is failed.
    telemetry
        Where outcomes and the pending count go.
    retry_base_seconds, retry_max_seconds
        The backoff (``webhooks.retry_base_seconds`` / ``retry_max_seconds``).
    clock
        Wall-clock seconds (rows keep their due time across restarts).
    rng
        Jitter source (seed it for reproducible tests).
    idle_seconds
        Longest sleep when nothing is due (new rows wake the thread at once through
        :meth:`notify`; rows re-sent by another process are seen within this time).
    transport
        The httpx transport (default: httpx's own); tests wrap it to count attempts.
    on_outcome
        Called with a :class:`DeliveryOutcome` after each attempt's outcome is in the
        outbox, from the delivery thread (the audit trail); an exception it raises is
        logged, never stops delivery.
    """

    def __init__(
        self,
        outbox: Outbox,
        targets: Mapping[str, ResolvedTarget],
        telemetry: WebhookTelemetry,
        *,
        retry_base_seconds: float,
        retry_max_seconds: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        idle_seconds: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        on_outcome: Callable[[DeliveryOutcome], None] | None = None,
    ) -> None:
        self.outbox = outbox
        self.on_outcome = on_outcome
        self.targets = dict(targets)
        self.telemetry = telemetry
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._client = httpx.Client(follow_redirects=False, headers={"User-Agent": _USER_AGENT}, transport=transport)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = -math.inf

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the delivery thread (rows pending from an earlier run go first)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="driftline-webhooks", daemon=True)
        self._thread.start()

    @property
    def died(self) -> bool:
        """The thread was started and not stopped, yet is no longer running (a bug)."""
        return self._thread is not None and not self._thread.is_alive() and not self._stop.is_set()

    def notify(self) -> None:
        """Wake the thread: new rows are in the outbox."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread after the request in flight, and close the HTTP client.

        Rows not yet delivered stay pending in the outbox for the next start.
        """
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            longest = max((t.target.timeout_seconds for t in self.targets.values()), default=0.0)
            self._thread.join(timeout=longest + 5.0)
            if self._thread.is_alive():
                log.warning("the webhook delivery thread did not stop within %.0fs", longest + 5)
            self._thread = None
        self._client.close()

    def _run(self) -> None:
        self.report_pending()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.deliver_due():
                    continue
                self._prune()
                next_at = self.outbox.next_due_at()
            except sqlite3.Error as exc:
                log.error(
                    "the webhook outbox %s cannot be read or updated (%s); retrying in "
                    "%.0fs: check the disk and the file's permissions",
                    self.outbox.path,
                    exc,
                    self.idle_seconds,
                )
                next_at = None
            wait = self.idle_seconds
            if next_at is not None:
                wait = min(max(next_at - self._clock(), 0.0), self.idle_seconds)
            self._wake.wait(wait)

    def _prune(self) -> None:
        now = self._clock()
        if now - self._last_prune >= _PRUNE_EVERY_SECONDS:
            self._last_prune = now
            removed = self.outbox.prune(_RETENTION_SECONDS)
            if removed:
                log.info("removed %d webhook outbox rows older than %.0f days", removed, _RETENTION_SECONDS / 86400)
                self.report_pending()

    def report_pending(self) -> None:
        """Report the outbox's pending and failed counts to the telemetry."""
        self.telemetry.set_outbox_pending(self.outbox.pending_count())
        self.telemetry.set_outbox_failed(self.outbox.failed_count())

    # ---- one pass -----------------------------------------------------------------

    def deliver_due(self, limit: int = 50) -> int:
        """Attempt every row due now (at most ``limit``); returns how many were attempted.

        When a target cannot be reached (connection refused, no answer in time), its
        other rows due in this pass are not attempted: they wait until the retry of the
        row that found it down (their attempt counts unchanged). A receiver down for
        hours then costs one attempt per backoff period, not one per row, and a target
        that hangs cannot hold the thread for ``timeout_seconds`` times its backlog while
        other targets wait.
        """
        rows = self.outbox.due(self._clock(), limit=limit)
        attempted = 0
        unreachable: dict[str, float] = {}  # target -> when the row that found it down retries
        for row in rows:
            if self._stop.is_set():
                break
            if row.target in unreachable:
                self.outbox.defer(row.target, row.idempotency_key, unreachable[row.target])
                continue
            retry_at = self._attempt(row)
            attempted += 1
            if retry_at is not None:
                unreachable[row.target] = retry_at
        if attempted:
            self.report_pending()
        return attempted

    def _report(self, row: OutboxRow, outcome: str, attempts: int, error: str | None) -> None:
        """Hand the outcome to ``on_outcome`` (the outbox row is already updated)."""
        if self.on_outcome is None:
            return
        version = row.payload.get("version") if isinstance(row.payload, dict) else None
        try:
            self.on_outcome(
                DeliveryOutcome(
                    row.target,
                    row.idempotency_key,
                    row.model,
                    version if isinstance(version, str) else None,
                    row.action,
                    outcome,
                    attempts,
                    self._clock(),
                    error,
                )
            )
        except Exception:  # noqa: BLE001 - a recorder's bug must not stop deliveries
            log.exception(
                "recording the %s outcome of webhook %s (key %s) failed", outcome, row.action, row.idempotency_key[:12]
            )

    def _give_up(self, row: OutboxRow, target: WebhookTarget, attempts: int, error: str, now: float) -> None:
        self.outbox.mark_failed(row.target, row.idempotency_key, attempts, error)
        self.telemetry.record_webhook(target.name, row.action, "failed")
        self._report(row, "failed", attempts, error)
        short_key = row.idempotency_key[:12]
        log.error(
            "webhook %s for %s (key %s) to target %r failed for good after %d attempts "
            "over %s: %s. Check the receiver, then re-send it with `driftline webhooks "
            "resend --key %s --target %s` (or --all-failed)",
            row.action,
            row.model,
            short_key,
            target.name,
            attempts,
            _duration(now - row.queued_at),
            error,
            short_key,
            target.name,
        )

    def _attempt(self, row: OutboxRow) -> float | None:
        """One attempt at ``row``; returns its retry time when the target was unreachable."""
        attempts = row.attempts + 1
        resolved = self.targets.get(row.target)
        short_key = row.idempotency_key[:12]
        if resolved is None:
            self.outbox.mark_failed(row.target, row.idempotency_key, row.attempts, "target is no longer configured")
            self.telemetry.record_webhook(row.target, row.action, "failed")
            self._report(row, "failed", row.attempts, "target is no longer configured")
            log.error(
                "webhook %s for %s (key %s) was recorded for target %r, which is no longer "
                "configured: marked failed; add the target back to deliver it",
                row.action,
                row.model,
                short_key,
                row.target,
            )
            return None
        target = resolved.target
        try:
            self._send(resolved, row)
        except DeliveryError as exc:
            error = resolved.redact(str(exc))
            if not exc.retryable:
                self.outbox.mark_failed(row.target, row.idempotency_key, attempts, error)
                self.telemetry.record_webhook(target.name, row.action, "rejected")
                self._report(row, "rejected", attempts, error)
                log.error(
                    "webhook target %r rejected %s for %s (key %s): %s. This is a "
                    "configuration error: check the target's url, preset and token; "
                    "the trigger is marked failed and not retried: once fixed, re-send "
                    "it with `driftline webhooks resend --key %s --target %s`",
                    target.name,
                    row.action,
                    row.model,
                    short_key,
                    error,
                    short_key,
                    target.name,
                )
                return None
            now = self._clock()
            horizon = row.queued_at + target.max_retry_seconds
            if now >= horizon or (target.max_attempts is not None and attempts >= target.max_attempts):
                self._give_up(row, target, attempts, error, now)
                return None
            delay = exc.retry_after
            if delay is None:
                delay = backoff_delay(attempts, self.retry_base_seconds, self.retry_max_seconds, self._rng)
            # The last attempt comes at the horizon rather than never.
            next_at = min(now + delay, horizon)
            self.outbox.mark_retry(row.target, row.idempotency_key, attempts, next_at, error)
            self.telemetry.record_webhook(target.name, row.action, "retried")
            self._report(row, "retried", attempts, error)
            # An outage of hours means hundreds of attempts per row: the first few and
            # then every power of two are warnings, the rest are kept at INFO.
            level = logging.WARNING if attempts <= 3 or attempts & (attempts - 1) == 0 else logging.INFO
            log.log(
                level,
                "webhook %s for %s (key %s) to target %r, attempt %d: %s; retrying in %.2fs (gives up in %s)",
                row.action,
                row.model,
                short_key,
                target.name,
                attempts,
                error,
                next_at - now,
                _duration(horizon - now),
            )
            return next_at if isinstance(exc, _Unreachable) else None
        self.outbox.mark_delivered(row.target, row.idempotency_key, attempts)
        self.telemetry.record_webhook(target.name, row.action, "delivered")
        self._report(row, "delivered", attempts, None)
        self.telemetry.mark_success("webhook")
        log.info(
            "webhook %s for %s (key %s) delivered to target %r (attempt %d)",
            row.action,
            row.model,
            short_key,
            target.name,
            attempts,
        )
        return None

    def _send(self, resolved: ResolvedTarget, row: OutboxRow) -> None:
        """One request; returns on 2xx, raises DeliveryError otherwise."""
        target = resolved.target
        rendered = render(target, row.payload, resolved.token)
        headers = {
            "Content-Type": rendered.content_type,
            "Idempotency-Key": row.idempotency_key,
            "X-Driftline-Event": row.action,
            "X-Driftline-Delivery": str(uuid.uuid4()),
            **rendered.headers,
        }
        if resolved.secret:
            headers[SIGNATURE_HEADER] = sign(resolved.secret, rendered.body, self._clock())
        try:
            response = self._client.post(
                target.url, content=rendered.body, headers=headers, timeout=target.timeout_seconds
            )
        except httpx.TimeoutException as exc:
            raise _Unreachable(
                f"no answer within {target.timeout_seconds}s ({type(exc).__name__})",
                retryable=True,
            ) from None
        except httpx.ConnectError as exc:
            raise _Unreachable(f"connection failed ({type(exc).__name__}: {exc})", retryable=True) from None
        except httpx.TransportError as exc:
            raise DeliveryError(f"connection failed ({type(exc).__name__}: {exc})", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        snippet = response.text[:_RESPONSE_SNIPPET].strip().replace("\n", " ")
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock())
            raise DeliveryError(message, retryable=True, retry_after=retry_after)
        if 300 <= status < 400:
            message += " (a redirect: set the target's url to where it points)"
        raise DeliveryError(message, retryable=False)
