"""Reading images and masks, resizing to the model size, ImageNet normalisation.

Follows the authors' pipeline (docs/method.md, "Images"): RGB → resize to the model size → [0,1] → Normalize with
ImageNet mean/std; masks resized the same way then binarised at 0.5.

Two resize methods (``data.resize``):
- ``pil`` (default, the authors'): Pillow bilinear, which antialiases when shrinking; bit-equal to torchvision's
  ``transforms.Resize((S, S))`` on a PIL image, which the authors call. Masks: the 0/255 mask resized the same way,
  then ``ToTensor() > 0.5``, i.e. a resized value of 128 or more.
- ``cv2``: OpenCV INTER_AREA when shrinking, INTER_LINEAR when enlarging (the closest OpenCV match), masks resized
  as floats and binarised at 0.5; what checkpoints written before ``data.resize`` existed were trained with.
  Measured by ``experiments/bench_data.py --resize-only`` (shared 2-core CPU, one OpenCV thread), 1024² → 256²:
  grey levels differ from ``pil`` by 1.26 on average (max 7) on blurred noise, 2.54 (max 16) with fine noise on
  top; a mask of 1-3 px wide lines keeps an IoU of 0.865 with the ``pil`` mask (2159 vs 2303 pixels); speed per
  RGB image 1.1-2.8 ms against 4.6-7.6 ms for ``pil`` (2.7-4.9x over 7 runs; the pixel cache pays it once per run).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from urd_lightning.errors import DataError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE_METHODS = ("pil", "cv2")  # pil = the authors' (default); cv2 = faster, what older checkpoints used


# Decompression-bomb guard: a small file can declare a huge image (a 388 KB PNG of 20000 x 20000 pixels decodes to
# 1.2 GB and took 8.7 GB in predict). Pillow refuses above twice its MAX_IMAGE_PIXELS (179 million pixels) by
# default; OpenCV only above 2**30. Images above this many pixels are refused before decoding; the environment
# variable raises the limit (0 = none) for genuine large images.
MAX_PIXELS_ENV = "URD_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 2 * 89_478_485


def max_pixels() -> int:
    """The decoded-pixel limit: ``URD_MAX_IMAGE_PIXELS`` when set (0 = no limit), else Pillow's error limit."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError as exc:
        raise DataError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels (0 = no limit)") from exc


def _check_pixels(path: str | Path, data: np.ndarray) -> None:
    """Refuse an image whose header declares more pixels than :func:`max_pixels` (read from the header only)."""
    limit = max_pixels()
    if limit <= 0:
        return
    fix = f"if it is genuine, set {MAX_PIXELS_ENV}=<pixels> (0 = no limit)"
    try:
        with warnings.catch_warnings():  # Pillow warns from half its limit on; the decision is made here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(memoryview(data))) as header:  # lazy: reads the size, decodes nothing
                width, height = header.size
    except Image.DecompressionBombError as exc:  # Pillow's own limit, 2 x Image.MAX_IMAGE_PIXELS, is exceeded
        if Image.MAX_IMAGE_PIXELS is not None and limit <= 2 * Image.MAX_IMAGE_PIXELS:
            raise DataError(f"image {path} declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, above the "
                            f"limit of {limit:,} (a decompression bomb guard); {fix}") from exc
        return  # a raised limit: OpenCV decodes it
    except (OSError, ValueError, SyntaxError):
        return  # not a format Pillow reads (or a broken header): OpenCV decides below
    if width * height > limit:
        raise DataError(f"image {path} declares {width}x{height} = {width * height:,} pixels, above the limit of "
                        f"{limit:,} (about {width * height * 3 / 1e9:.1f} GB to decode: a decompression bomb guard); "
                        f"{fix}")


def _decode(path: str | Path, flags: int) -> np.ndarray:
    # np.fromfile + imdecode instead of cv2.imread: works with non-ASCII paths on every OS.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if data.size:
        _check_pixels(path, data)
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


def check_resize(method: str) -> str:
    """``method`` if it is one of ``RESIZE_METHODS``, else a one-line error naming the key."""
    if method not in RESIZE_METHODS:
        raise DataError(f"data.resize={method!r}: use pil (the authors' Pillow bilinear) or cv2 (faster OpenCV)")
    return method


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W[, 3]) uint8`` → ``(size, size[, 3])`` with Pillow bilinear: torchvision ``Resize`` on a PIL image."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_image(image: np.ndarray, size: int, method: str = "pil") -> np.ndarray:
    """An image alone to ``size × size`` (textures, the training-image cache): the image part of :class:`Resizer`."""
    if method == "pil":
        return pil_resize(image, size)
    return cv2.resize(image, (size, size), interpolation=interpolation_for(image.shape[:2], size))


class Resizer:
    """Resize an image (and optionally a mask) to ``size × size`` with the authors' ``pil`` or the ``cv2`` method.

    The ``cv2`` method (INTER_AREA when shrinking, INTER_LINEAR otherwise) gives the pixels the project produced
    before the ``pil`` method existed (then through albumentations' ``A.Resize``, which gave identical pixels; it was
    dropped as a dependency, docs/design.md "Dependencies"), so older checkpoints see the inputs they were trained on.
    """

    def __init__(self, size: int, method: str = "pil") -> None:
        self.size = size
        self.method = check_resize(method)

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """A ``(H, W)`` mask (non-zero = anomalous) alone → ``(size, size)`` float32 {0, 1}."""
        if self.method == "pil":
            # The authors' ground truth is 0/255; ToTensor divides by 255 and they keep > 0.5, i.e. >= 128.
            return (pil_resize((mask > 0).astype(np.uint8) * 255, self.size) >= 128).astype(np.float32)
        interpolation = interpolation_for(mask.shape[:2], self.size)
        small = cv2.resize((mask > 0).astype(np.float32), (self.size, self.size), interpolation=interpolation)
        return (small > 0.5).astype(np.float32)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns the resized uint8 image and the resized binary float32 mask (or None); masks are {0, 1}."""
        resized = resize_image(image, self.size, self.method)
        if mask is None:
            return resized, None
        if self.method == "cv2" and mask.shape[:2] != image.shape[:2]:  # cv2: the mask's interpolation is the image's
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        return resized, self.resize_mask(mask)


def normalize(image01: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` float image in [0, 1] → ImageNet-normalised ``(3, H, W)`` float32 tensor."""
    # Channels first in one copy, then in place: the same float32 operations as (x - mean) / std, ~6x faster.
    normalised = image01.transpose(2, 0, 1).astype(np.float32, order="C")  # astype always copies
    normalised -= IMAGENET_MEAN[:, None, None]
    normalised /= IMAGENET_STD[:, None, None]
    return torch.from_numpy(normalised)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize` for ``(..., 3, H, W)`` tensors, back to [0, 1] (for pictures)."""
    mean = torch.as_tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)
