"""Results of a run: ``metrics.json``, ROC/PRO curve plots and the console summary table.

``metrics.json`` follows docs/design.md ("results"): ``final`` holds the final-iteration numbers; ``oracle`` (the
best periodic evaluation ON THE TEST SET, which is how the authors select their reported numbers, urd-method.md §5)
appears only when periodic evaluation ran, and only beside the final numbers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from urd_lightning.files import write_atomic, write_via
from urd_lightning.training.callbacks import AtomicCheckpointIO
from urd_lightning.training.loggers import log_final, log_summary

TRAIN_STATE = "train_state.json"  # steps, training time and periodic evaluations, written at the end of training
# Every periodic evaluation so far, rewritten after each one. A checkpoint saved at iteration k is written before the
# evaluation of k runs (Lightning checkpoints at the end of the batch, then validates), and a resume from it does not
# repeat that evaluation: the row comes back from this file.
PERIODIC_LOG = "periodic.json"
METRIC_ORDER = ("image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
                "pixel_AUPRO_per_image")


# Why a metric is null in metrics.json: a metric without anomalous (or normal) test images is undefined (NaN).
UNDEFINED_NOTE = ("null = undefined: the test split lacks anomalous (or normal) images, and each metric needs both "
                  "(`python -m urd_lightning data check` names what is missing)")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None.

    Strict JSON has no NaN: ``json.dumps`` writes a bare ``NaN`` token that most readers outside Python reject.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def has_undefined(value: Any) -> bool:
    """Whether ``value`` holds a NaN or infinite float anywhere (what :func:`json_safe` replaces)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_undefined(v) for v in value.values())
    return isinstance(value, list | tuple) and any(has_undefined(v) for v in value)


def metric_values(section: dict[str, Any] | None) -> dict[str, float]:
    """A ``final``/``oracle`` block of ``metrics.json`` as floats, a null (undefined metric) read back as NaN."""
    return {k: math.nan if v is None else float(v) for k, v in (section or {}).items()}


def write_metrics(run_dir: Path, payload: dict[str, Any]) -> Path:
    """``<run_dir>/metrics.json`` (design.md "results" format); returns its path.

    Strict JSON: an undefined metric (NaN) is written as null, and a top-level ``"null"`` entry says why.
    """
    path = run_dir / "metrics.json"
    safe = json_safe(payload)
    if has_undefined(payload):
        safe["null"] = UNDEFINED_NOTE
    write_atomic(path, json.dumps(safe, indent=2, sort_keys=False, allow_nan=False) + "\n")
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
        write_via(run_dir / "roc_curve.png", lambda tmp: fig.savefig(tmp, dpi=100))
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
        write_via(run_dir / "pro_curve.png", lambda tmp: fig.savefig(tmp, dpi=100))
        plt.close(fig)
        written.append(run_dir / "pro_curve.png")
    return written


def summary_table(payload: dict[str, Any], run_dir: Path) -> str:
    """A readable table of the final (and oracle) numbers, durations and the results folder, as text."""
    final, oracle = payload.get("final", {}), payload.get("oracle") or {}
    head = f"{payload['dataset']}/{payload['category']}  run {payload['run']}  ({payload['steps']} steps, " \
           f"injection {payload['injection']}, textures {payload.get('texture_source', '?')})"
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
    if any(math.isnan(v) for v in final.values()):  # say why, not only NaN (issue 14)
        lines.append("nan = undefined: the test split lacks anomalous (or normal) images, and each metric needs both "
                     "(`python -m urd_lightning data check` names what is missing)")
    if oracle:
        lines.append("* oracle = best periodic evaluation on the TEST set (the authors' selection); not a fair score")
    if payload.get("texture_source") == "procedural":
        lines.append("textures: PROCEDURAL, not the paper's DTD; get DTD: python -m urd_lightning data download dtd")
    lines.append(f"results: {run_dir}")
    return "\n".join(lines)


class ResultsWriter(Callback):
    """Writes the run's results where the evaluation happened, so ``ddp_spawn``/``ddp_fork`` runs lose nothing.

    After the final test evaluation rank zero adds the thresholds and score statistics to ``last.ckpt`` and writes
    ``metrics.json``, the curve plots, the logger summary and the table; the other ranks wait for it.
    """

    def __init__(self, run_dir: Path, meta: dict[str, Any], logger: Any = None, log_model: bool = False) -> None:
        self.run_dir, self.meta, self.logger, self.log_model = Path(run_dir), dict(meta), logger, log_model
        self.durations: dict[str, float] = {"train_s": 0.0, "eval_s": 0.0}
        self._start = 0.0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        log_file, resumed_at = self.run_dir / PERIODIC_LOG, int(pl_module.iteration)
        if resumed_at == 0:  # a fresh attempt: an earlier attempt's rows are not this run's
            if trainer.global_rank == 0:
                log_file.unlink(missing_ok=True)
            return
        known = {row["step"] for row in pl_module.periodic}
        logged = json.loads(log_file.read_text()) if log_file.is_file() else []
        missed = [row for row in logged if row["step"] <= resumed_at and row["step"] not in known]
        pl_module.periodic = sorted([*pl_module.periodic, *missed], key=lambda row: row["step"])

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0 and not trainer.sanity_checking and trainer.state.fn == "fit":
            write_atomic(self.run_dir / PERIODIC_LOG, json.dumps(pl_module.periodic) + "\n")

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Kept in a file: with ddp_spawn/ddp_fork the fit ran in processes that are gone when the test starts.
        if trainer.global_rank == 0:
            state = {"train_s": round(time.perf_counter() - self._start, 2), "steps": int(pl_module.iteration),
                     "periodic": list(pl_module.periodic)}
            write_atomic(self.run_dir / TRAIN_STATE, json.dumps(state) + "\n")

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.durations["eval_s"] = round(time.perf_counter() - self._start, 2)
        if trainer.global_rank == 0:
            self._write(trainer, pl_module)  # metrics and summary first (small): a full disk cannot take them
            self._add_extras(pl_module)  # then the large checkpoint
        trainer.strategy.barrier("urd_results_written")  # other ranks read metrics.json back in train()

    def _add_extras(self, pl_module: LightningModule) -> None:
        """Put the test-set thresholds and score statistics into ``last.ckpt``.

        The file is rewritten rather than saved anew from the trainer, so it keeps the training loops' state exactly
        as it was at the end of training and ``resume=last`` continues from there.
        """
        path = self.run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        pl_module.on_save_checkpoint(checkpoint)
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state_file = self.run_dir / TRAIN_STATE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self.durations["train_s"] = float(state.get("train_s", 0.0))
        pl_module.periodic = state.get("periodic", pl_module.periodic)
        oracle = pl_module.oracle()
        payload: dict[str, Any] = {**self.meta, "final": pl_module.final, "durations": dict(self.durations),
                                   "steps": int(state.get("steps", pl_module.iteration))}
        if oracle is not None:
            payload["oracle"] = oracle
            payload["periodic"] = pl_module.periodic
        write_metrics(self.run_dir, payload)
        curves = plot_curves(self.run_dir, pl_module.curves or {})
        log_final(self.logger, pl_module.final, payload["steps"], curves,
                  self.run_dir / "checkpoints" / "last.ckpt" if self.log_model else None)
        log_summary(self.logger, {f"final/{k}": v for k, v in pl_module.final.items()}
                    | {f"oracle/{k}": v for k, v in (oracle or {}).items()} | self.durations)
        print(summary_table(payload, self.run_dir), flush=True)  # the user-facing result of `make train`
