"""Configuration: pydantic-settings models, sources and precedence.

Precedence, highest first (documented in the README):

1. command-line flags of ``driftline`` (passed as keyword arguments),
2. environment variables ``DRIFTLINE_<FIELD>``, nested with ``__``
   (``DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS=broker:9092``),
3. the YAML file given by ``--config`` (or ``DRIFTLINE_CONFIG``),
4. the defaults below.

Every model here forbids unknown keys, so a typo fails at start with the field named.
Per-model settings live under ``defaults`` and are overridden per model under
``models.<name>`` (a deep merge): :meth:`Settings.for_model` gives the merged result.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from driftline.monitor.exceptions import ConfigError

__all__ = [
    "Settings",
    "ModelSettings",
    "KafkaSettings",
    "PrometheusSettings",
    "WebhookSettings",
    "WebhookTarget",
    "TriggerPolicySettings",
    "load_settings",
    "reference_table",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


# ---- per-model settings --------------------------------------------------------------


class ReferenceSettings(_Strict):
    """Where a model's reference distribution comes from."""

    source: Literal["stream", "file"] = "stream"
    """``stream``: the first ``size`` prediction events of the model (no config needed);
    ``file``: a JSONL or CSV file of past prediction events at ``path``."""
    path: Path | None = None
    """Reference file for source file."""
    size: int = Field(5000, ge=100, le=1_000_000)
    """Events in the reference (for ``file``: at most this many are read)."""

    @model_validator(mode="after")
    def _path_for_file(self) -> "ReferenceSettings":
        if self.source == "file" and self.path is None:
            raise ValueError("reference.path is required when reference.source is 'file'")
        return self


class WindowSettings(_Strict):
    size: int = Field(1000, ge=50, le=1_000_000)
    """Events per window for drift and data-quality checks."""
    step: int | None = Field(None, ge=1)
    """Sliding step in events; None means tumbling (step = size)."""


DriftStatistic = Literal["ks", "psi", "js", "wasserstein", "chi2"]


class DriftSettings(_Strict):
    statistics: list[DriftStatistic] = ["ks", "psi", "js", "wasserstein", "chi2"]
    """Statistics computed per window and exposed as metrics (ks/psi/js/wasserstein for
    numeric features, chi2/psi for categorical ones)."""
    alarm_on: Literal["p_value", "psi"] = "p_value"
    """``p_value``: alarm when the corrected KS (numeric) or chi-squared (categorical)
    p-value is below ``alpha``; ``psi``: alarm when PSI exceeds ``psi_threshold``."""
    alpha: float = Field(1e-5, gt=0, lt=1)
    """Significance level of a drift alarm, after the correction across features."""
    correction: Literal["bonferroni", "bh", "none"] = "bh"
    """Multiple-testing correction across a model's features (Benjamini-Hochberg by default)."""
    psi_threshold: float = Field(0.2, gt=0)
    """PSI above which ``alarm_on: psi`` alarms (0.1-0.2: moderate, >0.2: large shift)."""
    psi_bins: int = Field(10, ge=2, le=100)
    """Bins for PSI and Jensen-Shannon, from reference quantiles."""
    min_effect: float = Field(0.05, ge=0)
    """Minimum KS statistic (numeric) or total-variation distance (categorical) for an
    alarm, so that a huge window cannot alarm on a negligible shift."""
    prediction: bool = True
    """Also test the prediction (and label) distribution against the reference."""


class QualitySettings(_Strict):
    max_missing_rate_increase: float = Field(0.1, ge=0, le=1)
    """Alarm when a window's missing rate exceeds the reference's by more than this."""
    max_out_of_range_rate: float = Field(0.05, ge=0, le=1)
    """Alarm when this share of a window is outside the reference [min, max]."""
    max_unseen_rate: float = Field(0.05, ge=0, le=1)
    """Alarm when this share of a categorical feature's window is unseen categories."""


ConceptDetector = Literal["ddm", "eddm", "fhddm", "hddm_a", "hddm_w", "adwin", "page_hinkley", "kswin"]


