"""Building the sinks and the metrics server from the settings.

Examples
--------
>>> from prometheus_client import CollectorRegistry
>>> from driftline.monitor.config import load_settings
>>> from driftline.sinks.prometheus import PrometheusTelemetry
>>> settings = load_settings()                                            # doctest: +SKIP
>>> registry = CollectorRegistry()
>>> telemetry = PrometheusTelemetry(registry)
>>> sinks = build_sinks(settings, telemetry)                              # doctest: +SKIP
>>> server = start_metrics_server(settings.prometheus, registry, engine.snapshot,
...     telemetry.readiness, on_overflow=telemetry.record_feature_overflow)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from driftline.monitor.config import PrometheusSettings, Settings
from driftline.monitor.snapshot import VersionSnapshot
from driftline.monitor.telemetry import Telemetry
from driftline.sinks.base import Sink
from driftline.sinks.delivery import WebhookTelemetry
from driftline.sinks.exceptions import SinkError
from driftline.sinks.http import MetricsServer
from driftline.sinks.jsonl import JsonlSink
from driftline.sinks.kafka import KafkaAlarmSink
from driftline.sinks.policy import TriggerPolicy
from driftline.sinks.prometheus import EngineCollector
from driftline.sinks.webhook import WebhookSink

__all__ = ["build_sinks", "start_metrics_server", "OUTBOX_FILE"]

OUTBOX_FILE = "outbox.sqlite3"
"""The webhook outbox's file name inside ``state_dir``."""


def build_sinks(
    settings: Settings,
    telemetry: Telemetry | WebhookTelemetry | None = None,
    *,
    state_dir: Path | None = None,
    policy: TriggerPolicy | None = None,
    environ: Mapping[str, str] | None = None,
    on_triggers: Callable[..., None] | None = None,
    on_delivery: Callable[..., None] | None = None,
) -> list[Sink]:
    """The configured alarm sinks, in the order the service should flush them.

    - :class:`driftline.sinks.jsonl.JsonlSink` when ``alarms_jsonl`` is set;
    - :class:`driftline.sinks.kafka.KafkaAlarmSink` when ``kafka.alarms_topic`` is set;
    - :class:`driftline.sinks.webhook.WebhookSink` when ``webhooks.targets`` is not empty (its outbox
      is ``<state_dir>/outbox.sqlite3``).

    Parameters
    ----------
    settings
        The whole configuration.
    telemetry
        Normally the service's :class:`driftline.sinks.prometheus.PrometheusTelemetry`. Telemetry
        without the webhook methods (``driftline.monitor.telemetry.NullTelemetry``, metrics
        disabled) or None: webhook deliveries are not counted.
    state_dir
        Overrides ``settings.state_dir`` (created if missing).
    policy
        A trigger policy rebuilt from a checkpoint; default: a fresh one.
    environ
        Where webhook secrets and tokens are read; default: ``os.environ``.
    on_triggers, on_delivery
        The webhook sink's audit hooks (see :class:`driftline.sinks.webhook.WebhookSink`).

    Raises
    ------
    driftline.monitor.exceptions.ConfigError
        A webhook target's secret or token variable is missing (named in the message).
    sinks.SinkError
        The state directory or the outbox cannot be created.
    """
    sinks: list[Sink] = []
    if settings.alarms_jsonl is not None:
        sinks.append(JsonlSink(settings.alarms_jsonl))
    if settings.kafka.alarms_topic:
        sinks.append(KafkaAlarmSink(settings.kafka))
    if settings.webhooks.targets:
        webhook_telemetry = telemetry if isinstance(telemetry, WebhookTelemetry) else None
        directory = Path(state_dir if state_dir is not None else settings.state_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(
                f"cannot create state_dir {str(directory)!r} for the webhook outbox ({exc}): "
                "set state_dir to a writable directory"
            ) from None
        sinks.append(
            WebhookSink(
                settings.webhooks,
                outbox=directory / OUTBOX_FILE,
                telemetry=webhook_telemetry,
                policy=policy,
                environ=environ,
                on_triggers=on_triggers,
                on_delivery=on_delivery,
            )
        )
    return sinks


def start_metrics_server(
    settings: PrometheusSettings,
    registry: CollectorRegistry,
    snapshot_provider: Callable[[], Iterable[VersionSnapshot]],
    readiness: Callable[[], Mapping[str, bool]],
    *,
    on_overflow: Callable[[str, int], None] | None = None,
    max_features_per_model: int = 200,
) -> MetricsServer | None:
    """Register an :class:`EngineCollector` on ``registry`` and serve it.

    Parameters
    ----------
    settings
        ``prometheus`` of the configuration; when ``enabled`` is false nothing is
        registered or served and None is returned.
    registry
        The registry the service's :class:`PrometheusTelemetry` uses.
    snapshot_provider
        ``Engine.snapshot``: called at every scrape.
    readiness
        ``PrometheusTelemetry.readiness``: backs /readyz.
    on_overflow
        ``PrometheusTelemetry.record_feature_overflow``.
    max_features_per_model
        The collector's cap on ``feature`` label values per model.

    Returns
    -------
    MetricsServer or None
        Started; stop it with ``stop()``.
    """
    if not settings.enabled:
        return None
    registry.register(EngineCollector(snapshot_provider, max_features_per_model, on_overflow))
    return MetricsServer(settings, registry, readiness).start()
