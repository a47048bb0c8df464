"""A built wheel works without the source tree: configs inside, the `urd` command, a short demo training run.

The wheel goes into a fresh venv with ``--no-deps``; a ``.pth`` line lets the venv see the packages of the interpreter
running the tests (``--system-site-packages`` would show the base interpreter's instead when the tests run in a venv,
as ``make test`` does). The venv's own copy comes first on ``sys.path``, and every command runs from a temporary
directory with no PYTHONPATH, so the checkout's sources are never used (the test checks which copy is imported).
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"default.yaml", "data/visa.yaml", "data/demo.yaml", "experiment/paper.yaml"}


def run(args: list, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "URD_CONFIG_DIR", "VIRTUAL_ENV"}}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin folder, an empty working directory) with the freshly built wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy: an in-tree build reuses a stale *.egg-info file list, which could hide a packaging bug.
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("src", "configs"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", base / "dist", source],
        cwd=base)
    (wheel,) = (base / "dist").glob("urd_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"urd_lightning/configs/{name}" for name in SHIPPED} <= names
    run([sys.executable, "-m", "venv", base / "venv"], cwd=base)
    bin_dir = base / "venv" / "bin"
    venv_site = run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base)
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(venv_site.stdout.strip()) / "_outer_packages.pth").write_text("\n".join(ours) + "\n")
    run([bin_dir / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=base)
    work = base / "work"
    work.mkdir()
    return bin_dir, work


@pytest.mark.slow  # builds a wheel, makes a venv and trains 2 iterations: about a minute
def test_wheel_prints_configs_and_trains_from_any_directory(installed: tuple[Path, Path]):
    bin_dir, work = installed
    where = run([bin_dir / "python", "-c", "import urd_lightning; print(urd_lightning.__file__)"], cwd=work)
    assert str(bin_dir.parent) in where.stdout  # the wheel's copy, not the checkout's
    config = run([bin_dir / "urd", "print-config", "dataset=visa"], cwd=work).stdout
    assert "benchmark: visa" in config
    run([bin_dir / "urd", "train", "dataset=demo", "trainer.max_steps=2", "logger=csv", "data.num_workers=0",
         "trainer.enable_progress_bar=false", "trainer.accelerator=cpu"], cwd=work)
    (metrics,) = (work / "results").rglob("metrics.json")
    assert json.loads(metrics.read_text())["steps"] == 2
    assert (work / "datasets" / "demo").is_dir()  # relative paths are the user's working directory
    help_text = run([bin_dir / "python", "-m", "urd_lightning", "--help"], cwd=work).stdout
    assert "train" in help_text
