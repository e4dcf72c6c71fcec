"""kafka-python's keyword arguments from driftline's Kafka settings, in one place.

Every Kafka client driftline creates (the consumer of :mod:`driftline.monitor.sources`, the
producers of :mod:`driftline.sinks.kafka`, an admin client) is built with
:func:`client_options`, so that TLS, SASL, the client id and the socket and fetch tuning
of ``kafka`` in the configuration reach all of them alike. The settings themselves are
validated in :class:`driftline.monitor.config.KafkaSettings`; here they are only mapped.

OAUTHBEARER tokens come from one of three places (exactly one is configured): a fixed
token (``kafka.sasl_oauth_token``), a file read again at every authentication
(``kafka.sasl_oauth_token_file``, for tokens rotated in place), or a provider class
(``kafka.sasl_oauth_token_provider``). Whichever it is, each token is added to the log
redaction (:func:`driftline.monitor.logs.protect_secrets`) the moment it is handed to
kafka-python: at DEBUG, kafka-python logs its SASL requests with their bytes, the token
among them.

Examples
--------
>>> from driftline.monitor.config import KafkaSettings
>>> options = client_options(KafkaSettings(bootstrap_servers="a:9092,b:9092"), "producer")
>>> options["bootstrap_servers"], options["security_protocol"]
(['a:9092', 'b:9092'], 'PLAINTEXT')
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

# kafka-python checks isinstance(provider, AbstractTokenProvider), so the providers below
# derive from it; this module is imported only where a Kafka client is built.
from kafka.net.sasl.oauth import AbstractTokenProvider
from pydantic import SecretStr

from driftline.monitor.logs import protect_secrets

if TYPE_CHECKING:
    from driftline.monitor.config import KafkaSettings

__all__ = [
    "client_options",
    "token_provider",
    "token_provider_class",
    "ClientRole",
    "CONSUMER_ONLY",
    "StaticTokenProvider",
    "FileTokenProvider",
]

ClientRole = Literal["consumer", "producer", "admin"]

CONSUMER_ONLY: tuple[str, ...] = (
    "client_rack",
    "fetch_min_bytes",
    "fetch_max_wait_ms",
    "max_partition_fetch_bytes",
    "fetch_max_bytes",
)
"""Settings that only kafka-python's consumer knows (its producer and admin client
refuse unknown keyword arguments)."""

_PROVIDER_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def client_options(kafka: KafkaSettings, role: ClientRole = "consumer") -> dict[str, Any]:
    """kafka-python keyword arguments for a client of ``role`` built from ``kafka``.

    Connection, security (TLS, SASL), client id and socket buffers go to every role;
    ``client_rack`` and the fetch tuning to the consumer only. Behaviour that belongs to
    one client (group settings, ``acks``, timeouts shorter than ``request_timeout_ms``)
    is the caller's: it updates the returned dict.

    Parameters
    ----------
    kafka
        ``kafka`` of the configuration (already validated).
    role
        ``consumer``, ``producer`` or ``admin``.

    Returns
    -------
    dict
        Keyword arguments for ``KafkaConsumer``, ``KafkaProducer`` or
        ``KafkaAdminClient``. Secrets are plain strings here (kafka-python needs them);
        never log this dict.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in kafka.bootstrap_servers.split(",") if s.strip()],
        "client_id": kafka.client_id,
        "request_timeout_ms": kafka.request_timeout_ms,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.receive_buffer_bytes is not None:
        options["receive_buffer_bytes"] = kafka.receive_buffer_bytes
    if kafka.send_buffer_bytes is not None:
        options["send_buffer_bytes"] = kafka.send_buffer_bytes
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_check_hostname"] = kafka.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(kafka, name)
            if path is not None:
                options[name] = str(path)
        if kafka.ssl_password is not None:
            options["ssl_password"] = kafka.ssl_password.get_secret_value()
    if kafka.sasl_mechanism is not None:
        options["sasl_mechanism"] = kafka.sasl_mechanism
        if kafka.sasl_mechanism == "OAUTHBEARER":
            options["sasl_oauth_token_provider"] = token_provider(kafka)
        else:
            options["sasl_plain_username"] = kafka.sasl_plain_username
            options["sasl_plain_password"] = _secret(kafka.sasl_plain_password)
    if role == "consumer":
        options.update(
            fetch_min_bytes=kafka.fetch_min_bytes,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            max_partition_fetch_bytes=kafka.max_partition_fetch_bytes,
            fetch_max_bytes=kafka.fetch_max_bytes,
        )
        if kafka.client_rack:
            options["client_rack"] = kafka.client_rack
    elif role not in ("producer", "admin"):
        raise ValueError(f"role must be 'consumer', 'producer' or 'admin', got {role!r}")
    return options


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


