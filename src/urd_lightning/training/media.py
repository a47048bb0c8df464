"""Pictures, curves and result tables in the experiment loggers: W&B and TensorBoard under the same keys.

Keys, all at the URD iteration (the x-axis of every value, loggers.py):

- ``panels``: the figures.py panels (image | ground-truth contour | map | predicted mask), one per fixed sample (in
  TensorBoard one tag per sample, ``panels/<index>_<defect type>``);
- ``masks``: each sample's image (uint8) with the ground truth as a mask layer (W&B) or blended in red (TensorBoard,
  ``masks/<index>_<defect type>``);
- ``curves/roc_curve``, ``curves/pro_curve``: the figures.py curve plots as images; in W&B also the curve data as
  native line plots (``curves/roc``, ``curves/pro``) over tables a user can overlay across runs;
- ``final_metrics``: the final metrics as a table; W&B also gets a ``results`` artifact (metrics.json, curves.json).

A logger problem never stops training: every W&B/TensorBoard call here is guarded and ends in one warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from urd_lightning.training.figures import FPR_LIMIT

log = logging.getLogger("urd_lightning")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as uint8 0..255 (W&B casts floats to uint8 without scaling: all black)."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _loggers(loggers: Logger | bool | list[Any] | None) -> list[Any]:
    if isinstance(loggers, (list, tuple)):
        return list(loggers)
    return [loggers] if isinstance(loggers, Logger) else []


def log_panels(loggers: Any, panels: list[np.ndarray], samples: list[dict[str, Any]], images: list[np.ndarray],
               iteration: int) -> None:
    """The evaluation's panels and masked images.

    Args:
        loggers: the trainer's loggers.
        panels: the panel figures as (H, W, 3) uint8 arrays (figures.pixels), one per sample.
        samples: the samples (``path``, ``score``, ``defect_type``, ``gt_mask``).
        images: each sample's image, (H, W, 3) uint8.
        iteration: the URD iteration of the evaluation.
    """
    if rank_zero_only.rank != 0:
        return
    for logger in _loggers(loggers):
        try:
            if isinstance(logger, WandbLogger):
                import wandb  # deferred: only W&B runs pay for its import

                logger.experiment.log({
                    "panels": [wandb.Image(p, caption=f"{s['path']} score={s['score']:.3f}")
                               for p, s in zip(panels, samples, strict=True)],
                    "masks": [wandb.Image(img, caption=f"{s['defect_type']} {Path(s['path']).name}",
                                          masks={"ground_truth": {"mask_data": s["gt_mask"].numpy().astype("uint8"),
                                                                  "class_labels": {1: "defect"}}})
                              for img, s in zip(images, samples, strict=True)],
                    "iteration": iteration})
            elif isinstance(logger, TensorBoardLogger):
                # One tag per sample below the W&B key (TensorBoard has no image lists; add_images would tile
                # eight panels into one unreadable row): panels/<index>_<defect type>, with its own step slider.
                writer = logger.experiment
                for panel, image, s in zip(panels, images, samples, strict=True):
                    name = f"{s['index']:05d}_{s['defect_type']}"
                    writer.add_image(f"panels/{name}", panel, iteration, dataformats="HWC")
                    writer.add_image(f"masks/{name}", _blend(image, s["gt_mask"].numpy()), iteration,
                                     dataformats="HWC")
                writer.flush()
        except Exception as exc:  # noqa: BLE001 - logging must never kill a run
            log.warning("%s image logging failed (%s); training continues.", type(logger).__name__, exc)


def _blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask > 0.5] = 0.5 * out[mask > 0.5] + 0.5 * np.array([255.0, 0.0, 0.0])
    return out.round().astype(np.uint8)


def _curve_table(wandb: Any, curves: dict[str, Any], keys: dict[str, str], y: str, limit: float = 1.0) -> Any:
    rows = [[label, float(x), float(v)] for key, label in keys.items() if curves.get(key)
            for x, v in zip(curves[key]["fpr"], curves[key][y], strict=True) if x <= limit]
    return wandb.Table(columns=["curve", "fpr", y], data=rows)


def log_final(loggers: Any, final: dict[str, float], iteration: int, figures: dict[str, np.ndarray],
              curves: dict[str, Any], files: list[Path], checkpoint: Path | None) -> None:
    """The end of a run: curve images (and W&B line plots), the metrics table, the results and model artifacts.

    Args:
        loggers: the run's logger(s).
        final: the final metrics.
        iteration: the URD iteration they belong to.
        figures: ``{"roc_curve": array, "pro_curve": array}`` (figures.pixels).
        curves: the ``curves.json`` content (results.py).
        files: the result files for the W&B ``results`` artifact (metrics.json, curves.json).
        checkpoint: ``last.ckpt`` to upload as a W&B model artifact (``wandb.log_model=true``), or None.
    """
    if rank_zero_only.rank != 0:
        return
    for logger in _loggers(loggers):
        try:
            if isinstance(logger, WandbLogger):
                _wandb_final(logger, final, iteration, figures, curves, files, checkpoint)
            elif isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                for name, array in figures.items():
                    writer.add_image(f"curves/{name}", array, iteration, dataformats="HWC")
                rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in final.items())
                writer.add_text("final_metrics", "| metric | value |\n|---|---|\n" + rows, iteration)
                writer.flush()
        except Exception as exc:  # noqa: BLE001 - a logger problem never kills a run
            log.warning("%s final logging failed (%s).", type(logger).__name__, exc)


def _wandb_final(logger: WandbLogger, final: dict[str, float], iteration: int, figures: dict[str, np.ndarray],
                 curves: dict[str, Any], files: list[Path], checkpoint: Path | None) -> None:
    import wandb  # deferred as above

    run = logger.experiment
    table = wandb.Table(columns=["metric", "value"], data=[[k, float(v)] for k, v in final.items()])
    roc = _curve_table(wandb, curves, {"image_roc": "image", "pixel_roc": "pixel"}, "tpr")
    pro = _curve_table(wandb, curves, {"pixel_pro": "pooled PRO"}, "pro", limit=FPR_LIMIT)
    run.log({"final_metrics": table, **{f"curves/{k}": wandb.Image(v) for k, v in figures.items()},
             "curves/roc": wandb.plot.line(roc, "fpr", "tpr", stroke="curve", title="ROC (final evaluation)"),
             "curves/pro": wandb.plot.line(pro, "fpr", "pro", stroke="curve",
                                           title=f"PRO, pooled (FPR <= {FPR_LIMIT})"),
             "curves/roc_table": roc, "curves/pro_table": pro,
             "iteration": iteration})
    results = wandb.Artifact(f"results-{run.id}", type="results", metadata={"iteration": iteration, **final})
    for path in files:
        if path.is_file():
            results.add_file(str(path), name=path.name)
    results.add(table, "final_metrics")
    run.log_artifact(results)
    if checkpoint is not None and checkpoint.is_file():
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"iteration": iteration, **final})
        artifact.add_file(str(checkpoint), name="last.ckpt")
        run.log_artifact(artifact, aliases=["latest"])
