"""``make system-deps``: where Debian's prometheus and docker-compose are missing and
cannot be installed, it fails with the command to run (``make test`` depends on it, so
the suite never starts without them); where it can, it installs them.

Each case runs the real Makefile with PATH reduced to a directory of stand-ins (an
``id`` that answers a chosen uid, an ``apt-get`` that logs its calls), so the non-root and
no-apt cases are exercised here even though the suite runs as root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
CHMOD = shutil.which("chmod")
INSTALL = "apt-get install -y --no-install-recommends prometheus docker-compose"
BINARIES = ("prometheus", "promtool", "docker-compose")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _bin(tmp_path: Path, *, uid: int, present: tuple[str, ...] = (), apt: str | None = None) -> Path:
    """A PATH directory: ``id`` answering ``uid``, stand-ins for ``present`` and, when
    ``apt`` is given, an ``apt-get`` running that shell snippet after logging its args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "id", f'[ "$1" = "-u" ] && echo {uid} || echo "uid={uid}"')
    for name in present:
        _script(bin_dir / name, "exit 0")
    if apt is not None:
        _script(bin_dir / "apt-get", f'echo "$@" >> "{tmp_path}/apt.log"\n{apt}')
    return bin_dir


def _system_deps(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None, "make is needed to run make test at all"
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C"}
    return subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), "system-deps"], env=env, capture_output=True, text=True, timeout=60
    )


def _apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_to_do_when_every_binary_is_there(tmp_path):
    done = _system_deps(_bin(tmp_path, uid=1000, present=BINARIES, apt="exit 0"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert _apt_calls(tmp_path) == []


@pytest.mark.parametrize("missing", BINARIES)
def test_a_non_root_user_gets_the_command_to_run_and_a_failure(tmp_path, missing):
    present = tuple(b for b in BINARIES if b != missing)
    done = _system_deps(_bin(tmp_path, uid=1000, present=present, apt="exit 0"))
    assert done.returncode != 0
    assert f"missing: {missing}" in done.stderr
    assert INSTALL in done.stderr and "as root" in done.stderr
    assert _apt_calls(tmp_path) == [], "apt-get must not be tried without root"


def test_root_without_apt_get_gets_the_command_and_a_failure(tmp_path):
    done = _system_deps(_bin(tmp_path, uid=0))
    assert done.returncode != 0
    assert "missing: prometheus promtool docker-compose" in done.stderr
    assert INSTALL in done.stderr


def test_a_failed_apt_get_fails_with_the_command(tmp_path):
    done = _system_deps(_bin(tmp_path, uid=0, apt='[ "$1" = install ] && exit 100; exit 0'))
    assert done.returncode != 0
    assert "apt-get could not install them" in done.stderr and INSTALL in done.stderr
    assert [c.split()[0] for c in _apt_calls(tmp_path)] == ["update", "install"]


def test_an_install_that_leaves_a_binary_missing_fails(tmp_path):
    bin_dir = tmp_path / "bin"
    done = _system_deps(_bin(tmp_path, uid=0, apt=f'[ "$1" = install ] && : > "{bin_dir}/x"; exit 0'))
    assert done.returncode != 0
    assert "prometheus is still missing after apt-get" in done.stderr


def test_root_with_apt_get_installs_the_packages(tmp_path):
    bin_dir = tmp_path / "bin"
    install = "; ".join(
        f'printf "#!/bin/sh\\nexit 0\\n" > "{bin_dir}/{b}"; {CHMOD} +x "{bin_dir}/{b}"' for b in BINARIES
    )
    done = _system_deps(_bin(tmp_path, uid=0, apt=f'if [ "$1" = install ]; then {install}; fi; exit 0'))
    assert done.returncode == 0, done.stderr
    calls = _apt_calls(tmp_path)
    assert calls[0].split()[0] == "update"
    assert calls[1].split() == ["install", "-y", "-q", "--no-install-recommends", "prometheus", "docker-compose"]


def test_make_test_runs_system_deps_before_pytest_with_the_ci_profile():
    assert MAKE is not None
    done = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), "test"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line)
    assert "HYPOTHESIS_PROFILE=ci" in lines[pytest_line]
    assert any("system-deps" in line or "command -v" in line for line in lines[:pytest_line])


def test_make_bench_runs_exactly_the_commands_benchmarks_md_documents():
    """Each benchmark section's command, and nothing else, each with --check (a missed
    target fails `make bench`)."""
    import re

    assert MAKE is not None
    done = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), "bench", "PY=.venv/bin/python"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    ran = [line.strip() for line in done.stdout.splitlines() if "benchmarks/" in line]
    documented = re.findall(
        r"^(\.venv/bin/python benchmarks/\S+\.py[^\n#]*?)\s*$", (ROOT / "BENCHMARKS.md").read_text(), re.MULTILINE
    )
    assert ran == documented
    assert len(ran) >= 4
    for cmd in ran:  # a benchmark with targets (it takes --check) runs with --check
        script = ROOT / cmd.split()[1]
        assert ("--check" in cmd) == ("--check" in script.read_text()), cmd
