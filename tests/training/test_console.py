"""The console: log lines above the progress bar, plain progress lines without a terminal, no known-harmless noise."""

import logging
import warnings
from types import SimpleNamespace

import pytest

from urd_lightning.training.callbacks import IterationProgress
from urd_lightning.training.loggers import setup_console_logging


def fake_run(total):
    trainer = SimpleNamespace(global_rank=0, max_steps=2 * total, global_step=0, callback_metrics={})
    module = SimpleNamespace(steps_per_iteration=2, iteration=0)
    return trainer, module


def test_without_a_terminal_progress_is_one_plain_line_every_n_iterations(caplog):
    trainer, module = fake_run(total=7)
    progress = IterationProgress(every=3, terminal=False)
    with caplog.at_level(logging.INFO, logger="urd_lightning"):
        progress.on_train_start(trainer, module)
        for done in range(1, 8):
            module.iteration = done
            trainer.callback_metrics = {"train/loss_teacher": 0.5, "train/loss_student": 1.25}
            progress.on_train_batch_end(trainer, module, None, None, done - 1)
        progress.on_train_end(trainer, module)
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split("  ")[0] for line in lines] == ["iteration 3/7 (43%)", "iteration 6/7 (86%)",
                                                       "iteration 7/7 (100%)"]
    assert all("loss_teacher=0.5000" in line and "loss_student=1.2500" in line and "it/s" in line and "ETA" in line
               for line in lines)
    assert progress.bar is None  # no tqdm bar, so no carriage-return updates in the log file


def test_log_lines_print_above_the_bar_not_into_it(capsys):
    from tqdm import tqdm

    logger = logging.getLogger("urd_lightning")
    logger.handlers[:] = []
    setup_console_logging()
    bar = tqdm(total=10, desc="train")
    bar.update(3)
    logger.info("periodic evaluation at iteration 3")
    bar.close()
    err = capsys.readouterr().err
    line = [part for part in err.replace("\r", "\n").split("\n") if "periodic evaluation" in part]
    assert line == ["[urd] periodic evaluation at iteration 3"]  # a line of its own, not glued to the bar


def test_the_two_known_harmless_warnings_are_silenced_and_no_other():
    from torch.utils._pytree import LeafSpec

    setup_console_logging()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        setup_console_logging()  # its filters go in front of the "default" one just set
        LeafSpec()  # what Lightning's pytree helper does at every fit
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, but another text", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`isinstance(treespec, LeafSpec)` is deprecated, but another text"]


def test_wandb_is_not_asked_for_the_deprecated_anonymous_setting():
    pytest.importorskip("wandb")
    from urd_lightning.config import load_config
    from urd_lightning.training.loggers import _wandb_logger

    logger = _wandb_logger(load_config(["logger=wandb"]), __import__("pathlib").Path("."), "offline", "abc12345")
    assert "anonymous" not in logger._wandb_init  # wandb prints a deprecation line whenever it is passed


def test_a_real_run_without_a_terminal_logs_plain_progress_lines_and_no_carriage_returns(mvtec_root, tmp_path, capfd):
    # The stand-in trainer above pins the line format; this pins the wiring: the Trainer's callbacks, a real fit,
    # stderr redirected as under SLURM or `benchmark` (pytest's capture is not a terminal).
    from tests.helpers.training import train_tiny

    train_tiny(mvtec_root, tmp_path, "trainer.enable_progress_bar=true", "trainer.max_steps=2",
               "trainer.log_every_n_steps=1", "eval.num_samples=0")
    out, err = capfd.readouterr()
    lines = [line.removeprefix("[urd] ") for line in err.splitlines() if line.startswith("[urd] iteration ")]
    assert [line.split("  ")[0] for line in lines] == ["iteration 1/2 (50%)", "iteration 2/2 (100%)"]
    assert all("loss_teacher=" in line and "loss_student=" in line for line in lines)
    assert "\r" not in out + err  # no bar's carriage-return updates in a log file
