"""Where each benchmark keeps its files: one small index function per on-disk layout.

Every function has the signature ``index_<benchmark>(root, category, split, **options) -> list[Sample]`` and only
lists files; reading and validating them is ``check.py``'s job. Layouts and quirks (``docs/design.md``, data):

- MVTec AD / MPDD / demo: ``<root>/<category>/train/good``, ``test/<defect>|good``,
  ``ground_truth/<defect>/<stem>_mask.png``.
- VisA: the official release (``<root>/<category>/Data/Images/{Normal,Anomaly}``, ``<root>/split_csv/1cls.csv``)
  or the MVTec-like converted layout (``test/bad``, ``ground_truth/bad/<stem>.png``), also under ``visa_pytorch/``.
- BTAD: ``train/ok``, ``test/ok|ko``, ``ground_truth/ko``; images and masks differ in extension (bmp/png): pair by stem.
- Folder: the user's own directories (normal, optional abnormal, masks, normal-test).
Label 0 = normal, 1 = anomalous, as the community (anomalib) uses them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from urd_lightning.errors import DataError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})  # compared lower-case: VisA has .JPG
NORMAL_DIRS = frozenset({"good", "ok"})  # MVTec/MPDD/VisA-converted say "good", BTAD says "ok"
SPLITS = ("train", "test")

@dataclass(frozen=True)
class Sample:
    """One image of a split: where it is, its mask (None for normal images) and its label."""

    image_path: str
    mask_path: str | None
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images, else the defect folder name


def list_images(directory: Path) -> list[Path]:
    """Image files directly in ``directory`` (any case of extension), sorted by name; [] if it does not exist."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_mask(mask_dir: Path, stem: str) -> Path | None:
    """The mask of image ``stem`` in ``mask_dir``: ``<stem>_mask.*`` (MVTec) or ``<stem>.*`` (VisA, BTAD)."""
    by_stem = {p.stem: p for p in list_images(mask_dir)}
    return by_stem.get(f"{stem}_mask") or by_stem.get(stem)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")


def category_dir(root: Path, category: str, benchmark: str) -> Path:
    """``<root>/<category>``, or a DataError that names the expected tree.

    Which names are categories is the dataset file's to say (``load_config`` checks ``data.category`` against it).
    """
    path = Path(root) / category
    if not path.is_dir():
        raise DataError(
            f"{path} does not exist: expected {benchmark} data as {root}/{category}/train/good, "
            f"{root}/{category}/test/<defect>. Get it with 'python -m urd_lightning data download {benchmark} "
            f"--root {root}' or set data.root."
        )
    return path


def index_mvtec_layout(root: str | Path, category: str, split: str, benchmark: str = "mvtec") -> list[Sample]:
    """MVTec-style tree (MVTec AD, MPDD, BTAD, converted VisA, demo)."""
    _check_split(split)
    base = category_dir(Path(root), category, benchmark)
    if split == "train":
        normal = next((base / "train" / d for d in sorted(NORMAL_DIRS) if (base / "train" / d).is_dir()), None)
        return [Sample(str(p), None, 0, "good") for p in list_images(normal)] if normal else []
    samples: list[Sample] = []
    test_dir = base / "test"
    for defect_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []:
        if defect_dir.name in NORMAL_DIRS:
            samples += [Sample(str(p), None, 0, "good") for p in list_images(defect_dir)]
            continue
        mask_dir = base / "ground_truth" / defect_dir.name
        for image in list_images(defect_dir):
            mask = find_mask(mask_dir, image.stem)
            samples.append(Sample(str(image), str(mask) if mask else None, 1, defect_dir.name))
    return samples


def index_mvtec(root: str | Path, category: str, split: str) -> list[Sample]:
    """MVTec AD (some categories are grayscale PNGs; the reader makes them RGB)."""
    return index_mvtec_layout(root, category, split, "mvtec")


def index_mpdd(root: str | Path, category: str, split: str) -> list[Sample]:
    """MPDD: the MVTec layout, six categories."""
    return index_mvtec_layout(root, category, split, "mpdd")


def index_btad(root: str | Path, category: str, split: str) -> list[Sample]:
    """BTAD: ``ok``/``ko`` folders, masks paired with images by stem whatever the extensions."""
    return index_mvtec_layout(root, category, split, "btad")


