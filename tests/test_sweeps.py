"""experiments/sweeps/*.yaml: what `wandb sweep` needs, and every command line an agent builds is a valid config.

The agent's ``${args_no_hyphens}`` expansion is done with wandb's own helper, so values are formatted exactly as
an agent would format them, then parsed by the real config loader (and once through the CLI).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from urd_lightning.__main__ import main as cli_main
from urd_lightning.config import load_config

SWEEPS = sorted((Path(__file__).parents[1] / "experiments" / "sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "-m", "urd_lightning", "train", "${args_no_hyphens}"]
METRICS = {"image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
           "pixel_AUPRO_per_image"}  # fmt: skip


def args_no_hyphens(params: dict) -> list[str]:
    """``key=value`` items as the W&B agent builds them."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args_no_hyphens"]


def covering(parameters: dict) -> list[dict]:
    """Few grid points that together use every value of every parameter (all grid points would take minutes)."""
    choices = {k: spec["values"] if "values" in spec else [spec["value"]] for k, spec in parameters.items()}
    return [{k: v[i % len(v)] for k, v in choices.items()} for i in range(max(map(len, choices.values())))]


def test_there_are_sweeps():
    assert len(SWEEPS) >= 4


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_what_wandb_sweep_accepts(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["command"] == COMMAND
    # `wandb agent <entity>/<project>/<id>` must name the project the runs log into.
    assert sweep["project"] == load_config(["dataset=" + sweep["parameters"]["dataset"]["value"]]).wandb.project
    assert (path.parents[2] / sweep["program"]).is_file()
    assert sweep["method"] in {"grid", "random", "bayes"}
    stage, name = sweep["metric"]["name"].split("/")
    assert stage == "final" and name in METRICS and sweep["metric"]["goal"] == "maximize"
    for key, spec in sweep["parameters"].items():
        assert isinstance(spec, dict) and ({"value", "values"} & set(spec)), f"{path.name}: {key} has no value(s)"
    if sweep["method"] == "grid":
        assert all({"value", "values"} & set(spec) for spec in sweep["parameters"].values())


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_value_makes_a_valid_command_line_with_its_own_results_folder(path: Path):
    sweep = yaml.safe_load(path.read_text())
    assert not {"run", "output_dir"} & set(sweep["parameters"]), "a fixed run folder would make agents collide"
    folders = set()
    samples = covering(sweep["parameters"])
    for params in samples:
        cfg = load_config(args_no_hyphens(params))
        for key, value in params.items():  # the value reached the config unchanged (e.g. '01' stays a string)
            got = cfg
            for part in key.split("."):
                got = got[part]
            assert got == value or str(got) == str(value), (path.name, key, value, got)
        folders.add((cfg.dataset, cfg.data.category, cfg.run))
    assert len(folders) == len(samples), f"{path.name}: two runs would share a results folder"


@pytest.mark.parametrize("path", SWEEPS[:1], ids=lambda p: p.stem)
def test_sampled_command_line_through_the_cli(path: Path, capsys: pytest.CaptureFixture[str]):
    sweep = yaml.safe_load(path.read_text())
    sample = covering(sweep["parameters"])[-1]
    assert cli_main(["print-config", *args_no_hyphens(sample)]) == 0
    out = capsys.readouterr().out
    assert f"category: {sample['data.category']}" in out


def test_seed_sweep_varies_the_data_seed_too():
    sweep = yaml.safe_load((SWEEPS[0].parent / "seeds_visa.yaml").read_text())
    seeds = sweep["parameters"]["seed"]["values"]
    data_seeds = {load_config(args_no_hyphens({"dataset": "visa", "seed": s})).data.seed for s in seeds}
    assert data_seeds == set(seeds)  # shuffle and synthesis change with the seed, not only the initial weights
