"""driftline.monitor.kafka_client: one mapping from the Kafka settings to kafka-python's
keyword arguments, for the consumer, the producers and an admin client; checked key by key,
against kafka-python's own configuration tables, and end to end (PLAINTEXT with every tuning
option set, and mutual TLS) through ``driftline run`` on the embedded broker."""

from __future__ import annotations

import io
import logging
import socket
import ssl
import time
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.net.sasl.oauth import AbstractTokenProvider, SaslMechanismOAuth
from pydantic import SecretStr

from driftline.monitor.config import KafkaSettings
from driftline.monitor.kafka_client import (
    CONSUMER_ONLY,
    FileTokenProvider,
    StaticTokenProvider,
    client_options,
    token_provider,
)
from driftline.monitor.logs import REDACTED, setup_logging
from driftline.monitor.sources import kafka_client_options
from driftline.sinks.kafka import KafkaAlarmSink
from tests.support.runs import DriftlineProcess, read_topic, wait_for, write_config
from tests.support.tls import TlsBroker, make_certs

CLASSES = {"consumer": KafkaConsumer, "producer": KafkaProducer, "admin": KafkaAdminClient}

TUNING = {
    "client_id": "driftline-e2e",
    "client_rack": "zone-a",
    "fetch_min_bytes": 64,
    "fetch_max_wait_ms": 200,
    "max_partition_fetch_bytes": 262_144,
    "fetch_max_bytes": 1_048_576,
    "receive_buffer_bytes": 262_144,
    "send_buffer_bytes": 131_072,
    "request_timeout_ms": 20_000,
}


class FixedProvider(AbstractTokenProvider):
    """A provider class as an operator would write one (named by a dotted path)."""

    def token(self) -> str:
        return "provider-token-0042"

    def extensions(self) -> dict[str, str]:
        return {"logicalCluster": "lkc-1"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def everything(certs) -> KafkaSettings:
    """TLS with a client certificate, SASL SCRAM and every tuning option."""
    return KafkaSettings(
        bootstrap_servers="k1:9093, k2:9093",
        security_protocol="SASL_SSL",
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client_cert,
        ssl_keyfile=certs.client_key,
        ssl_password=certs.key_password,
        ssl_check_hostname=False,
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="alice",
        sasl_plain_password="scram-pw-77",
        **TUNING,
    )


# ---- the mapping -------------------------------------------------------------------------


def test_defaults_map_to_kafka_pythons_defaults_and_fetch_tuning_goes_to_the_consumer_only():
    settings = KafkaSettings()
    consumer = client_options(settings, "consumer")
    assert consumer == {
        "bootstrap_servers": ["localhost:9092"],
        "client_id": "driftline",
        "request_timeout_ms": 30_000,
        "security_protocol": "PLAINTEXT",
        "fetch_min_bytes": 1,
        "fetch_max_wait_ms": 500,
        "max_partition_fetch_bytes": 1_048_576,
        "fetch_max_bytes": 52_428_800,
    }
    for key in ("fetch_min_bytes", "fetch_max_wait_ms", "max_partition_fetch_bytes", "fetch_max_bytes"):
        assert consumer[key] == KafkaConsumer.DEFAULT_CONFIG[key], key
    for role in ("producer", "admin"):
        assert not set(CONSUMER_ONLY) & set(client_options(settings, role)), role


@pytest.mark.parametrize("role", ["consumer", "producer", "admin"])
def test_every_option_is_one_kafka_python_accepts_for_that_client(certs, role):
    """kafka-python refuses unknown keyword arguments: every key must be in the class's table."""
    for settings in (
        everything(certs),
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_oauth_token="t0k3n-abc"),
    ):
        options = client_options(settings, role)
        unknown = set(options) - set(CLASSES[role].DEFAULT_CONFIG)
        assert not unknown, f"{role}: {unknown}"