class PerformanceSettings(_Strict):
    window: int = Field(1000, ge=20, le=1_000_000)
    """Labelled events per performance window."""
    baseline_windows: int = Field(1, ge=1, le=100)
    """Windows at the start of each version's labelled stream that set its baseline."""
    max_drop: float = Field(0.1, ge=0)
    """Alarm when accuracy (classification) falls, or MAE (regression) rises relatively,
    by more than this against the baseline."""
    concept_detectors: list[ConceptDetector] = ["adwin"]
    """Change detectors on the error stream (0/1 errors, or absolute error)."""
    detector_params: dict[str, dict[str, float | int | str]] = {}
    """Parameters per concept detector, by river's names, e.g. ``{"adwin": {"delta": 0.001}}``."""
    positive_label: str | int | bool | None = None
    """The positive class for precision/recall/F1 (default: 1 / true)."""


class RegressionSettings(_Strict):
    enabled: bool = True
    """Compare newer versions against the stable one (error rate and latency)."""
    stable_version: str | None = None
    """The stable version; default: the version with the most prediction events."""
    alpha: float = Field(0.01, gt=0, lt=1)
    """False-alarm probability of the sequential test over the whole comparison."""
    min_samples: int = Field(200, ge=10)
    """Labelled events each version needs before the test may fire."""
    tau: float = Field(0.05, gt=0)
    """Mixing scale of the mSPRT (the size of difference it is tuned to find)."""
    latency_tolerance: float = Field(0.2, ge=0)
    """Relative latency increase of the canary that counts as a regression."""


class JoinSettings(_Strict):
    ttl_seconds: float = Field(7 * 24 * 3600.0, gt=0)
    """How long (event time) a prediction waits for its feedback."""
    max_pending: int = Field(200_000, ge=100)
    """Predictions held per model waiting for feedback; the oldest are evicted beyond."""


class ModelSettings(_Strict):
    numeric_features: list[str] | None = None
    """Numeric features; None: inferred from the reference."""
    categorical_features: list[str] | None = None
    """Categorical features; None: inferred from the reference (strings are categorical)."""
    ignore_features: list[str] = []
    """Features never monitored (ids, free text)."""
    reference: ReferenceSettings = ReferenceSettings()
    window: WindowSettings = WindowSettings()
    drift: DriftSettings = DriftSettings()
    quality: QualitySettings = QualitySettings()
    performance: PerformanceSettings = PerformanceSettings()
    regression: RegressionSettings = RegressionSettings()
    join: JoinSettings = JoinSettings()
    max_features: int = Field(200, ge=1, le=10_000)
    """Features tracked per model; more are counted and ignored (bounds memory and
    metric cardinality)."""


# ---- service settings ---------------------------------------------------------------


class KafkaSettings(_Strict):
    bootstrap_servers: str = "localhost:9092"
    """Kafka bootstrap servers, comma-separated."""
    group_id: str = "driftline"
    """Consumer group; instances of one group share the partitions (scale out)."""
    client_id: str = "driftline"
    """Kafka client id."""
    predictions_topic: str = "predictions"
    """Topic of prediction events (keyed by model)."""
    feedback_topic: str = "feedback"
    """Topic of feedback (label) events, co-partitioned with predictions."""
    dead_letter_topic: str = "driftline-dead-letters"
    """Records that break the event contract go here, with the reason in headers."""
    dead_letter_max_bytes: int = Field(1_000_000, ge=8192)
    """Bytes one dead-letter record may take (key, value and headers): a longer value is cut to fit and marked truncated (its original size and SHA-256 in headers). The default is under Kafka's default message.max.bytes (1 MiB)."""
    alarms_topic: str | None = None
    """Publish alarms to this topic too (None: off)."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a new consumer group starts."""
    session_timeout_ms: int = Field(10_000, ge=1000)
    """Consumer-group session timeout (a join takes about half of it)."""
    max_poll_records: int = Field(5000, ge=1)
    """Records per batch (one batch goes through the whole pipeline at a time)."""
    poll_timeout_ms: int = Field(500, ge=1)
    """How long one poll waits for records."""
    consumer_process: bool = True
    """Run the Kafka consumer in a child process that fetches and decodes the next
    batches while the service runs the detectors on the current one (uses a second core)."""
    fast_record_parser: bool = True
    """Parse fetched record batches with driftline's parser (about 4x faster than
    kafka-python's, which builds objects driftline does not use); false uses
    kafka-python's own."""
    bootstrap_timeout_ms: int = Field(30_000, ge=100)
    """How long to wait for the brokers at start before failing (exit code 3)."""
    request_timeout_ms: int = Field(30_000, ge=1000)
    """How long one request to the brokers (fetch, commit, end offsets) may take; an unanswered commit is retried later, never taken as done. Must exceed the fetch wait (500 ms)."""
    stall_timeout_seconds: float = Field(60.0, gt=0)
    """/readyz reports `consuming` false when no record arrived for this long while the assigned partitions have lag (a stuck consumer, not a quiet topic)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    sasl_mechanism: str | None = None
    """SASL mechanism (PLAIN, SCRAM-SHA-256, ...)."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (set it through the environment; never logged)."""


