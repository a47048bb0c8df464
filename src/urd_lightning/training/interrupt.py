"""Ctrl+C during training or the final evaluation: exit 130 with one line that says how to continue.

Lightning catches the ``KeyboardInterrupt`` inside ``fit``/``test``, shuts down (callbacks' ``on_exception``,
loggers finalised, DDP children killed) and then calls ``sys.exit(1)``, after printing "Detected KeyboardInterrupt,
attempting graceful shutdown". Here :class:`InterruptWatch` notes that the exception was an interrupt, and
:func:`interruption` turns Lightning's exit into :class:`TrainingInterrupted`, which the command line reports as
``interrupted: ...`` with exit code 130 (the shell's code for SIGINT), like any other interrupt.

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
from typing_extensions import override

from urd_lightning.checkpoint_io import load_checkpoint_file
from urd_lightning.errors import CheckpointError
from urd_lightning.run.folder import RunFolder


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped training; ``str()`` is the line for the user (where to continue from, and how).

    Args:
        where: what was interrupted and which checkpoint is kept.
        resume: the ``resume=...`` argument that continues the run, or None when there is nothing to continue.
    """

    def __init__(self, where: str, resume: str | None) -> None:
        self.where, self.resume = where, resume
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
    """Remembers whether ``fit``/``test`` ended in a ``KeyboardInterrupt`` (Lightning then exits with 1)."""

    def __init__(self) -> None:
        self.seen = False

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.seen = self.seen or isinstance(exception, KeyboardInterrupt)


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
    """Turn Lightning's ``sys.exit(1)`` after an interrupt into :class:`TrainingInterrupted`.

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
        if not watch.seen:
            raise
        cleanup()
        kept, resume = continue_from(**where)
        raise TrainingInterrupted(f"{stage} stopped after iteration {int(module.iteration)}: {kept}", resume) from None
