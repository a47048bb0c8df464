"""Results of a run: ``metrics.json``, ``curves.json`` with the ROC/PRO plots, and the console summary table.

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

from urd_lightning.files import write_atomic
from urd_lightning.run.folder import RunFolder
from urd_lightning.training import figures
from urd_lightning.training.callbacks import AtomicCheckpointIO
from urd_lightning.training.loggers import log_summary
from urd_lightning.training.media import log_final

CURVE_VALUES = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "pixel_AUPRO_per_image")  # labelled in curves.json
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


def strict_json(payload: dict[str, Any]) -> str:
    """``payload`` as strict JSON text: an undefined metric (NaN) is null, and a top-level ``"null"`` entry says why.

    The one format of ``metrics.json`` and ``test_metrics.json``.
    """
    safe = json_safe(payload)
    if has_undefined(payload):
        safe["null"] = UNDEFINED_NOTE
    return json.dumps(safe, indent=2, sort_keys=False, allow_nan=False) + "\n"


def measured(final: dict[str, float], oracle: dict[str, float] | None) -> dict[str, float]:
    """What ``train()`` returns: the final metrics and, with periodic evaluation, ``oracle/<metric>``."""
    return {**final, **{f"oracle/{k}": float(v) for k, v in (oracle or {}).items() if k != "step"}}


def write_metrics(folder: RunFolder, payload: dict[str, Any]) -> Path:
    """The run's ``metrics.json`` (design.md "results" format, :func:`strict_json`); returns its path."""
    return write_atomic(folder.metrics, strict_json(payload))


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


def write_curves(folder: RunFolder, record: dict[str, Any]) -> dict[str, Any]:
    """``curves.json`` plus ``roc_curve.png`` and ``pro_curve.png`` (figures.py); returns the figures as arrays."""
    write_atomic(folder.curves_data, json.dumps(record) + "\n")
    arrays = {}
    for kind, draw in (("roc", figures.roc_figure), ("pro", figures.pro_figure)):
        arrays[f"{kind}_curve"] = figures.pixels(figures.save(draw(record, record["values"]), folder.curve(kind)))
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
        self.measured = measured(pl_module.final, oracle)
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
        record = curve_record(pl_module.curves or {}, pl_module.final)
        arrays = write_curves(self.folder, record)
        log_final(self.logger, pl_module.final, payload["steps"], arrays, record,
                  [self.folder.metrics, self.folder.curves_data],
                  self.folder.last_checkpoint if self.log_model else None)
        log_summary(self.logger, {f"final/{k}": v for k, v in pl_module.final.items()}
                    | {f"oracle/{k}": v for k, v in (oracle or {}).items()} | self.durations)
        print(summary_table(payload, self.folder.path), flush=True)  # the user-facing result of `make train`
