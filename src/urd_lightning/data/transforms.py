"""Reading images and masks, resizing to the model size, ImageNet normalisation.

Follows the authors' pipeline (urd-method.md section 4): RGB → resize to the model size → [0,1] → Normalize with
ImageNet mean/std; masks resized the same way then binarised at 0.5. The authors resize with PIL bilinear, which
antialiases. cv2's INTER_LINEAR does not when downscaling, so the resize picks INTER_AREA for downscaling and
INTER_LINEAR for upscaling. Mean abs difference to PIL bilinear (uint8, measured on a blurred-noise RGB image):
1024→256: INTER_AREA 2.27, INTER_LINEAR 6.82, INTER_CUBIC 10.6; 900→256: AREA 1.38, LINEAR 5.85;
128→256: LINEAR 0.31, AREA 2.09.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from urd_lightning.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _decode(path: str | Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode instead of cv2.imread: works with non-ASCII paths on every OS.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise DataError(f"unreadable or truncated image: {path} (run 'python -m urd_lightning data check')")
    return image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image // 257).astype(np.uint8)  # 65535 → 255
    image = image.astype(np.float32)
    scale = 255.0 if image.max() <= 1.0 else 1.0
    return np.clip(image * scale, 0, 255).astype(np.uint8)


def read_rgb(path: str | Path) -> np.ndarray:
    """Any image file as ``(H, W, 3) uint8`` RGB: grayscale, 16-bit and RGBA sources included."""
    image = _to_uint8(_decode(path, cv2.IMREAD_UNCHANGED))
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask as ``(H, W) uint8`` in {0, 1}: ANY non-zero pixel is anomalous (VisA masks are label maps, not 0/255)."""
    mask = _decode(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 0).astype(np.uint8)


def interpolation_for(src_hw: tuple[int, int], size: int) -> int:
    """INTER_AREA when shrinking, INTER_LINEAR when enlarging: the closest cv2 match to PIL bilinear (module doc)."""
    return cv2.INTER_AREA if min(src_hw) > size else cv2.INTER_LINEAR


class Resizer:
    """Resize an image (and optionally a mask) to ``size × size`` with ``cv2.resize``.

    Masks go through the same interpolation as floats and are binarised at 0.5 afterwards, as the authors do
    (bilinear resize, then ``> 0.5``). (albumentations' ``A.Resize`` gave identical pixels; it was dropped as a
    dependency, docs/design.md "Dependencies".)
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns the resized uint8 image and the resized binary float32 mask (or None)."""
        interpolation = interpolation_for(image.shape[:2], self.size)
        resized = cv2.resize(image, (self.size, self.size), interpolation=interpolation)
        if mask is None:
            return resized, None
        if mask.shape[:2] != image.shape[:2]:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        mask = cv2.resize(mask.astype(np.float32), (self.size, self.size), interpolation=interpolation)
        return resized, (mask > 0.5).astype(np.float32)


def normalize(image01: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float image in [0, 1] → ImageNet-normalised ``(3, H, W)`` float32 tensor."""
    normalised = (image01.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` for ``(..., 3, H, W)`` tensors, back to [0, 1] (for pictures)."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