class PrometheusSettings(_Strict):
    enabled: bool = True
    """Serve /metrics, /healthz and /readyz."""
    host: str = "0.0.0.0"
    """Address the metrics server binds."""
    port: int = Field(9308, ge=0, le=65535)
    """0 picks a free port (tests)."""


class WebhookTarget(_Strict):
    name: str
    """Target name (a metric label; keep it short)."""
    url: str
    """Where the trigger is POSTed (http:// or https://)."""
    preset: Literal["generic", "github", "gitlab", "slack"] = "generic"
    """Payload format: generic JSON, GitHub repository_dispatch, GitLab pipeline trigger, Slack message."""
    actions: list[Literal["retrain", "rollback"]] = ["retrain", "rollback"]
    """Which triggers this target receives."""
    secret_env: str | None = None
    """Name of the environment variable holding the HMAC secret (never the secret)."""
    token_env: str | None = None
    """Name of the environment variable holding a bearer / trigger token (GitHub, GitLab)."""
    github_event_type: str = "driftline-{action}"
    """repository_dispatch event type for the github preset."""
    gitlab_ref: str = "main"
    """Branch or tag the gitlab preset runs the pipeline on."""
    timeout_seconds: float = Field(10.0, gt=0)
    """Timeout of one delivery attempt."""
    max_retry_seconds: float = Field(3 * 24 * 3600.0, gt=0)
    """How long a trigger is retried after it is recorded (or re-sent) before it is marked failed: 3 days, as Stripe does, so a receiver down over a weekend still gets it."""
    max_attempts: int | None = Field(None, ge=1)
    """Also mark a trigger failed after this many attempts (default: no limit, only max_retry_seconds)."""

    @model_validator(mode="after")
    def _scheme(self) -> "WebhookTarget":
        if not self.url.startswith(("http://", "https://")):
            # The value is not repeated: a webhook URL can itself be a credential (Slack).
            raise ValueError(f"url of target {self.name!r} must start with http:// or "
                             "https:// (the value is not shown: a webhook URL can be a secret)")
        return self


class TriggerPolicySettings(_Strict):
    kinds: list[
        Literal["data_quality", "feature_drift", "prediction_drift", "performance",
                "concept_drift", "regression"]
    ] = ["feature_drift", "prediction_drift", "performance", "concept_drift", "regression"]
    """Alarm kinds that count as evidence for a trigger."""
    min_alarms: int = Field(1, ge=1)
    """Alarms (of the counted kinds) needed within ``window_seconds`` to trigger."""
    min_features: int = Field(1, ge=1)
    """Distinct features among those alarms needed to trigger a retrain."""
    window_seconds: float = Field(3600.0, gt=0)
    """Evidence window in event time."""
    cooldown_seconds: float = Field(6 * 3600.0, ge=0)
    """After a trigger, no other of the same (model, action) for this long."""
    dry_run: bool = False
    """Log what would be sent, send nothing."""


