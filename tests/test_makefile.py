"""The Makefile's choice of interpreter, tested with a stand-in ``python3`` on PATH (no real venv, no install).

Rule: ``PYTHON=...`` wins; inside an active venv or conda env its ``python3``; else the project-local
``.venv/``, created with ``python3 -m venv`` when missing, or one line naming python3-venv when that cannot work.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

# Records every call; a `-c` probe importing ensurepip (what python3-venv provides on Debian) exits with
# $STUB_PROBE_RC; `-m venv DIR` makes DIR/bin/python.
STUB = """#!/bin/sh
echo "$@" >> "$STUB_LOG"
case "$1 $2" in "-c "*ensurepip*) exit "${STUB_PROBE_RC:-0}";; esac
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && printf '#!/bin/sh\\n' > "$3/bin/python" && chmod +x "$3/bin/python"
fi
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stub_bin = tmp_path / "stub-bin"
    stub_bin.mkdir()
    (stub_bin / "python3").write_text(STUB)
    (stub_bin / "python3").chmod(0o755)
    return tmp_path


def make(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON", "MAKEFLAGS"}}
    clean.update(PATH=f"{project / 'stub-bin'}:/usr/bin:/bin", STUB_LOG=str(project / "calls.log"), **env)
    return subprocess.run(["make", "-s", *args], cwd=project, env=clean, capture_output=True, text=True, timeout=120)


def calls(project: Path) -> list[str]:
    log = project / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


def test_without_an_env_a_local_venv_is_created_once_and_used(project: Path) -> None:
    first = make(project, "python")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == ".venv/bin/python"
    assert (project / ".venv/bin/python").is_file()
    assert "-m venv .venv" in calls(project)
    before = calls(project)
    second = make(project, "python")
    assert second.stdout.strip() == ".venv/bin/python"
    assert calls(project) == before  # the existing venv is reused, not recreated


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_venv_or_conda_env_is_used_as_it_is(project: Path, variable: str) -> None:
    result = make(project, "python", **{variable: "/somewhere/env"})
    assert result.stdout.strip() == "python3"
    assert not (project / ".venv").exists() and calls(project) == []


def test_python_variable_overrides_everything(project: Path) -> None:
    assert make(project, "python", PYTHON="/opt/py/bin/python").stdout.strip() == "/opt/py/bin/python"
    assert make(project, "python", "PYTHON=/opt/py/bin/python", VIRTUAL_ENV="/x").stdout.strip() == "/opt/py/bin/python"
    assert not (project / ".venv").exists()


def test_missing_venv_module_stops_with_one_line_naming_the_package(project: Path) -> None:
    result = make(project, "python", STUB_PROBE_RC="1")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(ours) == 1 and "python3-venv" in ours[0]
    assert not (project / ".venv").exists()


def test_every_target_runs_through_the_chosen_interpreter(project: Path) -> None:
    dry = make(project, "-n", "install", "test", "train", "lint", "benchmark", "test-ci-extra")
    assert dry.returncode == 0, dry.stderr
    commands = [line for line in dry.stdout.splitlines() if " -m " in line]
    assert commands and all(c.startswith(".venv/bin/python -m ") for c in commands if "-m venv" not in c), commands
    assert any("-m pytest" in c for c in commands) and any("urd_lightning train" in c for c in commands)


def test_clean_keeps_the_venv_and_distclean_removes_it(project: Path) -> None:
    make(project, "python")
    assert make(project, "clean").returncode == 0 and (project / ".venv/bin/python").is_file()
    assert make(project, "distclean").returncode == 0 and not (project / ".venv").exists()


def test_every_declared_target_has_a_rule():
    text = (ROOT / "Makefile").read_text()
    declared = " ".join(line for line in text.replace("\\\n", " ").splitlines() if line.startswith(".PHONY:"))
    declared_targets = set(declared.removeprefix(".PHONY:").split())
    rules = {line.split(":")[0] for line in text.splitlines() if line and line[0].isalpha() and ":" in line
             and not line.startswith(".")}
    assert declared_targets - rules == set()
