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
import ssl
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from driftline.monitor.alarms import AlarmKind, ConceptDetector, DriftStatistic, TriggerAction
from driftline.monitor.exceptions import ConfigError

__all__ = [
    "Settings",
    "ModelSettings",
    "EstimationSettings",
    "SegmentSettings",
    "CanarySettings",
    "PromoteSettings",
    "KafkaSettings",
    "ChangelogSettings",
    "PrometheusSettings",
    "WebhookSettings",
    "WebhookTarget",
    "TriggerPolicySettings",
    "LifecycleSettings",
    "AuditSettings",
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
    def _path_for_file(self) -> ReferenceSettings:
        if self.source == "file" and self.path is None:
            raise ValueError("reference.path is required when reference.source is 'file'")
        return self


class WindowSettings(_Strict):
    size: int = Field(1000, ge=50, le=1_000_000)
    """Events per window for drift and data-quality checks."""
    step: int | None = Field(None, ge=1)
    """Sliding step in events; None means tumbling (step = size)."""


# DriftStatistic, ConceptDetector, AlarmKind and TriggerAction: the vocabularies of
# driftline.monitor.alarms, written once there.


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
    alpha: float = Field(1e-6, gt=0, lt=1)
    """A rate over its limit alarms only when chance under no change explains a count that high with at most this probability (per window, feature and check; see "Data quality and chance" in the README)."""


class EstimationSettings(_Strict):
    """Label-free performance estimation (:mod:`driftline.monitor.estimation`)."""

    enabled: bool = True
    """Estimate each version's performance from its scores (classifiers) or predictions (regression) before the labels arrive, and raise ``performance_estimated`` alarms."""
    min_reference_labels: int = Field(1000, ge=100, le=1_000_000)
    """Labelled events among a version's first ``reference.size`` predictions needed to calibrate it (estimation starts then)."""
    margin: float = Field(0.05, ge=0)
    """Alarm when the whole confidence band of the estimate is below the reference's value minus this (regression: MAE above the reference's times 1 + this)."""
    confidence: float = Field(0.95, gt=0, lt=1)
    """Coverage of the estimate's confidence band."""
    metrics: list[Literal["accuracy", "precision", "recall", "f1", "roc_auc"]] = ["accuracy"]
    """Estimated classification metrics that alarm (regression: MAE)."""


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
    estimation: EstimationSettings = EstimationSettings()


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


# ---- canary verdicts and lifecycle timers (issue 13) ---------------------------------


class PromoteSettings(_Strict):
    enabled: bool = False
    """Run the non-inferiority test of each canary and raise ``promote_ready`` (action ``promote``) once confident."""
    margin: float = Field(0.01, gt=0, lt=1)
    """How much higher the canary's error rate may be than the stable one's and still count as not worse."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Probability of a false promote (a canary worse by the margin or more) over the whole comparison."""
    tau: float = Field(0.02, gt=0)
    """Mixing scale of the non-inferiority mSPRT (the size of difference from the margin it is tuned to find)."""
    min_samples: int = Field(200, ge=10)
    """Labelled events each version needs before a promote may be said."""


class CanarySettings(_Strict):
    promote: PromoteSettings = PromoteSettings()
    stall_after_seconds: float = Field(3600.0, gt=0)
    """Event time after a canary's deployment by which it must have had ``stall_min_events`` predictions (else ``canary_stalled``)."""
    stall_min_events: int = Field(100, ge=1)
    """Prediction events a canary needs within ``stall_after_seconds`` of its deployment."""
    rollback_confirm_seconds: float = Field(900.0, gt=0)
    """Event time after a rollback alarm within which the version's predictions must stop (or a ``rolled_back`` event arrive), else ``rollback_unconfirmed``."""
    grace_seconds: float = Field(3600.0, ge=0)
    """Event time a replaced or rolled-back version's state is kept before it is freed."""


class JoinSettings(_Strict):
    ttl_seconds: float = Field(7 * 24 * 3600.0, gt=0)
    """How long (event time) a prediction waits for its feedback."""
    max_pending: int = Field(200_000, ge=100)
    """Predictions held per model waiting for feedback; the oldest are evicted beyond."""


class SegmentSettings(_Strict):
    features: list[str] = Field([], max_length=5)
    """Categorical features whose values are segments checked on their own (drift, data quality, performance); empty: off. At most 5."""
    top_k: int = Field(10, ge=1, le=50)
    """Segments per feature: its values with the most reference events; the rest (and unseen, missing) in ``__other__``."""
    min_reference_events: int = Field(200, ge=20)
    """A segment with fewer reference events is not tested for drift and data quality (its performance still is)."""
    label_memory: int = Field(100_000, ge=1000, le=10_000_000)
    """Recent prediction events whose segment is remembered for their labels (per model); older labels count for the whole model only."""


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
    canary: CanarySettings = CanarySettings()
    join: JoinSettings = JoinSettings()
    segments: SegmentSettings = SegmentSettings()
    max_features: int = Field(200, ge=1, le=10_000)
    """Features tracked per model; more are counted and ignored (bounds memory and
    metric cardinality)."""


# ---- service settings ---------------------------------------------------------------

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
"""The SASL mechanisms kafka-python 3.0 implements that need nothing beyond its own
dependencies (GSSAPI needs a Kerberos library, AWS_MSK_IAM botocore)."""


class ChangelogSettings(_Strict):
    """Per-model state in a compacted Kafka topic, so that it follows its partition
    (:mod:`driftline.monitor.changelog`)."""

    enabled: bool = True
    """Write each model's state to the changelog at every checkpoint and restore it when a partition is assigned (``driftline run`` with Kafka; replays never use it). Off: state stays in this instance's checkpoint file, and a partition that moves starts afresh at its new owner."""
    topic: str | None = None
    """Changelog topic; None: ``<group_id>-state-changelog``. Created compacted, with the input topics' partition count."""
    compression_type: Literal["gzip", "lz4", "snappy", "zstd"] | None = "gzip"
    """Compression of the changelog records (a state is base64 in JSON: gzip makes it about 4 times smaller); None: none."""
    timeout_seconds: float = Field(30.0, gt=0)
    """How long a changelog write waits for acknowledgements, and a restore for the end of its partitions."""


class KafkaSettings(_Strict):
    bootstrap_servers: str = "localhost:9092"
    """Kafka bootstrap servers, comma-separated."""
    group_id: str = "driftline"
    """Consumer group; instances of one group share the partitions (scale out)."""
    client_id: str = "driftline"
    """Kafka client id of the consumer; the producers add ``-alarms`` / ``-dead-letters`` (the brokers' logs and quotas tell the clients apart)."""
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
    client: Literal["kafka-python", "confluent"] = "kafka-python"
    """Kafka client of the consumer: ``kafka-python`` (the default) or ``confluent`` (confluent-kafka, librdkafka: an extra, ``pip install 'driftline[confluent]'``; the same guarantees and settings; the dead-letter, alarm and changelog producers stay kafka-python)."""
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
    """How long one request to the brokers (fetch, commit, end offsets) may take; an unanswered commit is retried later, never taken as done. Must exceed ``fetch_max_wait_ms``."""
    stall_timeout_seconds: float = Field(60.0, gt=0)
    """/readyz reports `consuming` false when no record arrived for this long while the assigned partitions have lag (a stuck consumer, not a quiet topic)."""
    # -- security: TLS and SASL (README, "Production Kafka settings") -------------------
    security_protocol: SecurityProtocol = "PLAINTEXT"
    """``PLAINTEXT``, ``SSL`` (TLS), ``SASL_SSL`` (SASL over TLS) or ``SASL_PLAINTEXT`` (SASL without TLS: the credentials cross the network readable, for closed test networks only)."""
    ssl_cafile: Path | None = None
    """PEM file of the CA certificate(s) that signed the brokers' certificates (None: the system's trust store). SSL and SASL_SSL only."""
    ssl_certfile: Path | None = None
    """PEM file of this client's certificate, for brokers that require mutual TLS (it may hold the private key too)."""
    ssl_keyfile: Path | None = None
    """PEM file of the private key of ``ssl_certfile``, when the key is not inside it."""
    ssl_password: SecretStr | None = None
    """Password of an encrypted private key (set it through the environment; never logged)."""
    ssl_check_hostname: bool = True
    """Check that a broker's certificate names the host connected to. Turn it off only for certificates that do not name the brokers, never across an untrusted network."""
    sasl_mechanism: SaslMechanism | None = None
    """SASL mechanism, with SASL_SSL or SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (a user name and password) or OAUTHBEARER (a token: one of the three ``sasl_oauth_*`` settings)."""
    sasl_plain_username: str | None = Field(None, validation_alias=AliasChoices("sasl_plain_username", "sasl_username"))
    """SASL user name, for PLAIN and SCRAM (``sasl_username`` is accepted too)."""
    sasl_plain_password: SecretStr | None = Field(
        None, validation_alias=AliasChoices("sasl_plain_password", "sasl_password")
    )
    """SASL password, for PLAIN and SCRAM (set it through the environment; never logged; ``sasl_password`` is accepted too)."""
    sasl_oauth_token: SecretStr | None = None
    """OAUTHBEARER: a fixed bearer token (set it through the environment; never logged)."""
    sasl_oauth_token_file: Path | None = None
    """OAUTHBEARER: a file holding the token, read again at every authentication, so that a token rotated in place (a Kubernetes projected service-account token, a sidecar's output) is used as soon as it is written."""
    sasl_oauth_token_provider: str | None = None
    """OAUTHBEARER: ``package.module:ClassName`` of a ``kafka.net.sasl.oauth.AbstractTokenProvider`` subclass, built with no arguments, for tokens fetched from an identity provider."""
    # -- fetch tuning (the consumer) -------------------------------------------------------
    client_rack: str | None = None
    """Rack (availability zone) of this instance: with the brokers' ``replica.selector.class`` set to the rack-aware selector, the consumer fetches from a replica in its own zone (KIP-392), saving cross-zone traffic."""
    fetch_min_bytes: int = Field(1, ge=1)
    """Bytes the broker waits for (up to ``fetch_max_wait_ms``) before it answers a fetch; larger values mean fewer, bigger fetches."""
    fetch_max_wait_ms: int = Field(500, ge=0)
    """How long the broker holds a fetch waiting for ``fetch_min_bytes``."""
    max_partition_fetch_bytes: int = Field(1_048_576, ge=1024)
    """Bytes one fetch returns per partition at most (a larger first record batch is still returned whole)."""
    fetch_max_bytes: int = Field(52_428_800, ge=1024)
    """Bytes one fetch returns at most, over all its partitions."""
    receive_buffer_bytes: int | None = Field(None, ge=1024)
    """Socket receive buffer (SO_RCVBUF) of every Kafka connection; None: the operating system's default. Raise it on links with a high bandwidth-delay product."""
    send_buffer_bytes: int | None = Field(None, ge=1024)
    """Socket send buffer (SO_SNDBUF) of every Kafka connection; None: the operating system's default."""
    changelog: ChangelogSettings = ChangelogSettings()
    """Per-model state that follows its partition (see :class:`ChangelogSettings`)."""

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_oauth_token_file")
    @classmethod
    def _readable_file(cls, path: Path | None) -> Path | None:
        if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
            raise ValueError(
                f"{str(path)!r} is not a readable file: check the path (is it mounted "
                "into the container?) and its permissions"
            )
        return path

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        if self.client == "confluent":
            try:
                import confluent_kafka  # noqa: F401 - whether it can be imported is the check
            except ImportError:
                raise ValueError(
                    "kafka.client is 'confluent' but confluent-kafka is not installed: "
                    "pip install 'driftline[confluent]', or set kafka.client: kafka-python"
                ) from None
        # kafka-python ignores settings its protocol does not use: a certificate set
        # with PLAINTEXT would silently send everything unencrypted, so say it at start.
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        sasl = self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        ssl_set = [name for name in _SSL_FILES if getattr(self, name) is not None]
        if ssl_set and not tls:
            raise ValueError(
                f"kafka.{ssl_set[0]} is set but kafka.security_protocol is "
                f"{self.security_protocol!r}: use SSL or SASL_SSL, or remove the ssl_* settings"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError(
                "kafka.ssl_keyfile is set without kafka.ssl_certfile: set the certificate the key belongs to"
            )
        if self.ssl_password is not None and self.ssl_certfile is None:
            raise ValueError(
                "kafka.ssl_password is the password of the client's private key: set "
                "kafka.ssl_certfile (and kafka.ssl_keyfile), or remove it"
            )
        if tls:
            _check_tls_files(self)
        sasl_set = [name for name in _SASL_FIELDS if getattr(self, name) is not None]
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"kafka.security_protocol {self.security_protocol!r} needs kafka.sasl_mechanism "
                "(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER)"
            )
        if not sasl and sasl_set:
            raise ValueError(
                f"kafka.{sasl_set[0]} is set but kafka.security_protocol is "
                f"{self.security_protocol!r}: use SASL_SSL (or SASL_PLAINTEXT), or remove the "
                "sasl_* settings"
            )
        oauth_set = [name for name in _OAUTH_FIELDS if getattr(self, name) is not None]
        if self.sasl_mechanism == "OAUTHBEARER":
            if len(oauth_set) != 1:
                raise ValueError(
                    "kafka.sasl_mechanism OAUTHBEARER needs exactly one of kafka.sasl_oauth_token, "
                    "kafka.sasl_oauth_token_file and kafka.sasl_oauth_token_provider"
                    + (f" (got {', '.join(oauth_set)})" if oauth_set else "")
                )
            for name in ("sasl_plain_username", "sasl_plain_password"):
                if getattr(self, name) is not None:
                    raise ValueError(f"kafka.{name} is not used by OAUTHBEARER: remove it")
            if self.sasl_oauth_token_provider is not None:
                from driftline.monitor.kafka_client import token_provider_class

                token_provider_class(self.sasl_oauth_token_provider)  # ValueError naming what is wrong
        elif self.sasl_mechanism is not None:
            for name in ("sasl_plain_username", "sasl_plain_password"):
                value = getattr(self, name)
                if value is None or not (value.get_secret_value() if isinstance(value, SecretStr) else value):
                    raise ValueError(f"kafka.sasl_mechanism {self.sasl_mechanism} needs kafka.{name}")
            if oauth_set:
                raise ValueError(f"kafka.{oauth_set[0]} is for OAUTHBEARER only, not {self.sasl_mechanism}: remove it")
        if self.request_timeout_ms <= self.fetch_max_wait_ms:
            raise ValueError(
                f"kafka.request_timeout_ms ({self.request_timeout_ms}) must exceed "
                f"kafka.fetch_max_wait_ms ({self.fetch_max_wait_ms}): a fetch would time out "
                "before the broker answers it"
            )
        return self


# No ssl_crlfile: kafka-python 3.0.12 passes it to SSLContext.load_verify_locations(crl=...),
# which raises TypeError at every connection.
_SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
_SASL_FIELDS = (
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
    "sasl_oauth_token",
    "sasl_oauth_token_file",
    "sasl_oauth_token_provider",
)
_OAUTH_FIELDS = ("sasl_oauth_token", "sasl_oauth_token_file", "sasl_oauth_token_provider")


def _check_tls_files(kafka: KafkaSettings) -> None:
    """Load the CA, certificate and key as kafka-python will at each connection, so that
    a file that is not PEM, a key that does not match or a wrong key password fails at
    start, naming the setting, instead of at every connection attempt."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if kafka.ssl_cafile is not None:
        try:
            context.load_verify_locations(cafile=str(kafka.ssl_cafile))
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"kafka.ssl_cafile {str(kafka.ssl_cafile)!r} holds no usable PEM "
                f"certificate ({exc}): give the CA certificate in PEM form"
            ) from None
    if kafka.ssl_certfile is not None:
        # An empty password instead of None: OpenSSL would otherwise prompt on the
        # terminal for an encrypted key, and a service must fail rather than wait.
        password = kafka.ssl_password.get_secret_value() if kafka.ssl_password is not None else ""
        try:
            context.load_cert_chain(
                str(kafka.ssl_certfile),
                str(kafka.ssl_keyfile) if kafka.ssl_keyfile is not None else None,
                password=password,
            )
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(
                f"kafka.ssl_certfile / kafka.ssl_keyfile: cannot load the client certificate "
                f"and key ({exc}): check that both are PEM, that the key belongs to the "
                "certificate, and kafka.ssl_password if the key is encrypted"
            ) from None


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
    actions: list[TriggerAction] = ["retrain", "rollback"]
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
    def _scheme(self) -> WebhookTarget:
        if not self.url.startswith(("http://", "https://")):
            # The value is not repeated: a webhook URL can itself be a credential (Slack).
            raise ValueError(
                f"url of target {self.name!r} must start with http:// or "
                "https:// (the value is not shown: a webhook URL can be a secret)"
            )
        return self


class TriggerPolicySettings(_Strict):
    kinds: list[AlarmKind] = ["feature_drift", "prediction_drift", "performance", "concept_drift", "regression"]
    """Alarm kinds that count as evidence for a trigger."""
    min_alarms: int = Field(1, ge=1)
    """Alarms (of the counted kinds) needed within ``window_seconds`` to trigger."""
    min_features: int = Field(1, ge=1)
    """Distinct features among those alarms needed to trigger a retrain."""
    min_segments: int = Field(0, ge=0, le=51)
    """Distinct segments among those alarms needed to trigger a retrain (an alarm of the whole model counts as every segment); 0: off."""
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


# ---- model lifecycle and audit trail (issue 13) ---------------------------------------


class LifecycleSettings(_Strict):
    topic: str = "model-lifecycle"
    """Topic of model lifecycle events (deployed, promoted, rolled_back, retired), keyed by model and co-partitioned with predictions; ``driftline lifecycle`` produces to it."""


class AuditSettings(_Strict):
    path: Path | None = None
    """The audit log's SQLite file; None: ``<state_dir>/audit.sqlite3``."""
    retention_days: float = Field(400.0, gt=0)
    """Audit records older than this (wall clock of recording) are deleted; apart from the webhook outbox's 30 days, so that a year of triggers can be explained."""
    kafka_topic: str | None = "driftline-audit"
    """Also publish every audit record to this topic (JSON, keyed by model); None: the SQLite file only."""


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
    # model lifecycle and audit trail (issue 13)
    lifecycle: LifecycleSettings = LifecycleSettings()
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _models_valid(self) -> Settings:
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
                f"config file {str(path)!r} must hold a mapping at the top level, got {type(loaded).__name__}"
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
                rows.append(
                    f"| `{path}` | `DRIFTLINE_{path.upper().replace('.', '__')}` (JSON) | `[]` | "
                    f"{info.description or ''} |"
                )
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
