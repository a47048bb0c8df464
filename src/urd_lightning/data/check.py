"""Dataset checks shared by ``python -m urd_lightning data check`` and the datamodule's set-up.

Counts images per split, label and defect type, measures mask coverage, and lists every problem with the file it
concerns: unreadable or truncated image, missing or orphan mask, mask/image size mismatch, empty anomalous mask,
empty split, unknown category, missing root. Training runs the same function and stops on the first report with
problems (``raise_on_problems``), before any GPU time is spent.

Warnings do not stop training: an anomalous image whose mask is empty once resized to the model size (a defect of a
pixel or two that the authors' ``> 0.5`` rule erases). Its folder label then says anomalous while its mask says
normal; the authors' per-image PRO would crash on it, ours leaves the image out of the per-image AUPRO.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from urd_lightning.data.benchmarks import SPLITS, Sample, index, list_images
from urd_lightning.data.transforms import Resizer, read_mask
from urd_lightning.errors import DataError, URDError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """One thing wrong with the data; ``path`` names the file or folder."""

    category: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"[{self.category}] {self.message}: {self.path}"


@dataclass
class CheckReport:
    """What ``check_dataset`` found."""

    benchmark: str
    root: str
    counts: dict[str, int] = field(default_factory=dict)  # "category/split/label/defect" -> images
    mask_coverage: dict[str, float] = field(default_factory=dict)  # category -> mean anomalous share, anomalous imgs
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # listed, but training goes on (module doc)

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> str:
        """Machine-readable form (``data check --json``)."""
        return json.dumps({"benchmark": self.benchmark, "root": self.root, "ok": self.ok, "counts": self.counts,
                           "mask_coverage": self.mask_coverage,
                           "problems": [vars(p) for p in self.problems],
                           "warnings": [vars(p) for p in self.warnings]}, indent=2)

    def format(self) -> str:
        """A readable table of counts followed by the problems."""
        lines = [f"{self.benchmark} at {self.root}", f"  {'category/split/label/defect':<48} {'images':>7}"]
        lines += [f"  {key:<48} {n:>7}" for key, n in sorted(self.counts.items())]
        lines += [f"  mask coverage {cat}: {100 * cov:.2f}% of anomalous images' pixels"
                  for cat, cov in sorted(self.mask_coverage.items())]
        lines.append(f"{len(self.problems)} problem(s)" + (":" if self.problems else ""))
        lines += [f"  {p}" for p in self.problems]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  warning: {p}" for p in self.warnings]
        return "\n".join(lines)


def raise_on_problems(report: CheckReport, limit: int = 20) -> None:
    """Raise a DataError listing the report's problems (the first ``limit``), if any (warnings: ``log_warnings``)."""
    if report.ok:
        return
    shown = "\n  ".join(str(p) for p in report.problems[:limit])
    more = f"\n  ... and {len(report.problems) - limit} more" if len(report.problems) > limit else ""
    raise DataError(f"{len(report.problems)} problem(s) in {report.benchmark} data at {report.root}:\n  {shown}{more}"
                    f"\nRun 'python -m urd_lightning data check {report.benchmark} --root {report.root}' for details.")


def log_warnings(report: CheckReport, limit: int = 5) -> None:
    """Log the report's warnings (the first ``limit``) without stopping."""
    for warning in report.warnings[:limit]:
        log.warning("data check: %s", warning)
    if len(report.warnings) > limit:
        log.warning("data check: ... and %d more warnings (see 'python -m urd_lightning data check')",
                    len(report.warnings) - limit)


