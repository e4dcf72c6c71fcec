"""docker-compose.yml is valid and wires what matters (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package 'docker-compose')")
    done = subprocess.run(
        [binary, "-f", "docker-compose.yml", "config"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def _mounts(service: dict) -> dict[str, str]:
    """container path -> host path (relative to the repository) of bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
        else:
            source, target = v.get("source"), v["target"]
        if source is not None and source.startswith("/"):
            source = str(Path(source).relative_to(ROOT)) if Path(source).is_relative_to(ROOT) else source
        out[target] = source
    return out


def test_services(compose):
    assert {"kafka", "kafka-init", "monitor", "producer", "prometheus", "grafana"} <= set(compose["services"])


def test_kafka_is_kraft_with_an_internal_listener(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka


def test_topics_are_created_co_partitioned(compose):
    init = compose["services"]["kafka-init"]
    script = " ".join(init["command"]) if isinstance(init["command"], list) else init["command"]
    for topic in ("predictions feedback", "driftline-dead-letters"):
        assert topic in script
    # docker-compose config keeps the escaped $$ (a shell variable, not a compose one)
    assert '--partitions "$$PARTITIONS"' in script and int(init["environment"]["PARTITIONS"]) >= 2
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_monitor_runs_the_image_with_config_and_healthcheck(compose):
    monitor = compose["services"]["monitor"]
    assert monitor["build"]["context"] == str(ROOT)
    assert monitor["command"] == ["run"]
    env = monitor["environment"]
    assert env["DRIFTLINE_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["DRIFTLINE_CONFIG"] == "/etc/driftline/driftline.yml"
    assert _mounts(monitor)["/etc/driftline/driftline.yml"] == "deploy/driftline.yml"
    assert "/healthz" in " ".join(monitor["healthcheck"]["test"])
    assert monitor["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert "ports" not in monitor, "a published port would stop `--scale monitor=N`"


def test_producer_uses_the_same_image_to_simulate(compose):
    producer = compose["services"]["producer"]
    assert producer["image"] == compose["services"]["monitor"]["image"]
    assert producer["command"][:3] == ["simulate", "--bootstrap-servers", "kafka:9092"]


def test_prometheus_mounts_scrape_config_and_alert_rules(compose):
    mounts = _mounts(compose["services"]["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == "deploy/prometheus.yml"
    assert mounts["/etc/prometheus/rules/driftline-alerts.yml"] == "sinks/rules/driftline-alerts.yml"
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert "/etc/prometheus/rules/*.yml" in config["rule_files"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "driftline")
    assert job["dns_sd_configs"][0]["names"] == ["monitor"] and job["dns_sd_configs"][0]["port"] == 9308


def test_prometheus_config_is_valid_for_promtool(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    # promtool resolves rule_files; check the scrape config alone (the rules are checked
    # by the sinks tests).
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    config.pop("rule_files")
    (tmp_path / "p.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "p.yml")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_is_provisioned_from_the_repository(compose):
    mounts = _mounts(compose["services"]["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "grafana/provisioning"
    assert mounts["/var/lib/grafana/dashboards"] == "grafana/dashboards"
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasources["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "driftline-prometheus"
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/driftline.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_mounted_files_exist():
    for path in (
        "deploy/prometheus.yml",
        "deploy/driftline.yml",
        "sinks/rules/driftline-alerts.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/driftline.yml",
        "Dockerfile",
    ):
        assert (ROOT / path).is_file(), path


def test_compose_driftline_config_is_valid():
    from driftline.monitor.config import load_settings

    settings = load_settings(ROOT / "deploy/driftline.yml")
    assert settings.webhooks.policy.dry_run is True
    assert settings.webhooks.targets[0].secret_env == "DRIFTLINE_WEBHOOK_SECRET"


def test_dockerfile_runs_driftline_as_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM ${PYTHON_IMAGE}" in text and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "\nUSER driftline\n" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["driftline"]' in text and 'CMD ["run"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and "tests" in ignored
