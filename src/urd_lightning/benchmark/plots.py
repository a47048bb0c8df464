"""Plots for a results report: per-category bars and the ROC / PRO curves of every category on one page.

Bars show our final-iteration metrics per category with the paper's published means (docs/method.md, "Published
numbers") as dashed lines. Curves: when a run folder holds ``curves.json`` (``{"roc": {"fpr": [...], "tpr": [...]},
"pro": {"fpr": [...], "pro": [...]}}``) all categories are overlaid on one axis; otherwise the per-run ``roc_curve.png``
/ ``pro_curve.png`` that training writes (docs/design.md, "results") are tiled into one sheet. Matplotlib runs headless
(Agg).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402

from urd_lightning.benchmark.paper import PAPER_MEANS  # noqa: E402
from urd_lightning.benchmark.records import RunRecord  # noqa: E402
from urd_lightning.files import write_via  # noqa: E402

BAR_METRICS = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPRO_per_image": "AUPRO per-image",
    "pixel_AUPRO": "AUPRO pooled",
}
FPR_LIMIT = 0.3  # the PRO curve is only integrated up to FPR 0.3 (MVTec AD / RD4AD protocols)


def plot_bars(dataset: str, run: str, records: list[RunRecord], path: Path) -> Path:
    """Grouped bars per category (percent), with the paper's means as dashed lines in the bar's colour."""
    cats = [r.category for r in records]
    width = 0.8 / len(BAR_METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(cats) + 2), 4))
    paper = PAPER_MEANS.get(dataset, {})
    for i, (key, label) in enumerate(BAR_METRICS.items()):
        values = [100 * r.metrics.get("final", {}).get(key, math.nan) for r in records]
        xs = [c + (i - (len(BAR_METRICS) - 1) / 2) * width for c in range(len(cats))]
        bars = ax.bar(xs, values, width, label=label)
        if key in paper:
            ax.axhline(100 * paper[key], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    ax.set_xticks(range(len(cats)), cats, rotation=45, ha="right")
    ax.set_ylabel("percent")
    finite = [100 * v for r in records for k, v in r.metrics.get("final", {}).items() if k in BAR_METRICS]
    ax.set_ylim(max(0.0, min(finite, default=0.0) - 5), 100.5)
    title = f"URD on {dataset}, run {run} (final iteration)"
    ax.set_title(title + ("; dashed: paper means" if paper else ""))
    ax.legend(fontsize="small", ncol=2, loc="lower left")
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def _load_curves(record: RunRecord) -> dict | None:
    path = record.path / "curves.json" if record.path else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


def plot_curves_overlay(records: list[RunRecord], kind: str, path: Path) -> Path:
    """All categories' ``roc`` (TPR vs FPR) or ``pro`` (PRO vs FPR, up to FPR 0.3) curves on one axis."""
    y_key = "tpr" if kind == "roc" else "pro"
    fig, ax = plt.subplots(figsize=(5, 5))
    for record in records:
        curves = _load_curves(record)
        if curves and kind in curves:
            ax.plot(curves[kind]["fpr"], curves[kind][y_key], linewidth=1, label=record.category)
    ax.set_xlim(0, 1 if kind == "roc" else FPR_LIMIT)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate" if kind == "roc" else "per-region overlap")
    ax.set_title("ROC" if kind == "roc" else f"PRO (FPR <= {FPR_LIMIT})")
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def plot_curve_sheet(records: list[RunRecord], filename: str, path: Path) -> Path | None:
    """Tile each run's ``filename`` (e.g. ``roc_curve.png``) into one titled grid; None when no run has it."""
    found = [(r.category, r.path / filename) for r in records if r.path and (r.path / filename).is_file()]
    if not found:
        return None
    ncols = min(5, len(found))
    nrows = math.ceil(len(found) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (category, image_path) in zip(axes.flat, found, strict=False):
        ax.imshow(plt.imread(image_path))
        ax.set_title(category, fontsize="small")
    fig.tight_layout()
    write_via(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def write_plots(dataset: str, run: str, records: list[RunRecord], out_dir: Path) -> dict[str, Path]:
    """Write ``bars.png`` and ``roc_curves.png`` / ``pro_curves.png`` for finished runs; returns what was written."""
    paths: dict[str, Path] = {}
    if not records:
        return paths
    paths["bars"] = plot_bars(dataset, run, records, out_dir / "bars.png")
    for kind in ("roc", "pro"):
        target = out_dir / f"{kind}_curves.png"
        if any((_load_curves(r) or {}).get(kind) for r in records):
            paths[f"{kind}_curves"] = plot_curves_overlay(records, kind, target)
        else:
            sheet = plot_curve_sheet(records, f"{kind}_curve.png", target)
            if sheet is not None:
                paths[f"{kind}_curves"] = sheet
    return paths
