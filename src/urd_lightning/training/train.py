"""Training and evaluation entry point: ``train(cfg) -> metrics`` and the ``train`` command.

Every way of training runs this one path (the lightning-hydra-template's thin entry point): ``urd train key=value``,
``make train``, a W&B sweep (its command ends with ``${args_no_hyphens}``, key=value pairs), ``srun ... resume=auto``
(``experiments/slurm/train.sbatch``). One (dataset, category) per run; results go to
``<output_dir>/<dataset>/<category>/<run>/`` (docs/design.md). The command's examples are in :data:`TRAIN`.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from urd_lightning.checkpoint_io import load_checkpoint_file
from urd_lightning.config import load_config, read_command_line, to_yaml
from urd_lightning.config.cli import Command
from urd_lightning.data import demo
from urd_lightning.errors import CheckpointError
from urd_lightning.files import ensure_writable, write_atomic
from urd_lightning.run.extras import EXTRAS_KEY, CheckpointExtras
from urd_lightning.run.folder import RunFolder, RunLock
from urd_lightning.training.builders import build_datamodule, build_module, trainer_kwargs
from urd_lightning.training.callbacks import (
    AtomicCheckpointIO,
    EvaluationLine,
    IterationProgress,
    PicturePanels,
    checkpoint_bytes,
    warn_if_disk_small,
)
from urd_lightning.training.interrupt import InterruptWatch, TrainingInterrupted, interruption
from urd_lightning.training.loggers import build_logger, finish, require_logger_package, setup_console_logging
from urd_lightning.training.module import URDModule
from urd_lightning.training.preemption import Requeue, resume_path
from urd_lightning.training.results import ResultsWriter, measured
from urd_lightning.training.runtime import runtime_info

log = logging.getLogger("urd_lightning")


def _check_resume_file(cfg: DictConfig, path: str) -> int:
    """Read the checkpoint ``fit`` will continue from safely (tensors mapped, not loaded) before Lightning does.

    A damaged, foreign or unsafe file stops here with one line instead of a traceback from inside fit(). Returns the
    checkpoint's ``global_step`` (Lightning's optimizer steps).
    """
    checkpoint = load_checkpoint_file(Path(path), mmap=True)
    if not isinstance(checkpoint, dict) or EXTRAS_KEY not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(f"resume={cfg.resume}: {path} is not a training checkpoint of urd-lightning (no "
                              f"'{EXTRAS_KEY}' extras or loop state); give a last.ckpt that training wrote")
    extras = CheckpointExtras.read(path, checkpoint, fix="give a last.ckpt that training wrote")
    _check_resume_model(cfg, path, extras.model)
    return int(checkpoint.get("global_step", 0))


# The model keys that decide the network's parameters and the optimizers (the others only initialise it).
RESUME_MODEL_KEYS = ("backbone", "injection", "expert", "train_teacher")


def _check_resume_model(cfg: DictConfig, path: str, recorded: dict | None) -> None:
    """Stop with one line when the checkpoint's recorded network is not the config's (before anything is built).

    Args:
        cfg: the run's config.
        path: the checkpoint, for the message.
        recorded: the model keys the checkpoint's extras record (``CheckpointExtras.model``).
    """
    if not isinstance(recorded, dict) or not recorded:
        return  # an older checkpoint without the record: Lightning's own loading decides
    differing = [f"model.{key}={recorded[key]} in the checkpoint, {cfg.model[key]} here" for key in RESUME_MODEL_KEYS
                 if key in recorded and key in cfg.model and recorded[key] != cfg.model[key]]
    if differing:
        raise CheckpointError(f"resume={cfg.resume}: {path} was trained with another network ({'; '.join(differing)}); "
                              "resume with the checkpoint's model.* values, or train without resume=")


def _measured_elsewhere(trainer: Trainer, module: URDModule, folder: RunFolder) -> dict[str, float]:
    """What a ``ddp_spawn``/``ddp_fork`` run measured: its evaluation ran in processes that are gone.

    Lightning hands their logged values back to this process (the ``test/*`` the module logs); the periodic rows are
    in the run folder's one store.
    """
    final = {k.removeprefix("test/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    module.periodic = list(folder.read_state().get("periodic", []))
    return measured(final, module.oracle())


def train(cfg: DictConfig, callbacks: list[Callback] | None = None) -> dict[str, float]:
    """Train and evaluate one (dataset, category); returns the final metrics (and ``oracle/<metric>`` if any).

    Args:
        cfg: a config from :func:`urd_lightning.config.load_config`.
        callbacks: extra Lightning callbacks (tests and user extensions).

    Returns:
        ``{metric: value}`` of the final-iteration evaluation, plus ``oracle/<metric>`` when periodic test-set
        evaluation ran; empty when a SLURM preemption stopped training (the job was requeued).
    """
    started = time.time()  # a last.ckpt older than this is an earlier attempt's (interrupt.py)
    setup_console_logging()
    require_logger_package(cfg)  # a missing optional logger package stops here, not after the data set-up
    # The frozen expert is in eval mode on purpose (its BN keeps ImageNet statistics, docs/method.md).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    # Checkpoints hold the state after each iteration's updates, which is exactly what resuming needs.
    warnings.filterwarnings("ignore", message=r".*no pre-optimization state was saved")
    # A preempted run's checkpoint cuts an epoch; the data module continues that epoch's order exactly.
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended")
    folder = RunFolder.of(cfg)
    ensure_writable(cfg.output_dir, "output_dir")  # one line now, not five tracebacks after the data is built
    if cfg.data.benchmark == "demo":  # a demo dataset still to be written needs a data.root it can write
        demo.check_root(cfg.data.root, "data.root")
    ckpt_path = resume_path(cfg.resume, folder)  # null, last, auto (SLURM requeue) or a path
    # A bad resume= file stops here, before anything is built or written.
    resumed_step = _check_resume_file(cfg, ckpt_path) if ckpt_path is not None else None
    # Rank zero owns the folder: it refuses another config's run of the same name and takes the lock (the other
    # ranks of a DDP run write into the folder rank zero holds).
    lock = _claim(cfg, folder, resuming=ckpt_path is not None) if rank_zero_only.rank == 0 else None
    try:
        return _train(cfg, folder, ckpt_path, resumed_step, started, callbacks)
    finally:
        if lock is not None:
            lock.release()


def _claim(cfg: DictConfig, folder: RunFolder, resuming: bool) -> RunLock:
    """Take the run folder for this training: refuse another config's run (or move it aside), then lock it."""
    replaced = folder.check_reuse(cfg, resuming)  # reads only: a refusal changes nothing
    holder = f"urd train run={cfg.run}"
    had_lock = (folder.path / RunFolder.LOCK).is_file()
    lock = folder.lock(holder)  # a second training into this folder stops here, naming this one
    if replaced:  # overwrite=true: the old run keeps every file, under _replaced/; the lock moves with it
        aside = folder.move_aside()
        moved, lock = lock, folder.lock(holder)
        moved.release()
        if not had_lock:  # the old run as it was: without the lock file this attempt added to it
            (aside / RunFolder.LOCK).unlink(missing_ok=True)
    return lock


def _train(cfg: DictConfig, folder: RunFolder, ckpt_path: str | None, resumed_step: int | None, started: float,
           callbacks: list[Callback] | None) -> dict[str, float]:
    seed_everything(cfg.seed, workers=True)  # the authors' setup_seed(111): same initial weights on every rank
    torch.backends.cudnn.deterministic = bool(cfg.trainer.deterministic)  # the authors' True with deterministic=true
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    per_iteration = module.steps_per_iteration  # Lightning's global_step counts each optimizer's step
    # A new attempt gets a new W&B run and a new metrics.csv; a resume continues both from the checkpoint's iteration.
    logger = build_logger(cfg, folder.path, resumed_at=None if resumed_step is None else resumed_step // per_iteration)
    every = int(cfg.eval.every_n_steps)
    kwargs = trainer_kwargs(cfg)  # max_steps in URD iterations: URDModule.setup scales it to optimizer steps
    show_progress = kwargs.pop("enable_progress_bar")  # our bar counts URD iterations over the whole run
    # The run folder is this run's: last.ckpt is always rewritten, never versioned to last-v1.ckpt (which happens
    # when a run resumes from a preemption checkpoint older than the last.ckpt the preempted job wrote).
    checkpoint = ModelCheckpoint(dirpath=folder.checkpoints, save_last=True, save_top_k=0,
                                 enable_version_counter=False,
                                 every_n_train_steps=per_iteration * max(1, min(cfg.checkpoint_every_n_steps,
                                                                                  cfg.trainer.max_steps)))
    checkpoint_io = AtomicCheckpointIO()
    if rank_zero_only.rank == 0:
        warn_if_disk_small(Path(cfg.output_dir), checkpoint_bytes(module))
    slurm = SLURMEnvironment.detect()
    # Under SLURM our Requeue callback, not Lightning's signal handler, checkpoints and requeues (preemption.py).
    requeue = Requeue(folder.path) if slurm else None
    meta = {"dataset": cfg.dataset, "category": cfg.data.category, "run": cfg.run, "injection": cfg.model.injection,
            "texture_source": cfg.data.textures,  # dtd (the paper's) | procedural | none (no synthesis)
            "augment": OmegaConf.to_container(cfg.data, resolve=True)["augment"]}  # false | flips | the pipeline
    results = ResultsWriter(folder, meta, logger, log_model=bool(cfg.wandb.log_model))
    watch = InterruptWatch(folder, slurm=bool(slurm))  # SIGTERM: a checkpoint, then exit 143 (interrupt.py)
    trainer = Trainer(
        **kwargs, max_epochs=-1, logger=logger, default_root_dir=str(folder.path),
        callbacks=[checkpoint, PicturePanels(folder.images), EvaluationLine(), results, watch,
                   *([IterationProgress(cfg.trainer.log_every_n_steps)] if show_progress else []),
                   *([requeue] if requeue else []),
                   *(callbacks or [])],
        enable_progress_bar=False,
        plugins=[checkpoint_io, *([SLURMEnvironment(auto_requeue=False)] if slurm else [])],
        use_distributed_sampler=False,  # the data module shards itself (no padded duplicates in evaluation)
        num_sanity_val_steps=0, enable_model_summary=False,
        # Periodic evaluation uses the TEST set (the data module's val loader), for curves and "oracle" numbers.
        val_check_interval=every if every > 0 else None, check_val_every_n_epoch=None if every > 0 else 1,
        limit_val_batches=cfg.trainer.limit_test_batches if every > 0 else 0,
    )
    # What the config's nulls resolved to and every speed setting in force (one block: metrics.json, config.yaml, W&B).
    runtime = runtime_info(trainer, module, kwargs["deterministic"], kwargs["benchmark"])
    results.meta["runtime"] = runtime
    if rank_zero_only.rank == 0:
        write_atomic(folder.config, to_yaml(cfg) + to_yaml(OmegaConf.create({"runtime": runtime})))
    if logger:
        logger.log_hyperparams({"runtime": runtime})
    # Ctrl+C: Lightning shuts down, then exits with 1 (SIGTERM: 0); interruption() makes it exit 130 (143) with how
    # to continue.
    where = {"folder": folder, "resumed_from": ckpt_path, "started": started, "per_iteration": per_iteration,
             "first_save": max(1, min(cfg.checkpoint_every_n_steps, cfg.trainer.max_steps))}
    with interruption(watch, "training", module, where, cleanup=lambda: finish(logger)):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if requeue is not None and requeue.preempted:
        finish(logger)
        return {}  # the requeued job resumes (resume=auto) and evaluates at the end
    with interruption(watch, "the final evaluation", module, where, cleanup=lambda: finish(logger)):
        trainer.test(module, datamodule=datamodule, verbose=False)
    finish(logger)
    if checkpoint_io.disk_full is not None:  # the results are written; now say that the checkpoint is not
        raise checkpoint_io.disk_full
    return results.measured or _measured_elsewhere(trainer, module, folder)


TRAIN = Command(
    "train", "Train and evaluate one (dataset, category); results go to <output_dir>/<dataset>/<category>/<run>/.",
    config=True, examples=(
        "urd train dataset=demo                                  # the embedded demo dataset, CPU minutes",
        "urd train dataset=mvtec data.category=cable             # the authors' 10000 iterations",
        "urd train dataset=visa data.category=pcb1 trainer.devices=4   # >1 process: DDP",
        "urd train dataset=mvtec data.category=bottle resume=last      # continue the run of this config",
    ))


def main(argv: list[str] | None = None) -> int:
    """``urd train [key=value ...]``; returns the exit code."""
    argv = list(argv or [])
    args = read_command_line(TRAIN, argv)
    if args is None:  # --help
        return 0
    setup_console_logging()  # before the config: loading it may say where the caches go (config/places.py)
    try:
        train(load_config(args.overrides))
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(exc.line(argv), None, exc.terminated) from None  # the continue command, spelled out
    return 0
