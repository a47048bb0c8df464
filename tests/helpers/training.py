"""The smallest real training run the tests use: ResNet-18 at 32², one iteration, CPU, no logger."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback


def tiny(root, out, *extra):
    """``train`` arguments of a one-iteration run on the fake MVTec ``root``, writing under ``out``."""
    return [f"data.root={root}", "model.backbone=resnet18", "model.pretrained=false", "data.image_size=32",
            "data.train_batch_size=2", "data.eval_batch_size=7", "data.num_workers=0", "trainer.accelerator=cpu",
            "trainer.max_steps=1", "trainer.enable_progress_bar=false", "logger=none", f"output_dir={out}",
            "eval.num_samples=2", "data.cache_dir=" + str(out / "cache"), *extra]


def train_tiny(root, out, *extra):
    """Train :func:`tiny`'s run; returns its config and its ``last.ckpt``."""
    from urd_lightning.config import load_config  # deferred: the deploy tests import this module without Lightning
    from urd_lightning.run.folder import RunFolder
    from urd_lightning.training.train import train

    cfg = load_config(tiny(root, out, *extra))
    train(cfg)
    return cfg, Path(RunFolder.of(cfg).path) / "checkpoints" / "last.ckpt"


class CrashAfter(Callback):
    """Stops the run with an error when iteration ``at + 1`` is about to start (a crash, a kill, a lost node)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.iteration == self.at:
            raise RuntimeError("node lost")
