"""Foreground masks that keep synthetic anomalies on the object, cached on disk.

Follows docs/method.md, "Foreground masks" (authors' ``train.py`` category lists and ``get_forehead_mask``):
- ``otsu`` (MVTec capsule, screw): grayscale, Otsu threshold, inverted binary: darker pixels are the object;
- ``grabcut`` (other MVTec objects, all of VisA): rect (1, 1, w−1, h−1), 11 iterations, foreground = FGD ∪ PR_FGD;
- ``none`` (textures, transistor): no restriction.
Both run on the BGR image resized to the model size with INTER_LINEAR, as the authors do. GrabCut takes about a
second per image, so each mask is written once to ``cache_dir`` under a key made of the method, the size and a hash
of the image file's bytes: a changed image gets a new key, and workers, ranks and later runs reuse the files. The
hashes come from ``digests.py``: shared with the pixel cache, and remembered in ``cache_dir`` across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from urd_lightning.data.digests import file_digests
from urd_lightning.data.transforms import read_rgb
from urd_lightning.data.workers import init_worker, worker_context
from urd_lightning.errors import ConfigError
from urd_lightning.files import write_via

METHODS = ("none", "otsu", "grabcut")
GRABCUT_ITERATIONS = 11  # authors' value


def compute_foreground(image_rgb: np.ndarray, method: str, size: int) -> np.ndarray | None:
    """The ``(size, size)`` uint8 {0, 1} foreground of an RGB image, or None for ``method="none"``."""
    if method == "none":
        return None
    bgr = cv2.resize(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), (size, size), interpolation=cv2.INTER_LINEAR)
    if method == "otsu":
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        return (binary > 0).astype(np.uint8)
    if method == "grabcut":
        labels = np.zeros((size, size), np.uint8)
        background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        # cv2 uses its own RNG inside GrabCut's k-means: fix it so the mask is reproducible.
        cv2.setRNGSeed(0)
        cv2.grabCut(bgr, labels, (1, 1, size - 1, size - 1), background, foreground, GRABCUT_ITERATIONS,
                    cv2.GC_INIT_WITH_RECT)
        return np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    raise ConfigError(f"data.foreground={method!r}: use one of {', '.join(METHODS)} or 'auto'")


def _cache_file(digest: str, method: str, size: int, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{method}-{size}-{digest}.png"


def cached_foreground(path: str | Path, method: str, size: int, cache_dir: str | Path,
                      cache_file: Path | None = None) -> np.ndarray | None:
    """:func:`compute_foreground` for the image at ``path``, read from / written to ``cache_dir``.

    ``cache_file``: the mask's file in ``cache_dir`` when the caller already hashed the image (saves a re-read).
    """
    if method == "none":
        return None
    cache_file = cache_file or _cache_file(file_digests([path])[0], method, size, cache_dir)
    if cache_file.is_file():
        cached = cv2.imread(str(cache_file), cv2.IMREAD_GRAYSCALE)
        if cached is not None and cached.shape == (size, size):
            return (cached > 0).astype(np.uint8)
    mask = compute_foreground(read_rgb(path), method, size)
    assert mask is not None
    # Atomic (temporary name, then rename): concurrent workers or ranks never see a half-written file.
    write_via(cache_file, lambda tmp: cv2.imwrite(str(tmp), mask * 255))
    return mask


def foreground_masks(paths: Sequence[str], method: str, size: int, cache_dir: str | Path,
                     progress: bool = True, workers: int = 0) -> list[np.ndarray | None]:
    """Foregrounds of every training image, computed once (GrabCut is slow) with a progress bar.

    With ``workers`` > 0 the masks not yet cached are computed by that many worker processes started from a clean
    forkserver (``data/workers.py``): GrabCut takes ~1 s per image and VisA has ~900 training images per category,
    and OpenCV's thread pool then never runs in the training process, whose loader workers are started later.
    """
    if method == "none":
        return [None] * len(paths)
    paths = [str(p) for p in paths]
    # Each image's bytes hashed once per run (the pixel cache reuses the digests), not at all while memoised.
    files = [_cache_file(d, method, size, cache_dir) for d in file_digests(paths, cache_dir)]
    todo = [i for i, f in enumerate(files) if not f.is_file()]
    pending = set(todo)
    bar = None
    if progress and method == "grabcut" and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"foreground masks ({method}, cached in {cache_dir})", leave=False,
                   disable=None)  # None: no bar without a terminal (a log file would fill with \r updates)
    masks: dict[int, np.ndarray | None] = {}
    if workers > 0 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=worker_context(),
                                 initializer=init_worker) as pool:
            for i, mask in zip(todo, pool.map(cached_foreground, [paths[i] for i in todo], [method] * len(todo),
                                              [size] * len(todo), [str(cache_dir)] * len(todo),
                                              [files[i] for i in todo]), strict=True):
                masks[i] = mask
                if bar is not None:
                    bar.update()
    for i, path in enumerate(paths):  # cached ones (and all of them without workers) in this process
        if i not in masks:
            masks[i] = cached_foreground(path, method, size, cache_dir, files[i])
            if bar is not None and i in pending:
                bar.update()
    if bar is not None:
        bar.close()
    return [masks[i] for i in range(len(paths))]
