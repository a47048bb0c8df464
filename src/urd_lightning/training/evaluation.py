"""What an evaluation adds up to: the score statistics across ranks, the "oracle" selection, plot-sized curves.

Pure functions over tensors and lists, used by ``URDModule``'s evaluation hooks (``module.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# The authors select their reported ("max") numbers on the test set by these sums (docs/method.md, "Test-set
# selection"):
# pixel AUROC + AUPRO on MVTec, plus image AUROC on VisA. We only use them for the labelled "oracle" numbers.
ORACLE_KEYS = ("pixel_AUROC", "pixel_AUPRO_per_image")
ORACLE_KEYS_VISA = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO_per_image")


def best_periodic(periodic: Sequence[dict[str, Any]], dataset: str) -> dict[str, float] | None:
    """The periodic evaluation the authors' selection sum picks, or None when none ran."""
    if not periodic:
        return None
    keys = ORACLE_KEYS_VISA if dataset == "visa" else ORACLE_KEYS
    return dict(max(periodic, key=lambda row: sum(row.get(k, 0.0) for k in keys)))


def score_stats(scores: Sequence[Tensor], device: torch.device,
                all_gather: Callable[[Tensor], Tensor]) -> dict[str, float] | None:
    """Min/max of image scores and pixel values over every rank (anomalib's normalisation statistics).

    Each entry of ``scores`` is one batch's ``(image_min, image_max, pixel_min, pixel_max)``; None when no rank saw
    an image.
    """
    if not scores:
        local = torch.tensor([math.inf, -math.inf, math.inf, -math.inf], device=device)
    else:
        stacked = torch.stack(list(scores))
        local = torch.cat([stacked[:, 0].min()[None], stacked[:, 1].max()[None],
                           stacked[:, 2].min()[None], stacked[:, 3].max()[None]])
    gathered = all_gather(local).reshape(-1, 4)
    stats = [gathered[:, 0].min(), gathered[:, 1].max(), gathered[:, 2].min(), gathered[:, 3].max()]
    if not all(math.isfinite(float(v)) for v in stats):
        return None
    return dict(zip(("image_min", "image_max", "pixel_min", "pixel_max"), (float(v) for v in stats), strict=True))


def decimate(x: Tensor, y: Tensor, points: int = 2000) -> tuple[Tensor, Tensor]:
    """At most ``points`` vertices of a curve (pixel curves have millions), keeping both ends, for plots."""
    if x.numel() <= points:
        return x, y
    keep = torch.linspace(0, x.numel() - 1, points).round().long()
    return x[keep], y[keep]