class WebhookSettings(_Strict):
    targets: list[WebhookTarget] = []
    """Webhook targets (see the table of target fields)."""
    policy: TriggerPolicySettings = TriggerPolicySettings()
    retry_base_seconds: float = Field(1.0, gt=0)
    """First retry delay (exponential backoff with full jitter)."""
    retry_max_seconds: float = Field(600.0, gt=0)
    """Cap of the backoff: once reached, retries come at a uniform draw below it (5 min apart on average)."""


class Settings(BaseSettings):
    """All of driftline's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLINE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    webhooks: WebhookSettings = WebhookSettings()
    defaults: ModelSettings = ModelSettings()
    models: dict[str, dict[str, Any]] = {}
    """Per-model overrides of ``defaults`` (same keys, deep-merged)."""
    max_models: int = Field(100, ge=1, le=100_000)
    """Models tracked at most (each has its state and its metric series); events of further models are dead-lettered with reason ``model_limit``. Models named under ``models`` are always tracked."""
    state_dir: Path = Path("./driftline-state")
    """Checkpoints and the webhook outbox live here."""
    checkpoint_interval_seconds: float = Field(10.0, ge=0)
    """How often detector state is checkpointed and offsets committed (0: every batch)."""
    alarms_jsonl: Path | None = None
    """Append alarms to this JSONL file too."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""
    log_format: Literal["text", "json"] = "text"
    """Log format (json: one object per line)."""

    @model_validator(mode="after")
    def _models_valid(self) -> "Settings":
        for name in self.models:
            self.for_model(name)  # raises a ValidationError naming the field
        return self

    def for_model(self, name: str) -> ModelSettings:
        override = self.models.get(name)
        if not override:
            return self.defaults
        merged = _deep_merge(self.defaults.model_dump(), override)
        try:
            return ModelSettings.model_validate(merged)
        except ValidationError as exc:
            raise ValueError(f"models.{name}: {exc}") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _CONFIG_FILE.get("path")
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


# The YAML path for the settings being built (load_settings sets and clears it: the
# file is a per-call input, not module state that outlives the call).
_CONFIG_FILE: dict[str, Path | None] = {}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``), environment and YAML file.

    Raises
    ------
    ConfigError
        Naming each invalid field, the value given and what was expected.
    """
    if config_file is None and os.environ.get("DRIFTLINE_CONFIG"):
        config_file = os.environ["DRIFTLINE_CONFIG"]
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
        try:
            import yaml

            loaded = yaml.safe_load(path.read_text())
        except Exception as exc:  # noqa: BLE001 - any parse failure is a config error
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {str(path)!r} must hold a mapping at the top level, "
                f"got {type(loaded).__name__}"
            )
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=path)) from None
    finally:
        _CONFIG_FILE.pop("path", None)


def format_validation_error(exc: ValidationError, source: Path | None = None) -> str:
    lines = [f"invalid configuration{f' in {source}' if source else ''}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        given = err.get("input")
        # Credentials are never echoed (a Slack webhook URL is one).
        hidden = any(word in loc for word in ("password", "secret", "token", "url"))
        if isinstance(given, (dict, list)) or hidden:
            given_s = ""
        else:
            given_s = f" (got {given!r})"
        lines.append(f"  {loc}: {err['msg']}{given_s}")
    return "\n".join(lines)


def reference_table() -> str:
    """The configuration reference as a Markdown table (every setting, its environment
    variable and its default), generated from the models so that the README cannot
    drift from the code: ``python -c "from driftline.monitor.config import reference_table;
    print(reference_table())"``."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            path = f"{prefix}{name}"
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{path}.")
                continue
            item = typing.get_args(ann)[0] if typing.get_origin(ann) is list else None
            if isinstance(item, type) and issubclass(item, BaseModel):
                rows.append(f"| `{path}` | `DRIFTLINE_{path.upper().replace('.', '__')}` (JSON) | `[]` | "
                            f"{info.description or ''} |")
                walk(item, f"{path}[].")
                continue
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump()
            shown = "" if default is None else f"`{default}`"
            env = "DRIFTLINE_" + path.upper().replace(".", "__")
            doc = (info.description or "").replace("\n", " ").replace("|", "\\|")
            rows.append(f"| `{path}` | `{env}` | {shown} | {doc} |")

    walk(Settings, "")
    return "\n".join(rows)
