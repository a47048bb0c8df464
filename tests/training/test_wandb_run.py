"""What a W&B user sees, read back from an offline run's own file (tests/helpers/wandb_records.py).

One x-axis (the URD iteration) for losses, evaluations and images; images under stable keys; at the end the ROC/PRO
curves and the final metrics as a table. Run ids: a new attempt gets a new W&B run, a resume continues the old one.
"""

import json

import pytest
from test_train import tiny

from helpers.wandb_records import history, metric_definitions
from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.loggers import WANDB_ID_FILE, _wandb_id
from urd_lightning.training.train import train


def iterations(rows, prefix):
    return [row["iteration"] for row in rows if any(k.startswith(prefix) for k in row)]


@pytest.mark.slow
def test_offline_run_has_one_step_axis_stable_image_keys_and_a_final_table(mvtec_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config(tiny(mvtec_root, tmp_path, "logger=wandb", "wandb.mode=offline", "trainer.max_steps=2",
                           "eval.every_n_steps=1", "trainer.log_every_n_steps=1"))
    metrics = train(cfg)
    (run_file,) = RunFolder.of(cfg).path.glob("wandb/offline-run-*/run-*.wandb")
    axis = [m.step_metric for m in metric_definitions(run_file) if m.glob_name == "*"]
    assert axis[-1] == "iteration"  # the last definition wins over Lightning's trainer/global_step
    rows = history(run_file)
    assert iterations(rows, "train/") == [1, 2]
    assert iterations(rows, "periodic_test/") == [1, 2]
    assert iterations(rows, "panels/") == [1, 2, 2]  # two periodic evaluations and the final one
    assert iterations(rows, "test/") == iterations(rows, "final_metrics/") == [2]
    # Every image key as logged (an image's fields are nested below its key): the same two keys at every evaluation.
    image_keys = {k.rsplit("/", 1)[0] for row in rows for k, v in row.items() if k.endswith("/_type") and "image" in v}
    assert image_keys == {"panels", "masks", "curves/roc_curve", "curves/pro_curve"}
    (table_row,) = [row for row in rows if "final_metrics/path" in row]
    table = json.loads((run_file.parent / "files" / table_row["final_metrics/path"]).read_text())
    final = {k: v for k, v in metrics.items() if not k.startswith("oracle/")}
    assert {name: value for name, value in table["data"]} == pytest.approx(final)


def test_a_new_attempt_gets_a_new_wandb_run_and_only_a_resume_continues_it(tmp_path):
    first = _wandb_id(tmp_path, resuming=False)
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == first
    assert _wandb_id(tmp_path, resuming=True) == first  # resume=..., a requeued SLURM job
    second = _wandb_id(tmp_path, resuming=False)  # rerunning a finished config
    assert second != first and _wandb_id(tmp_path, resuming=True) == second


def test_tensorboard_is_a_logger_choice(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    from urd_lightning.training.loggers import build_logger

    logger = build_logger(load_config(["logger=tensorboard"]), tmp_path)
    assert isinstance(logger, TensorBoardLogger)
    logger.log_metrics({"train/loss_student": 1.0}, step=1)
    logger.finalize("success")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
