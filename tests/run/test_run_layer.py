"""The run layer: one identity for every command, the run folder's one store of periodic evaluations, the extras."""

import json

import pytest
from lightning.pytorch import Callback

from helpers.training import CrashAfter, tiny
from urd_lightning.config import load_config
from urd_lightning.errors import CheckpointError
from urd_lightning.run.extras import EXTRAS_KEY, LEGACY, CheckpointExtras
from urd_lightning.run.folder import RunFolder
from urd_lightning.run.identity import EXECUTION_KEYS, identity_diff, is_execution_key
from urd_lightning.training.train import train


@pytest.mark.parametrize("change", ["logger=csv", "data.num_workers=3", "trainer.devices=2", "data.cache_dir=/x",
                                    "data.pixel_cache_dir=/y", "data.root=elsewhere", "output_dir=other",
                                    "trainer.max_time=00:01:00:00", "compile=true", "overwrite=true"])
def test_how_and_where_a_run_executes_does_not_change_the_run(change):
    assert load_config([change]).run == load_config([]).run


@pytest.mark.parametrize("change", ["seed=5", "trainer.max_steps=7", "data.image_size=64", "model.injection=concat",
                                    "trainer.precision=32-true", "eval.every_n_steps=10"])
def test_what_is_trained_or_measured_changes_the_run(change):
    assert load_config([change]).run != load_config([]).run


def test_the_benchmark_compares_runs_by_the_same_identity():
    # One list: a benchmark skips a finished category exactly when train would continue the same run.
    assert identity_diff(load_config(["logger=csv", "trainer.devices=2"]), load_config([])) == []
    assert identity_diff(load_config(["seed=5"]), load_config([])) == ["data.seed", "seed"]
    assert all(is_execution_key(key) for key in EXECUTION_KEYS) and is_execution_key("wandb.project")



class Iterations(Callback):
    """The URD iterations this attempt trained."""

    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(pl_module.iteration)


def test_resume_after_changing_the_logger_continues_the_run_and_its_periodic_evaluations(mvtec_root, tmp_path):
    common = ["trainer.max_steps=2", "eval.every_n_steps=1", "checkpoint_every_n_steps=1"]
    first = load_config(tiny(mvtec_root, tmp_path, *common, "logger=csv"))
    with pytest.raises(RuntimeError, match="node lost"):
        train(first, callbacks=[CrashAfter(1)])  # last.ckpt holds iteration 1, saved before its evaluation ran
    folder = RunFolder.of(first)
    assert [row["step"] for row in folder.read_state()["periodic"]] == [1]
    second = load_config(tiny(mvtec_root, tmp_path, *common, "logger=none", "resume=last"))
    assert RunFolder.of(second) == folder  # another logger: the same run
    trained = Iterations()
    measured = train(second, callbacks=[trained])
    assert trained.seen == [2]  # continued from the first attempt's iteration, not from the start
    payload = json.loads(folder.metrics.read_text())
    # Iteration 1's evaluation is in no checkpoint (it ran after the save); the run folder's store brings it back.
    assert [row["step"] for row in payload["periodic"]] == [1, 2] and payload["steps"] == 2
    assert measured == {**payload["final"], **{f"oracle/{k}": v for k, v in payload["oracle"].items() if k != "step"}}


def test_extras_are_one_record_with_the_legacy_defaults_in_one_place(tmp_path):
    record = CheckpointExtras(model={"backbone": "resnet18"}, image_size=32, dataset="mvtec", category="bottle")
    assert CheckpointExtras.read(tmp_path, {"state_dict": {}, EXTRAS_KEY: record.to_dict()}) == record
    old = {"model": {"backbone": "resnet18"}, "image_size": 32}  # a checkpoint written before the other keys existed
    legacy = CheckpointExtras.read(tmp_path, {"state_dict": {}, EXTRAS_KEY: old})
    assert (legacy.resize, legacy.dataset, legacy.version) == ("cv2", "unknown", "unknown")  # all trained with cv2
    assert LEGACY["resize"] == "cv2"
    with pytest.raises(CheckpointError, match="lacks image_size"):
        CheckpointExtras.read(tmp_path, {"state_dict": {}, EXTRAS_KEY: {"model": {}}})