def test_tls_sasl_and_tuning_reach_the_options(certs):
    consumer = client_options(everything(certs), "consumer")
    assert consumer["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert consumer["security_protocol"] == "SASL_SSL"
    assert consumer["ssl_cafile"] == str(certs.ca) and consumer["ssl_certfile"] == str(certs.client_cert)
    assert consumer["ssl_keyfile"] == str(certs.client_key)
    assert consumer["ssl_password"] == certs.key_password  # plain: kafka-python needs it
    assert consumer["ssl_check_hostname"] is False
    assert (consumer["sasl_mechanism"], consumer["sasl_plain_username"], consumer["sasl_plain_password"]) == (
        "SCRAM-SHA-512",
        "alice",
        "scram-pw-77",
    )
    for key, value in TUNING.items():
        assert consumer[key] == value, key
    producer = client_options(everything(certs), "producer")
    assert producer["receive_buffer_bytes"] == 262_144 and producer["send_buffer_bytes"] == 131_072
    assert producer["ssl_certfile"] == str(certs.client_cert) and producer["sasl_plain_password"] == "scram-pw-77"


def test_the_source_and_the_sinks_use_the_mapping(certs):
    settings = everything(certs)
    assert kafka_client_options(settings) == client_options(settings, "consumer")
    config = KafkaAlarmSink(settings.model_copy(update={"alarms_topic": "a"}), flush_timeout_seconds=3)._config()
    expected = client_options(settings, "producer")
    for key in (
        "bootstrap_servers",
        "security_protocol",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "receive_buffer_bytes",
        "send_buffer_bytes",
    ):
        assert config[key] == expected[key], key
    assert config["client_id"] == "driftline-e2e-alarms" and config["acks"] == "all"
    assert set(config) <= set(KafkaProducer.DEFAULT_CONFIG)


def test_plain_and_scram_credentials_reach_kafka_pythons_mechanisms():
    from kafka.net.sasl.plain import SaslMechanismPlain
    from kafka.net.sasl.scram import SaslMechanismScram

    plain = client_options(
        KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="PLAIN",
            sasl_plain_username="alice",
            sasl_plain_password="plain-pw-1",
        )
    )
    assert SaslMechanismPlain(**plain).auth_bytes() == b"alice\x00alice\x00plain-pw-1"
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        scram = client_options(
            KafkaSettings(
                security_protocol="SASL_SSL",
                sasl_mechanism=mechanism,
                sasl_plain_username="alice",
                sasl_plain_password="scram-pw-2",
            )
        )
        first = SaslMechanismScram(**scram).auth_bytes()
        assert first.startswith(b"n,,n=alice,r="), first  # RFC 5802 client-first message


def test_ssl_settings_are_not_passed_without_tls():
    options = client_options(
        KafkaSettings(
            security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_plain_username="u", sasl_plain_password="p"
        )
    )
    assert not [key for key in options if key.startswith("ssl_")]


def test_an_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        client_options(KafkaSettings(), "streams")  # type: ignore[arg-type]


# ---- OAUTHBEARER -------------------------------------------------------------------------


def oauth(**token_source) -> KafkaSettings:
    return KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", **token_source)


def auth_bytes(settings: KafkaSettings) -> bytes:
    """What kafka-python sends the broker, from the options we give it."""
    return SaslMechanismOAuth(**client_options(settings)).auth_bytes()


def test_a_static_token_is_sent_as_kafka_python_frames_it():
    settings = oauth(sasl_oauth_token="static-token-9")
    provider = client_options(settings)["sasl_oauth_token_provider"]
    assert isinstance(provider, StaticTokenProvider) and isinstance(provider, AbstractTokenProvider)
    assert auth_bytes(settings) == b"n,,\x01auth=Bearer static-token-9\x01\x01"
    assert "static-token-9" not in repr(provider)


def test_a_token_file_is_read_again_at_every_authentication(tmp_path):
    path = tmp_path / "token"
    path.write_text("first-token-1\n")
    settings = oauth(sasl_oauth_token_file=path)
    provider = token_provider(settings)
    assert isinstance(provider, FileTokenProvider)
    assert provider.token() == "first-token-1"
    path.write_text("rotated-token-2")  # as kubelet rotates a projected token in place
    assert provider.token() == "rotated-token-2"
    assert b"Bearer rotated-token-2" in auth_bytes(settings)
    path.write_text("  \n")
    with pytest.raises(ValueError, match="sasl_oauth_token_file .* is empty"):
        provider.token()


