"""``logs/metrics.csv`` (``logger=csv``, and the fallback when W&B cannot start): one run attempt's rows, each once.

- A resumed attempt (``resume=last``/``auto``/a path that found a checkpoint) keeps the earlier rows, except those
  logged after the checkpoint it continues from: training re-runs those iterations and logs them again. (Lightning
  deletes the file when a folder is reused, so without this only the resumed part would be left.)
- A fresh attempt in the same run folder (a finished config run again, or ``resume=auto`` without a checkpoint)
  starts a new file; the earlier one is moved aside to ``metrics.<n>.csv``, never deleted.

Which rows come after the checkpoint: every row carries ``iteration``, the URD iteration it belongs to (the module
logs it with every value). Lightning's ``step`` column counts training batches, i.e. URD iterations, not its
optimizer steps (``global_step``, two per iteration), and it is 0-based: the rows of iteration ``i`` have step
``i - 1``. A checkpoint at global step ``g`` holds iteration ``k = g // steps_per_iteration``, saved at the end of
that iteration, so rows of iterations up to ``k`` stay and later ones go.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from urd_lightning.files import write_atomic

log = logging.getLogger("urd_lightning")


def _aside_name(path: Path) -> Path:
    """``metrics.<n>.csv`` with the lowest free ``n`` (1, 2, ...)."""
    n = 1
    while (aside := path.with_name(f"{path.stem}.{n}{path.suffix}")).exists():
        n += 1
    return aside


def _iteration_of(row: dict[str, str]) -> float | None:
    """The URD iteration of a row: its ``iteration`` value, else (files from before that column) ``step + 1``."""
    for key, offset in (("iteration", 0), ("step", 1)):
        try:
            return float(row[key]) + offset
        except (KeyError, TypeError, ValueError):
            continue
    return None


def keep_rows_until(path: Path, iteration: int) -> tuple[list[str], int]:
    """Drop the rows of ``path`` logged after ``iteration``; returns the header and how many rows were dropped."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = list(reader.fieldnames or []), list(reader)
    kept = [row for row in rows if (_iteration_of(row) or 0) <= iteration]
    if len(kept) < len(rows):
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(kept)
        write_atomic(path, text.getvalue())
    return header, len(rows) - len(kept)


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, starting from the kept rows of a resumed attempt or from an empty file."""

    def __init__(self, log_dir: str, resumed_at: int | None) -> None:
        super().__init__(log_dir=log_dir)
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if resumed_at is None:
            aside = _aside_name(path)
            os.replace(path, aside)
            log.info("a fresh start (no checkpoint resumed): the earlier %s was moved to %s", path, aside.name)
            return
        self.metrics_keys, dropped = keep_rows_until(path, resumed_at)  # new columns later rewrite the header
        if dropped:
            log.info("%s: %d row(s) logged after iteration %d dropped (the resume logs those iterations again)",
                     path, dropped, resumed_at)

    def _check_log_dir_exists(self) -> None:
        return None  # Lightning's version deletes metrics.csv; what to keep is decided above


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` holds one attempt's history, continued across resumes, each row once.

    Args:
        resumed_at: the URD iteration of the checkpoint training continues from; None for a fresh attempt.
        **kwargs: ``CSVLogger``'s arguments.
    """

    def __init__(self, resumed_at: int | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.resumed_at = resumed_at

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (made on first use, on rank zero)."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir, resumed_at=self.resumed_at)
        return self._experiment
