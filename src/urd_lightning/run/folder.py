"""The run folder: its layout, its lock, its one store of training state, and the rule for reusing its name.

``<output_dir>/<dataset>/<category>/<run>/`` (docs/design.md, "results") holds::

    config.yaml         the resolved config and the runtime block (how it ran)
    .lock               held (flock) by the training that writes here; a dead process holds nothing
    checkpoints/last.ckpt
    hpc_ckpt_<N>.ckpt   a SLURM preemption's checkpoint (training/preemption.py), until the run finishes
    train_state.json    steps, training time and every periodic evaluation (the one store of those rows)
    metrics.json        the results; test_metrics.json: the ``test`` command's
    images/             picture panels; roc_curve.png, pro_curve.png
    logs/metrics.csv    with logger=csv (or when W&B cannot start)

A benchmark's reports go to ``<output_dir>/<dataset>/_reports/<run>/`` and a replaced run (``overwrite=true``) to
``<output_dir>/<dataset>/<category>/_replaced/<run>.<n>/``: folders starting with ``_`` are never read as runs.
:class:`RunFolder` is the only code that joins these names; everything else asks it for a path.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from urd_lightning.errors import ConfigError, URDError
from urd_lightning.files import write_atomic
from urd_lightning.run.identity import identity

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second run in the same folder
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("urd_lightning")
REPORTS_DIRNAME = "_reports"
REPLACED_DIRNAME = "_replaced"


class RunFolderInUse(URDError):
    """Another process is training into the same run folder."""


class RunLock:
    """An exclusive ``flock`` on ``<run>/.lock``: the kernel drops it when the holder exits, however it exits."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path, self.holder = path, holder
        self._handle: IO[str] | None = None
        self._created: list[Path] = []  # the folders acquire() made, deepest first

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunFolderInUse` naming the process that holds it."""
        missing = self.path.parent
        while not missing.exists():
            self._created.append(missing)
            missing = missing.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                first = handle.read().strip() or "another process"
                handle.close()
                raise RunFolderInUse(f"{self.path.parent} is in use by another training ({first}); wait for it to "
                                     "end, or give this one another run= or output_dir=") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{self.holder}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        """Let the next run in (closing the file drops the lock).

        A run that stopped before writing anything (bad data, a refused input) leaves no folder behind: when the run
        folder holds only the lock, the lock file and the folders :meth:`acquire` made are removed again.
        """
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._created and [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
            self.path.unlink(missing_ok=True)
            for folder in self._created:
                try:
                    folder.rmdir()
                except OSError:  # not empty (another run's files): keep it
                    break


class RunFolder:
    """One run's folder and the name of everything in it.

    Args:
        path: ``<output_dir>/<dataset>/<category>/<run>``; :meth:`of` computes it from a config.
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    TEST_METRICS = "test_metrics.json"
    TRAIN_STATE = "train_state.json"
    CHECKPOINTS = "checkpoints"
    LAST = "last.ckpt"
    IMAGES = "images"
    LOGS = "logs"
    LOCK = ".lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def at(cls, output_dir: str | Path, dataset: str, category: str, run: str) -> RunFolder:
        """``<output_dir>/<dataset>/<category>/<run>`` (the names were checked by ``run.identity.run_name``)."""
        return cls(Path(output_dir) / str(dataset) / str(category) / str(run))

    @classmethod
    def of(cls, cfg: DictConfig) -> RunFolder:
        """The folder of a loaded config."""
        return cls.at(cfg.output_dir, cfg.dataset, cfg.data.category, cfg.run)

    @classmethod
    def holding(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run folder whose ``checkpoints/`` holds ``checkpoint``, or None for a file elsewhere."""
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent.parent) if checkpoint.parent.name == cls.CHECKPOINTS else None

    # ---- the layout ---------------------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved config and the runtime block."""
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the results."""
        return self.path / self.METRICS

    @property
    def test_metrics(self) -> Path:
        """``test_metrics.json``: what the ``test`` command measured."""
        return self.path / self.TEST_METRICS

    @property
    def train_state(self) -> Path:
        """``train_state.json``: the one store of steps, training time and periodic rows."""
        return self.path / self.TRAIN_STATE

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``."""
        return self.path / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.ckpt``."""
        return self.checkpoints / self.LAST

    @property
    def images(self) -> Path:
        """``images/``: the picture panels."""
        return self.path / self.IMAGES

    @property
    def logs(self) -> Path:
        """``logs/``: the CSV history."""
        return self.path / self.LOGS

    @property
    def reports(self) -> Path:
        """``<output_dir>/<dataset>/_reports/<run>``: the table, plots and logs of this run name's benchmark."""
        return self.path.parent.parent / REPORTS_DIRNAME / self.path.name

    def curve(self, kind: str) -> Path:
        """``roc_curve.png`` or ``pro_curve.png``."""
        return self.path / f"{kind}_curve.png"

    @property
    def curves_data(self) -> Path:
        """``curves.json``: the final evaluation's ROC/PRO vertices, which ``report`` overlays across categories."""
        return self.path / "curves.json"

    def is_finished(self) -> bool:
        """Whether the run wrote its results."""
        return self.metrics.is_file()

    # ---- the one store of training state ------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        """``train_state.json`` (``{"steps", "train_s", "periodic": [rows]}``), empty when absent or unreadable."""
        try:
            state = json.loads(self.train_state.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def periodic_rows(self, until: int) -> list[dict[str, Any]]:
        """The stored periodic evaluations of iterations up to ``until`` (a resume repeats the later ones)."""
        rows = self.read_state().get("periodic") or []
        return sorted((row for row in rows if int(row["step"]) <= until), key=lambda row: int(row["step"]))

    def write_state(self, periodic: list[dict[str, Any]], steps: int | None = None,
                    train_s: float | None = None) -> None:
        """Store the periodic rows (after each evaluation) and, at the end of training, steps and training time."""
        state: dict[str, Any] = {"periodic": list(periodic)}
        if steps is not None:
            state.update(steps=int(steps), train_s=float(train_s or 0.0))
        write_atomic(self.train_state, json.dumps(state) + "\n")

    def clear_state(self) -> None:
        """A fresh attempt: an earlier attempt's rows are not this run's."""
        self.train_state.unlink(missing_ok=True)

    # ---- reusing a name -----------------------------------------------------------------------------------------
    def saved_config(self) -> dict[str, Any] | None:
        """The ``config.yaml`` of an earlier attempt, or None (absent or unreadable)."""
        if not self.config.is_file():
            return None
        try:
            saved = OmegaConf.to_container(OmegaConf.load(self.config), resolve=False)
        except Exception:  # noqa: BLE001 - a damaged file is no evidence of another config
            return None
        return saved if isinstance(saved, dict) else None

    def differences(self, cfg: DictConfig) -> list[tuple[str, Any, Any]]:
        """``(key, saved value, new value)`` for each identity key in which this folder's run differs from ``cfg``."""
        saved = self.saved_config()
        if saved is None:
            return []
        before, now = identity(saved), identity(cfg)
        return [(key, before.get(key), now.get(key)) for key in sorted(before.keys() | now.keys())
                if before.get(key) != now.get(key)]

    def check_reuse(self, cfg: DictConfig, resuming: bool) -> list[tuple[str, Any, Any]]:
        """Refuse to start another config's run afresh in this folder, unless ``overwrite=true``.

        Continuing (``resume=``) is always allowed: the user asks for this run's checkpoint. Returns the differences
        that ``overwrite=true`` accepted (then :meth:`move_aside` must run before anything is written).

        Raises:
            ConfigError: one line naming up to two differing keys and the two ways on.
        """
        diff = [] if resuming else self.differences(cfg)
        if diff and not cfg.get("overwrite", False):
            shown = "; ".join(f"{key}: {old} here, {new} now" for key, old, new in diff[:2])
            more = f" and {len(diff) - 2} more" if len(diff) > 2 else ""
            raise ConfigError(f"run={self.path.name} already holds a run of another config in {self.path} ({shown}"
                              f"{more}); choose another run=, or pass overwrite=true to move that run to "
                              f"{self.path.parent / REPLACED_DIRNAME}/ and start this one")
        return diff

    def move_aside(self) -> Path:
        """Move the whole folder to ``<category>/_replaced/<run>.<n>`` (nothing deleted); returns where."""
        parent = self.path.parent / REPLACED_DIRNAME
        parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while (aside := parent / f"{self.path.name}.{n}").exists():
            n += 1
        os.replace(self.path, aside)
        log.info("overwrite=true: the earlier run of another config was moved to %s", aside)
        return aside

    def lock(self, holder: str) -> RunLock:
        """Take this folder's lock for one training (see :class:`RunLock`)."""
        return RunLock(self.path / self.LOCK, holder).acquire()


def category_log(reports: Path, category: str) -> Path:
    """``<reports>/logs/<category>.log``: the output of one category's training in a benchmark."""
    return reports / RunFolder.LOGS / f"{category}.log"
