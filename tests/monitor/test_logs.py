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
        webhooks={
            "targets": [
                {"name": "slack", "url": SLACK, "preset": "slack"},
                {"name": "ci", "url": "https://ci.example/hook", "secret_env": "S", "token_env": "T"},
            ]
        },
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "driftline",
            "sasl_plain_password": "kafka-pass-4242",
        },
    )


ENVIRON = {"S": 'hmac"secret\\value', "T": "token-777-abc"}


def test_secrets_of_lists_urls_their_paths_secrets_tokens_and_the_sasl_password() -> None:
    values = secrets_of(settings(), ENVIRON)
    for expected in (
        SLACK,
        "/services/T0AAAA/B0BBBB/credentialXYZ123",
        "https://ci.example/hook",
        ENVIRON["S"],
        ENVIRON["T"],
        "kafka-pass-4242",
    ):
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
    for value in (
        SLACK,
        "credentialXYZ123",
        "ci.example/hook",
        ENVIRON["T"],
        "kafka-pass-4242",
        secret,
        json.dumps(secret)[1:-1],
    ):
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


def test_secrets_of_lists_the_key_password_and_the_oauthbearer_tokens(tmp_path) -> None:
    from tests.support.tls import make_certs

    certs = make_certs(tmp_path / "certs")
    token_file = tmp_path / "token"
    token_file.write_text("file-token-6161\n")
    tls = {
        "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
        "ssl_password": certs.key_password,
    }
    with_file = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token_file": str(token_file),
            **tls,
        }
    )
    assert {certs.key_password, "file-token-6161"} <= set(secrets_of(with_file, {}))
    static = load_settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "OAUTHBEARER",
            "sasl_oauth_token": "static-token-6262",
        }
    )
    assert "static-token-6262" in secrets_of(static, {})


@pytest.mark.parametrize("password", ["plain-pw-7171", "quote'pw\"7272", "non-ascii-pw-\u00e9\u00df"])
def test_kafka_pythons_own_debug_lines_are_redacted(password) -> None:
    """At DEBUG, kafka-python logs the admin client's whole configuration and every SASL
    request with its auth bytes (PLAIN: the password): the formatter redacts each form."""
    from kafka import KafkaAdminClient
    from kafka.net.sasl.plain import SaslMechanismPlain
    from kafka.protocol.sasl import SaslAuthenticateRequest

    from driftline.monitor.kafka_client import client_options

    settings = load_settings(
        kafka={
            "bootstrap_servers": "127.0.0.1:9",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "driftline",
            "sasl_plain_password": password,
        }
    )
    stream = io.StringIO()
    setup_logging("DEBUG", "text", secrets_of(settings, {}), stream=stream)
    logging.getLogger("kafka").setLevel(logging.DEBUG)  # as an operator chasing a problem would
    options = client_options(settings.kafka, "admin")

    class NoNetwork(Exception):
        pass

    def client(**config):  # the configuration is logged before the client connects
        raise NoNetwork

    with pytest.raises(NoNetwork):
        KafkaAdminClient(**options, kafka_client=client)
    request = SaslAuthenticateRequest(SaslMechanismPlain(**options).auth_bytes())
    logging.getLogger("kafka.net.connection").debug("%s Request %d: %s", "<conn>", 2, request)
    text = stream.getvalue()
    assert "Starting KafkaAdminClient with configuration" in text
    assert "SaslAuthenticateRequest(" in text
    for form in (password, repr(password)[1:-1], repr(password.encode())[2:-1]):
        assert form not in text, form
    assert text.count(REDACTED) >= 2