def test_a_provider_class_named_by_its_path_is_built_and_its_extensions_kept():
    settings = oauth(sasl_oauth_token_provider="tests.monitor.test_kafka_client:FixedProvider")
    assert auth_bytes(settings) == b"n,,\x01auth=Bearer provider-token-0042\x01logicalCluster=lkc-1\x01\x01"


def test_every_token_handed_to_kafka_python_is_redacted_from_the_logs(tmp_path, kafka_at_debug):
    """kafka-python logs its SASL requests, auth bytes and all, at DEBUG: a token read
    from a file after start (a rotation) must be redacted as well."""
    from kafka.protocol.sasl import SaslAuthenticateRequest

    stream = io.StringIO()
    setup_logging("DEBUG", "text", [], stream=stream)
    kafka_at_debug()
    path = tmp_path / "token"
    path.write_text("late-rotated-token-31")
    for settings in (
        oauth(sasl_oauth_token_file=path),
        oauth(sasl_oauth_token=SecretStr("static-tok-32")),
        oauth(sasl_oauth_token_provider="tests.monitor.test_kafka_client:FixedProvider"),
    ):
        request = SaslAuthenticateRequest(auth_bytes(settings))
        # as kafka.net.connection logs every request it sends
        logging.getLogger("kafka.net.connection").debug("%s Request %d: %s", "<conn>", 2, request)
    text = stream.getvalue()
    assert text.count("SaslAuthenticateRequest") == 3
    for token in ("late-rotated-token-31", "static-tok-32", "provider-token-0042"):
        assert token not in text, token
    assert text.count(REDACTED) == 3


@pytest.fixture
def kafka_at_debug():
    """Lower kafka-python's loggers to DEBUG (setup_logging holds them at WARNING) for one
    test, as an operator chasing a connection problem would."""
    logger = logging.getLogger("kafka")
    level = logger.level
    yield lambda: logger.setLevel(logging.DEBUG)
    logger.setLevel(level)


# ---- end to end on the embedded broker -----------------------------------------------------


