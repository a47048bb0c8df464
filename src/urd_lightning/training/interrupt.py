"""Ctrl+C or SIGTERM during training or the final evaluation: a non-zero exit with one line that says how to continue.

Lightning catches the ``KeyboardInterrupt`` inside ``fit``/``test``, shuts down (callbacks' ``on_exception``,
loggers finalised, DDP children killed) and then calls ``sys.exit(1)``, after printing "Detected KeyboardInterrupt,
attempting graceful shutdown". Here :class:`InterruptWatch` notes that the exception was an interrupt, and
:func:`interruption` turns Lightning's exit into :class:`TrainingInterrupted`, which the command line reports as
``interrupted: ...`` with exit code 130 (the shell's code for SIGINT), like any other interrupt.

SIGTERM (what ``kill``, a container stop and SLURM at a time limit or a preemption without ``--signal`` send):
Lightning's handler only notes it, and its loops raise ``SIGTERMException`` (a ``SystemExit`` with code 0) at the end
of the iteration in progress, so a scheduler would read the stop as a success. :class:`InterruptWatch` saves a
checkpoint at that iteration boundary first (``last.ckpt``; under SLURM the next ``hpc_ckpt_<N>.ckpt``, which the job
scripts' ``resume=auto`` takes), and the command ends with ``terminated: ...`` and exit code 143 (128 + SIGTERM, what
a shell reports for a process the signal killed). Under SLURM a requeued job starts again on its own either way; the
code only tells a script or a plain job that the run did not finish.

The line names the checkpoint to continue from and the option that does: ``resume=last`` for this attempt's
``last.ckpt``; the ``resume=`` it started from when it saved nothing newer; none when no checkpoint exists yet.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from urd_lightning.checkpoint_io import load_checkpoint_file
from urd_lightning.errors import CheckpointError
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.preemption import HPC_PATTERN, hpc_checkpoints

SIGTERM_EXIT = 143  # 128 + 15: what a shell reports for a process that SIGTERM ended


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped training; ``str()`` is the line for the user (where to continue from, and how).

    Args:
        where: what was interrupted and which checkpoint is kept.
        resume: the ``resume=...`` argument that continues the run, or None when there is nothing to continue.
        terminated: SIGTERM, not Ctrl+C, stopped it: the command says ``terminated`` and exits with 143, not 130.
    """

    def __init__(self, where: str, resume: str | None, terminated: bool = False) -> None:
        self.where, self.resume, self.terminated = where, resume, terminated
        self.label, self.exit_code = ("terminated", SIGTERM_EXIT) if terminated else ("interrupted", 130)
        super().__init__(self.line())

    def line(self, argv: list[str] | None = None) -> str:
        """The message; with the run's ``argv`` the continue command is spelled out in full."""
        if self.resume is None:
            return self.where
        if argv is None:
            return f"{self.where}; continue with the same command and {self.resume}"
        kept = [a for a in argv if not a.startswith("resume=")]
        return f"{self.where}; continue with: {shlex.join(['python', '-m', 'urd_lightning', 'train', *kept])} " \
               f"{self.resume}"


class InterruptWatch(Callback):
    """Remembers whether ``fit``/``test`` ended in an interrupt, and saves a checkpoint when SIGTERM arrives.

    Args:
        folder: the run folder; None saves nothing on SIGTERM.
        slurm: under SLURM the SIGTERM checkpoint is the next ``hpc_ckpt_<N>.ckpt`` (``resume=auto`` prefers those to
            ``last.ckpt``, see ``preemption.resume_path``), else ``checkpoints/last.ckpt``.
    """

    def __init__(self, folder: RunFolder | None = None, slurm: bool = False) -> None:
        self.folder, self.slurm = folder, slurm
        self.seen = False  # a KeyboardInterrupt
        self.terminated = False  # a SIGTERM
        self.saved: Path | None = None  # the checkpoint saved on SIGTERM

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Lightning raises SIGTERMException right after this hook, still at the iteration boundary: save here (every
        # rank decides alike, the save is collective). A SLURM preemption that saved already (Requeue) is enough.
        received = bool(getattr(trainer, "received_sigterm", False))
        if self.folder is None or self.saved is not None or trainer.should_stop:
            return
        if not trainer.strategy.reduce_boolean_decision(received, all=False):
            return
        if self.slurm:
            existing = hpc_checkpoints(self.folder.path)
            number = int(HPC_PATTERN.search(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
            path = self.folder.path / f"hpc_ckpt_{number}.ckpt"
        else:
            path = self.folder.last_checkpoint
        trainer.save_checkpoint(path)
        self.saved = path

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.seen = self.seen or isinstance(exception, KeyboardInterrupt)
        self.terminated = self.terminated or isinstance(exception, SIGTERMException)


def _iteration_of(path: Path, per_iteration: int) -> str:
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)  # mapped, not read: cheap for a large file
        return f" (iteration {int(checkpoint['global_step']) // per_iteration})"
    except (CheckpointError, KeyError, TypeError, ValueError):
        return ""


def continue_from(folder: RunFolder, resumed_from: str | None, started: float, per_iteration: int,
                  first_save: int) -> tuple[str, str | None]:
    """Which checkpoint an interrupted attempt leaves to continue from, and the ``resume=`` that continues from it.

    Args:
        folder: the run folder.
        resumed_from: the checkpoint this attempt resumed from, None for a fresh start.
        started: when this attempt started (``time.time()``): a ``last.ckpt`` older than that is an earlier
            attempt's, and continuing from it would not continue this one.
        per_iteration: optimizer steps per URD iteration.
        first_save: the iteration at which the first checkpoint is written (for the message when there is none).
    """
    last = folder.last_checkpoint
    if last.is_file() and (last.stat().st_mtime >= started or resumed_from == str(last)):
        return f"the last checkpoint is {last}{_iteration_of(last, per_iteration)}", "resume=last"
    if resumed_from is not None:
        path = Path(resumed_from)
        return f"no newer checkpoint than {path}{_iteration_of(path, per_iteration)}", f"resume={path}"
    return f"no checkpoint was written yet (the first comes at iteration {first_save}); run the command again", None


@contextmanager
def interruption(watch: InterruptWatch, stage: str, module: Any, where: dict[str, Any],
                 cleanup: Callable[[], None]) -> Iterator[None]:
    """Turn Lightning's ``sys.exit`` after an interrupt or a SIGTERM into :class:`TrainingInterrupted`.

    Args:
        watch: the callback the trainer runs with.
        stage: ``training`` or ``the final evaluation``, for the message.
        module: the ``URDModule`` (its ``iteration`` says how far training got).
        where: the keyword arguments of :func:`continue_from`.
        cleanup: run before raising (ends the W&B run, which a later ``train`` in this process must not log into).
    """
    try:
        yield
    except SystemExit:
        if not (watch.seen or watch.terminated):
            raise
        cleanup()
        if watch.saved is not None:
            kept = f"the last checkpoint is {watch.saved}{_iteration_of(watch.saved, where['per_iteration'])}"
            resume: str | None = "resume=auto" if watch.saved.name.startswith("hpc_ckpt_") else "resume=last"
        else:
            kept, resume = continue_from(**where)
        signal = " (SIGTERM)" if watch.terminated else ""
        raise TrainingInterrupted(f"{stage} stopped after iteration {int(module.iteration)}{signal}: {kept}", resume,
                                  terminated=watch.terminated) from None
