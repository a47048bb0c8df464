"""Declared dependencies match what the package imports, the pins match the declarations, extras are optional.

The import graph is read from the source with ``ast`` and each imported name mapped to its distribution with
``importlib.metadata.packages_distributions()``: an import of an undeclared package (or a declared package nobody
imports) fails here, whatever happens to be installed transitively.
"""

import ast
import importlib.util
import re
import socket
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from urd_lightning.config import load_config
from urd_lightning.training.loggers import require_logger_package

real_find = importlib.util.find_spec

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "urd_lightning"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# extra -> the import names it provides
OPTIONAL = {"wandb": ("wandb",), "export": ("onnx", "onnxruntime"), "cluster": ("submitit",),
            "augment": ("albumentations",)}
# Extras that Lightning imports, never this package: logger=tensorboard needs tensorboard for TensorBoardLogger.
EXTRAS_FOR_LIGHTNING = {"tensorboard": ("tensorboard",)}
# Pinned but never imported: timm needs a torchvision, and it must be the build matching the pinned torch.
PINNED_NOT_IMPORTED = {"torchvision"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", name.strip(), maxsplit=1)[0]).lower()


def declared(requirements: list[str]) -> set[str]:
    return {canonical(r) for r in requirements}


def third_party_imports() -> dict[str, set[tuple[str, bool]]]:
    """import name -> {(module file, at module level?)} for every non-stdlib import of the package."""
    found: dict[str, set[tuple[str, bool]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "urd_lightning":
                    found.setdefault(top, set()).add((path.name, id(node) in top_level))
    return found


def distribution_of(import_name: str, candidates: set[str]) -> str:
    dists = {canonical(d) for d in packages_distributions().get(import_name, [])}
    assert dists, f"'{import_name}' is imported by the package but no installed distribution provides it"
    chosen = dists & candidates
    return sorted(chosen or dists)[0]


def test_every_import_is_a_declared_dependency_and_nothing_else_is():
    core = declared(PROJECT["dependencies"])
    extras = {canonical(n) for names in OPTIONAL.values() for n in names}
    imported = {distribution_of(name, core | extras) for name in third_party_imports()}
    assert imported - core - extras == set(), "imported but not declared in pyproject.toml `dependencies`"
    assert core - imported == set(), "declared in pyproject.toml `dependencies` but never imported"
    assert extras <= imported


def test_optional_packages_are_imported_only_inside_functions():
    for name in {n for names in OPTIONAL.values() for n in names}:
        where = third_party_imports().get(name, set())
        assert where and not any(top for _, top in where), f"{name} is an extra: import it where it is used"


def test_extras_are_declared_and_pinned_and_the_pins_match_the_declarations():
    extras = PROJECT["optional-dependencies"]
    every_extra = {**OPTIONAL, **EXTRAS_FOR_LIGHTNING}
    for extra, names in every_extra.items():
        assert declared(extras[extra]) == {canonical(n) for n in names}
    pins = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all("==" in p for p in pins)
    expected = declared(PROJECT["dependencies"]) | {canonical(n) for ns in every_extra.values() for n in ns}
    assert declared(pins) == expected | PINNED_NOT_IMPORTED


# Run in a fresh interpreter: ``None`` in sys.modules makes `import wandb` fail as if it were not installed.
IMPORT_ALL = """
import importlib, pkgutil, sys
for blocked in {blocked!r}:
    sys.modules[blocked] = None
import urd_lightning
for info in pkgutil.walk_packages(urd_lightning.__path__, "urd_lightning."):
    if info.name != "urd_lightning.__main__":
        importlib.import_module(info.name)
print("imported", len(sys.modules))
"""


def test_every_module_imports_without_the_extras():
    blocked = [n for names in OPTIONAL.values() for n in names]
    result = subprocess.run([sys.executable, "-c", IMPORT_ALL.format(blocked=blocked)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_without_wandb_the_default_logger_falls_back_to_csv_with_one_line(monkeypatch, tmp_path, caplog):
    from urd_lightning.training.history import HistoryCSVLogger
    from urd_lightning.training.loggers import build_logger

    monkeypatch.setitem(sys.modules, "wandb", None)  # a bare `pip install urd-lightning`
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else real_find(name))
    cfg = load_config([f"output_dir={tmp_path}"])
    assert cfg.logger == "wandb"
    require_logger_package(cfg)  # no longer a stop
    with caplog.at_level("INFO", logger="urd_lightning"):
        logger = build_logger(cfg, tmp_path)
    assert isinstance(logger, HistoryCSVLogger)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "pip install 'urd-lightning[wandb]'" in line
    for logger in ("csv", "none"):
        require_logger_package(OmegaConf.merge(cfg, {"logger": logger}))


# --- the support matrix: README, requires-python and the pins agree ---
README_RANGE = re.compile(r"Python (3\.\d+)[–-](3\.\d+)")


def claimed_versions() -> list[str]:
    match = README_RANGE.search((ROOT / "README.md").read_text())
    assert match, "README.md states no 'Python 3.X–3.Y' range"
    low, high = (int(v.split(".")[1]) for v in match.groups())
    return [f"3.{minor}" for minor in range(low, high + 1)]


def test_readme_requires_python_and_requirements_state_the_same_range():
    versions = claimed_versions()
    assert PROJECT["requires-python"] == f">={versions[0]}"
    header = README_RANGE.search((ROOT / "requirements.txt").read_text())
    assert header and [header.group(1), header.group(2)] == [versions[0], versions[-1]]


def index_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow  # minutes: pip resolves every pin against the package index, nothing is installed
@pytest.mark.parametrize("version", [*claimed_versions(), "below"])
def test_pins_resolve_for_every_claimed_python_version(version, tmp_path):
    if not index_reachable():
        pytest.skip("pypi.org is unreachable: the pins can only be resolved against the package index")
    low = claimed_versions()[0]
    target = version if version != "below" else f"3.{int(low.split('.')[1]) - 1}"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
         "--python-version", target, "--target", str(tmp_path), "-r", str(ROOT / "requirements.txt"),
         "-r", str(ROOT / "requirements-dev.txt")], capture_output=True, text=True, timeout=1800)
    if version == "below":  # the claim starts where the pins start: one version lower must not resolve
        assert result.returncode != 0 and "No matching distribution" in result.stderr, f"pins resolve for {target}"
    else:
        assert result.returncode == 0, result.stderr[-3000:]
