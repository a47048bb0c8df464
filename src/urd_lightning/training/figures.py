"""The run's figures, drawn once with matplotlib and used everywhere: the run folder, W&B and TensorBoard.

Sized to be pasted into a paper: a panel is 7 inches wide (a two-column figure; it stays readable scaled to one
3.4-inch column), a curve plot 3.4 inches (one column), fonts 7-8 pt. The same :class:`~matplotlib.figure.Figure` is
saved as the PNG and rendered to the RGB array the experiment loggers receive, so every place shows the same pixels.

- panel: image | image with the ground-truth contour | anomaly map with a colour bar and the image score | the
  predicted mask at the pixel threshold (F1-optimal on the test set, the one stored in the checkpoint);
- ROC: image- and pixel-level curves, the AUROC of each in the legend;
- PRO: the pooled (MVTec-official) PRO curve over FPR <= 0.3, the interval AUPRO integrates, with its AUPRO and the
  per-image protocol's AUPRO (the one the RD4AD/URD papers report) named beside it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs and reports are written on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from urd_lightning.files import write_atomic  # noqa: E402

FPR_LIMIT = 0.3  # AUPRO integrates the PRO curve up to FPR 0.3 (MVTec AD protocol, both variants)
DPI = 150
# ROC axes with a margin: a curve's vertical steps at FPR 0 and FPR 1 would otherwise hide under the spines.
ROC_LIMITS = {"xlim": (-0.01, 1.01), "ylim": (-0.01, 1.01)}
GT_COLOUR = "#00e000"  # the ground-truth contour: green reads on both the image and the jet colour map
THRESHOLD_NOTE = "pixel threshold: F1-optimal on the test set"
plt.rcParams.update({"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "legend.fontsize": 6.5,
                     "xtick.labelsize": 6.5, "ytick.labelsize": 6.5})


def panel_figure(image: np.ndarray, gt_mask: np.ndarray, anomaly_map: np.ndarray, score: float, title: str,
                 vmax: float, threshold: float | None) -> Figure:
    """One sample: image | ground-truth contour | anomaly map (colour bar, score) | mask at ``threshold``.

    Args:
        image: (H, W, 3) float in [0, 1].
        gt_mask: (H, W) {0, 1}.
        anomaly_map: (H, W) the smoothed map.
        score: the image score (the map's maximum).
        title: the sample's name (defect type, label).
        vmax: top of the colour scale, shared by every panel of the evaluation so their colours compare.
        threshold: the pixel threshold, or None (no anomalous pixel in the test set: no F1-optimal threshold).
    """
    # The map's column is wider by its colour bar, so the four images come out the same size.
    fig, axes = plt.subplots(1, 4, figsize=(7.0, 1.95), gridspec_kw={"wspace": 0.3, "width_ratios": [1, 1, 1.15, 1]})
    axes[0].imshow(image)
    axes[0].set_title(title)
    axes[1].imshow(image)
    if gt_mask.any():
        axes[1].contour(gt_mask, levels=[0.5], colors=GT_COLOUR, linewidths=0.9)
    axes[1].set_title("ground truth (contour)" if gt_mask.any() else "ground truth: normal")
    shown = axes[2].imshow(anomaly_map, cmap="jet", vmin=0, vmax=vmax)
    axes[2].set_title(f"anomaly map, score {score:.3f}")
    bar = fig.colorbar(shown, ax=axes[2], fraction=0.05, pad=0.03)
    bar.ax.tick_params(labelsize=5.5, length=2, pad=1)
    bar.ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
    if threshold is not None and math.isfinite(threshold):
        axes[3].imshow(anomaly_map >= threshold, cmap="gray", vmin=0, vmax=1)
        if gt_mask.any():
            axes[3].contour(gt_mask, levels=[0.5], colors=GT_COLOUR, linewidths=0.7)
        axes[3].set_title(f"predicted mask (map ≥ {threshold:.3g})")
    else:
        axes[3].imshow(np.zeros_like(anomaly_map), cmap="gray", vmin=0, vmax=1)
        axes[3].set_title("no threshold (no anomalous pixel)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.text(0.995, 0.01, THRESHOLD_NOTE, ha="right", va="bottom", fontsize=5.5, color="0.35")
    fig.subplots_adjust(left=0.005, right=0.975, top=0.88, bottom=0.07)
    return fig


def roc_figure(curves: dict[str, Any], values: dict[str, float], title: str = "ROC (final evaluation)") -> Figure:
    """Image and pixel ROC on one axis, each labelled with its AUROC.

    Args:
        curves: ``curves.json`` content (``{"image_roc": {"fpr", "tpr"}, "pixel_roc": {...}}``; missing ones skipped).
        values: the metrics (``image_AUROC``, ``pixel_AUROC``).
        title: the axis title.
    """
    fig, ax = plt.subplots(figsize=(3.4, 3.0))
    for level in ("image", "pixel"):
        curve = curves.get(f"{level}_roc")
        if curve:
            auc = values.get(f"{level}_AUROC", math.nan)
            ax.plot(curve["fpr"], curve["tpr"], linewidth=1.2, label=f"{level} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, **ROC_LIMITS)
    ax.legend(loc="lower right")
    fig.tight_layout(pad=0.4)
    return fig


def pro_figure(curves: dict[str, Any], values: dict[str, float], title: str = "PRO (final evaluation)") -> Figure:
    """The pooled PRO curve over FPR <= 0.3, its AUPRO in the legend and the per-image protocol's AUPRO named."""
    fig, ax = plt.subplots(figsize=(3.4, 3.0))
    curve = curves.get("pixel_pro")
    if curve:
        fpr, pro = np.asarray(curve["fpr"]), np.asarray(curve["pro"])
        inside = fpr <= FPR_LIMIT
        # The last vertex below the limit plus the interpolated value at the limit: the curve AUPRO integrates.
        x = np.append(fpr[inside], FPR_LIMIT) if inside.any() and fpr[inside][-1] < FPR_LIMIT else fpr[inside]
        y = np.append(pro[inside], np.interp(FPR_LIMIT, fpr, pro)) if len(x) > inside.sum() else pro[inside]
        ax.plot(x, y, linewidth=1.2, label=f"pooled, MVTec official (AUPRO {values.get('pixel_AUPRO', math.nan):.3f})")
    if "pixel_AUPRO_per_image" in values:  # an average of per-image curves: a number, not one curve
        ax.plot([], [], " ", label=f"per-image, RD4AD/URD papers (AUPRO {values['pixel_AUPRO_per_image']:.3f})")
    ax.set(xlabel="false positive rate", ylabel="per-region overlap", title=title, xlim=(0, FPR_LIMIT), ylim=(0, 1.01))
    ax.legend(loc="lower right", title="protocol", title_fontsize=6.5)
    fig.tight_layout(pad=0.4)
    return fig


def save(fig: Figure, path: str | Path) -> bytes:
    """Render ``fig`` once as a PNG, write it atomically (files.py) and close the figure; returns the PNG's bytes.

    The loggers get :func:`pixels` of these bytes, so the run folder, W&B and TensorBoard show the same image
    without drawing the figure twice.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return buffer.getvalue()


def pixels(png: bytes) -> np.ndarray:
    """A PNG (:func:`save`'s bytes) as the (H, W, 3) uint8 RGB array the loggers receive."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