def publish(bootstrap: str, topic: str, valid: int, malformed: int, **options) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **options)
    try:
        for i in range(valid):
            event = {"model": "m", "id": f"p-{i}", "features": {"x": float(i % 7)}, "prediction": 0.5}
            producer.send(topic, key=b"m", value=orjson.dumps(event))
        for i in range(malformed):
            producer.send(topic, key=b"m", value=b"{not json " + str(i).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()


def run_and_check(
    tmp_path: Path,
    bootstrap: str,
    topics: dict[str, str],
    kafka: dict,
    read_options: dict,
    secrets: tuple[str, ...] = (),
) -> None:
    """``driftline run`` with ``kafka`` settings consumes every event (offsets committed)
    and produces the dead letters (its producer), then its log holds none of ``secrets``."""
    group = f"g-{tmp_path.name}"
    broker = type("B", (), {"bootstrap_servers": bootstrap})()
    config = write_config(tmp_path / "c.yml", broker=broker, topics=topics, group=group, state_dir=tmp_path / "state")
    cfg = yaml.safe_load(config.read_text())
    cfg["kafka"].update(kafka)
    config.write_text(yaml.safe_dump(cfg))
    publish(bootstrap, topics["predictions"], 300, 3, **read_options)
    with DriftlineProcess(config, tmp_path) as proc:
        # consumed: every record of both partitions committed (the probe is a plain
        # consumer with the same connection options)
        def committed() -> bool:
            probe = KafkaConsumer(group_id=group, enable_auto_commit=False, bootstrap_servers=bootstrap, **read_options)
            try:
                from kafka import TopicPartition

                return sum(probe.committed(TopicPartition(topics["predictions"], p)) or 0 for p in range(2)) >= 303
            finally:
                probe.close()

        try:
            wait_for(committed, 120, "the 303 events to be consumed and committed", interval=1.0)
        except AssertionError:
            raise AssertionError(f"not consumed; log:\n{proc.log()[-4000:]}") from None
        produced = read_letters(bootstrap, topics["dead_letter"], 3, read_options)
        assert len(produced) == 3, proc.log()[-4000:]
        assert proc.terminate() == 0
        log = proc.log()
    for secret in secrets:
        assert secret not in log


def read_letters(bootstrap: str, topic: str, count: int, options: dict) -> list:
    if not options:
        return read_topic(bootstrap, topic, count)
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **options)
    try:
        parts = [TopicPartition(topic, p) for p in range(2)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        got: list = []
        deadline = time.monotonic() + 60
        while len(got) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
        return got
    finally:
        consumer.close()


@pytest.mark.kafka
def test_plaintext_with_every_tuning_option_set_consumes_and_produces(broker, topics, tmp_path):
    run_and_check(tmp_path, broker.bootstrap_servers, topics, dict(TUNING), {})


@pytest.mark.kafka
def test_mutual_tls_with_an_encrypted_client_key_consumes_and_produces(certs, tmp_path):
    """SSL end to end: the CA, the client certificate, its encrypted key and the key's
    password all serve in real TLS handshakes (Tansu behind a TLS-terminating proxy that
    requires a client certificate), for the admin client, the producers and the consumer."""
    tls = {
        "security_protocol": "SSL",
        "ssl_cafile": str(certs.ca),
        "ssl_certfile": str(certs.client_cert),
        "ssl_keyfile": str(certs.client_key),
        "ssl_password": certs.key_password,
    }
    with TlsBroker(certs) as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, **tls, **TUNING)
        topics = {"predictions": "predictions", "feedback": "feedback", "dead_letter": "dlq"}
        admin = KafkaAdminClient(**client_options(settings, "admin"))
        try:
            admin.create_topics([NewTopic(name, 2, 1) for name in topics.values()])
        finally:
            admin.close()
        connect = {
            k: v
            for k, v in client_options(settings, "producer").items()
            if k.startswith("ssl_") or k == "security_protocol"
        }
        run_and_check(
            tmp_path, broker.bootstrap_servers, topics, {**tls, **TUNING}, connect, secrets=(certs.key_password,)
        )
        assert broker.handshakes >= 4 and broker.refused == 0


def handshake(settings: KafkaSettings, port: int) -> None:
    """A TLS handshake with the SSL context kafka-python builds from our options.

    Not through a kafka-python client: kafka-python 3.0.12 leaves the socket of a failed
    handshake open for the garbage collector, and retries until its bootstrap timeout."""
    from kafka.net.transport import KafkaSSLTransport

    context = KafkaSSLTransport._build_ssl_context(
        {**KafkaSSLTransport.DEFAULT_CONFIG, **client_options(settings, "admin")}
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"\x00\x00\x00\x00")  # TLS 1.3: a refused client certificate shows on use
            if tls.recv(1) == b"":
                raise ssl.SSLError("the broker closed the connection after the handshake")


@pytest.mark.kafka
def test_tls_refuses_a_broker_signed_by_another_ca_and_a_client_without_certificate(certs):
    with TlsBroker(certs) as broker:
        common = {"bootstrap_servers": broker.bootstrap_servers, "security_protocol": "SSL"}
        client_cert = {
            "ssl_certfile": certs.client_cert,
            "ssl_keyfile": certs.client_key,
            "ssl_password": certs.key_password,
        }
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(KafkaSettings(**common, ssl_cafile=certs.other_ca, **client_cert), broker.port)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(KafkaSettings(**common, ssl_cafile=certs.ca), broker.port)
        # the proxy's thread counts a refusal when its side of the handshake fails, which
        # can be a moment after the client's side did (seen once in a full run)
        wait_for(lambda: broker.refused == 2, 10, f"the proxy to refuse both handshakes (refused {broker.refused})")
        assert broker.handshakes == 0
