"""SLURM preemption and time limits: stop after the current iteration, checkpoint, requeue; ``resume=auto``.

SLURM sends ``SIGUSR1`` some time before it kills a job (``#SBATCH --signal=SIGUSR1@90``). Lightning's own handler
saves a checkpoint inside the signal handler, which can fall between the teacher and the student update of one
iteration (and, under DDP, while the other rank is inside a collective). Here the handler only raises a flag; at the
end of the iteration the ranks agree on it, every rank saves ``hpc_ckpt_<N>.ckpt`` (Lightning's name, so Lightning's
own SLURM auto-resume finds it too) in the run folder, rank zero runs ``scontrol requeue <job>`` and training stops
without the final evaluation. The requeued job (same run folder: the run name does not depend on the job) resumes
with ``resume=auto``; ``AnomalyDataModule.train_dataloader`` continues a cut epoch where it stopped, so nothing is lost
beyond the iteration in progress.

Under ``benchmark --slurm`` the training is the child of a submitit job process, and submitit requeues the task
(its own signal handler runs ``scontrol requeue`` after re-pickling the job): the launcher sets
:data:`PARENT_REQUEUES_ENV` for the child, which then only saves and stops, so that exactly one of them requeues.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from urd_lightning.errors import CheckpointError
from urd_lightning.run.folder import RunFolder

log = logging.getLogger("urd_lightning")
HPC_PATTERN = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")
# Set (to "submitit") by benchmark/slurm.py in the training process it starts: the parent requeues, not this process.
PARENT_REQUEUES_ENV = "URD_PARENT_REQUEUES"


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """``hpc_ckpt_<N>.ckpt`` files of a run folder, oldest (lowest N) first."""
    found = [(int(m.group(1)), p) for p in run_dir.glob("hpc_ckpt_*.ckpt") if (m := HPC_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def resume_path(resume: str | None, folder: RunFolder) -> str | None:
    """The checkpoint ``fit`` continues from, for ``resume`` = null, ``last``, ``auto`` or a path.

    ``auto``: a preempted job's ``hpc_ckpt_<N>.ckpt`` (highest N), else this run's ``checkpoints/last.ckpt``, else
    None (a fresh start). The preemption checkpoint wins: ``last.ckpt`` is also written when the stopped training
    ends, but with the cut epoch counted as finished. A run that finishes deletes its ``hpc_ckpt_*`` files.
    ``last`` and a path must exist.
    """
    if not resume:
        return None
    last = folder.last_checkpoint
    if resume == "auto":
        hpc = hpc_checkpoints(folder.path)
        return str(hpc[-1]) if hpc else str(last) if last.is_file() else None
    path = last if resume == "last" else Path(resume)
    if path.is_dir():
        found = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/*.ckpt"))
        hint = f"; it holds {found[-1]}" if found else ""
        raise CheckpointError(f"resume={resume}: {path} is a folder, not a checkpoint file: give the .ckpt file "
                              f"itself{hint} (or resume=last / resume=auto for this run)")
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: {path} does not exist; train without resume= (or with resume=auto)")
    return str(path)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array tasks, else the job id."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class Requeue(Callback):
    """On ``signum`` (SLURM's warning signal): checkpoint after the current iteration, requeue, stop training.

    Args:
        run_dir: the run folder (``trainer.default_root_dir``), where ``hpc_ckpt_<N>.ckpt`` is written.
        signum: the signal SLURM sends before the kill (``--signal=SIGUSR1@90``).
    """

    def __init__(self, run_dir: Path, signum: int = signal.SIGUSR1) -> None:
        self.run_dir, self.signum = Path(run_dir), signum
        self.requested = False
        self.preempted = False
        self._previous: Any = None

    def _flag(self, signum: int, frame: Any) -> None:
        self.requested = True  # acted on at the end of the iteration, never inside it

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread set handlers
            self._previous = signal.signal(self.signum, self._flag)

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Every rank must take the same decision at the same iteration (the checkpoint save is collective).
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        existing = hpc_checkpoints(self.run_dir)
        number = int(HPC_PATTERN.search(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
        path = self.run_dir / f"hpc_ckpt_{number}.ckpt"
        trainer.save_checkpoint(path)
        self.preempted, self.requested = True, False
        trainer.should_stop = True
        if trainer.is_global_zero:
            parent = os.environ.get(PARENT_REQUEUES_ENV)
            log.info("preempted at iteration %d: saved %s; %s (it continues with resume=auto)",
                     getattr(pl_module, "iteration", trainer.global_step), path,
                     f"{parent} requeues the job" if parent else "requeueing the job")
            if not parent:
                _requeue()

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
        if not self.preempted:
            # Training finished: the preemption checkpoints are spent. Left in place, Lightning's SLURM support
            # would load them into the final evaluation (test with no ckpt_path) and resume=auto would go back.
            if trainer.is_global_zero:
                for path in hpc_checkpoints(self.run_dir):
                    path.unlink()
            trainer.strategy.barrier("urd_hpc_checkpoints_removed")


def _requeue() -> None:
    job = slurm_job_id()
    if not job:
        log.warning("no SLURM_JOB_ID: nothing to requeue; rerun the same command with resume=auto to continue")
        return
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        log.warning("scontrol not found: resubmit the job; with resume=auto it continues from the checkpoint")
        return
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed (%s); resubmit the job, it continues with resume=auto", job,
                    done.stderr.strip() or done.returncode)
