"""Plots for a results report: per-category bars and the ROC / PRO curves of every category on one page.

Bars show our final-iteration metrics per category with the paper's published means as dashed lines, the legend
above the axes. Curves: from each run's ``curves.json`` (training/results.py) every category's image ROC, pixel ROC
and pooled PRO (FPR <= 0.3) are overlaid on one axis each, labelled with the category's value; runs written before
``curves.json`` existed get their ``roc_curve.png`` / ``pro_curve.png`` tiled into one sheet instead.
Matplotlib runs headless (Agg).
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
from urd_lightning.run.folder import RunFolder  # noqa: E402
from urd_lightning.training.figures import FPR_LIMIT, ROC_LIMITS, save  # noqa: E402  (one style for every figure)

BAR_METRICS = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPRO_per_image": "AUPRO per-image",
    "pixel_AUPRO": "AUPRO pooled",
}


def plot_bars(dataset: str, run: str, records: list[RunRecord], path: Path) -> Path:
    """Grouped bars per category (percent), with the paper's means as dashed lines in the bar's colour."""
    values = {key: [r.metrics.get("final", {}).get(key, math.nan) for r in records] for key in BAR_METRICS}
    return bar_chart(dataset, f"URD on {dataset}, run {run} (final iteration)", [r.category for r in records],
                     values, None, path)


def bar_chart(dataset: str, title: str, categories: list[str], values: dict[str, list[float]],
              errors: dict[str, list[float]] | None, path: Path) -> Path:
    """Grouped bars, one group per category and one bar per :data:`BAR_METRICS` metric (fractions, drawn in percent).

    ``errors``: a standard deviation per bar (the seeds report), drawn as error bars; NaN draws none.
    """
    width = 0.8 / len(BAR_METRICS)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(categories) + 2), 4))
    paper = PAPER_MEANS.get(dataset, {})
    finite = [100 * v for k in BAR_METRICS for v in values.get(k, []) if not math.isnan(v)]
    for i, (key, label) in enumerate(BAR_METRICS.items()):
        heights = [100 * v for v in values.get(key, [math.nan] * len(categories))]
        spread = [100 * e for e in errors[key]] if errors and key in errors else None
        xs = [c + (i - (len(BAR_METRICS) - 1) / 2) * width for c in range(len(categories))]
        bars = ax.bar(xs, heights, width, label=label, yerr=spread, capsize=2 if spread else 0,
                      error_kw={"linewidth": 0.8})
        if spread:
            finite += [h - e for h, e in zip(heights, spread, strict=True) if not math.isnan(h - e)]
        if key in paper:
            ax.axhline(100 * paper[key], color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
    ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
    ax.set_ylabel("percent")
    finite += [100 * v for k, v in paper.items() if k in BAR_METRICS]  # every paper line inside the axes
    # Zoomed to the values (5 points below the lowest): benchmark numbers sit in the 90s, where a 0 baseline
    # would make every category look the same.
    ax.set_ylim(max(0.0, min(finite, default=0.0) - 5), 100.5)
    ax.set_title(title + ("; dashed: paper means" if paper else ""), pad=22, fontsize=8)
    # Above the axes, never over them: a legend inside would hide a category's bars.
    ax.legend(fontsize=7, ncol=len(BAR_METRICS), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    save(fig, path)
    return path


def _load_curves(record: RunRecord) -> dict | None:
    path = RunFolder(record.path).curves_data if record.path else None
    if path is None or not path.is_file():
        return None
    return json.loads(path.read_text())


# Overlay charts: file stem -> (curves.json key, y key, metric in the legend, title, FPR range).
OVERLAYS = {
    "roc_curves": ("image_roc", "tpr", "image_AUROC", "image ROC", 1.0),
    "pixel_roc_curves": ("pixel_roc", "tpr", "pixel_AUROC", "pixel ROC", 1.0),
    "pro_curves": ("pixel_pro", "pro", "pixel_AUPRO", f"PRO, pooled (FPR <= {FPR_LIMIT})", FPR_LIMIT),
}


def plot_curves_overlay(records: list[RunRecord], kind: str, path: Path, loaded: list[dict] | None = None) -> Path:
    """Every category's curve of one kind (:data:`OVERLAYS`) on one axis, each labelled with its value.

    ``loaded``: each record's ``curves.json`` when the caller has read them already (``{}`` for none).
    """
    key, y_key, metric, title, limit = OVERLAYS[kind]
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    colours = plt.get_cmap("tab10" if len(records) <= 10 else "tab20")  # tab20's neighbours are near-twins
    loaded = loaded if loaded is not None else [_load_curves(r) or {} for r in records]
    for i, (record, curves) in enumerate(zip(records, loaded, strict=True)):
        if curves.get(key):
            value = (curves.get("values") or {}).get(metric)
            label = record.category + (f" ({100 * value:.1f})" if value is not None else "")
            ax.plot(curves[key]["fpr"], curves[key][y_key], linewidth=0.9, color=colours(i % colours.N), label=label)
    ax.set(**(ROC_LIMITS if y_key == "tpr" else {"xlim": (0, limit), "ylim": (0, 1.01)}), xlabel="false positive rate",
           ylabel="true positive rate" if y_key == "tpr" else "per-region overlap", title=title)
    ax.legend(fontsize=5.5, ncol=2 if len(records) > 8 else 1, loc="lower right", title=metric.replace("_", " "),
              title_fontsize=6)
    fig.tight_layout(pad=0.4)
    save(fig, path)
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
    save(fig, path)
    return path


def write_plots(dataset: str, run: str, records: list[RunRecord], out_dir: Path) -> dict[str, Path]:
    """Write ``bars.png`` and ``roc_curves.png`` / ``pro_curves.png`` for finished runs; returns what was written."""
    paths: dict[str, Path] = {}
    if not records:
        return paths
    paths["bars"] = plot_bars(dataset, run, records, out_dir / "bars.png")
    loaded = [_load_curves(r) or {} for r in records]  # each curves.json read once for the three overlays
    for kind, (key, *_rest) in OVERLAYS.items():
        target = out_dir / f"{kind}.png"
        if any(curves.get(key) for curves in loaded):
            paths[kind] = plot_curves_overlay(records, kind, target, loaded)
        elif kind != "pixel_roc_curves":  # runs from before curves.json: their own plots, tiled
            sheet = plot_curve_sheet(records, f"{kind.split('_')[0]}_curve.png", target)
            if sheet is not None:
                paths[kind] = sheet
    return paths
