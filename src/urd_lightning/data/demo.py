"""The embedded demo dataset: procedural textures and objects with exact defect masks, no download.

Writes an MVTec-layout tree (``<root>/<category>/{train/good, test/<defect>|good, ground_truth/<defect>}``) of
128×128 PNGs, deterministically, in a few seconds. Two categories:
- ``weave``: a woven texture with random phase, shade and noise; defects ``misweave`` (a patch woven in the opposite
  over/under order: same intensities, wrong structure), ``pulled_thread`` (a stray thread), ``stain`` (a faint
  colour shift) and ``crack`` (a dark gap following a random walk);
- ``disc``: a dark disc with four holes on a light background; defects ``missing_hole``, ``extra_hole``,
  ``scratch`` and ``spot``.
Most defects reuse intensities that occur in normal images, so raw pixel statistics do not separate them; a model
has to learn the structure. Masks are the exact sets of pixels a defect drew. A stamp file holds a hash of this
module: when the generator changes, the data is regenerated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from urd_lightning.errors import DataError
from urd_lightning.files import ensure_writable, write_atomic

log = logging.getLogger(__name__)

SIZE = 128  # small enough for CPU training, large enough for four feature levels of a ResNet
NUM_TRAIN, NUM_TEST_GOOD, NUM_PER_DEFECT = 80, 24, 6  # 24 anomalous test images per category (4 types x 6)
NOISE_STD = 0.02  # sensor-like noise, added after the defect so that it does not mark the defect
STAMP = ".demo_version"
_NAME = re.compile(r"\d{3}\.png")  # the only file names the generator writes
_MASK_NAME = re.compile(r"\d{3}_mask\.png")


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _weave(rng: np.random.Generator, flip: bool = False) -> np.ndarray:
    """A woven texture; ``flip`` swaps the over/under order (used for the misweave defect)."""
    yy, xx = _grid()
    period = 16.0
    oy, ox = rng.uniform(0, period, 2) if not flip else (0.0, 0.0)
    return _weave_at(yy + oy, xx + ox, period, flip)


def _weave_at(yy: np.ndarray, xx: np.ndarray, period: float, flip: bool) -> np.ndarray:
    cell_y, cell_x = np.floor(yy / (period / 2)), np.floor(xx / (period / 2))
    horizontal_on_top = ((cell_y + cell_x) % 2 == 0) ^ flip
    across_h = np.sin(np.pi * (yy % (period / 2)) / (period / 2))  # thread profile, bright in the middle
    across_v = np.sin(np.pi * (xx % (period / 2)) / (period / 2))
    value = np.where(horizontal_on_top, 0.35 + 0.45 * across_h, 0.30 + 0.40 * across_v)
    return value.astype(np.float32)


def _colourise(gray: np.ndarray, tint: np.ndarray) -> np.ndarray:
    return np.clip(gray[..., None] * tint[None, None, :], 0, 1).astype(np.float32)


def _blob(rng: np.random.Generator, centre: tuple[int, int], radius: float) -> np.ndarray:
    """An irregular filled polygon around ``centre``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
    radii = radius * rng.uniform(0.6, 1.2, 9)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.fillPoly(mask, [points.astype(np.int32)], 1)
    return mask


def _walk(rng: np.random.Generator, start: tuple[int, int], steps: int, thickness: int) -> np.ndarray:
    """A crack-like random walk."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    point, heading = np.array(start, np.float32), rng.uniform(0, 2 * np.pi)
    for _ in range(steps):
        heading += rng.normal(0, 0.5)
        nxt = point + 4 * np.array([np.cos(heading), np.sin(heading)], np.float32)
        cv2.line(mask, tuple(int(v) for v in point), tuple(int(v) for v in nxt), 1, thickness)
        point = np.clip(nxt, 4, SIZE - 5)
    return mask


def _line(rng: np.random.Generator, length: float, thickness: int, centre: tuple[float, float]) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
    mask = np.zeros((SIZE, SIZE), np.uint8)
    c = np.array(centre)
    cv2.line(mask, tuple((c - d).astype(int).tolist()), tuple((c + d).astype(int).tolist()), 1, thickness)
    return mask


def weave_image(rng: np.random.Generator, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One ``weave`` image (float RGB [0,1]) and its mask (uint8 {0,1})."""
    tint = np.array([0.95, 0.82, 0.6]) * rng.uniform(0.9, 1.1)
    gray = _weave(rng)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    centre = tuple(int(v) for v in rng.integers(24, SIZE - 24, 2))
    if defect == "misweave":
        mask = _blob(rng, centre, rng.uniform(12, 20))
        gray = np.where(mask > 0, _weave(rng, flip=True), gray)
    elif defect == "pulled_thread":
        mask = _line(rng, rng.uniform(40, 80), 3, centre)
        gray = np.where(mask > 0, 0.8, gray)  # the brightest value of a thread
    elif defect == "crack":
        mask = _walk(rng, centre, int(rng.integers(8, 14)), 2)
        gray = np.where(mask > 0, 0.3, gray)  # the darkest value of the weave (thread edges)
    image = _colourise(gray, tint)
    if defect == "stain":
        mask = _blob(rng, centre, rng.uniform(10, 18))
        shift = np.array([0.85, 0.9, 1.15], np.float32)  # a faint bluish stain, same brightness range
        image = np.where(mask[..., None] > 0, np.clip(image * shift, 0, 1), image)
    return image, mask


