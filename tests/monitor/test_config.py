from __future__ import annotations

import pytest

from driftline.cli import main
from driftline.monitor.config import load_settings
from driftline.monitor.exceptions import ConfigError


def test_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yml"
    cfg.write_text("kafka:\n  group_id: file\n  client_id: file\n  predictions_topic: p-file\n")
    monkeypatch.setenv("DRIFTLINE_KAFKA__GROUP_ID", "env")
    monkeypatch.setenv("DRIFTLINE_KAFKA__CLIENT_ID", "env")
    s = load_settings(cfg, kafka={"client_id": "flag"})
    assert s.kafka.client_id == "flag"
    assert s.kafka.group_id == "env"
    assert s.kafka.predictions_topic == "p-file"
    assert s.kafka.feedback_topic == "feedback"  # default


def test_per_model_overrides_deep_merge(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("defaults:\n  window: {size: 500}\nmodels:\n  fraud:\n    drift: {alpha: 0.01}\n")
    s = load_settings(cfg)
    assert s.for_model("fraud").drift.alpha == 0.01
    assert s.for_model("fraud").window.size == 500
    assert s.for_model("other").drift.alpha == s.defaults.drift.alpha


@pytest.mark.parametrize(
    "text, field",
    [
        ("defaults:\n  window: {size: 3}\n", "defaults.window.size"),
        ("kafka:\n  auto_offset_reset: sometimes\n", "kafka.auto_offset_reset"),
        ("kafka:\n  bootstrap_server: x\n", "kafka.bootstrap_server"),
        ("models:\n  fraud:\n    drift: {alpha: 2}\n", "models.fraud"),
        ("webhooks:\n  targets:\n    - {name: ci, url: 'ftp://x'}\n", "webhooks.targets.0"),
        ("defaults:\n  reference: {source: file}\n", "defaults.reference"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, text, field):
    cfg = tmp_path / "c.yml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert field in str(exc.value)


def test_secret_values_are_not_echoed(tmp_path):
    cfg = tmp_path / "c.yml"
    cfg.write_text("kafka:\n  sasl_password: hunter2-secret\n  session_timeout_ms: 5\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    assert "hunter2-secret" not in str(exc.value)
    assert "kafka.session_timeout_ms" in str(exc.value)


def test_check_config_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yml"
    good.write_text("defaults:\n  window: {size: 2000}\n")
    bad = tmp_path / "bad.yml"
    bad.write_text("defaults:\n  window: {size: -1}\n")
    assert main(["check-config", str(good)]) == 0
    assert main(["check-config", str(bad)]) == 2
    assert "defaults.window.size" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "missing.yml")]) == 2
    notyaml = tmp_path / "x.yml"
    notyaml.write_text("a: [unclosed\n")
    assert main(["check-config", str(notyaml)]) == 2


# ---- production Kafka settings: TLS, SASL, tuning -------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tests.support.tls import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))


def kafka_error(**kafka) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(kafka=kafka)
    return str(caught.value)


def test_a_complete_sasl_ssl_configuration_loads_from_yaml(tmp_path, certs, monkeypatch):
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "kafka:\n"
        "  bootstrap_servers: b1:9093,b2:9093\n"
        "  security_protocol: SASL_SSL\n"
        f"  ssl_cafile: {certs.ca}\n"
        f"  ssl_certfile: {certs.client_cert}\n"
        f"  ssl_keyfile: {certs.client_key}\n"
        "  sasl_mechanism: SCRAM-SHA-256\n"
        "  sasl_plain_username: driftline\n"
        "  client_rack: eu-west-1a\n"
        "  fetch_min_bytes: 65536\n"
        "  fetch_max_wait_ms: 250\n"
        "  receive_buffer_bytes: 1048576\n"
    )
    monkeypatch.setenv("DRIFTLINE_KAFKA__SASL_PLAIN_PASSWORD", "scram-secret-1")
    monkeypatch.setenv("DRIFTLINE_KAFKA__SSL_PASSWORD", certs.key_password)
    kafka = load_settings(cfg).kafka
    assert kafka.sasl_plain_password.get_secret_value() == "scram-secret-1"
    assert kafka.ssl_password.get_secret_value() == certs.key_password
    assert (kafka.client_rack, kafka.fetch_min_bytes, kafka.receive_buffer_bytes) == ("eu-west-1a", 65536, 1048576)
    assert "scram-secret-1" not in repr(kafka) and certs.key_password not in repr(kafka)


def test_the_former_sasl_names_are_still_accepted():
    kafka = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": "p-old",
        }
    ).kafka
    assert (kafka.sasl_plain_username, kafka.sasl_plain_password.get_secret_value()) == ("u", "p-old")


