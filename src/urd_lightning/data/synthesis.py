"""Synthetic anomalies for training: Perlin-noise masks filled with a foreign texture.

Follows docs/method.md, "Synthetic anomalies" (authors' ``dataset/dataset_noise.py`` and ``utils/perlin.py``):
- Perlin scales 2^t_x × 2^t_y periods with t_x, t_y drawn independently from {0..5};
- the noise is rotated by an angle in [-90°, 90°] (the authors use imgaug ``Affine``; here cv2, bilinear,
  constant-0 fill, imgaug's defaults) and thresholded at > 0.5;
- restricted to the foreground mask when there is one;
- blended on [0, 1] images: x̃ = x·(1−M) + (1−β)·texture·M + β·x·M with β ~ U(0, 0.8);
- every sample gets a synthetic counterpart (the authors' aug_prob = 1.0); its mask may still be empty.
Every random draw comes from the ``np.random.Generator`` passed in, so a seed fixes the result.

Speed (``experiments/bench_data.py``): textures come through a :class:`~urd_lightning.data.cache.PixelCache`
(decoded and resized once per run, shared by the workers), and the Perlin noise gathers its lattice gradients with
small per-row and per-column products spread with ``take`` instead of a 3-D fancy index and per-pixel products: the
same float64 products and sums, so the noise is bit-identical to the straightforward version and ~6x faster.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from urd_lightning.config.textures import dtd_images_dir
from urd_lightning.data.benchmarks import IMAGE_EXTENSIONS
from urd_lightning.data.cache import PixelCache, content_digest
from urd_lightning.data.transforms import check_resize, read_rgb, resize_image
from urd_lightning.errors import DataError

log = logging.getLogger(__name__)

PERLIN_MAX_SCALE_EXP = 6  # t ∈ {0..5}: torch.randint(0, 6) in the authors' code
PERLIN_THRESHOLD = 0.5  # authors' threshold on the rotated noise
ROTATION_DEGREES = 90.0  # imgaug Affine(rotate=(-90, 90))
BETA_MAX = 0.8  # β = torch.rand() * 0.8: how much of the original image shows through the texture
PROCEDURAL_BANK = 2048  # procedural textures a sample draws from (DTD has 5,640 images); each is a pure function
PROCEDURAL_VERSION = 1  # of its index: bump when the generator changes, so that cached textures are not reused


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)  # Perlin's quintic: zero first and second derivative at lattice points


def perlin_noise(shape: tuple[int, int], periods: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``periods`` lattice cells along (y, x); values about [-1, 1]."""
    height, width = shape
    py, px = periods
    angles = rng.uniform(0, 2 * np.pi, size=(py + 1, px + 1))
    gx, gy = np.cos(angles), np.sin(angles)
    y = np.arange(height) * py / height
    x = np.arange(width) * px / width
    yi, xi = np.floor(y).astype(np.intp), np.floor(x).astype(np.intp)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # The lattice gradient at each pixel's (dy, dx) corner dotted with the offset to that corner. Each product
        # is taken on a (H, px+1) or (py+1, W) array, whose entries are exactly the per-pixel products, then
        # spread to (H, W) by ``take``: the same numbers as the per-pixel formula, ~6x faster.
        along_y = (gx.take(yi + dy, axis=0) * (yf - dy)).take(xi + dx, axis=1)
        along_y += (gy.take(xi + dx, axis=1) * (xf - dx)).take(yi + dy, axis=0)
        return along_y

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (np.sqrt(2) * (top * (1 - v) + bottom * v)).astype(np.float32)


