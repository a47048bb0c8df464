"""``data check dtd``: count the DTD textures the synthesis would draw from and list the unreadable ones.

The synthesis (``data/synthesis.py``) reads every image below DTD's ``images/`` folder (``<root>/images`` or, as the
archive extracts, ``<root>/dtd/images``); a file that does not decode would stop training in the middle of an epoch,
so the check decodes each one fully.
"""

from __future__ import annotations

from pathlib import Path

from urd_lightning.config.textures import dtd_images_dir
from urd_lightning.data.benchmarks import IMAGE_EXTENSIONS
from urd_lightning.data.check import CheckReport, Problem, _image_size

DTD_CLASSES = 47  # the Describable Textures Dataset has 47 texture classes of 120 images each (5640)


def check_dtd(root: str | Path) -> CheckReport:
    """Textures per class (``counts``: ``class -> images``) and a problem for each unreadable file.

    A missing or empty images folder is a problem too; a class count other than DTD's 47 is only noted by
    :func:`format_dtd` (a partial copy still trains).
    """
    root = Path(root)
    report = CheckReport("dtd", str(root))
    images = dtd_images_dir(root)
    if images is None:
        report.problems.append(Problem("dtd", str(root), "no images/<class>/ folder (nor dtd/images/); get DTD with: "
                                                         f"python -m urd_lightning data download dtd --root {root}"))
        return report
    for path in sorted(p for p in images.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS):
        texture_class = path.parent.name if path.parent != images else "(no class)"
        report.counts[texture_class] = report.counts.get(texture_class, 0) + 1
        size = _image_size(str(path))
        if isinstance(size, str):
            report.problems.append(Problem(texture_class, str(path), f"unreadable texture ({size})"))
    if not report.counts:
        report.problems.append(Problem("dtd", str(images), "no texture images (.jpg/.png) found"))
    return report


def format_dtd(report: CheckReport) -> str:
    """Readable form: textures per class, the total (compared with DTD's 47 classes), then the problems."""
    total, classes = sum(report.counts.values()), len(report.counts)
    lines = [f"dtd at {report.root}", f"  {'class':<24} {'textures':>8}"]
    lines += [f"  {name:<24} {n:>8}" for name, n in sorted(report.counts.items())]
    note = "" if classes in (0, DTD_CLASSES) else f" (DTD has {DTD_CLASSES}: a partial copy?)"
    lines.append(f"{total} textures in {classes} classes{note}")
    lines.append(f"{len(report.problems)} problem(s)" + (":" if report.problems else ""))
    lines += [f"  {p}" for p in report.problems]
    return "\n".join(lines)
