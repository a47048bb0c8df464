"""Tiny fake datasets in each benchmark's real on-disk layout, with its quirks, for tests of every part.

Each ``write_<benchmark>(root)`` writes one or two categories of 48×48 (or 40×56) images and returns the root.
Quirks reproduced: MVTec grayscale PNG categories and ``<stem>_mask.png``; VisA's official release (upper-case
``.JPG``, label-map masks with small integers, ``split_csv/1cls.csv``) and its converted layout; BTAD's ``ok``/``ko``
folders with ``.bmp`` images and ``.png`` masks; MPDD's MVTec layout; a user folder. Anomalous images carry a bright
square, and their mask marks exactly that square.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

SIZE = 48
COUNTS = {"train": 6, "good": 3, "defect": 2}  # per category: train normal, test normal, test per defect type


def _image(rng: np.random.Generator, gray: bool = False, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    image = rng.integers(40, 120, size=(*shape, 1 if gray else 3), dtype=np.uint8)
    return image[..., 0] if gray else image


def _defect(image: np.ndarray, rng: np.random.Generator, label_value: int = 255) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    y, x = rng.integers(4, h // 2), rng.integers(4, w // 2)
    side = max(8, h // 4)
    image = image.copy()
    image[y:y + side, x:x + side] = 250
    mask = np.zeros((h, w), np.uint8)
    mask[y:y + side, x:x + side] = label_value
    return image, mask


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


def write_mvtec_layout(root: Path, categories: dict[str, bool], defects: tuple[str, ...] = ("broken", "scratch"),
                       normal: str = "good", image_ext: str = ".png", mask_ext: str = ".png",
                       mask_suffix: str = "_mask", seed: int = 0) -> Path:
    """MVTec-like tree; ``categories`` maps name -> grayscale."""
    rng = np.random.default_rng(seed)
    for category, gray in categories.items():
        base = root / category
        for i in range(COUNTS["train"]):
            _write(base / "train" / normal / f"{i:03d}{image_ext}", _image(rng, gray))
        for i in range(COUNTS["good"]):
            _write(base / "test" / normal / f"{i:03d}{image_ext}", _image(rng, gray))
        for defect in defects:
            for i in range(COUNTS["defect"]):
                image, mask = _defect(_image(rng, gray), rng)
                _write(base / "test" / defect / f"{i:03d}{image_ext}", image)
                _write(base / "ground_truth" / defect / f"{i:03d}{mask_suffix}{mask_ext}", mask)
    return root


def write_mvtec(root: Path) -> Path:
    """MVTec AD: ``bottle`` (RGB) and ``grid`` (grayscale PNGs, as the real category)."""
    return write_mvtec_layout(root, {"bottle": False, "grid": True})


def write_mpdd(root: Path) -> Path:
    """MPDD: MVTec layout, one category."""
    return write_mvtec_layout(root, {"tubes": False}, defects=("anomalous",))


def write_btad(root: Path) -> Path:
    """BTAD: ``01`` with .bmp images and .png masks, ``03`` with .png images and .bmp masks; ok/ko folders."""
    write_mvtec_layout(root, {"01": False}, defects=("ko",), normal="ok", image_ext=".bmp", mask_suffix="")
    return write_mvtec_layout(root, {"03": False}, defects=("ko",), normal="ok", image_ext=".png", mask_ext=".bmp",
                              mask_suffix="", seed=3)


def write_visa_official(root: Path, category: str = "candle") -> Path:
    """VisA release: ``Data/Images/{Normal,Anomaly}/*.JPG``, label-map masks, ``split_csv/1cls.csv``."""
    rng = np.random.default_rng(1)
    rows = []
    base = Path(category) / "Data"
    for i in range(COUNTS["train"] + COUNTS["good"]):
        rel = base / "Images" / "Normal" / f"{i:04d}.JPG"
        _write(root / rel, _image(rng, shape=(40, 56)))
        rows.append([category, "train" if i < COUNTS["train"] else "test", "normal", rel.as_posix(), ""])
    for i in range(2 * COUNTS["defect"]):
        rel = base / "Images" / "Anomaly" / f"{i:03d}.JPG"
        image, mask = _defect(_image(rng, shape=(40, 56)), rng, label_value=1 + i % 2)  # label map: 1, 2, ...
        _write(root / rel, image)
        mask_rel = base / "Masks" / "Anomaly" / f"{i:03d}.png"
        _write(root / mask_rel, mask)
        rows.append([category, "test", "anomaly", rel.as_posix(), mask_rel.as_posix()])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def write_visa_converted(root: Path) -> Path:
    """VisA converted by other tools: ``visa_pytorch/<cat>/{train/good,test/good|bad,ground_truth/bad/<stem>.png}``."""
    return write_mvtec_layout(root / "visa_pytorch", {"pcb1": False}, defects=("bad",), image_ext=".JPG",
                              mask_suffix="", seed=2) and root


def write_folder(root: Path) -> Path:
    """A user's folder: ``normal/``, ``defective/`` and ``masks/`` (masks named ``<stem>.png``)."""
    rng = np.random.default_rng(4)
    for i in range(8):
        _write(root / "normal" / f"n{i:02d}.png", _image(rng))
    for i in range(3):
        image, mask = _defect(_image(rng), rng)
        _write(root / "defective" / f"d{i:02d}.jpg", image)
        _write(root / "masks" / f"d{i:02d}.png", mask)
    return root


FOLDER_OPTIONS = {"normal_dir": "normal", "abnormal_dir": "defective", "mask_dir": "masks", "normal_split_ratio": 0.25}

# benchmark -> (writer, category, datamodule options, expected (train, test normal, test anomalous))
CASES = {
    "mvtec": (write_mvtec, "bottle", {}, (6, 3, 4)),
    "mvtec_gray": (write_mvtec, "grid", {}, (6, 3, 4)),
    "visa": (write_visa_official, "candle", {}, (6, 3, 4)),
    "visa_converted": (write_visa_converted, "pcb1", {}, (6, 3, 2)),
    "btad": (write_btad, "01", {}, (6, 3, 2)),
    "btad_bmp_masks": (write_btad, "03", {}, (6, 3, 2)),
    "mpdd": (write_mpdd, "tubes", {}, (6, 3, 2)),
    "folder": (write_folder, "custom", FOLDER_OPTIONS, (6, 2, 3)),
}


def benchmark_of(case: str) -> str:
    """``visa_converted`` -> ``visa`` etc."""
    return case.split("_")[0]
