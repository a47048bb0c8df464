"""Anomaly maps: per-level 1 − cosine, upsampled and summed, then Gaussian smoothing σ = 4.

Follows docs/method.md, "Anomaly map and score" (the authors' ``cal_anomaly_map`` with ``anomaly_mode='add'`` and
``scipy.ndimage.gaussian_filter(sigma=4)``). The smoothing here is a separable torch convolution that reproduces
scipy's filter (kernel radius ``int(truncate·σ + 0.5)`` = 16 taps each side, ``mode='reflect'``), so it runs on the
GPU and in exported graphs; tests check it against scipy.

The map is always computed in fp32, whatever precision the network ran in: under bf16 autocast the cosine, the
upsampling and the blur would come out in bf16 (8 mantissa bits, steps of ~0.004 on a map in [0, 1]), which
collapses the thresholds of the pixel metrics. ``fp32_region`` switches autocast off and the features are
cast up, so ``test``, periodic evaluation, ``predict`` and export all get the same fp32 map.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# σ = 4 and truncate = 4 are the authors' choice (scipy's default truncate): a 33-tap kernel.
PAPER_SIGMA = 4.0
SCIPY_TRUNCATE = 4.0


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """A region where autocast is off on ``device``'s type, so tensors keep the dtype they are given (fp32 here)."""
    return torch.autocast(device_type=device.type, enabled=False)


def gaussian_kernel1d(sigma: float, truncate: float = SCIPY_TRUNCATE) -> Tensor:
    """The 1-D Gaussian weights of scipy: radius ``int(truncate·sigma + 0.5)``, normalised to sum 1 (float64)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def reflect_indices(size: int, radius: int, device: torch.device | None = None) -> Tensor:
    """Source indices for scipy's ``mode='reflect'`` padding (half-sample symmetric: ``d c b a | a b c d | d c``).

    This is not torch's ``F.pad(mode='reflect')`` (``d c b | a b c d``, the edge sample is not repeated). The
    extension is periodic with period ``2·size``, which also covers maps smaller than the radius.
    """
    idx = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


class GaussianBlur2d(nn.Module):
    """Separable Gaussian smoothing of every ``(H, W)`` plane of a ``(B, C, H, W)`` tensor.

    Equal to ``scipy.ndimage.gaussian_filter(plane, sigma, mode='reflect', truncate=4)`` (tests check 1e-5 in fp32).

    The kernel is built once, as a (non-persistent) buffer, so it follows the module to the GPU and is not stored in
    checkpoints.
    """

    def __init__(self, sigma: float = PAPER_SIGMA, truncate: float = SCIPY_TRUNCATE) -> None:
        super().__init__()
        self.sigma = sigma
        kernel = gaussian_kernel1d(sigma, truncate)
        self.radius = (kernel.numel() - 1) // 2
        self.register_buffer("kernel", kernel.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Smooth ``x`` ``(B, C, H, W)``; returns the same shape and dtype (autocast does not lower it to bf16)."""
        b, c, h, w = x.shape
        with fp32_region(x.device):
            kernel = self.kernel.to(x.dtype)
            planes = x.reshape(b * c, 1, h, w)
            planes = planes.index_select(2, reflect_indices(h, self.radius, x.device))
            planes = F.conv2d(planes, kernel.view(1, 1, -1, 1))
            planes = planes.index_select(3, reflect_indices(w, self.radius, x.device))
            planes = F.conv2d(planes, kernel.view(1, 1, 1, -1))
        return planes.reshape(b, c, h, w)


def channel_cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 − cos`` over channels: ``(B,C,h,w)`` × 2 → ``(B,1,h,w)``."""
    return 1 - F.cosine_similarity(a, b, dim=1).unsqueeze(1)


def anomaly_map(teacher: list[Tensor], student: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Raw (unsmoothed) map: Σ over levels of ``1 − cos(T_l, S_l)`` upsampled to ``size``.

    Args:
        teacher: per-level teacher features, shallow→deep.
        student: per-level student features, same shapes.
        size: output ``(H, W)``, the input image size.

    Returns:
        ``(B, 1, H, W)`` float32 map, computed in fp32 also under autocast (features of any dtype are cast up).
        Bilinear upsampling uses ``align_corners=True`` as the authors' code does.
    """
    if not teacher:
        raise ValueError("anomaly_map needs at least one feature level")
    total = None
    with fp32_region(teacher[0].device):
        for t, s in zip(teacher, student, strict=True):
            distance = channel_cosine_distance(t.float(), s.float())
            level = F.interpolate(distance, size=size, mode="bilinear", align_corners=True)
            total = level if total is None else total + level
    return total


def score_maps(raw: Tensor, blur: GaussianBlur2d) -> tuple[Tensor, Tensor]:
    """Smoothed fp32 map ``(B,1,H,W)`` and image score ``(B,)`` = the smoothed map's maximum (the authors' score)."""
    smoothed = blur(raw.float())  # the blur keeps its input's dtype, also under autocast
    return smoothed, smoothed.flatten(1).amax(dim=1)
