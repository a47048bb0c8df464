"""Results of a run: ``metrics.json``, ROC/PRO curve plots and the console summary table.

``metrics.json`` follows docs/design.md ("results"): ``final`` holds the final-iteration numbers; ``oracle`` (the
best periodic evaluation ON THE TEST SET, which is how the authors select their reported numbers,
docs/method.md, "Test-set selection") appears only when periodic evaluation ran, and only beside the final numbers.
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
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.callbacks import AtomicCheckpointIO
from urd_lightning.training.loggers import log_final, log_summary

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


def write_metrics(folder: RunFolder, payload: dict[str, Any]) -> Path:
    """The run's ``metrics.json`` (design.md "results" format); returns its path.

    Strict JSON: an undefined metric (NaN) is written as null, and a top-level ``"null"`` entry says why.
    """
    safe = json_safe(payload)
    if has_undefined(payload):
        safe["null"] = UNDEFINED_NOTE
    return write_atomic(folder.metrics, json.dumps(safe, indent=2, sort_keys=False, allow_nan=False) + "\n")


def plot_curves(folder: RunFolder, curves: dict[str, Any]) -> list[Path]:
    """``roc_curve.png`` (image and pixel ROC) and ``pro_curve.png`` (PRO over FPR up to the 0.3 limit).

    Args:
        folder: the run folder.
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
        written.append(write_via(folder.curve("roc"), lambda tmp: fig.savefig(tmp, dpi=100)))
        plt.close(fig)
    if pro is not None:
        fpr, overlap = pro
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, overlap)
        ax.axvline(0.3, color="grey", linestyle=":", linewidth=0.8)  # the AUPRO integration limit (FPR 0.3)
        ax.set(xlabel="false positive rate", ylabel="per-region overlap", title="PRO (pooled, final evaluation)",
               xlim=(0, max(0.3, float(fpr[-1]) if len(fpr) else 0.3)), ylim=(0, 1.02))
        fig.tight_layout()
        written.append(write_via(folder.curve("pro"), lambda tmp: fig.savefig(tmp, dpi=100)))
        plt.close(fig)
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
    if any(math.isnan(v) for v in final.values()):  # say why, not only NaN
        lines.append("nan = undefined: the test split lacks anomalous (or normal) images, and each metric needs both "
                     "(`python -m urd_lightning data check` names what is missing)")
    if oracle:
        lines.append("* oracle = best periodic evaluation on the TEST set (the authors' selection); not a fair score")
    if payload.get("texture_source") == "procedural":
        lines.append("textures: PROCEDURAL, not the paper's DTD; get DTD: python -m urd_lightning data download dtd")
    lines.append(f"results: {run_dir}")
    return "\n".join(lines)


class ResultsWriter(Callback):
    """Keeps the run's state and writes its results where the evaluation happened (``ddp_spawn``/``ddp_fork`` too).

    The periodic evaluations have one store, the run folder's ``train_state.json`` (``RunFolder.write_state``):
    rank zero rewrites it after each evaluation and at the end of training (with the steps and the training time),
    a resume takes back the rows up to the checkpoint's iteration, and the results are written from it. A checkpoint
    saved at iteration k is written before the evaluation of k runs (Lightning checkpoints at the end of the batch,
    then validates) and a resume from it does not repeat that evaluation, so the checkpoint could not hold that row.

    After the final test evaluation rank zero adds the thresholds and score statistics to ``last.ckpt`` and writes
    ``metrics.json``, the curve plots, the logger summary and the table; the other ranks wait for it.
    ``measured`` then holds what ``train()`` returns (the final metrics and, with periodic evaluation, the oracle).
    """

    def __init__(self, folder: RunFolder, meta: dict[str, Any], logger: Any = None, log_model: bool = False) -> None:
        self.folder, self.meta, self.logger, self.log_model = folder, dict(meta), logger, log_model
        self.durations: dict[str, float] = {"train_s": 0.0, "eval_s": 0.0}
        self.measured: dict[str, float] = {}
        self._start = 0.0

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()
        resumed_at = int(pl_module.iteration)
        if resumed_at == 0:  # a fresh attempt: an earlier attempt's rows are not this run's
            if trainer.global_rank == 0:
                self.folder.clear_state()
            pl_module.periodic = []
            return
        pl_module.periodic = self.folder.periodic_rows(until=resumed_at)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.global_rank == 0 and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.folder.write_state(pl_module.periodic)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Kept in the folder: with ddp_spawn/ddp_fork the fit ran in processes that are gone when the test starts.
        if trainer.global_rank == 0:
            self.folder.write_state(pl_module.periodic, steps=pl_module.iteration,
                                    train_s=round(time.perf_counter() - self._start, 2))

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.durations["eval_s"] = round(time.perf_counter() - self._start, 2)
        state = self.folder.read_state()  # every rank: the periodic rows and steps rank zero stored
        pl_module.periodic = list(state.get("periodic", pl_module.periodic))
        oracle = pl_module.oracle()
        self.measured = {**pl_module.final, **{f"oracle/{k}": float(v) for k, v in (oracle or {}).items()
                                               if k != "step"}}
        if trainer.global_rank == 0:
            self._write(pl_module, state, oracle)  # metrics and summary first (small): a full disk cannot take them
            self._add_extras(pl_module)  # then the large checkpoint
        trainer.strategy.barrier("urd_results_written")

    def _add_extras(self, pl_module: LightningModule) -> None:
        """Put the test-set thresholds and score statistics into ``last.ckpt``.

        The file is rewritten rather than saved anew from the trainer, so it keeps the training loops' state exactly
        as it was at the end of training and ``resume=last`` continues from there.
        """
        path = self.folder.last_checkpoint
        if not path.is_file():
            return
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        pl_module.on_save_checkpoint(checkpoint)
        AtomicCheckpointIO().save_checkpoint(checkpoint, path)

    def _write(self, pl_module: LightningModule, state: dict[str, Any], oracle: dict[str, float] | None) -> None:
        self.durations["train_s"] = float(state.get("train_s", 0.0))
        payload: dict[str, Any] = {**self.meta, "final": pl_module.final, "durations": dict(self.durations),
                                   "steps": int(state.get("steps", pl_module.iteration))}
        if oracle is not None:
            payload["oracle"] = oracle
            payload["periodic"] = pl_module.periodic
        write_metrics(self.folder, payload)
        curves = plot_curves(self.folder, pl_module.curves or {})
        log_final(self.logger, pl_module.final, payload["steps"], curves,
                  self.folder.last_checkpoint if self.log_model else None)
        log_summary(self.logger, {f"final/{k}": v for k, v in pl_module.final.items()}
                    | {f"oracle/{k}": v for k, v in (oracle or {}).items()} | self.durations)
        print(summary_table(payload, self.folder.path), flush=True)  # the user-facing result of `make train`
