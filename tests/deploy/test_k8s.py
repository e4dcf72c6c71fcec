"""deploy/k8s/: valid manifests that wire together (labels, ports, probes, secrets), a
configuration driftline accepts, and a PrometheusRule whose rules are the shipped rule file.
No cluster needed: the checks read the files, and promtool checks the rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from driftline.monitor.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
RULES = ROOT / "sinks" / "rules" / "driftline-alerts.yml"


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append(doc)
    return docs


def resource(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def container() -> dict[str, Any]:
    (only,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def driftline_config() -> str:
    return resource("ConfigMap")["data"]["driftline.yml"]


def test_every_manifest_is_valid_yaml_with_kind_and_name():
    kinds = set()
    for doc in documents():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"] == "driftline"
        kinds.add(doc["kind"])
    assert {
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Secret",
        "Kustomization",
    } <= kinds


def test_the_kustomization_lists_every_manifest():
    listed = set(resource("Kustomization")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_deployment_runs_several_replicas_non_root_with_probes_and_resources():
    deployment = resource("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 3
    pod = spec["template"]["spec"]
    assert matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    assert pod["securityContext"]["runAsUser"] == uid  # the image's user
    c = container()
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics", probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # SIGTERM flushes, writes the state and commits: more than Kubernetes' default 30 s
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_ports_agree_with_the_configuration():
    """The config's prometheus.port is the containerPort `metrics`, which the Service and
    the ServiceMonitor name; every selector finds what it is meant to."""
    settings = load_settings_from_configmap()
    (port,) = [p for p in container()["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == settings.prometheus.port
    # the environment overrides the file: the image's ENV and the container's env must agree
    env = {e["name"]: e.get("value") for e in container()["env"]}
    image_env = re.search(r"DRIFTLINE_PROMETHEUS__PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    for given in (env.get("DRIFTLINE_PROMETHEUS__PORT"), image_env and image_env.group(1)):
        assert given in (None, str(port["containerPort"]))
    pod_labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = resource("Service")
    assert matches(service["spec"]["selector"], pod_labels)
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ("metrics", port["containerPort"])
    assert service["spec"]["publishNotReadyAddresses"] is True  # a not-ready replica is still scraped
    monitor = resource("ServiceMonitor")
    assert matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [service_port["name"]]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    # DriftlineDown matches up{job=~"driftline.*"}; the job is the Service's name
    assert re.fullmatch(r"driftline.*", service["metadata"]["name"])


def test_the_pdb_selects_the_deployments_pods_and_leaves_most_running():
    pdb = resource("PodDisruptionBudget")
    deployment = resource("Deployment")
    assert matches(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1 or (
        pdb["spec"].get("minAvailable", 0) >= deployment["spec"]["replicas"] - 1
    )


def test_config_comes_from_the_configmap_and_secrets_from_the_secret():
    c = container()
    env = {e["name"]: e for e in c["env"]}
    pod = resource("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_path = env["DRIFTLINE_CONFIG"]["value"]
    mount = mounts[config_path]
    assert volumes[mount["name"]]["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]
    assert mount["subPath"] in resource("ConfigMap")["data"]
    secret = resource("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    secret_env = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert "DRIFTLINE_KAFKA__SASL_PLAIN_PASSWORD" in secret_env
    for ref in secret_env.values():
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys
    # no secret value in the ConfigMap: passwords and tokens come from the environment
    kafka = yaml.safe_load(driftline_config())["kafka"]
    assert not {"sasl_plain_password", "sasl_password", "ssl_password", "sasl_oauth_token"} & set(kafka)
    # the CA file the config names is mounted from the Secret
    ca = Path(kafka["ssl_cafile"])
    (ca_mount,) = [m for path, m in mounts.items() if ca.parent == Path(path)]
    items = volumes[ca_mount["name"]]["secret"]["items"]
    assert {i["path"] for i in items} >= {ca.name} and {i["key"] for i in items} <= keys
    # the state directory is writable (the root file system is read-only)
    assert env["DRIFTLINE_STATE_DIR"]["value"] in mounts and "/tmp" in mounts


def load_settings_from_configmap(tmp_path: Path | None = None):
    """The ConfigMap's driftline.yml through driftline's own validation, with the Secret's
    values in the environment and the mounted CA file replaced by a real one."""
    import os
    import tempfile

    from tests.support.tls import make_certs

    directory = Path(tmp_path or tempfile.mkdtemp(prefix="k8s-"))
    certs = make_certs(directory / "certs")
    text = driftline_config().replace("/etc/driftline/tls/ca.crt", str(certs.ca))
    config = directory / "driftline.yml"
    config.write_text(text)
    saved = {k: os.environ.get(k) for k in ("DRIFTLINE_KAFKA__SASL_PLAIN_PASSWORD", "DRIFTLINE_CONFIG")}
    os.environ["DRIFTLINE_KAFKA__SASL_PLAIN_PASSWORD"] = "from-the-secret"
    os.environ.pop("DRIFTLINE_CONFIG", None)
    try:
        return load_settings(config)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_configmaps_configuration_is_valid_for_driftline(tmp_path):
    settings = load_settings_from_configmap(tmp_path)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_plain_password.get_secret_value() == "from-the-secret"


def test_the_prometheus_rule_holds_exactly_the_shipped_rule_groups():
    rule = resource("PrometheusRule")
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert rule["spec"]["groups"] == shipped, (
        "deploy/k8s/prometheusrule.yaml differs from sinks/rules/driftline-alerts.yml: "
        "run `python deploy/k8s/generate.py`"
    )


def test_the_prometheus_rule_file_is_the_generators_output():
    import importlib.util

    spec = importlib.util.spec_from_file_location("k8s_generate", K8S / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert (K8S / "prometheusrule.yaml").read_text() == generate.render(), (
        "deploy/k8s/prometheusrule.yaml was edited by hand or is stale: run `python deploy/k8s/generate.py`"
    )


def test_promtool_accepts_the_prometheus_rules_groups(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package 'prometheus')")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": resource("PrometheusRule")["spec"]["groups"]}))
    done = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