def index_demo(root: str | Path, category: str, split: str) -> list[Sample]:
    """The embedded demo dataset (``data/demo.py``), MVTec layout."""
    return index_mvtec_layout(root, category, split, "demo")


def index_visa(root: str | Path, category: str, split: str) -> list[Sample]:
    """VisA from the official release (split_csv/1cls.csv) or from the MVTec-like converted layout."""
    _check_split(split)
    root = Path(root)
    split_csv = root / "split_csv" / "1cls.csv"
    if split_csv.is_file() and (root / category / "Data").is_dir():
        return _index_visa_official(root, category, split, split_csv)
    if not (root / category).is_dir() and (root / "visa_pytorch" / category).is_dir():
        root = root / "visa_pytorch"  # the converted tree anomalib writes next to the release
    return index_mvtec_layout(root, category, split, "visa")


def _index_visa_official(root: Path, category: str, split: str, split_csv: Path) -> list[Sample]:
    samples = []
    with split_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):  # columns: object, split, label, image, mask
            if row.get("object") != category or row.get("split") != split:
                continue
            anomalous = row.get("label", "").strip().lower() != "normal"
            mask = (row.get("mask") or "").strip()
            samples.append(Sample(str(root / row["image"]), str(root / mask) if anomalous and mask else None,
                                  int(anomalous), "bad" if anomalous else "good"))
    return sorted(samples, key=lambda s: s.image_path)


def held_out(count: int, ratio: float) -> set[int]:
    """Positions of the ``round(count * ratio)`` images held out for testing, spread evenly over ``0..count-1``."""
    k = min(count, int(count * ratio + 0.5))
    return {int((i + 0.5) * count / k) for i in range(k)} if k else set()


def index_folder(root: str | Path, category: str, split: str, normal_dir: str = "good",
                 abnormal_dir: str | None = None, mask_dir: str | None = None, normal_test_dir: str | None = None,
                 normal_split_ratio: float = 0.2) -> list[Sample]:
    """The user's own images; directories are relative to ``root``.

    Without ``normal_test_dir``, ``normal_split_ratio`` of the normal images (rounded) go to test, spread evenly
    over the sorted list (:func:`held_out`): a split that is deterministic and does not depend on any seed.
    """
    _check_split(split)
    root = Path(root)
    normal = list_images(root / normal_dir)
    if not normal and split == "train":
        raise DataError(f"no images in {root / normal_dir} (data.normal_dir): put the normal training images there")
    if normal_test_dir:
        train_normal, test_normal = normal, list_images(root / normal_test_dir)
    elif normal_split_ratio > 0:
        held = held_out(len(normal), normal_split_ratio)
        test_normal = [p for i, p in enumerate(normal) if i in held]
        train_normal = [p for i, p in enumerate(normal) if i not in held]
        if not train_normal and split == "train":
            raise DataError(f"data.normal_split_ratio={normal_split_ratio} holds out all {len(normal)} normal images "
                            f"of {root / normal_dir}: none is left to train on; use a ratio below 1 or "
                            "data.normal_test_dir")
    else:
        train_normal, test_normal = normal, []
    if split == "train":
        return [Sample(str(p), None, 0, "good") for p in train_normal]
    samples = [Sample(str(p), None, 0, "good") for p in test_normal]
    if abnormal_dir:
        for image in list_images(root / abnormal_dir):
            mask = find_mask(root / mask_dir, image.stem) if mask_dir else None
            samples.append(Sample(str(image), str(mask) if mask else None, 1, Path(abnormal_dir).name))
    return samples


BENCHMARKS: dict[str, Callable[..., list[Sample]]] = {
    "mvtec": index_mvtec,
    "visa": index_visa,
    "btad": index_btad,
    "mpdd": index_mpdd,
    "folder": index_folder,
    "demo": index_demo,
}


def index(benchmark: str, root: str | Path, category: str, split: str, **options: object) -> list[Sample]:
    """Dispatch to ``BENCHMARKS[benchmark]``; ``options`` are the folder benchmark's directory keys."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r} (data.benchmark); use one of {', '.join(BENCHMARKS)}")
    if benchmark == "folder":
        return index_folder(root, category, split, **options)  # type: ignore[arg-type]
    return BENCHMARKS[benchmark](root, category, split)
