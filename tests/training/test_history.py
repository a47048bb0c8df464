"""``logs/metrics.csv`` across attempts (``training/history.py``): a fresh attempt starts a new file and keeps the old
one aside; a resume keeps the rows up to the checkpoint's iteration and logs the later ones once.

The fast tests drive the logger directly; the slow one trains, crashes after a checkpoint, resumes and reruns.
"""

import csv
import json
import logging

import pytest
from test_train import tiny

from helpers.training import CrashAfter
from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.history import HistoryCSVLogger
from urd_lightning.training.train import train


def rows_of(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path, iterations):
    """A metrics.csv as training writes it: one loss row per iteration, Lightning's step = iteration - 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "iteration", "loss", "step"])
        writer.writeheader()
        writer.writerows({"epoch": 0, "iteration": i, "loss": 1 / i, "step": i - 1} for i in iterations)


def log_rows(run_dir, resumed_at, iterations, extra_column=False):
    logger = HistoryCSVLogger(resumed_at, save_dir=str(run_dir), name="logs", version="")
    for i in iterations:
        logger.log_metrics({"iteration": float(i), "loss": 0.5, **({"new": 1.0} if extra_column else {})}, step=i - 1)
        logger.save()


def test_a_fresh_attempt_starts_a_new_file_and_moves_the_old_one_aside(tmp_path, caplog):
    csv_path = tmp_path / "logs" / "metrics.csv"
    write_rows(csv_path, [1, 2, 3])
    first = csv_path.read_bytes()
    with caplog.at_level(logging.INFO, logger="urd_lightning"):
        log_rows(tmp_path, None, [1, 2])
    assert [r["iteration"] for r in rows_of(csv_path)] == ["1.0", "2.0"]
    assert (tmp_path / "logs" / "metrics.1.csv").read_bytes() == first  # kept, byte for byte
    assert "moved to metrics.1.csv" in caplog.text
    second = csv_path.read_bytes()
    log_rows(tmp_path, None, [1])  # a third attempt: the next free name, nothing overwritten
    assert (tmp_path / "logs" / "metrics.2.csv").read_bytes() == second
    assert (tmp_path / "logs" / "metrics.1.csv").read_bytes() == first


def test_a_resume_keeps_rows_up_to_the_checkpoint_and_logs_later_ones_once(tmp_path, caplog):
    csv_path = tmp_path / "logs" / "metrics.csv"
    write_rows(csv_path, [1, 2, 3, 4, 5])  # the interrupted attempt got to 5; its checkpoint holds iteration 3
    with caplog.at_level(logging.INFO, logger="urd_lightning"):
        log_rows(tmp_path, 3, [4, 5, 6], extra_column=True)  # a new column rewrites the header, keeping the rows
    rows = rows_of(csv_path)
    assert [float(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r["new"] for r in rows] == ["", "", "", "1.0", "1.0", "1.0"]
    assert "2 row(s) logged after iteration 3 dropped" in caplog.text
    assert not list((tmp_path / "logs").glob("metrics.*.csv"))  # a resume moves nothing aside


def test_rows_without_an_iteration_column_are_cut_by_step(tmp_path):
    csv_path = tmp_path / "logs" / "metrics.csv"
    csv_path.parent.mkdir(parents=True)
    csv_path.write_text("loss,step\n1.0,0\n0.5,1\n0.3,2\n")  # step = iteration - 1 (Lightning counts batches)
    log_rows(tmp_path, 2, [3])
    assert [r["step"] for r in rows_of(csv_path)] == ["0", "1", "2"]



@pytest.mark.slow  # trains three times
def test_crash_resume_and_rerun_give_each_iteration_once(mvtec_root, tmp_path):
    common = ["logger=csv", "trainer.log_every_n_steps=1", "eval.every_n_steps=1", "checkpoint_every_n_steps=2",
              "run=r", "trainer.max_steps=4"]
    cfg = load_config(tiny(mvtec_root, tmp_path, *common))
    csv_path = RunFolder.of(cfg).path / "logs" / "metrics.csv"
    with pytest.raises(RuntimeError, match="node lost"):
        train(cfg, callbacks=[CrashAfter(3)])  # last.ckpt holds iteration 2; the CSV got to iteration 3
    assert max(float(r["iteration"]) for r in rows_of(csv_path)) == 3
    train(load_config(tiny(mvtec_root, tmp_path, *common, "resume=last")))
    rows = rows_of(csv_path)
    losses = [float(r["iteration"]) for r in rows if r.get("train/loss_student")]
    periodic = [float(r["iteration"]) for r in rows if r.get("periodic_test/image_AUROC")]
    assert losses == [1, 2, 3, 4] and periodic == [1, 2, 3, 4]  # each iteration once, in order
    assert [int(r["step"]) for r in rows if r.get("train/loss_student")] == [0, 1, 2, 3]  # batches, 0-based
    resumed = csv_path.read_bytes()
    payload = json.loads((RunFolder.of(cfg).path / "metrics.json").read_text())
    train(load_config(tiny(mvtec_root, tmp_path, *common)))  # the same run (same config), fresh
    assert [float(r["iteration"]) for r in rows_of(csv_path) if r.get("train/loss_student")] == [1, 2, 3, 4]
    assert (csv_path.parent / "metrics.1.csv").read_bytes() == resumed
    # Another config under the same name starts fresh only with overwrite=true, which moves the old run aside whole.
    train(load_config(tiny(mvtec_root, tmp_path, *common[:-1], "trainer.max_steps=1", "overwrite=true")))
    assert [float(r["iteration"]) for r in rows_of(csv_path) if r.get("train/loss_student")] == [1]
    aside = RunFolder.of(cfg).path.parent / "_replaced" / "r.1"
    assert (aside / "logs" / "metrics.1.csv").read_bytes() == resumed
    assert payload["steps"] == 4
    # The evaluation of iteration 2 ran after last.ckpt was saved at 2; the resume brings its row back (results.py).
    assert [row["step"] for row in payload["periodic"]] == [1, 2, 3, 4]
    fresh = json.loads((RunFolder.of(cfg).path / "metrics.json").read_text())
    assert [row["step"] for row in fresh.get("periodic", [])] == [1]  # the fresh attempt: none of the old rows