def perlin_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A binary ``(size, size)`` float32 anomaly mask: rotated Perlin noise above the authors' threshold."""
    ty, tx = rng.integers(0, PERLIN_MAX_SCALE_EXP, size=2)
    noise = perlin_noise((size, size), (2**int(ty), 2**int(tx)), rng)
    angle = rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES)
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    rotated = cv2.warpAffine(noise, matrix, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (rotated > PERLIN_THRESHOLD).astype(np.float32)


class _TextureBank(ABC):
    """``count`` textures, texture ``k`` made by ``_make(k, size)`` as uint8, one drawn uniformly per sample.

    With ``cache_dir`` each texture is made once per run and shared by the workers (``data/cache.py``), under a file
    keyed by ``_key``; without it, made at every draw.
    """

    name = ""

    def __init__(self, count: int, key: str, cache_dir: str | Path | None) -> None:
        self._count, self._key, self.cache_dir = count, key, cache_dir
        self._caches: dict[int, PixelCache] = {}

    @abstractmethod
    def _make(self, index: int, size: int) -> np.ndarray:
        """Texture ``index`` of the bank at ``size`` x ``size``, as ``(size, size, 3)`` uint8."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """One ``(size, size, 3)`` texture drawn uniformly, as float32 in [0, 1]; not augmented (as the authors)."""
        index = int(rng.integers(self._count))
        if not self.cache_dir:
            return self._make(index, size).astype(np.float32) / 255.0
        if size not in self._caches:
            self._caches[size] = PixelCache(self.cache_dir, self.name, self._key, self._count, size)
        return self._caches[size].get(index, lambda: self._make(index, size)).astype(np.float32) / 255.0


class DTDTextures(_TextureBank):
    """Anomaly source images from a DTD folder (``images/<class>/*.jpg``, ``dtd/images/...``, or any images below).

    Resized with ``resize`` (``pil``: Pillow bilinear, as the authors; ``cv2``: see ``transforms``). With
    ``cache_dir`` each image is decoded and resized once per run and shared by the workers (``data/cache.py``); the
    cache is keyed by the bytes of every image, hashed once and remembered in ``cache_dir`` (``data/digests.py``),
    so a later start-up with an unchanged DTD reads none of its files.
    """

    name = "dtd"

    def __init__(self, root: str | Path, resize: str = "pil", cache_dir: str | Path | None = None) -> None:
        self.resize = check_resize(resize)
        root = Path(root)
        base = dtd_images_dir(root) or root
        self.paths = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if base.is_dir() else []
        if not self.paths:
            raise DataError(f"no DTD images under {base} (data.dtd_root): expected images/<class>/*.jpg. Get DTD with: "
                            f"python -m urd_lightning data download dtd --root {root}, or set data.textures=procedural")
        # An empty file (an interrupted copy) would stop training inside a loader worker, mid-epoch, with a
        # traceback; a stat per file finds it at set-up. `data check dtd` also finds files that do not decode.
        empty = [p for p in self.paths if p.is_file() and p.stat().st_size == 0]
        if empty:
            raise DataError(f"{len(empty)} empty (0-byte) DTD image(s) under {base}, e.g. {empty[0]}: delete them or "
                            f"get DTD again (python -m urd_lightning data download dtd --root {root}); "
                            f"python -m urd_lightning data check dtd --root {root} lists every unreadable one")
        digest = content_digest(self.paths, cache_dir) if cache_dir else ""  # the cache key: every image's bytes
        super().__init__(len(self.paths), f"dtd|{digest}|{self.resize}", cache_dir)

    def _make(self, index: int, size: int) -> np.ndarray:
        return resize_image(read_rgb(self.paths[index]), size, self.resize)


class ProceduralTextures(_TextureBank):
    """Built-in anomaly source for machines without DTD: random coloured noise, stripes and checkers.

    Results then differ from the paper's setting (which uses DTD); the datamodule logs that once. Like DTD, it is a
    fixed bank of ``PROCEDURAL_BANK`` 8-bit textures, one drawn uniformly per sample: texture ``k`` is a pure
    function of ``k`` and the size, generated on first use and, with ``cache_dir``, kept in a shared
    ``PixelCache``, so it is no slower than DTD: generating a texture costs about twice a DTD image's decode and
    resize (12 against 5 ms at 256²), once per run; from then on both are a read from the shared cache.
    """

    name = "procedural"

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        super().__init__(PROCEDURAL_BANK, f"procedural|{PROCEDURAL_VERSION}", cache_dir)

    def _make(self, index: int, size: int) -> np.ndarray:
        """Texture ``index`` of the bank as ``(size, size, 3)`` uint8 (its own generator, seeded by the index)."""
        rng = np.random.default_rng([PROCEDURAL_VERSION, index])
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        kind = int(rng.integers(3))
        if kind == 0:  # multi-octave coloured noise
            base = sum(perlin_noise((size, size), (2**o, 2**o), rng) / 2**i for i, o in enumerate(range(1, 5)))
            pattern = base / (np.abs(base).max() + 1e-6)
        elif kind == 1:  # oriented stripes
            theta = rng.uniform(0, np.pi)
            pattern = np.sin(2 * np.pi * rng.uniform(4, 24) * (xx * np.cos(theta) + yy * np.sin(theta)))
        else:  # checkerboard
            cells = rng.uniform(3, 16)
            pattern = np.sign(np.sin(np.pi * cells * xx) * np.sin(np.pi * cells * yy))
        colours = rng.uniform(0, 1, size=(2, 3)).astype(np.float32)
        t = ((pattern + 1) / 2)[..., None]
        texture = colours[0] * (1 - t) + colours[1] * t
        texture += rng.normal(0, 0.03, size=texture.shape).astype(np.float32)
        return np.rint(np.clip(texture, 0, 1) * 255).astype(np.uint8)


def make_texture_source(dtd_root: str | Path | None, resize: str = "pil",
                        cache_dir: str | Path | None = None) -> DTDTextures | ProceduralTextures:
    """DTD when ``dtd_root`` is set, else the procedural source with a one-line notice; ``cache_dir``: pixel cache."""
    if dtd_root:
        return DTDTextures(dtd_root, resize=resize, cache_dir=cache_dir)
    log.warning("No DTD (data.textures=procedural, or none found in datasets/dtd): synthetic anomalies use built-in "
                "procedural textures, so results differ from the paper's setting (DTD). Get DTD with: "
                "python -m urd_lightning data download dtd")
    return ProceduralTextures(cache_dir=cache_dir)


def synthesize(image01: np.ndarray, source: DTDTextures | ProceduralTextures, rng: np.random.Generator,
               foreground: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomaly on a square float image in [0, 1].

    Args:
        image01: ``(S, S, 3)`` float32 normal image in [0, 1].
        source: where the anomaly texture comes from.
        rng: the only source of randomness.
        foreground: optional ``(S, S)`` mask; the anomaly is kept only where it is non-zero.

    Returns:
        ``(augmented (S, S, 3) float32, mask (S, S) float32 in {0, 1})``; pixels outside the mask are unchanged.
    """
    size = image01.shape[0]
    mask = perlin_mask(size, rng)
    if foreground is not None:
        mask = mask * (foreground > 0)
    # Draw β and the texture even for an empty mask so that the random stream does not depend on the mask.
    beta = np.float32(rng.uniform(0, BETA_MAX))
    texture = source.sample(rng, size)
    blended = (1 - beta) * texture + beta * image01
    augmented = np.where(mask[..., None] > 0, blended, image01).astype(np.float32, copy=False)
    return augmented, mask.astype(np.float32, copy=False)
