"""Logging of the ``driftline`` process: one handler, quiet libraries, no secrets.

:func:`setup_logging` is called once by the command line (an entry point: the only place
that may configure the process's logging). It installs one stderr handler whose formatter
is a :class:`RedactingFormatter`: every line, whatever logger wrote it and at whatever
level, has each configured secret replaced by ``[redacted]`` before it is written. The
secrets come from :func:`secrets_of`: the webhook targets' URLs (a Slack incoming-webhook
URL is a credential), their HMAC secrets and tokens, and Kafka's SASL password, private-key
password and OAUTHBEARER token (kafka-python logs its SASL requests, credentials included,
at DEBUG; an OAUTHBEARER token read later is added by :mod:`driftline.monitor.kafka_client`
through :func:`protect_secrets`).

Libraries that log request URLs (httpx's ``HTTP Request: POST <url>`` at INFO, httpcore's
connection trace at DEBUG) are also held at WARNING, so that ``--log-level DEBUG`` shows
driftline's own detail rather than theirs; the redaction is the guarantee, the quiet
loggers keep the noise down.

Examples
--------
>>> formatter = RedactingFormatter(logging.Formatter("%(message)s"), ["hunter2"])
>>> record = logging.LogRecord("x", logging.INFO, __file__, 1, "token=%s", ("hunter2",), None)
>>> formatter.format(record)
'token=[redacted]'
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import httpx

__all__ = [
    "setup_logging",
    "protect_secrets",
    "secrets_of",
    "RedactingFormatter",
    "JsonFormatter",
    "QUIET_LOGGERS",
    "REDACTED",
]

REDACTED = "[redacted]"

QUIET_LOGGERS: tuple[str, ...] = ("httpx", "httpcore", "hpack", "urllib3", "kafka", "asyncio")
"""Third-party loggers held at WARNING or above whatever ``--log-level`` says."""

_MIN_PATH_LENGTH = 8
"""URL paths shorter than this (``/hook``) are ordinary words, not worth redacting alone."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` (and ``exc``)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": record.created, "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out)


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then replaces every secret in the finished line.

    Redacting the finished line (message, arguments, traceback and stack together)
    leaves no path around it; for JSON lines the JSON-escaped form of each secret is
    replaced too.

    Parameters
    ----------
    inner
        The formatter that builds the line.
    secrets
        The values never to write; empty strings are ignored, longer values are replaced
        first (a URL before the path inside it).
    """

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.inner = inner
        self.secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Redact ``secrets`` too from now on."""
        forms = set(self.secrets)
        for secret in secrets:
            if secret:
                forms.add(secret)
                forms.add(json.dumps(secret)[1:-1])  # as it appears inside a JSON string
                forms.update(_repr_forms(secret))
        self.secrets = tuple(sorted(forms, key=len, reverse=True))

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[redacted]``."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.inner.format(record))


def _repr_forms(secret: str) -> set[str]:
    """``secret`` as it appears inside the repr of a str or bytes value: kafka-python logs
    its configuration (a dict: str reprs) and its SASL requests with their auth bytes
    (``b'\\x00user\\x00password'``) at DEBUG. A repr escapes its quote character only,
    and picks the quote from the whole value, so both spellings of ``'`` are covered."""
    forms = set()
    for value in (secret, secret.encode("utf-8")):
        prefix = 2 if isinstance(value, bytes) else 1
        plain = repr(value)[prefix:-1]
        forms.add(plain)
        forms.add(plain.replace("\\'", "'"))
        # with both quotes inside, a repr quotes with ' and escapes every '
        both: str | bytes = value + b"'\"" if isinstance(value, bytes) else value + "'\""
        forms.add(repr(both)[prefix:-1][:-3])
    return forms


def _url_secrets(url: str) -> list[str]:
    """The URL itself and the parts of it that identify a credential on their own."""
    values = [url, url.rstrip("/")]
    try:
        parts = urlsplit(url)
    except ValueError:
        return values
    path_and_query = parts.path + (f"?{parts.query}" if parts.query else "")
    for value in (path_and_query, parts.path, parts.query, parts.password):
        if value and len(value) >= _MIN_PATH_LENGTH:
            values.append(value)
            values.append(unquote(value))
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return values  # httpx cannot send to it either, so never prints it
    values.append(str(parsed))  # the form httpx prints (normalised host, port, escapes)
    raw_path = parsed.raw_path.decode("ascii")
    if len(raw_path) >= _MIN_PATH_LENGTH:
        values.append(raw_path)
    return values


def secrets_of(settings: Any, environ: Mapping[str, str]) -> list[str]:
    """Every value of ``settings`` that must not reach a log line.

    Parameters
    ----------
    settings
        A :class:`driftline.monitor.config.Settings`.
    environ
        Where the targets' ``secret_env`` / ``token_env`` variables are read.
    """
    values: list[str] = []
    for target in settings.webhooks.targets:
        values.extend(_url_secrets(target.url))
        for variable in (target.secret_env, target.token_env):
            if variable and environ.get(variable):
                values.append(environ[variable])
    kafka = settings.kafka
    for secret in (kafka.sasl_plain_password, kafka.ssl_password, kafka.sasl_oauth_token):
        if secret is not None and secret.get_secret_value():
            values.append(secret.get_secret_value())
    if kafka.sasl_oauth_token_file is not None:
        try:  # the token as it is now; a token rotated later is added when it is read
            token = kafka.sasl_oauth_token_file.read_text(encoding="utf-8").strip()
        except OSError:
            token = ""  # unreadable now: connecting fails and says so; nothing to hide yet
        if token:
            values.append(token)
    return values


def protect_secrets(secrets: Iterable[str]) -> int:
    """Redact ``secrets`` in the lines of every root handler :func:`setup_logging` installed.

    Returns how many handlers now redact them (0 when logging was set up elsewhere).
    """
    values = list(secrets)
    protected = 0
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, RedactingFormatter):
            handler.formatter.add(values)
            protected += 1
    return protected


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = (), stream: TextIO | None = None) -> logging.Handler:
    """Configure the process's logging (call it from an entry point only).

    Parameters
    ----------
    level
        The root level (DEBUG, INFO, WARNING, ERROR).
    fmt
        ``text`` or ``json``.
    secrets
        Values replaced by ``[redacted]`` in every line (see :func:`secrets_of`).
    stream
        Where lines go (default: stderr).

    Returns
    -------
    logging.Handler
        The installed handler (the root logger's only one).
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    inner = JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(RedactingFormatter(inner, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
