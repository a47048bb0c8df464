"""Callbacks: picture panels, an evaluation line, and atomic checkpoint writes.

Everything that writes files or pictures runs on rank zero only (DDP re-runs the module on every rank). Panels
(figures.py: image | ground-truth contour | anomaly map | predicted mask) are written to ``images/`` and logged to
W&B / TensorBoard (media.py) as the same pixels.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from urd_lightning.errors import DiskFullError
from urd_lightning.files import free_bytes, write_via
from urd_lightning.training import figures
from urd_lightning.training.media import log_panels, to_uint8

log = logging.getLogger("urd_lightning")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the same folder, then renames it over the target.

    A crash or a NaN stop mid-write therefore never leaves a truncated ``last.ckpt``: the previous one stays.
    """

    def __init__(self) -> None:
        super().__init__()
        self.disk_full: DiskFullError | None = None  # raised by train() once the small results are written

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())

        # An interrupt mid-write comes back as a plain KeyboardInterrupt (Lightning's one-line shutdown), a full
        # disk as one line with the size needed; the previous file stays either way.
        try:
            write_via(Path(path), write, needed=tensor_bytes(checkpoint), suffix=".tmp")
        except DiskFullError as exc:
            # Training goes on to the evaluation: metrics.json and the summary are small and still fit; the run
            # then ends with this one line (train() raises it), and the previous checkpoint stays.
            if self.disk_full is None:
                log.error("%s", exc)
            self.disk_full = exc


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """About the size of a training checkpoint: every weight and buffer, plus Adam's two states per trainable one."""
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + 2 * trainable


def warn_if_disk_small(folder: Path, needed: int) -> None:
    """Warn before training when the disk cannot hold two checkpoints (one being written while one is kept)."""
    free = free_bytes(folder)
    if free is not None and free < 2 * needed:
        log.warning("checkpoints will be about %.0f MB each, and %s has %.0f MB free: less than the two a safe "
                    "write needs (one written while the last is kept). Free some space or set output_dir=...",
                    needed / 2**20, folder, free / 2**20)  # .tmp: never mistaken for a ckpt


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a (nested) checkpoint: about the size of the file ``torch.save`` writes."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (3,H,W) → [0,1] (H,W,3) for display."""
    return (image.cpu() * IMAGENET_STD + IMAGENET_MEAN).clamp(0, 1).permute(1, 2, 0)


def _gather_samples(pl_module: LightningModule) -> list[dict[str, Any]]:
    samples = list(getattr(pl_module, "samples", []))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        everything: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everything, samples)
        samples = [s for part in everything for s in (part or [])]
    return sorted(samples, key=lambda s: s["index"])


def draw_panels(samples: list[dict[str, Any]], vmax: float, threshold: float | None,
                targets: list[Path]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Write each sample's panel (figures.py) to its target; returns the panels and the images as uint8 arrays."""
    panels, images = [], []
    for sample, target in zip(samples, targets, strict=True):
        image = denormalize(sample["image"]).numpy()
        fig = figures.panel_figure(image, sample["gt_mask"].numpy(), sample["anomaly_map"].numpy(), sample["score"],
                                   f"{sample['defect_type']} (label {sample['label']})", vmax, threshold)
        panels.append(figures.pixels(figures.save(fig, target)))  # the loggers show what the run folder holds
        images.append(to_uint8(image))
    return panels, images


class PicturePanels(Callback):
    """Draws the module's fixed test samples after every evaluation (files + W&B / TensorBoard images)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def _draw(self, trainer: Trainer, pl_module: LightningModule, tag: str, thresholds: dict | None) -> None:
        samples = _gather_samples(pl_module)  # collective: every rank must call it
        if trainer.global_rank != 0 or not samples:
            return
        stats = getattr(pl_module, "score_stats", None) or {}
        vmax = stats.get("pixel_max") or max(float(s["anomaly_map"].max()) for s in samples)
        folder = self.out_dir / tag if tag != "final" else self.out_dir
        targets = [folder / f"{s['index']:05d}_{s['defect_type']}.png" for s in samples]
        panels, images = draw_panels(samples, vmax, (thresholds or {}).get("pixel"), targets)
        log_panels(trainer.loggers, panels, samples, images, int(getattr(pl_module, "iteration", trainer.global_step)))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, f"step{getattr(pl_module, 'iteration', trainer.global_step):06d}",
                       getattr(pl_module, "eval_thresholds", None))

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "final", getattr(pl_module, "thresholds", None))


class EvaluationLine(Callback):
    """One log line per evaluation, so a long run shows progress between progress-bar epochs."""

    @rank_zero_only
    def _line(self, what: str, step: int, values: dict[str, float]) -> None:
        keys = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPRO_per_image")
        text = "  ".join(f"{k}={values[k]:.4f}" for k in keys if k in values)
        log.info("%s evaluation at iteration %d: %s", what, step, text)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        periodic = getattr(pl_module, "periodic", [])
        if periodic and not trainer.sanity_checking:
            self._line("periodic (test set)", int(periodic[-1]["step"]), periodic[-1])

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._line("final", getattr(pl_module, "iteration", trainer.global_step), getattr(pl_module, "final", {}))


class IterationProgress(Callback):
    """Progress over the whole run in URD iterations (not epochs), with the losses, the rate and the ETA.

    On a terminal: one tqdm bar (log lines print above it, loggers.py). Without one (SLURM and benchmark logs, pipes)
    a bar's carriage-return updates would fill the file with thousands of half lines, so it logs one plain line every
    ``every`` iterations (``trainer.log_every_n_steps``) and at the last one instead.
    """

    def __init__(self, every: int = 50, terminal: bool | None = None) -> None:
        self.every = max(1, int(every))
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar: Any = None
        self.total = self.start = 0
        self.started = 0.0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        self.total = trainer.max_steps // getattr(pl_module, "steps_per_iteration", 1)
        self.start, self.started = int(getattr(pl_module, "iteration", 0)), time.perf_counter()
        if self.terminal:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.start, desc="train", unit="it", dynamic_ncols=True)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_rank != 0:
            return
        done = int(getattr(pl_module, "iteration", trainer.global_step))
        losses = {k.split("/")[-1]: float(v) for k, v in trainer.callback_metrics.items()
                  if k in ("train/loss_teacher", "train/loss_student")}
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        elif not self.terminal and (done % self.every == 0 or done == self.total):
            log.info("%s", self.line(done, losses, time.perf_counter() - self.started))

    def line(self, done: int, losses: dict[str, float], elapsed: float) -> str:
        """``iteration 40/150 (27%)  loss_teacher=0.1234  loss_student=0.5678  2.10 it/s  ETA 0:00:52``."""
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = str(timedelta(seconds=round((self.total - done) / rate))) if rate > 0 else "?"
        parts = [f"iteration {done}/{self.total} ({100 * done / max(self.total, 1):.0f}%)",
                 *(f"{k}={v:.4f}" for k, v in losses.items()), f"{rate:.2f} it/s", f"ETA {eta}"]
        return "  ".join(parts)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
