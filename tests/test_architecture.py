"""The package's folders are its architecture: imports point one way and no file imports itself in a loop.

Layers, bottom to top: ``errors``/``config`` -> ``models``, ``data``, ``metrics`` -> ``training`` and ``deploy`` (side
by side, never importing each other) -> ``benchmark`` -> ``__main__``. Read from the source with ``ast``, so an
import inside a function counts as much as one at the top of a file.
"""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "urd_lightning"
# What each part may never import (directly; the closure follows from checking every file).
FORBIDDEN = {
    "models": ("training", "deploy", "benchmark", "data"),
    "metrics": ("training", "deploy", "benchmark", "models", "data"),
    "data": ("training", "deploy", "benchmark", "models", "metrics"),
    "training": ("deploy", "benchmark"),
    "deploy": ("training", "benchmark"),
    "config": ("models", "data", "metrics", "training", "deploy", "benchmark"),
    "files": ("config", "models", "data", "metrics", "training", "deploy", "benchmark"),
    "checkpoint_io": ("config", "models", "data", "metrics", "training", "deploy", "benchmark"),
    "hardware": ("config", "models", "data", "metrics", "training", "deploy", "benchmark"),
    "run": ("config", "models", "data", "metrics", "training", "deploy", "benchmark"),
    "errors": ("config", "models", "data", "metrics", "training", "deploy", "benchmark"),
}
# Imports inside functions are allowed only for start-up time, each named here with its reason.
DEFERRED_OK = {
    ("urd_lightning.__main__", "urd_lightning.errors"): "the CLI prints its help before importing anything",
    ("urd_lightning.data.cli", "urd_lightning.data.download"): "`data check` starts without the download code",
    ("urd_lightning.data.cli", "urd_lightning.data.check"): "`data download` starts without the check code",
    ("urd_lightning.data.cli", "urd_lightning.data.demo"): "`data check` starts without the demo generator",
    ("urd_lightning.data.cli", "urd_lightning.data.dtd"): "`data download` starts without the DTD check code",
    ("urd_lightning.data.cli", "urd_lightning.data.datamodule"): "`data check` loads Lightning only for show_augment",
    ("urd_lightning.data.cli", "urd_lightning.data.preview"): "`data check` loads matplotlib only for show_augment",
    ("urd_lightning.data", "urd_lightning.data.datamodule"): "the lazy re-export keeps Lightning out of `deploy`",
    ("urd_lightning.deploy.checkpoint", "urd_lightning.models"): "checkpoint errors come before timm's import",
}
# Guidance, not a rule: a file is as long as its one concern needs. Past this a warning asks whether it holds two.
LONG_FILE = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, bool]]:
    """(imported urd_lightning module, at module level?) for every import statement of one module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule when `sub` is one, else a name from pkg.
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                       for a in node.names]
        for target in targets:
            if target.startswith("urd_lightning"):
                found.append((target, id(node) in top_level))
    return found


def part_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_found():
    assert {"urd_lightning.training.module", "urd_lightning.deploy.predict", "urd_lightning.benchmark.report",
            "urd_lightning.models.urd", "urd_lightning.data.datamodule", "urd_lightning.metrics.aupro"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_one_way(name):
    forbidden = FORBIDDEN.get(part_of(name), ())
    bad = [target for target, _ in imports_of(name) if part_of(target) in forbidden]
    assert not bad, f"{name} imports {bad}: {part_of(name)}/ may not import {', '.join(forbidden)}"


def test_no_import_cycles():
    graph = {name: {t for t, _ in imports_of(name) if t in MODULES and t != name} for name in MODULES}
    # A package's __init__ re-exporting its own submodules is how packages work, not a cycle between files.
    graph = {n: {t for t in ts if not (n != "urd_lightning" and t.startswith(n + "."))} for n, ts in graph.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_function_level_imports_are_only_the_named_start_up_deferrals():
    deferred = {(name, target) for name in MODULES for target, top in imports_of(name) if not top}
    unexplained = sorted(deferred - set(DEFERRED_OK))
    assert not unexplained, f"imports inside functions (move them to the top, or name the reason here): {unexplained}"


def test_long_files_are_pointed_out():
    long = {name: n for name in MODULES if (n := len(MODULES[name].read_text().splitlines())) > LONG_FILE}
    for name, lines in sorted(long.items()):
        warnings.warn(f"{MODULES[name]} has {lines} lines (guidance: about {LONG_FILE}); does it hold two concerns?",
                      stacklevel=1)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if MODULES[n].name == "__init__.py"))
def test_each_package_says_what_lives_there(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert doc, f"{MODULES[name]} needs a docstring saying what lives there and what it may import"


def test_deploy_does_not_load_lightning():
    code = ("import sys, urd_lightning.deploy; print(sorted(m for m in sys.modules "
            "if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"import urd_lightning.deploy loaded Lightning: {done.stdout}"


def test_at_most_five_loose_top_level_modules():
    # The package is grouped by part (config/, run/, models/, data/, metrics/, training/, deploy/, benchmark/); only
    # the entry point and the few modules every part shares stay loose.
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 5, f"{len(loose)} loose modules at the top of the package: {loose}; put them in a part"