@pytest.mark.parametrize(
    "kafka, expected",
    [
        ({"security_protocol": "SASL_SSL"}, "needs kafka.sasl_mechanism"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u"},
            "PLAIN needs kafka.sasl_plain_password",
        ),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_password": "p"},
            "SCRAM-SHA-512 needs kafka.sasl_plain_username",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "u",
                "sasl_plain_password": "",
            },
            "needs kafka.sasl_plain_password",
        ),
        (
            {"sasl_mechanism": "PLAIN", "sasl_plain_username": "u", "sasl_plain_password": "p"},
            "kafka.sasl_mechanism is set but kafka.security_protocol is 'PLAINTEXT'",
        ),
        ({"security_protocol": "SSL", "sasl_plain_username": "u"}, "kafka.sasl_plain_username is set but"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"},
            "needs exactly one of kafka.sasl_oauth_token",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token": "t",
                "sasl_oauth_token_provider": "a.b:C",
            },
            "got sasl_oauth_token, sasl_oauth_token_provider",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token": "t",
                "sasl_plain_username": "u",
            },
            "kafka.sasl_plain_username is not used by OAUTHBEARER",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "PLAIN",
                "sasl_plain_username": "u",
                "sasl_plain_password": "p",
                "sasl_oauth_token": "t",
            },
            "kafka.sasl_oauth_token is for OAUTHBEARER only",
        ),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "kafka.sasl_mechanism"),
        ({"security_protocol": "TLS"}, "kafka.security_protocol"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", "sasl_oauth_token_provider": "no_colon"},
            "must have the form 'package.module:ClassName'",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": "driftline_no_such_module:Provider",
            },
            "cannot import 'driftline_no_such_module'",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": "tests.monitor.test_kafka_client:Missing",
            },
            "has no 'Missing'",
        ),
        (
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_provider": "pathlib:Path",
            },
            "is not a subclass of kafka.net.sasl.oauth.AbstractTokenProvider",
        ),
        ({"fetch_max_wait_ms": 30_000}, "kafka.request_timeout_ms (30000) must exceed kafka.fetch_max_wait_ms (30000)"),
        ({"fetch_min_bytes": 0}, "kafka.fetch_min_bytes"),
        ({"receive_buffer_bytes": 10}, "kafka.receive_buffer_bytes"),
    ],
)
def test_inconsistent_security_settings_fail_naming_the_field(kafka, expected):
    assert expected in kafka_error(**kafka)


def test_ssl_files_must_exist_and_be_files(tmp_path, certs):
    missing = tmp_path / "nope.pem"
    message = kafka_error(security_protocol="SSL", ssl_cafile=str(missing))
    assert "kafka.ssl_cafile" in message and "is not a readable file" in message
    assert "kafka.ssl_certfile" in kafka_error(security_protocol="SSL", ssl_certfile=str(tmp_path))
    assert "kafka.sasl_oauth_token_file" in kafka_error(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_file=str(missing)
    )


def test_ssl_settings_need_a_tls_protocol_and_a_certificate_for_the_key(certs):
    message = kafka_error(ssl_cafile=str(certs.ca))
    assert "kafka.ssl_cafile is set but kafka.security_protocol is 'PLAINTEXT'" in message
    assert "kafka.ssl_keyfile is set without kafka.ssl_certfile" in kafka_error(
        security_protocol="SSL", ssl_keyfile=str(certs.client_key)
    )
    assert "kafka.ssl_password is the password of the client's private key" in kafka_error(
        security_protocol="SSL", ssl_password="x"
    )


def test_tls_files_are_loaded_at_start_so_a_wrong_key_password_fails_there(certs, tmp_path):
    good = {
        "security_protocol": "SSL",
        "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
    }
    load_settings(kafka={**good, "ssl_password": certs.key_password})
    wrong = kafka_error(**good, ssl_password="not-the-password-8")
    assert "kafka.ssl_certfile / kafka.ssl_keyfile: cannot load" in wrong and "not-the-password-8" not in wrong
    # an encrypted key without its password fails (OpenSSL is never left to prompt for it)
    assert "cannot load the client certificate" in kafka_error(**good)
    # a key that is not the certificate's
    assert "cannot load the client certificate" in kafka_error(
        security_protocol="SSL", ssl_certfile=str(certs.client_cert), ssl_keyfile=str(certs.server_key)
    )
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("not a certificate\n")
    assert "kafka.ssl_cafile" in kafka_error(security_protocol="SSL", ssl_cafile=str(not_pem))


def test_kafka_secrets_are_not_echoed_in_errors(certs):
    message = kafka_error(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_plain_username="u",
        sasl_plain_password="pw-echo-test-1",
        sasl_oauth_token="tok-echo-test-2",
        session_timeout_ms=5,
    )
    assert "pw-echo-test-1" not in message and "tok-echo-test-2" not in message
    assert "kafka.session_timeout_ms" in message
    # an error of the whole kafka section (its input holds the password) shows no input
    message = kafka_error(security_protocol="SSL", sasl_plain_password="pw-model-error-3")
    assert "pw-model-error-3" not in message and "kafka.sasl_plain_password is set but" in message
