"""What bf16 anomaly maps cost in per-image AUPRO, on synthetic maps (docs/faithfulness.md).

Before maps were always fp32 an evaluation under ``bf16-mixed`` autocast computed the map's upsampling, sum and σ = 4
blur in bf16 (8 mantissa bits: steps of ~0.002-0.004 on map values of 0.3-1). This script builds raw maps shaped like
URD's (a sum of three ``1 − cos`` levels: a smooth background around 0.4 with low-frequency variation, one or two raised
elliptic defects per image, ground truth = the defect) at several defect contrasts, and scores each map twice with the
paper's per-image AUPRO: the fp32 path the code now always takes, and the former bf16 path (raw map rounded to bf16,
blurred by the same separable kernel in bf16 under CPU autocast, score read back as float).

    python experiments/bench_map_precision.py [--images 64] [--size 256] [--seed 0]

Prints, per contrast: the mean difference bf16 − fp32 of per-image AUPRO in points, the largest single-image
difference, and the pixel-AUROC difference. Figures in docs/faithfulness.md were produced by the defaults.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from urd_lightning.metrics.per_image import per_image_aupro
from urd_lightning.models.anomaly_map import GaussianBlur2d, reflect_indices


def make_maps(n: int, size: int, contrast: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw maps ``(n, size, size)`` in about [0.2, 0.8] and their binary defect masks."""
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
        background = 0.4 + 0.06 * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        background += rng.normal(0.0, 0.01, (size, size)).astype(np.float32)  # fine texture of the cosine maps
        defect = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(1, 3))):
            centre = tuple(int(v) for v in rng.integers(size // 8, size - size // 8, 2))
            axes = tuple(int(v) for v in rng.integers(size // 32, size // 8, 2))
            cv2.ellipse(defect, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        masks[i] = defect > 0
        # The defect raises the map smoothly (the network's maps are smooth at the defect's edge).
        maps[i] = background + contrast * cv2.GaussianBlur(defect, (0, 0), size / 64)
    return maps, masks


def bf16_blur(raw: torch.Tensor, blur: GaussianBlur2d) -> torch.Tensor:
    """The former path: bf16 map, separable blur convolutions in bf16 under autocast."""
    b, c, h, w = raw.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        planes = raw.to(torch.bfloat16).reshape(b * c, 1, h, w)
        kernel = blur.kernel.to(torch.bfloat16)
        planes = planes.index_select(2, reflect_indices(h, blur.radius))
        planes = F.conv2d(planes, kernel.view(1, 1, -1, 1))
        planes = planes.index_select(3, reflect_indices(w, blur.radius))
        planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))
    return planes.reshape(b, c, h, w).float()


def pixel_auroc(maps: torch.Tensor, masks: torch.Tensor) -> float:
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(maps.flatten(), masks.flatten().long()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    blur = GaussianBlur2d()
    print(f"{args.images} synthetic {args.size}² maps per contrast, background 0.4 ± 0.06; AUPRO in points")
    print(f"{'contrast':>9} {'AUPRO fp32':>11} {'mean Δ bf16':>12} {'max |Δ| image':>14} {'pixel AUROC Δ':>14}")
    for contrast in (0.01, 0.02, 0.05, 0.1, 0.3):
        maps, masks = make_maps(args.images, args.size, contrast, np.random.default_rng(args.seed))
        raw, gt = torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None].bool()
        fp32 = blur(raw)
        bf16 = bf16_blur(raw, blur)
        a32 = per_image_aupro(fp32[:, 0], gt[:, 0]) * 100
        a16 = per_image_aupro(bf16[:, 0], gt[:, 0]) * 100
        delta = a16 - a32
        auroc = (pixel_auroc(bf16, gt) - pixel_auroc(fp32, gt)) * 100
        print(f"{contrast:>9.2f} {float(a32.mean()):>11.2f} {float(delta.mean()):>+12.2f} "
              f"{float(delta.abs().max()):>14.2f} {auroc:>+14.3f}")


if __name__ == "__main__":
    main()
