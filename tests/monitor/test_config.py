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
