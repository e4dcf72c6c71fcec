"""driftline.monitor.logs: the process's one handler redacts every configured secret, whoever logs."""

from __future__ import annotations

import io
import json
import logging

import pytest

from driftline.monitor.config import load_settings
from driftline.monitor.logs import QUIET_LOGGERS, REDACTED, RedactingFormatter, secrets_of, setup_logging

SLACK = "https://hooks.slack.com/services/T0AAAA/B0BBBB/credentialXYZ123"


@pytest.fixture(autouse=True)
def _restore_library_levels():
    """setup_logging quiets library loggers, as the entry point should; undo it here."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def settings():
    return load_settings(
        webhooks={"targets": [
            {"name": "slack", "url": SLACK, "preset": "slack"},
            {"name": "ci", "url": "https://ci.example/hook", "secret_env": "S", "token_env": "T"},
        ]},
        kafka={"sasl_password": "kafka-pass-4242"},
    )


ENVIRON = {"S": 'hmac"secret\\value', "T": "token-777-abc"}


def test_secrets_of_lists_urls_their_paths_secrets_tokens_and_the_sasl_password() -> None:
    values = secrets_of(settings(), ENVIRON)
    for expected in (SLACK, "/services/T0AAAA/B0BBBB/credentialXYZ123", "https://ci.example/hook",
                     ENVIRON["S"], ENVIRON["T"], "kafka-pass-4242"):
        assert expected in values
    assert "/hook" not in values  # too short to be a credential on its own


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_logger_at_every_level_is_redacted(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", fmt, secrets_of(settings(), ENVIRON), stream=stream)
    secret = ENVIRON["S"]
    logging.getLogger("driftline").debug("posting to %s", SLACK)
    logging.getLogger("httpx").warning("HTTP Request: POST %s", "https://ci.example/hook")
    logging.getLogger("httpcore.http11").error("path /services/T0AAAA/B0BBBB/credentialXYZ123")
    logging.getLogger("driftline.sinks.delivery").info("token %s and secret %s", ENVIRON["T"], secret)
    try:
        raise RuntimeError(f"failed with kafka-pass-4242 and {secret}")
    except RuntimeError:
        logging.getLogger("driftline.app").exception("a crash")
    logging.getLogger("driftline.app").warning("stack of %s", SLACK, stack_info=True)
    text = stream.getvalue()
    assert text.count(REDACTED) >= 7
    for value in (SLACK, "credentialXYZ123", "ci.example/hook", ENVIRON["T"], "kafka-pass-4242",
                  secret, json.dumps(secret)[1:-1]):
        assert value not in text, value
    if fmt == "json":
        assert all(json.loads(line)["message"] for line in text.splitlines())


def test_libraries_that_log_urls_are_held_at_warning() -> None:
    setup_logging("DEBUG", "text", [], stream=io.StringIO())
    for name in ("httpx", "httpcore", "urllib3", "kafka"):
        assert name in QUIET_LOGGERS
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
    assert logging.getLogger("driftline.sinks.delivery").isEnabledFor(logging.DEBUG)


def test_longer_secrets_are_replaced_first() -> None:
    formatter = RedactingFormatter(logging.Formatter("%(message)s"), ["/a/long/path", "http://h/a/long/path"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to http://h/a/long/path", None, None)
    assert formatter.format(record) == f"to {REDACTED}"


def test_an_invalid_url_in_the_config_is_not_echoed() -> None:
    from driftline.monitor.exceptions import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(webhooks={"targets": [{"name": "s", "url": "hooks.slack.com/services/T/B/zz99"}]})
    assert "zz99" not in str(caught.value) and "must start with http://" in str(caught.value)


def test_protect_secrets_extends_the_installed_handler_only() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream=stream)
    from driftline.monitor.logs import protect_secrets

    assert protect_secrets(["late-secret-99"]) == 1
    logging.getLogger("driftline").warning("value late-secret-99")
    assert "late-secret-99" not in stream.getvalue() and REDACTED in stream.getvalue()
