"""Results of a run: ``metrics.json``, ROC/PRO curve plots and the console summary table.

``metrics.json`` follows docs/design.md ("results"): ``final`` holds the final-iteration numbers; ``oracle`` (the
best periodic evaluation ON THE TEST SET, which is how the authors select their reported numbers, urd-method.md §5)
appears only when periodic evaluation ran, and only beside the final numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

METRIC_ORDER = ("image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
                "pixel_AUPRO_per_image")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_metrics(run_dir: Path, payload: dict[str, Any]) -> Path:
    """``<run_dir>/metrics.json`` (design.md "results" format); returns its path."""
    path = run_dir / "metrics.json"
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def plot_curves(run_dir: Path, curves: dict[str, Any]) -> list[Path]:
    """``roc_curve.png`` (image and pixel ROC) and ``pro_curve.png`` (PRO over FPR up to the 0.3 limit).

    Args:
        run_dir: the run folder.
        curves: ``{"image_roc": (fpr, tpr), "pixel_roc": (fpr, tpr), "pixel_pro": (fpr, pro)}``; missing entries
            are skipped.

    Returns:
        The files written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rocs = {k: v for k, v in curves.items() if k.endswith("_roc") and v is not None}
    pro = curves.get("pixel_pro")
    if rocs:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        for name, (fpr, tpr) in rocs.items():
            ax.plot(fpr, tpr, label=name.replace("_roc", ""))
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (final evaluation)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(run_dir / "roc_curve.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "roc_curve.png")
    if pro is not None:
        fpr, overlap = pro
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, overlap)
        ax.axvline(0.3, color="grey", linestyle=":", linewidth=0.8)  # the AUPRO integration limit (FPR 0.3)
        ax.set(xlabel="false positive rate", ylabel="per-region overlap", title="PRO (pooled, final evaluation)",
               xlim=(0, max(0.3, float(fpr[-1]) if len(fpr) else 0.3)), ylim=(0, 1.02))
        fig.tight_layout()
        fig.savefig(run_dir / "pro_curve.png", dpi=100)
        plt.close(fig)
        written.append(run_dir / "pro_curve.png")
    return written


def summary_table(payload: dict[str, Any], run_dir: Path) -> str:
    """A readable table of the final (and oracle) numbers, durations and the results folder, as text."""
    final, oracle = payload.get("final", {}), payload.get("oracle") or {}
    head = f"{payload['dataset']}/{payload['category']}  run {payload['run']}  ({payload['steps']} steps, " \
           f"injection {payload['injection']})"
    width = max(len(k) for k in METRIC_ORDER) + 2
    lines = [head, "-" * len(head), f"{'metric':<{width}}{'final':>9}" + (f"{'oracle*':>10}" if oracle else "")]
    for key in METRIC_ORDER:
        if key in final:
            row = f"{key:<{width}}{final[key]:>9.4f}"
            if oracle and key in oracle:
                row += f"{oracle[key]:>10.4f}"
            lines.append(row)
    durations = payload.get("durations", {})
    lines.append(f"train {durations.get('train_s', 0):.1f} s, evaluation {durations.get('eval_s', 0):.1f} s")
    if oracle:
        lines.append("* oracle = best periodic evaluation on the TEST set (the authors' selection); not a fair score")
    lines.append(f"results: {run_dir}")
    return "\n".join(lines)
