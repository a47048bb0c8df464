"""Shipped configs are package data, and a user's config_dir adds files on top of them instead of replacing them."""

from pathlib import Path

import pytest

from urd_lightning.config import CONFIG_DIR, load_config
from urd_lightning.config.files import dataset_categories
from urd_lightning.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_configs_are_the_repository_configs():
    # One copy: in a checkout the package's folder is the repository's configs/ (a symlink), so an edit is seen.
    assert Path(str(CONFIG_DIR)).resolve() == (ROOT / "configs").resolve()
    assert (CONFIG_DIR / "default.yaml").read_text() == (ROOT / "configs" / "default.yaml").read_text()


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "experiment").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text(
        "data:\n  benchmark: folder\n  root: ./my_images\n  category: board\n"
        "categories:\n  board: {max_steps: 7}\n  plate: {max_steps: 9}\n")
    (tmp_path / "experiment" / "paper.yaml").write_text("seed: 7\n")  # same name as a shipped experiment
    return tmp_path


def test_user_files_add_to_the_shipped_ones(user_dir: Path):
    mine = load_config(["dataset=mine", f"config_dir={user_dir}"])
    assert (mine.data.benchmark, mine.data.category, mine.trainer.max_steps) == ("folder", "board", 7)
    assert mine.config_dir == str(user_dir.resolve())
    shipped = load_config(["dataset=visa", f"config_dir={user_dir}"])  # the shipped datasets stay available
    assert shipped.data.benchmark == "visa"
    assert load_config(["dataset=visa", "experiment=rd4ad", f"config_dir={user_dir}"]).experiment == "rd4ad"
    assert dataset_categories("mine", user_dir) == ["board", "plate"]


def test_a_user_file_shadows_the_shipped_file_of_the_same_name(user_dir: Path):
    assert load_config(["experiment=paper", f"config_dir={user_dir}"]).seed == 7
    assert load_config(["experiment=paper"]).seed != 7


def test_environment_variable_and_argument_work_like_the_key(user_dir: Path, monkeypatch):
    assert load_config(["dataset=mine"], config_dir=user_dir).data.category == "board"
    monkeypatch.setenv("URD_CONFIG_DIR", str(user_dir))
    assert load_config(["dataset=mine"]).data.category == "board"
    assert dataset_categories("mine") == ["board", "plate"]


def test_a_user_default_yaml_is_merged_over_the_shipped_default(user_dir: Path):
    (user_dir / "default.yaml").write_text("seed: 5\n")
    cfg = load_config(["dataset=mvtec", f"config_dir={user_dir}"])
    assert cfg.seed == 5 and cfg.logger == load_config(["dataset=mvtec"]).logger


def test_the_folder_does_not_change_the_run_name(user_dir: Path, tmp_path: Path):
    other = tmp_path / "copy"
    other.mkdir()
    (other / "experiment").mkdir()
    (other / "experiment" / "paper.yaml").write_text("seed: 7\n")
    assert load_config(["experiment=paper", f"config_dir={user_dir}"]).run == \
        load_config(["experiment=paper", f"config_dir={other}"]).run


def test_bad_folders_and_names_say_what_to_do(user_dir: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"config_dir=.*nowhere: no such folder"):
        load_config([f"config_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match=r"no dataset config 'minee'; choose one of: .*mine.*mvtec.*config_dir=PATH"):
        load_config(["dataset=minee", f"config_dir={user_dir}"])


def test_a_user_dataset_file_with_its_own_categories_holds_everywhere(tmp_path: Path, capsys):
    # The dataset file is the one list of categories and their settings: load, data check, benchmark and the data
    # module all follow a user's file (MVTec layout, categories no shipped file knows).
    from helpers.datasets import write_mvtec_layout
    from urd_lightning.__main__ import main
    from urd_lightning.benchmark.runner import plan
    from urd_lightning.data.datamodule import AnomalyDataModule

    root = write_mvtec_layout(tmp_path / "parts", {"gear": False, "nut": True})
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "parts.yaml").write_text(
        f"data:\n  benchmark: mvtec\n  root: {root}\n  category: gear\n"
        "categories:\n  nut: {max_steps: 3}\n  gear: {max_steps: 4, foreground: otsu}\n")
    gear = load_config(["dataset=parts", f"config_dir={mine}", "data.foreground=auto"])
    assert (gear.data.foreground, gear.trainer.max_steps) == ("otsu", 4)  # resolved once, from the user's file
    assert load_config(["dataset=parts", "data.category=nut"], config_dir=mine).data.foreground == "none"
    assert [job.category for job in plan("parts", [f"config_dir={mine}"])] == ["nut", "gear"]  # the file's order
    assert main(["data", "check", "parts", f"config_dir={mine}"]) == 0
    assert "gear" in capsys.readouterr().out
    module = AnomalyDataModule(**{k: v for k, v in gear.data.items()})
    module.setup("test")
    assert module.foreground == "otsu" and len(module.test_data) > 0
