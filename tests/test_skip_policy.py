"""tests/skip_policy.py: a skip fails the run unless its test is allowed to skip.

Each case runs pytest in a subprocess on a small throw-away suite whose conftest imports
the policy's hooks, as tests/conftest.py does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.skip_policy import ALLOW_ENV, ALLOWED_SKIPS, INSTALL_COMMAND

ROOT = Path(__file__).resolve().parents[1]

SUITE = {
    "test_body.py": """
        import pytest
        def test_skips_in_its_body():
            pytest.skip("promtool is not installed")
        def test_passes():
            pass
        """,
    "test_fixture.py": """
        import pytest
        @pytest.fixture
        def prometheus():
            pytest.skip("prometheus is not installed")
        def test_needs_it(prometheus):
            pass
        """,
    "test_mark.py": """
        import pytest
        @pytest.mark.skipif(True, reason="docker-compose is not installed")
        def test_marked():
            pass
        @pytest.mark.xfail(reason="a known bug", strict=True)
        def test_expected_failure():
            assert False
        """,
}

MODULE_SKIP = {
    "test_module.py": """
        import pytest
        pytest.skip("the whole module needs promtool", allow_module_level=True)
        def test_never_collected():
            pass
        """,
    "test_other.py": """
        def test_passes():
            pass
        """,
}


def _run(
    tmp_path: Path, allowed: dict[str, str] | None = None, suite: dict[str, str] = SUITE, **env: str
) -> subprocess.CompletedProcess[str]:
    tmp_path.mkdir(exist_ok=True)
    for name, text in suite.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    (tmp_path / "conftest.py").write_text(
        "from tests import skip_policy\n"
        "from tests.skip_policy import pytest_make_collect_report, pytest_runtest_makereport\n"
        f"skip_policy.ALLOWED_SKIPS.update({allowed or {}!r})\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    environ.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _outcomes(out: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/SKIPPED/XFAIL from pytest's -v lines (a test
    that failed at setup has a PASSED-less ERROR line; the last outcome wins)."""
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL"):
            found[parts[0].split("::")[-1]] = parts[1]
    return found


def test_every_kind_of_skip_fails_the_run_with_what_to_install(tmp_path):
    done = _run(tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    got = _outcomes(out)
    assert got["test_skips_in_its_body"] == "FAILED"
    assert got["test_needs_it"] == "ERROR"  # skipped in its fixture's setup
    assert got["test_marked"] == "ERROR"  # a skipif mark is applied at setup
    assert got["test_passes"] == "PASSED" and got["test_expected_failure"] == "XFAIL"
    assert "SKIPPED" not in got.values()
    for reason in ("promtool is not installed", "prometheus is not installed", "docker-compose is not installed"):
        assert reason in out
    assert INSTALL_COMMAND in out and "ALLOWED_SKIPS" in out


def test_a_module_skipped_at_collection_is_a_collection_error(tmp_path):
    done = _run(tmp_path, suite=MODULE_SKIP)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "ERROR collecting test_module.py" in out and "the whole module needs promtool" in out
    assert INSTALL_COMMAND in out


def test_a_listed_skip_passes_and_the_others_still_fail(tmp_path):
    done = _run(tmp_path, allowed={"test_body.py::test_skips_in_its_body": "why it may skip"})
    got = _outcomes(done.stdout)
    assert got["test_skips_in_its_body"] == "SKIPPED"
    assert got["test_needs_it"] == "ERROR" and got["test_marked"] == "ERROR"
    assert done.returncode != 0
    module = _run(tmp_path / "module", allowed={"test_module.py": "the whole module"}, suite=MODULE_SKIP)
    assert module.returncode == 0, module.stdout + module.stderr
    assert "1 passed, 1 skipped" in module.stdout


def test_the_escape_hatch_lets_a_local_run_skip(tmp_path):
    done = _run(tmp_path, **{ALLOW_ENV: "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    got = _outcomes(done.stdout)
    assert got["test_skips_in_its_body"] == got["test_needs_it"] == got["test_marked"] == "SKIPPED"


def test_the_suite_itself_allows_no_skip():
    """The one place deliberate skips are listed is empty: nothing in the suite skips."""
    assert ALLOWED_SKIPS == {}


@pytest.mark.parametrize("env", ["CI", "HYPOTHESIS_PROFILE"])
def test_the_ci_profile_is_loaded_under_ci_and_make_test(tmp_path, env):
    value = "true" if env == "CI" else "ci"
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_profile.py").write_text(
        textwrap.dedent("""
        from hypothesis import settings
        def test_profile():
            s = settings.default
            assert s.derandomize and s.print_blob and s.deadline is None
            assert s.database is None and s.max_examples == 100
        """)
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    environ.update(PYTHONPATH=str(ROOT), **{env: value})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