def _image_size(path: str) -> tuple[int, int] | str:
    """(width, height) after a full decode, or the error text (truncated files fail only on decode)."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f"{type(exc).__name__}: {exc}"


def _check_samples(category: str, split: str, samples: list[Sample], report: CheckReport,
                   require_masks: bool, resizer: Resizer | None = None) -> None:
    if not samples:
        report.problems.append(Problem(category, f"{split} split", f"empty {split} split"))
    coverages = []
    for sample in samples:
        key = f"{category}/{split}/{'anomalous' if sample.label else 'normal'}/{sample.defect_type}"
        report.counts[key] = report.counts.get(key, 0) + 1
        size = _image_size(sample.image_path)
        if isinstance(size, str):
            report.problems.append(Problem(category, sample.image_path, f"unreadable or truncated image ({size})"))
            continue
        if sample.label == 1 and sample.mask_path is None:
            if require_masks:
                report.problems.append(Problem(category, sample.image_path, "missing mask for anomalous image"))
            continue
        if sample.mask_path is None:
            continue
        mask_size = _image_size(sample.mask_path)
        if isinstance(mask_size, str):
            report.problems.append(Problem(category, sample.mask_path, f"unreadable or truncated mask ({mask_size})"))
            continue
        if mask_size != size:
            report.problems.append(Problem(category, sample.mask_path,
                                           f"mask/image size mismatch: mask {mask_size}, image {size} "
                                           f"({Path(sample.image_path).name})"))
            continue
        mask = read_mask(sample.mask_path)
        if not mask.any():
            report.problems.append(Problem(category, sample.mask_path, "empty mask for an anomalous image"))
        elif resizer is not None and not resizer.resize_mask(mask).any():
            report.warnings.append(Problem(category, sample.mask_path,
                                           f"mask empty at model size {resizer.size}² (data.resize={resizer.method}): "
                                           "the defect vanishes when resized"))
        coverages.append(float(mask.mean()))
    if coverages:
        report.mask_coverage[category] = float(np.mean(coverages))


def _orphan_masks(category: str, samples: list[Sample], report: CheckReport) -> None:
    """Masks in the mask folders that no test image uses (a renamed or mismatched mask)."""
    used = {Path(s.mask_path) for s in samples if s.mask_path}
    folders = {p.parent for p in used}
    anomalous_dirs = {Path(s.image_path).parent for s in samples if s.label == 1}
    for image_dir in anomalous_dirs:  # MVTec-like: ground_truth/<defect> next to test/<defect>
        candidate = image_dir.parent.parent / "ground_truth" / image_dir.name
        if candidate.is_dir():
            folders.add(candidate)
    stems = {Path(s.image_path).stem for s in samples}
    for folder in sorted(folders):
        for mask in list_images(folder):
            if mask not in used and folder.name != "Normal":
                reason = "matches no test image" if mask.stem.removesuffix("_mask") not in stems else "is not paired"
                report.problems.append(Problem(category, str(mask), f"mismatched mask: {reason}"))


def _one_class_test_split(category: str, samples: list[Sample], report: CheckReport) -> None:
    """Warn when the test split lacks a class: every metric (AUROC, AP, F1, AUPRO) needs both, else it is NaN."""
    labels = {s.label for s in samples}
    if samples and 1 not in labels:
        report.warnings.append(Problem(category, "test split", "no anomalous test images: every metric (AUROC, AP, "
                                                               "F1, AUPRO) needs anomalies, so all will be NaN"))
    if samples and 0 not in labels:
        report.warnings.append(Problem(category, "test split", "no normal test images: the image-level metrics "
                                                               "need both classes, so they will be NaN"))


def check_dataset(benchmark: str, root: str | Path, category: str | None = None, image_size: int | None = 256,
                  resize: str = "pil", known: Sequence[str] = (), **options: object) -> CheckReport:
    """Check one category (or every category found) of a benchmark; never raises for data problems.

    Args:
        benchmark: a key of ``benchmarks.BENCHMARKS``.
        root: dataset root.
        category: one category, or None for every category of ``known`` present under ``root``.
        image_size: model size at which anomalous masks must stay non-empty (warnings); None skips that check.
        resize: the resize method (``data.resize``) used for that check.
        known: the dataset's categories (its dataset file's table, ``config.files.dataset_categories``); empty: any
            name is taken. The folder benchmark's one category only labels its results.
        **options: the folder benchmark's directory keys.
    """
    report = CheckReport(benchmark, str(root))
    resizer = Resizer(image_size, resize) if image_size else None
    root = Path(root)
    if not root.is_dir():
        # Say how to get the data, not only that it is missing (the download command verifies checksums).
        fix = ("point data.root at your images" if benchmark == "folder" else
               f"get it with 'python -m urd_lightning data download {benchmark} --root {root}' or set data.root")
        report.problems.append(Problem(category or "-", str(root), f"dataset root does not exist ({fix})"))
        return report
    known = () if benchmark == "folder" else tuple(known)
    if category is not None:
        categories = [category]
    elif known:
        present = {p.name for p in root.iterdir()} | {p.name for p in (root / "visa_pytorch").glob("*")}
        categories = [c for c in known if c in present]
        if not categories:
            report.problems.append(Problem("-", str(root), f"no {benchmark} category folder found "
                                                           f"(expected one of {', '.join(known)})"))
    elif benchmark == "folder":
        categories = ["custom"]
    else:  # no list given: every folder under root is a category
        categories = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    for cat in categories:
        if known and cat not in known:
            report.problems.append(Problem(cat, str(root / cat), f"unknown category for {benchmark} "
                                                                 f"(known: {', '.join(known)})"))
            continue
        try:
            per_split = {split: index(benchmark, root, cat, split, **options) for split in SPLITS}
        except URDError as exc:
            report.problems.append(Problem(cat, str(root / cat), str(exc)))
            continue
        require_masks = benchmark != "folder" or bool(options.get("mask_dir"))
        for split, samples in per_split.items():
            _check_samples(cat, split, samples, report, require_masks, resizer)
        if any(s.label for s in per_split["train"]):
            report.problems.append(Problem(cat, "train split", "anomalous images in the train split"))
        overlap = {s.image_path for s in per_split["train"]} & {s.image_path for s in per_split["test"]}
        report.problems += [Problem(cat, p, "image in both train and test") for p in sorted(overlap)]
        _orphan_masks(cat, per_split["test"], report)
        _one_class_test_split(cat, per_split["test"], report)
    return report
