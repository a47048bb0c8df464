"""What a researcher sees in W&B and TensorBoard, read back from the files the loggers write.

W&B: an offline run's own file (tests/helpers/wandb_records.py); TensorBoard: its event file. Both hold the panels as
images, the curves, and every scalar on the URD iteration axis; the masks W&B shows are the panels' images.
"""

import io
import json
import os
import stat

import numpy as np
from lightning.pytorch import Callback
from PIL import Image

from helpers.training import tiny
from helpers.wandb_records import history, records
from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.callbacks import denormalize
from urd_lightning.training.loggers import WANDB_ID_FILE, build_logger, finish
from urd_lightning.training.train import train


class KeepSamples(Callback):
    """The module's picture samples of the final evaluation (what the panels draw)."""

    def on_test_end(self, trainer, pl_module):
        self.samples = sorted(pl_module.samples, key=lambda s: s["index"])


def test_offline_wandb_run_shows_the_images_curves_and_results(mvtec_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    keep = KeepSamples()
    cfg = load_config(tiny(mvtec_root, tmp_path, "logger=wandb", "wandb.mode=offline", "eval.num_samples=3"))
    train(cfg, callbacks=[keep])
    (run_file,) = RunFolder.of(cfg).path.glob("wandb/offline-run-*/run-*.wandb")
    files = run_file.parent / "files"
    rows = history(run_file)
    (masks,) = [row for row in rows if "masks/filenames" in row]
    names = masks["masks/filenames"]
    assert len(names) == len(set(names)) == 3  # one file per sample
    for name, sample in zip(names, keep.samples, strict=True):
        logged = np.asarray(Image.open(files / name).convert("RGB"))
        expected = (denormalize(sample["image"]).numpy() * 255).round().astype(np.uint8)
        assert logged.any() and np.array_equal(logged, expected)  # the image itself, not all zeros
    # The curves as native W&B plots over tables (overlayable across runs), beside the images.
    logged_keys = {k.split("/_type")[0] for row in rows for k in row if k.endswith("/_type")}
    assert {"curves/roc_table", "curves/pro_table"} <= logged_keys
    table = json.loads((files / [row for row in rows if "curves/pro_table/path" in row][0]
                        ["curves/pro_table/path"]).read_text())
    assert table["columns"] == ["curve", "fpr", "pro"] and max(r[1] for r in table["data"]) <= 0.3
    results = [r.artifact for r in records(run_file) if r.WhichOneof("record_type") == "artifact"
               and r.artifact.type == "results"]
    assert {f.path for a in results for f in a.manifest.contents} >= {"metrics.json", "curves.json"}
    # The config once, nested: no flat copy of the module's arguments (image_size beside data.image_size).
    config = [r.config for r in records(run_file) if r.WhichOneof("record_type") == "config"]
    keys = {item.key for c in config for item in c.update}
    assert "data" in keys and "image_size" not in keys and "model" in keys and "lr_student" not in keys


def test_a_sweep_agents_run_keeps_its_id_and_the_id_file_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")  # what `wandb agent` sets for the process it starts
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun1")
    import wandb

    wandb.teardown()  # W&B reads the environment once per process; the agent starts a new process per run
    logger = build_logger(load_config(["logger=wandb", "wandb.mode=offline"]), tmp_path)
    try:
        assert logger.experiment.id == "sweeprun1"
    finally:
        finish(logger)
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == "sweeprun1"


def test_tensorboard_holds_panels_curves_and_scalars_at_their_iterations(mvtec_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    old = os.umask(0o022)
    try:
        cfg = load_config(tiny(mvtec_root, tmp_path, "logger=tensorboard", "trainer.max_steps=3",
                               "eval.every_n_steps=3", "trainer.log_every_n_steps=1"))
        train(cfg)
    finally:
        os.umask(old)
    run = RunFolder.of(cfg).path
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert steps["train/loss_student"] == [1, 2, 3]
    assert steps["periodic_test/pixel_AUROC"] == [3] and steps["test/pixel_AUROC"] == [3]  # iteration 3 at 3
    images = events.Tags()["images"]
    assert {"curves/roc_curve", "curves/pro_curve"} <= set(images)
    on_disk = sorted((run / "images").glob("*.png"))
    assert {t for t in images if t.startswith("panels/")} == {f"panels/{p.stem}" for p in on_disk}
    final = events.Images(f"panels/{on_disk[0].stem}")
    assert [e.step for e in final] == [3, 3]  # the periodic and the final evaluation
    panel = np.asarray(Image.open(io.BytesIO(final[-1].encoded_image_string)).convert("RGB"))
    assert np.array_equal(panel, np.asarray(Image.open(on_disk[0]).convert("RGB")))  # one drawing for both
    # Files labmates can read (umask 022): every file this run wrote is -rw-r--r--.
    written = [p for p in run.rglob("*") if p.is_file()]
    assert {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {
        str(p.relative_to(run)): "0o644" for p in written}
    assert {"metrics.json", "curves.json", "roc_curve.png", "checkpoints/last.ckpt"} <= {
        str(p.relative_to(run)) for p in written}
