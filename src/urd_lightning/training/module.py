"""URDModule: the authors' training iteration and the evaluation, as a LightningModule.

One iteration follows docs/method.md, "The training step" (the authors' ``train_one_epoch``), written out with
Lightning's manual optimisation and two Adam optimizers:
expert forward (eval, no grad) → teacher step (train mode) → teacher re-forward (eval mode, no grad, updated
weights and running BN statistics) → student step on the detached teacher features, reusing the expert features.
Evaluation (docs/method.md, "Anomaly map and score") smooths the map with σ = 4 and scores an image by the map's
maximum; it is done by ``URD.predict``. No architecture code lives here. Below the module: what its evaluations add
up to (score statistics across ranks, the "oracle" selection, plot-sized curves) and what a stock ``Trainer`` must do
for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor
from typing_extensions import override

from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import ConfigError, URDError
from urd_lightning.metrics import AnomalyMetrics
from urd_lightning.models import URD
from urd_lightning.models import losses as urd_losses
from urd_lightning.run.extras import EXTRAS_KEY, CheckpointExtras


class NonFiniteLossError(URDError):
    """A loss term became NaN or infinite; the run stops and the last good checkpoint stays."""


class URDModule(LightningModule):
    """URD training (two optimizers, manual optimisation) and evaluation with the anomaly metrics.

    Args:
        model: keyword arguments of :class:`urd_lightning.models.URD`.
        lr_teacher: Adam learning rate of the teacher (authors: 1e-4).
        lr_student: Adam learning rate of the student (authors: 5e-3).
        betas: Adam betas of both optimizers (authors: (0.5, 0.999)).
        loss_variant: ``head`` (the authors' current losses) or ``first_commit`` (docs/method.md).
        synthesis: use the batch's synthetic anomalies; ``False`` drops the synthetic loss terms (RD4AD).
        image_size: side of the square images, stored in the checkpoint for inference.
        dataset: benchmark name, stored in the checkpoint and results.
        category: category name, stored in the checkpoint and results.
        num_samples: how many fixed test samples are kept for picture panels.
        channels_last: run the convolutions in channels-last memory format (faster on recent GPUs).
        seed: base seed; rank r reseeds torch with ``seed + r`` at fit start (one seed per rank).
        batched_eval_forwards: the expert's forwards of x and x~, and the teacher's eval-mode re-forwards, each run
            as one forward of the 2B batch (same result in eval mode); ``False`` = the authors' separate forwards.
        compile: run expert, teacher and student through ``torch.compile`` from fit start (same losses and
            gradients within float tolerance; the first iterations pay the compilation).
    """

    # Fused Adam kernels (below); the benchmarks set False to time the authors' loop, which used PyTorch's default.
    fused_adam = True

    def __init__(self, model: dict[str, Any], lr_teacher: float = 1e-4, lr_student: float = 5e-3,
                 betas: tuple[float, float] = (0.5, 0.999), loss_variant: str = "head", synthesis: bool = True,
                 image_size: int = 256,
                 dataset: str = "", category: str = "", num_samples: int = 8, channels_last: bool = False,
                 seed: int = 111, resize: str = "pil", batched_eval_forwards: bool = True,
                 compile: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # loggers get the nested config (loggers.py), not a flat copy
        self.automatic_optimization = False  # two optimizers stepped in the authors' order, see training_step
        self.model = URD(**model)
        self.train_teacher = self.model.train_teacher
        # Lightning counts every optimizer.step() in global_step, so one URD iteration is 2 global steps (1 with a
        # frozen teacher); setup() scales max_steps, train.py the checkpoint interval, `iteration` undoes it.
        self.steps_per_iteration = 2 if self.train_teacher else 1
        self.test_metrics = AnomalyMetrics()
        self.val_metrics = AnomalyMetrics()  # periodic evaluations (on the test set, labelled as such)
        self.final: dict[str, float] = {}
        self.periodic: list[dict[str, float]] = []
        self.thresholds: dict[str, Any] | None = None
        self.score_stats: dict[str, float] | None = None
        self.samples: list[dict[str, Any]] = []  # fixed picture samples of the last evaluation
        self.sample_indices: set[int] = set()
        self._eval_scores: list[Tensor] = []
        self.curves: dict[str, tuple[Tensor, Tensor]] = {}
        self._compiled = False

    @property
    def iteration(self) -> int:
        """Completed URD iterations (teacher + student updates), as the paper's budgets count them."""
        return self.global_step // self.steps_per_iteration

    # ---- training -------------------------------------------------------------------------------------------
    @override
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams.betas)
        # One fused kernel per optimizer step instead of a loop over the parameters (the same Adam update; on CPU
        # ~2.5x faster for the student's ~120 M parameters: docs/performance.md).
        fused = self.fused_adam and self.device.type in ("cuda", "cpu")
        student = torch.optim.Adam(self.model.student_parameters(), lr=self.hparams.lr_student, betas=betas,
                                   fused=fused)
        if not self.train_teacher:
            return [student]
        teacher = torch.optim.Adam(self.model.teacher_parameters(), lr=self.hparams.lr_teacher, betas=betas,
                                   fused=fused)
        return [teacher, student]

    @override
    def setup(self, stage: str) -> None:
        if stage == "fit":  # max_steps in iterations, DDP and sampler settings (a stock Trainer too)
            check_trainer(self.trainer, self.steps_per_iteration)

    @override
    def on_fit_start(self) -> None:
        # Weights are identical on every rank (same seed at build time, and DDP broadcasts rank 0's); from here on
        # each rank draws its own random numbers.
        torch.manual_seed(int(self.hparams.seed) + self.global_rank)
        if self.hparams.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.hparams.compile and not self._compiled:
            self.model.compile_parts()
            self._compiled = True

    @override
    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "set_epoch"):
            datamodule.set_epoch(self.current_epoch)  # reshuffles and reseeds synthesis per epoch (and per rank)

    @override
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning calls .train() on the whole module around evaluation; the expert must stay frozen in eval
        # mode so its BatchNorm statistics stay ImageNet's (docs/method.md). URD.train() already keeps it so.
        if self.model.expert is not None and self.model.expert.training:
            self.model.expert.eval()

    def _input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], part: str) -> None:
        # One host-device synchronisation per loss (a non-finite term makes the sum non-finite); the terms are only
        # inspected, to name the culprit, once the sum is bad.
        if torch.isfinite(loss.detach()):
            return
        for name, value in terms.items():
            if not torch.isfinite(value.detach()).all():
                raise NonFiniteLossError(
                    f"{part} loss term '{name}' is {value.item()} at iteration {self.iteration + 1}; training stopped. "
                    f"{self._checkpoint_kept()} {self._nan_advice()}"
                )

    def _nan_advice(self) -> str:
        """What to change after a non-finite loss: full precision only helps a run that is not in it already."""
        precision = str(getattr(self._trainer, "precision", "32-true")) if self._trainer is not None else "32-true"
        if precision in {"32-true", "32", "64-true", "64"}:
            return "Lower optim.lr_student/lr_teacher (the run is in full precision already)."
        return f"Lower optim.lr_student/lr_teacher or use trainer.precision=32-true (this run used {precision})."

    def _checkpoint_kept(self) -> str:
        """What a stopped run leaves to resume from: the last checkpoint, or the fact that there is none yet."""
        callback = self._trainer.checkpoint_callback if self._trainer is not None else None
        last = Path(callback.last_model_path) if callback is not None and callback.last_model_path else None
        if last is not None and last.is_file():
            return f"The last good checkpoint ({last}) is kept."
        return "No checkpoint was written before this iteration, so there is nothing to resume from."

    def _update(self, optimizer: Any, terms: dict[str, Tensor], part: str, logged: dict[str, Tensor]) -> None:
        """One optimizer step on the sum of ``terms`` (checked finite first); the terms and the sum go to ``logged``."""
        loss = sum(terms.values())
        self._check_finite(loss, terms, part)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        logged.update({f"train/{part}/{k}": v.detach() for k, v in terms.items()})
        logged[f"train/loss_{part}"] = loss.detach()

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """One authors' iteration: teacher step, teacher re-forward in eval mode, student step."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        opt_student = optimizers[-1]
        x = self._input(batch["image"])
        x_aug = self._input(batch["aug_image"]) if self.hparams.synthesis else None
        mask = batch.get("aug_mask")
        model, teacher_module = self.model, self.model.teacher
        batched = bool(self.hparams.batched_eval_forwards)
        expert = expert_aug = None
        if model.expert is not None:  # step 2: expert features, computed once and reused by the student step
            expert, expert_aug = model.eval_features_pair(model.expert_features, x, x_aug, batched)
        logged: dict[str, Tensor] = {}
        if self.train_teacher:  # step 3: teacher update, BatchNorm in train mode (batch statistics)
            opt_teacher = optimizers[0]
            teacher_module.train()
            t = model.teacher_features(x)
            t_aug = model.teacher_features(x_aug) if x_aug is not None else None
            terms = urd_losses.teacher_loss(t, t_aug, expert, expert_aug, mask, variant=self.hparams.loss_variant)
            self._update(opt_teacher, terms, "teacher", logged)
        # step 4: recompute the teacher features with the updated weights and running BN statistics
        teacher_module.eval()
        with torch.no_grad():
            t, t_aug = model.eval_features_pair(model.teacher_features, x, x_aug, batched)
        # step 5: student update on the detached teacher features (student BatchNorm in train mode)
        s = model.student_features(t)
        s_aug = model.student_features(t_aug) if t_aug is not None else None
        terms = urd_losses.student_loss(s, s_aug, t, expert, self.hparams.loss_variant, mask=mask, t_aug=t_aug,
                                        e_aug=expert_aug)
        self._update(opt_student, terms, "student", logged)
        bar = {k: logged.pop(k) for k in ("train/loss_teacher", "train/loss_student") if k in logged}
        self.log_dict(bar, prog_bar=True, batch_size=x.shape[0])
        # "iteration" is the W&B x-axis of every logged value (loggers.py); global_step counts both optimizers.
        self.log_dict({**logged, "iteration": float(self.iteration)}, batch_size=x.shape[0])

    # ---- evaluation -----------------------------------------------------------------------------------------
    def _pick_samples(self, dataloaders: Any) -> None:
        loader = dataloaders[0] if isinstance(dataloaders, list) else dataloaders
        count = len(loader.dataset) if loader is not None and hasattr(loader, "dataset") else 0
        n = min(int(self.hparams.num_samples), count)
        # Evenly spread over the test set, so both normal and defect images (sorted by folder) appear.
        self.sample_indices = {round(i * (count - 1) / max(n - 1, 1)) for i in range(n)} if n else set()
        self.samples = []
        self._eval_scores = []

    def _sync_buffers(self) -> None:
        """Give every rank rank zero's BatchNorm statistics (what DDP's next forward would broadcast anyway).

        DDP broadcasts buffers only at the start of each forward, and each rank then updates its teacher/student BN
        statistics on its own batches; without this, ranks would evaluate and end training with different ones.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized() and self.trainer.world_size > 1:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._sync_buffers()  # cheap (BN statistics only); keeps ranks identical after every iteration

    @override
    def on_validation_epoch_start(self) -> None:
        self._pick_samples(self.trainer.val_dataloaders)

    @override
    def on_test_epoch_start(self) -> None:
        self._pick_samples(self.trainer.test_dataloaders)

    def _eval_step(self, batch: dict[str, Any], metrics: AnomalyMetrics) -> None:
        # The network evaluates at its weights' precision, never under the training's bf16 autocast: test numbers,
        # thresholds and score statistics then equal what predict/export compute from the checkpoint (fp32).
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(self.device.type, enabled=False):
            maps, scores = self.model.predict(self._input(batch["image"].to(dtype)))
        maps, scores = maps.float(), scores.float()
        gt_mask = (batch["gt_mask"] > 0.5).float()
        metrics.update(maps, gt_mask, scores, batch["gt_label"])
        self._eval_scores.append(torch.stack([scores.min(), scores.max(), maps.min(), maps.max()]).detach())
        for i, index in enumerate(batch["index"].tolist()):
            if index in self.sample_indices:
                self.samples.append({
                    "index": index, "image": batch["image"][i].float().cpu(), "gt_mask": gt_mask[i, 0].cpu(),
                    "anomaly_map": maps[i, 0].cpu(), "score": float(scores[i]), "label": int(batch["gt_label"][i]),
                    "path": batch["image_path"][i], "defect_type": batch["defect_type"][i],
                })

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def _score_stats(self) -> dict[str, float] | None:
        return score_stats(self._eval_scores, self.device, self.all_gather)

    @override
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a stock Trainer's sanity check is no evaluation of the run
            self.val_metrics.reset()
            return
        values = {k: float(v) for k, v in self.val_metrics.compute().items()}
        self.eval_thresholds = self.val_metrics.thresholds()  # for this evaluation's panels (free after compute)
        self.val_metrics.reset()
        self.periodic.append({"step": self.iteration, **values})
        # Labelled as test-set numbers: these evaluations use the test set, only for curves and "oracle" numbers.
        self.log_dict({**{f"periodic_test/{k}": v for k, v in values.items()}, "iteration": float(self.iteration)},
                      sync_dist=False, rank_zero_only=True)

    @override
    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()  # synced across ranks; every test image counted once (no padding)
        self.final = {k: float(v) for k, v in values.items()}
        found = self.test_metrics.thresholds()
        # F1-optimal thresholds on the test set, labelled as such: inference has no other annotated set.
        self.thresholds = None if any(math.isnan(v) for v in found.values()) else {**found, "source": "test"}
        self.curves = {k: decimate(v[0], v[1]) for k, v in self.test_metrics.curves().items()}
        self.test_metrics.reset()
        self.score_stats = self._score_stats()
        self.log_dict({**{f"test/{k}": v for k, v in self.final.items()}, "iteration": float(self.iteration)},
                      rank_zero_only=True)

    def oracle(self) -> dict[str, float] | None:
        """Best periodic test-set evaluation by the authors' selection sum, or None when none ran."""
        return best_periodic(self.periodic, str(self.hparams.dataset))

    # ---- checkpoints ----------------------------------------------------------------------------------------
    def extras(self) -> CheckpointExtras:
        """What inference needs besides the weights (``run/extras.py``), as this module knows it now."""
        return CheckpointExtras(
            model=dict(self.hparams.model), image_size=int(self.hparams.image_size), dataset=str(self.hparams.dataset),
            category=str(self.hparams.category), resize=str(self.hparams.resize),  # predict resizes as training did
            thresholds=self.thresholds, score_stats=self.score_stats,
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain Python types, so torch.load(weights_only=True) reads them (design.md, "checkpoints"). The periodic
        # evaluations are not here: the run folder's train_state.json is their one store (run/folder.py).
        checkpoint[EXTRAS_KEY] = self.extras().to_dict()


# ---- what an evaluation adds up to: score statistics across ranks, the "oracle" selection, plot-sized curves ------
# The authors select their reported ("max") numbers on the test set by these sums (docs/method.md,
# "Test-set selection"):
# pixel AUROC + AUPRO on MVTec, plus image AUROC on VisA. We only use them for the labelled "oracle" numbers.
ORACLE_KEYS = ("pixel_AUROC", "pixel_AUPRO_per_image")
ORACLE_KEYS_VISA = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO_per_image")


def best_periodic(periodic: Sequence[dict[str, Any]], dataset: str) -> dict[str, float] | None:
    """The periodic evaluation the authors' selection sum picks, or None when none ran."""
    if not periodic:
        return None
    keys = ORACLE_KEYS_VISA if dataset == "visa" else ORACLE_KEYS
    return dict(max(periodic, key=lambda row: sum(row.get(k, 0.0) for k in keys)))


def score_stats(scores: Sequence[Tensor], device: torch.device,
                all_gather: Callable[[Tensor], Tensor]) -> dict[str, float] | None:
    """Min/max of image scores and pixel values over every rank (anomalib's normalisation statistics).

    Each entry of ``scores`` is one batch's ``(image_min, image_max, pixel_min, pixel_max)``; None when no rank saw
    an image.
    """
    if not scores:
        local = torch.tensor([math.inf, -math.inf, math.inf, -math.inf], device=device)
    else:
        stacked = torch.stack(list(scores))
        local = torch.cat([stacked[:, 0].min()[None], stacked[:, 1].max()[None],
                           stacked[:, 2].min()[None], stacked[:, 3].max()[None]])
    gathered = all_gather(local).reshape(-1, 4)
    stats = [gathered[:, 0].min(), gathered[:, 1].max(), gathered[:, 2].min(), gathered[:, 3].max()]
    if not all(math.isfinite(float(v)) for v in stats):
        return None
    return dict(zip(("image_min", "image_max", "pixel_min", "pixel_max"), (float(v) for v in stats), strict=True))


def decimate(x: Tensor, y: Tensor, points: int = 2000) -> tuple[Tensor, Tensor]:
    """At most ``points`` vertices of a curve (pixel curves have millions), keeping both ends, for plots."""
    if x.numel() <= points:
        return x, y
    keep = torch.linspace(0, x.numel() - 1, points).round().long()
    return x[keep], y[keep]


# ---- what a stock Trainer must do for URD (checked when URDModule.setup("fit") runs) --------------------------------
# train(cfg) builds its Trainer right (builders.trainer_kwargs); a Lightning user who writes Trainer(max_steps=1000,
# devices=2) and calls fit(URDModule(...), datamodule=AnomalyDataModule(...)) gets the same training, or one line
# naming the Trainer argument to pass: max_steps counts URD iterations (Lightning counts each optimizer's step, so
# the limit is scaled once per Trainer); several processes need DDP with find_unused_parameters=True (two backward
# passes over disjoint parameters); AnomalyDataModule shards its data itself, so Lightning must not wrap its
# samplers a second time.


def check_trainer(trainer: Trainer, steps_per_iteration: int) -> None:
    """Scale ``max_steps`` to optimizer steps and stop on a strategy or sampler setting URD cannot train with.

    Raises:
        ConfigError: naming the Trainer argument to pass.
    """
    strategy: Any = trainer.strategy
    if trainer.world_size > 1 and isinstance(strategy, DDPStrategy):
        # Lightning keeps the DDP arguments only in this attribute; it has no public accessor.
        if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise ConfigError("URDModule on several processes needs DDP with find_unused_parameters=True (two "
                              "backward passes per iteration): pass Trainer(strategy='ddp_find_unused_parameters_true')"
                              " or use `python -m urd_lightning train`")
        if isinstance(trainer.datamodule, AnomalyDataModule) and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError("AnomalyDataModule shards its data across processes itself: pass "
                              "Trainer(use_distributed_sampler=False)")
    loop = trainer.fit_loop.epoch_loop
    # Once per Trainer: a second fit() with the same Trainer must not scale again.
    if loop.max_steps > 0 and getattr(loop, "_urd_scaled_max_steps", None) != loop.max_steps:
        loop.max_steps *= steps_per_iteration
        loop._urd_scaled_max_steps = loop.max_steps