def disc_image(rng: np.random.Generator, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
    """One ``disc`` image (float RGB [0,1]) and its mask (uint8 {0,1})."""
    background, body, hole = rng.uniform(0.75, 0.85), rng.uniform(0.25, 0.35), rng.uniform(0.7, 0.8)
    gray = np.full((SIZE, SIZE), background, np.float32)
    cx, cy = SIZE / 2 + rng.uniform(-3, 3, 2)
    cv2.circle(gray, (int(cx), int(cy)), 44, float(body), -1)
    rotation = rng.uniform(0, 2 * np.pi)
    holes = [(int(cx + 26 * np.cos(rotation + k * np.pi / 2)), int(cy + 26 * np.sin(rotation + k * np.pi / 2)))
             for k in range(4)]
    for h in holes:
        cv2.circle(gray, h, 6, float(hole), -1)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if defect == "missing_hole":
        cv2.circle(mask, holes[int(rng.integers(4))], 6, 1, -1)
        gray = np.where(mask > 0, body, gray)
    elif defect == "extra_hole":
        angle = rotation + np.pi / 4 + np.pi / 2 * int(rng.integers(4))  # between two regular holes
        cv2.circle(mask, (int(cx + 26 * np.cos(angle)), int(cy + 26 * np.sin(angle))), 6, 1, -1)
        gray = np.where(mask > 0, hole, gray)
    elif defect == "scratch":
        disc = np.zeros_like(mask)
        cv2.circle(disc, (int(cx), int(cy)), 40, 1, -1)
        mask = _line(rng, rng.uniform(30, 60), 2, (cx + rng.uniform(-15, 15), cy + rng.uniform(-15, 15))) * disc
        gray = np.where(mask > 0, hole, gray)
    elif defect == "spot":
        mask = _blob(rng, (int(cx + rng.uniform(-12, 12)), int(cy + rng.uniform(-12, 12))), rng.uniform(5, 9))
        gray = np.where(mask > 0, body + 0.12, gray)
    shading = 1 + 0.05 * np.linspace(-1, 1, SIZE, dtype=np.float32)[None, :] * rng.choice([-1, 1])
    return _colourise(gray * shading, np.array([1.0, 1.0, 1.0])), mask


GENERATORS: dict[str, tuple[Callable[..., tuple[np.ndarray, np.ndarray]], tuple[str, ...]]] = {
    "weave": (weave_image, ("crack", "misweave", "pulled_thread", "stain")),
    "disc": (disc_image, ("extra_hole", "missing_hole", "scratch", "spot")),
}


def generator_hash() -> str:
    """Hash of this module's source: the data is regenerated when it changes."""
    return hashlib.sha1(Path(__file__).read_bytes()).hexdigest()[:16]


def _write(path: Path, image01: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor((np.clip(image01, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))


def _render(draw: Callable[..., tuple[np.ndarray, np.ndarray]], seed: list[int], defect: str | None) -> tuple:
    rng = np.random.default_rng(seed)
    image, mask = draw(rng, defect)
    image = image + rng.normal(0, NOISE_STD, image.shape).astype(np.float32)
    return image, mask


def generate_category(root: Path, category: str) -> None:
    """Write one category's train and test images and masks under ``root/category``."""
    draw, defects = GENERATORS[category]
    cat_id = list(GENERATORS).index(category)
    base = root / category
    for i in range(NUM_TRAIN):
        _write(base / "train" / "good" / f"{i:03d}.png", _render(draw, [cat_id, 0, i], None)[0])
    for i in range(NUM_TEST_GOOD):
        _write(base / "test" / "good" / f"{i:03d}.png", _render(draw, [cat_id, 1, i], None)[0])
    for d, defect in enumerate(defects):
        for i in range(NUM_PER_DEFECT):
            image, mask = _render(draw, [cat_id, 2 + d, i], defect)
            if not mask.any():  # a defect that drew nothing would contradict its label: redraw deterministically
                image, mask = _render(draw, [cat_id, 2 + d, i, 1], defect)
            _write(base / "test" / defect / f"{i:03d}.png", image)
            mask_path = base / "ground_truth" / defect / f"{i:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_path), mask * 255)


def _not_ours(folder: Path) -> str | None:
    """Why ``folder`` is not a demo category this generator wrote, or ``None`` when it is one.

    Only such a folder may ever be replaced: every entry must have a name and place the generator gives
    (``train/good/NNN.png``, ``test/<kind>/NNN.png``, ``ground_truth/<defect>/NNN_mask.png``).
    """
    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} is not a folder"
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_symlink():
            ok = False
        elif path.is_dir():
            ok = parts[0] in ("train", "test", "ground_truth") and len(parts) <= 2
        else:
            name = _MASK_NAME if parts[0] == "ground_truth" else _NAME
            ok = (len(parts) == 3 and parts[0] in ("train", "test", "ground_truth") and name.fullmatch(parts[2])
                  is not None and (parts[0] != "train" or parts[1] == "good"))
        if not ok:
            return f"it holds {path}, which the demo generator never writes"
    return None


def _check_target(root: Path) -> None:
    """Refuse (changing nothing) when a category folder exists that the generator cannot have written."""
    for category in GENERATORS:
        target = root / category
        if not target.exists() and not target.is_symlink():
            continue
        if not (root / STAMP).is_file():
            why = f"{root} has no {STAMP} stamp, so {target} is not a demo dataset this generator wrote"
        else:
            why = _not_ours(target)
        if why:
            raise DataError(f"refusing to write the demo dataset into {root}: {why}. Nothing was changed; choose "
                            "an empty or new folder (data.root=... or --root ...), or move that folder away.")


def check_root(root: str | Path, what: str = "data.root") -> None:
    """Stop before any work when the demo dataset must be (re)written and ``root`` cannot take it.

    Nothing to write (the current generator's output is there): a read-only ``root`` is fine. Else a folder of
    the user's (:func:`_check_target`) or a ``root`` that cannot be written (read-only, a file) is one line naming
    ``what`` (the key the user gave: ``data.root``, or ``root`` for ``data demo``); nothing is created.
    """
    if not _up_to_date(Path(root)):
        _check_target(Path(root))
        ensure_writable(root, what)


def _up_to_date(root: Path) -> bool:
    stamp = root / STAMP
    return stamp.is_file() and stamp.read_text().strip() == generator_hash()


def generate_demo(root: str | Path, what: str = "data.root") -> Path:
    """(Re)write the whole demo dataset under ``root`` and stamp it with the generator's hash.

    The data is written into a fresh temporary folder beside the target and moved into place; an existing
    category folder is replaced only when it is one this generator wrote (else :class:`DataError`, nothing touched).
    A ``root`` that cannot be written stops before anything is drawn (``what``: the key that named it).
    """
    root = Path(root)
    _check_target(root)
    ensure_writable(root, what)
    root.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".demo-building-", dir=root))
    try:
        for category in GENERATORS:
            generate_category(building, category)
        _check_target(root)  # again: something may have appeared while we were drawing
        for category in GENERATORS:  # swap in whole categories so that readers never see half a tree
            old = building / f"old-{category}"
            if (root / category).exists():
                os.replace(root / category, old)  # ours (checked above): moved aside, deleted below
            os.replace(building / category, root / category)
        write_atomic(root / STAMP, generator_hash() + "\n")
    finally:
        shutil.rmtree(building, ignore_errors=True)  # only our own temporary folder (and the old demo folders)
    return root


def ensure_demo(root: str | Path, what: str = "data.root") -> Path:
    """Generate the demo dataset unless ``root`` already holds the current generator's output (see check_root)."""
    root = Path(root)
    if _up_to_date(root):
        return root
    check_root(root, what)  # before the line that says it is being generated
    log.info("generating the demo dataset in %s (a few seconds, no download)", root)
    return generate_demo(root, what)
