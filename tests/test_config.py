"""Config loading: every shipped file validates, overrides parse, mistakes name the key and the fix."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from urd_lightning.config import CONFIG_DIR, load_config, print_config_main
from urd_lightning.errors import ConfigError

DATASETS = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_dataset_file_loads_and_every_category_validates(dataset):
    categories = OmegaConf.load(CONFIG_DIR / "data" / f"{dataset}.yaml").get("categories") or {}
    for category, settings in categories.items():
        cfg = load_config([f"dataset={dataset}", f"data.category={category}"])
        assert cfg.trainer.max_steps == settings["max_steps"]
        assert cfg.data.foreground == settings["foreground"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_file_loads(experiment):
    cfg = load_config([f"experiment={experiment}"])
    assert cfg.experiment == experiment


def test_authors_budgets_per_category():
    assert load_config(["data.category=cable"]).trainer.max_steps == 10000
    assert load_config(["data.category=bottle"]).trainer.max_steps == 5000
    assert load_config(["dataset=visa", "data.category=pcb1"]).trainer.max_steps == 10000


def test_user_override_beats_category_budget_and_foreground():
    cfg = load_config(["data.category=cable", "trainer.max_steps=7", "data.foreground=otsu"])
    assert cfg.trainer.max_steps == 7 and cfg.data.foreground == "otsu"


def test_sweep_style_dotlist_parses_types():
    cfg = load_config("optim.lr_student=0.001 model.injection=gii trainer.devices=2 wandb.tags=[a,b]".split())
    assert cfg.optim.lr_student == pytest.approx(0.001)
    assert cfg.model.injection == "gii" and cfg.trainer.devices == 2 and list(cfg.wandb.tags) == ["a", "b"]


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError, match=r"data\.categry.*data\.category"):
        load_config(["data.categry=bottle"])
    with pytest.raises(ConfigError, match=r"optim\.lr_studnt.*optim\.lr_student"):
        load_config(["optim.lr_studnt=1"])


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.yaml").write_text("data:\n  benchmark: mvtec\n  imagesize: 3\n")
    with pytest.raises(ConfigError, match=r"data\.imagesize.*x\.yaml.*data\.image_size"):
        load_config(["dataset=x"], config_dir=tmp_path)


def test_unknown_category_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown category 'botle'.*bottle.*zipper"):
        load_config(["data.category=botle"])


def test_unknown_dataset_and_experiment_and_choice():
    with pytest.raises(ConfigError, match="mvtec"):
        load_config(["dataset=nope"])
    with pytest.raises(ConfigError, match="paper"):
        load_config(["experiment=nope"])
    with pytest.raises(ConfigError, match="wandb, tensorboard, csv, none"):
        load_config(["logger=mlflow"])


def test_bad_type_and_malformed_argument():
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        load_config(["trainer.max_steps=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["--category", "bottle"])


def test_deterministic_run_name_changes_with_config():
    a, b = load_config(["seed=1"]), load_config(["seed=1"])
    assert a.run == b.run and a.run.startswith("gii-s1-")
    assert load_config(["seed=1", "optim.lr_student=0.1"]).run != a.run
    assert load_config(["run=mine"]).run == "mine"


def test_synthesis_off_requires_frozen_teacher_and_no_expert_freezes_teacher():
    with pytest.raises(ConfigError, match="data.synthesis"):
        load_config(["data.synthesis=false"])
    assert load_config(["model.expert=false"]).model.train_teacher is False


def test_struct_mode_rejects_new_keys_after_loading():
    cfg = load_config([])
    from omegaconf.errors import ConfigAttributeError

    with pytest.raises(ConfigAttributeError):
        cfg.not_a_key = 1


def test_print_config_shows_resolved_yaml(capsys):
    assert print_config_main(["dataset=visa", "data.category=pcb1"]) == 0
    out = OmegaConf.create(capsys.readouterr().out)
    assert out.data.category == "pcb1" and out.trainer.max_steps == 10000


def test_default_yaml_documents_every_key():
    text = (CONFIG_DIR / "default.yaml").read_text().splitlines()
    keys = [line for line in text if line.strip() and not line.lstrip().startswith("#")]
    undocumented = [line for line in keys if "#" not in line and not line.rstrip().endswith(":")]
    assert not undocumented, undocumented
    assert Path(CONFIG_DIR / "default.yaml").is_file()


def test_zero_iterations_is_allowed_it_evaluates_the_untrained_network():
    # README's "untrained" row: trainer.max_steps=0 trains nothing and evaluates; negative values are refused.
    assert load_config(["dataset=demo", "trainer.max_steps=0"]).trainer.max_steps == 0


def test_the_precisions_checked_at_load_are_lightnings():
    from typing import get_args

    from lightning.fabric.plugins.precision import precision as lightning_precision

    from urd_lightning.config.ranges import PRECISIONS

    accepted = [str(v) for alias in get_args(lightning_precision._PRECISION_INPUT) for v in get_args(alias)]
    assert sorted(PRECISIONS) == sorted(set(accepted))
