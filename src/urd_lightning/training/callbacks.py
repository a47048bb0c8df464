"""Callbacks: picture panels, an evaluation line, and atomic checkpoint writes.

Everything that writes files or pictures runs on rank zero only (DDP re-runs the module on every rank). Panels are
image | ground truth | heatmap overlay, as anomalib users expect, written to ``images/`` and, with
W&B, logged as ``wandb.Image`` with the ground-truth mask as an overlay.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from urd_lightning.errors import DiskFullError
from urd_lightning.files import free_bytes, write_via

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


def save_panel(sample: dict[str, Any], path: Path, vmax: float | None = None) -> None:
    """One PNG: image | ground truth | heatmap overlay, titled with the defect type and image score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = denormalize(sample["image"]).numpy()
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    axes[0].imshow(image)
    axes[0].set_title(f"{sample['defect_type']} (label {sample['label']})", fontsize=9)
    axes[1].imshow(sample["gt_mask"].numpy(), cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("ground truth", fontsize=9)
    axes[2].imshow(image)
    axes[2].imshow(sample["anomaly_map"].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=vmax)
    axes[2].set_title(f"anomaly map, score {sample['score']:.3f}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)


class PicturePanels(Callback):
    """Draws the module's fixed test samples after every evaluation (files + W&B images)."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def _draw(self, trainer: Trainer, pl_module: LightningModule, tag: str) -> None:
        samples = _gather_samples(pl_module)  # collective: every rank must call it
        if trainer.global_rank != 0 or not samples:
            return
        stats = getattr(pl_module, "score_stats", None) or {}
        vmax = stats.get("pixel_max") or max(float(s["anomaly_map"].max()) for s in samples)
        images = []
        for sample in samples:
            name = f"{sample['index']:05d}_{sample['defect_type']}.png"
            target = self.out_dir / tag / name if tag != "final" else self.out_dir / name
            save_panel(sample, target, vmax=vmax)
            images.append((sample, target))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _log_wandb_images(logger, images, int(getattr(pl_module, "iteration", trainer.global_step)))

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, f"step{getattr(pl_module, 'iteration', trainer.global_step):06d}")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "final")


def _log_wandb_images(logger: WandbLogger, images: list[tuple[dict[str, Any], Path]], iteration: int) -> None:
    """Panels plus the raw image with the ground-truth mask overlay; a W&B problem never stops training.

    Always under the keys ``panels`` and ``masks`` at the URD iteration, so W&B's step slider walks through the
    evaluations (a key per evaluation would make a new panel each time).
    """
    try:
        import wandb

        panels, overlays = [], []
        for sample, path in images:
            mask = sample["gt_mask"].numpy().astype("uint8")
            panels.append(wandb.Image(str(path), caption=f"{sample['path']} score={sample['score']:.3f}"))
            overlays.append(wandb.Image(denormalize(sample["image"]).numpy(), caption=sample["defect_type"],
                                        masks={"ground_truth": {"mask_data": mask, "class_labels": {1: "defect"}}}))
        # Two keys: W&B wants images of one size per list (panels are wider than the images).
        logger.experiment.log({"panels": panels, "masks": overlays, "iteration": iteration})
    except Exception as exc:  # noqa: BLE001 - logging must never kill a run
        log.warning("W&B image logging failed (%s); training continues.", exc)


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
    """One progress bar over the whole run in URD iterations (not epochs), with the losses and the ETA."""

    def __init__(self) -> None:
        self.bar: Any = None

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank != 0:
            return
        from tqdm.auto import tqdm

        per_iteration = getattr(pl_module, "steps_per_iteration", 1)
        self.bar = tqdm(total=trainer.max_steps // per_iteration, initial=getattr(pl_module, "iteration", 0),
                        desc="train", unit="it", dynamic_ncols=True)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.bar is None:
            return
        self.bar.update(getattr(pl_module, "iteration", trainer.global_step) - self.bar.n)
        losses = {k.split("/")[-1].replace("loss_", ""): float(v) for k, v in trainer.callback_metrics.items()
                  if k in ("train/loss_teacher", "train/loss_student")}
        self.bar.set_postfix({f"loss_{k}": f"{v:.4f}" for k, v in losses.items()}, refresh=False)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
