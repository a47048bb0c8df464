"""configs/experiment/*.yaml: each loads through the real config loader and changes exactly the keys it claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from urd_lightning.benchmark.records import flatten
from urd_lightning.config import CONFIG_DIR, load_config

# experiment -> {dotted key: value} it must change relative to the defaults (and nothing else).
EXPECTED = {
    # The defaults follow the paper's network (GII); the file pins it, insists on DTD and adds the oracle evaluations.
    "paper": {"data.textures": "dtd", "data.dtd_root": "datasets/dtd", "eval.every_n_steps": 250},
    "authors": {"model.injection": "concat", "trainer.deterministic": True, "trainer.precision": "32-true"},
    "rd4ad": {
        "model.expert": False,
        "model.train_teacher": False,
        "model.injection": "none",
        "model.xavier_init": False,
        "data.synthesis": False,
        "data.textures": "none",
        "data.foreground": "none",
    },  # fmt: skip
    "no_expert": {"model.expert": False, "model.train_teacher": False},  # train_teacher is forced by the loader
    "no_gii": {"model.injection": "none"},
    "frozen_teacher": {"model.train_teacher": False},
    "no_synthesis": {"data.synthesis": False, "data.textures": "none", "model.train_teacher": False},
    "first_commit_losses": {"loss_variant": "first_commit"},
}
IGNORED = {"experiment", "run"}  # the experiment's name and the hashed run name always differ


@pytest.fixture(autouse=True)
def _no_dtd_here(tmp_path, monkeypatch):
    """Run where no datasets/dtd exists, so data.textures=auto resolves the same on every machine (procedural)."""
    monkeypatch.chdir(tmp_path)


def resolved(argv: list[str]) -> dict:
    return flatten(OmegaConf.to_container(load_config(argv), resolve=True))


def test_every_experiment_file_is_covered():
    assert {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_experiment_changes_exactly_its_keys(name: str):
    base = resolved(["dataset=mvtec", "data.category=bottle"])
    exp = resolved(["dataset=mvtec", "data.category=bottle", f"experiment={name}"])
    changed = {k: exp[k] for k in exp if k not in IGNORED and exp[k] != base.get(k)}
    assert changed == EXPECTED[name]
    assert exp["experiment"] == name


@pytest.mark.parametrize("dataset", ["mvtec", "visa", "btad", "mpdd", "demo"])
def test_every_experiment_loads_for_every_benchmark(dataset: str):
    for path in sorted((CONFIG_DIR / "experiment").glob("*.yaml")):
        cfg = load_config([f"dataset={dataset}", f"experiment={path.stem}"])
        assert cfg.dataset == dataset


def test_experiment_files_say_why():
    for path in (CONFIG_DIR / "experiment").glob("*.yaml"):
        first = Path(path).read_text().splitlines()[0]
        assert first.startswith("# "), f"{path} should open with a comment saying what it reproduces"
