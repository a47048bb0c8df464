"""Results of a run: ``metrics.json``, ``curves.json`` with the ROC/PRO plots, and the console summary table.

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

from urd_lightning.files import write_atomic
from urd_lightning.training import figures
from urd_lightning.training.callbacks import AtomicCheckpointIO
from urd_lightning.training.loggers import log_summary
from urd_lightning.training.media import log_final

TRAIN_STATE = "train_state.json"  # steps, training time and periodic evaluations, written at the end of training
# Every periodic evaluation so far, rewritten after each one. A checkpoint saved at iteration k is written before the
# evaluation of k runs (Lightning checkpoints at the end of the batch, then validates), and a resume from it does not
# repeat that evaluation: the row comes back from this file.
PERIODIC_LOG = "periodic.json"
CURVES_FILE = "curves.json"  # the final evaluation's ROC/PRO vertices, for plots that overlay runs
CURVE_VALUES = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPRO_per_image")
METRIC_ORDER = ("image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
                "pixel_AUPRO_per_image")


def write_metrics(run_dir: Path, payload: dict[str, Any]) -> Path:
    """``<run_dir>/metrics.json`` (design.md "results" format); returns its path."""
    path = run_dir / "metrics.json"
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def curves_path(run_dir: Path) -> Path:
    """Where a run's curve data lives (the one place that names it; the benchmark report reads it)."""
    return Path(run_dir) / CURVES_FILE


def curve_record(curves: dict[str, Any], final: dict[str, float]) -> dict[str, Any]:
    """``curves.json`` content: the decimated ROC/PRO vertices and the values the plots label them with.

    ``{"image_roc": {"fpr": [...], "tpr": [...]}, "pixel_roc": {...}, "pixel_pro": {"fpr": [...], "pro": [...]},
    "values": {metric: value}}`` (6 significant digits: a plot's precision, a few hundred kB at most).
    """
    record: dict[str, Any] = {}
    for key, pair in curves.items():
        if pair is None:
            continue
        x, y = (v.tolist() if hasattr(v, "tolist") else list(v) for v in pair[:2])
        record[key] = {"fpr": [float(f"{v:.6g}") for v in x],
                       ("pro" if key.endswith("_pro") else "tpr"): [float(f"{v:.6g}") for v in y]}
    record["values"] = {k: v for k, v in final.items() if k in CURVE_VALUES}
    return record


def write_curves(run_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """``curves.json`` plus ``roc_curve.png`` and ``pro_curve.png`` (figures.py); returns the figures as arrays."""
    write_atomic(curves_path(run_dir), json.dumps(record) + "\n")
    arrays = {}
    for name, draw in (("roc_curve", figures.roc_figure), ("pro_curve", figures.pro_figure)):
        fig = draw(record, record["values"])
        figures.save(fig, Path(run_dir) / f"{name}.png", close=False)
        arrays[name] = figures.to_array(fig)
        figures.close(fig)
    return arrays


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
        record = curve_record(pl_module.curves or {}, pl_module.final)
        arrays = write_curves(self.run_dir, record)
        log_final(self.logger, pl_module.final, payload["steps"], arrays, record,
                  [self.run_dir / "metrics.json", curves_path(self.run_dir)],
                  self.run_dir / "checkpoints" / "last.ckpt" if self.log_model else None)
        log_summary(self.logger, {f"final/{k}": v for k, v in pl_module.final.items()}
                    | {f"oracle/{k}": v for k, v in (oracle or {}).items()} | self.durations)
        print(summary_table(payload, self.run_dir), flush=True)  # the user-facing result of `make train`
