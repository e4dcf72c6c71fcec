"""sinks/rules/driftline-alerts.yml: promtool checks the file and runs its unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "sinks" / "rules" / "driftline-alerts.yml"
RULE_TESTS = HERE / "rules_test.yml"
REQUIRED = {
    "DriftlineFeatureDrift",
    "DriftlinePerformanceDrop",
    "DriftlineInvalidEventsHigh",
    "DriftlineConsumerLagHigh",
    "DriftlineWebhookFailures",
    "DriftlineWebhookTriggersFailed",
    "DriftlineNotConsuming",
    "DriftlineDown",
}

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (make system-deps installs Debian's prometheus)")
    return path


def alerts() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_the_rule_file_is_valid(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_the_unit_tests_pass(promtool: str) -> None:
    result = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60, cwd=HERE
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_required_and_unit_tested() -> None:
    assert REQUIRED <= alerts()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested_firing = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    tested_quiet = {
        case["alertname"] for test in tests for case in test["alert_rule_test"] if not case.get("exp_alerts")
    }
    assert alerts() <= tested_firing and alerts() <= tested_quiet


def test_a_broken_expectation_fails(promtool: str, tmp_path: Path) -> None:
    # The unit tests can fail: the same tests against a rule file whose lag threshold
    # was raised tenfold do.
    broken = tmp_path / "sinks" / "rules"
    broken.mkdir(parents=True)
    (broken / "driftline-alerts.yml").write_text(RULES.read_text().replace("> 100000", "> 1000000"))
    tests_dir = tmp_path / "tests" / "sinks"
    tests_dir.mkdir(parents=True)
    (tests_dir / "rules_test.yml").write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"], capture_output=True, text=True, timeout=60, cwd=tests_dir
    )
    assert result.returncode != 0
    assert "DriftlineConsumerLagHigh" in result.stdout + result.stderr