# ---- OAUTHBEARER token providers ---------------------------------------------------------


class _RedactingProvider(AbstractTokenProvider):
    """Hands each token to the log redaction before kafka-python sees it."""

    def __init__(self) -> None:
        super().__init__()
        self._known: str | None = None

    def _fetch(self) -> str:
        raise NotImplementedError  # pragma: no cover - abstract

    def token(self) -> str:
        token = self._fetch()
        if token != self._known:
            protect_secrets([token])
            self._known = token
        return token

    def __repr__(self) -> str:  # never the token
        return f"{type(self).__name__}()"


class StaticTokenProvider(_RedactingProvider):
    """A fixed token (``kafka.sasl_oauth_token``)."""

    def __init__(self, token: SecretStr) -> None:
        super().__init__()
        self._token = token

    def _fetch(self) -> str:
        return self._token.get_secret_value()


class FileTokenProvider(_RedactingProvider):
    """The token in ``path``, read again at every authentication.

    kafka-python asks for a token at each new connection; reading the file then means a
    token rotated in place (a Kubernetes projected service-account token, a sidecar that
    refreshes it) is used from the next connection on, without a restart.

    Raises
    ------
    OSError
        From ``token()``, when the file cannot be read; ValueError when it is empty.
        kafka-python fails that connection and tries again later.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    def _fetch(self) -> str:
        token = self.path.read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(
                f"kafka.sasl_oauth_token_file {str(self.path)!r} is empty: write the OAUTHBEARER token into it"
            )
        return token

    def __repr__(self) -> str:
        return f"FileTokenProvider({str(self.path)!r})"


class _ProviderWrapper(_RedactingProvider):
    """A configured provider class's instance, with its tokens redacted from the logs."""

    def __init__(self, inner: AbstractTokenProvider) -> None:
        super().__init__()
        self.inner = inner

    def _fetch(self) -> str:
        return self.inner.token()

    def extensions(self) -> dict[str, str]:
        return self.inner.extensions()


def token_provider_class(path: str) -> type[AbstractTokenProvider]:
    """The class named by ``package.module:ClassName``.

    Raises
    ------
    ValueError
        Naming ``kafka.sasl_oauth_token_provider`` and what is wrong: the form, an
        import that fails, a missing name, or a class that is not an
        ``AbstractTokenProvider``.
    """
    if not _PROVIDER_PATH.fullmatch(path):
        raise ValueError(f"kafka.sasl_oauth_token_provider {path!r} must have the form 'package.module:ClassName'")
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"kafka.sasl_oauth_token_provider: cannot import {module_name!r} ({exc}): "
            "install it, or fix the module name"
        ) from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ValueError(f"kafka.sasl_oauth_token_provider: {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, AbstractTokenProvider)):
        raise ValueError(
            f"kafka.sasl_oauth_token_provider: {path!r} is not a subclass of kafka.net.sasl.oauth.AbstractTokenProvider"
        )
    return found


def token_provider(kafka: KafkaSettings) -> AbstractTokenProvider:
    """The OAUTHBEARER token provider configured in ``kafka``.

    Raises
    ------
    ValueError
        When ``kafka`` configures none (the settings' validation prevents it).
    """
    if kafka.sasl_oauth_token is not None:
        return StaticTokenProvider(kafka.sasl_oauth_token)
    if kafka.sasl_oauth_token_file is not None:
        return FileTokenProvider(kafka.sasl_oauth_token_file)
    if kafka.sasl_oauth_token_provider is not None:
        return _ProviderWrapper(token_provider_class(kafka.sasl_oauth_token_provider)())
    raise ValueError(
        "kafka.sasl_mechanism OAUTHBEARER needs one of kafka.sasl_oauth_token, "
        "kafka.sasl_oauth_token_file and kafka.sasl_oauth_token_provider"
    )
