"""Console logging and the experiment logger (W&B, CSV or none).

W&B runs through Lightning's ``WandbLogger``: online when the user is logged in, otherwise offline with a one-line
notice (``wandb sync`` uploads the run later). A W&B problem never kills a training run: if the logger cannot
start, training continues with a CSV logger and a warning.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from urd_lightning.errors import ConfigError

log = logging.getLogger("urd_lightning")


class _LightningNoise(logging.Filter):
    """Drops two Lightning info lines that mislead here.

    ``Trainer.fit stopped: max_steps=N`` counts optimizer steps, twice the URD iterations the user asked for (the
    summary says which iteration the run reached), and the LitLogger tip advertises a service unrelated to a run.
    """

    PREFIXES = ("`Trainer.fit` stopped: `max_steps=", "💡 Tip: For seamless cloud")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.PREFIXES)


def setup_console_logging(level: int = logging.INFO) -> None:
    """``urd_lightning`` messages on stderr, on rank zero only (other ranks only warn)."""
    # Lightning's rank-zero messages go through whichever of these two loggers was imported last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        lightning_info = logging.getLogger(name)
        if not any(isinstance(f, _LightningNoise) for f in lightning_info.filters):
            lightning_info.addFilter(_LightningNoise())
    logger = logging.getLogger("urd_lightning")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[urd] %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level if rank_zero_only.rank == 0 else logging.WARNING)
    logger.propagate = False


def _wandb_logged_in() -> bool:
    """Whether an API key is configured (environment or ~/.netrc), without contacting the server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(cfg: DictConfig) -> str:
    """The mode W&B will use: the config's, else ``WANDB_MODE``, else online when logged in, else offline."""
    if cfg.wandb.mode:
        return str(cfg.wandb.mode)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _wandb_logged_in() else "offline"


def require_logger_package(cfg: DictConfig) -> None:
    """Stop before any work when ``logger=wandb`` but wandb (an optional extra) is not installed."""
    if cfg.logger == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("logger=wandb needs the wandb package: pip install 'urd-lightning[wandb]' "
                          "(or choose logger=csv or logger=none)")


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger | bool:
    """The experiment logger named by ``cfg.logger`` (``wandb``, ``csv`` or ``none``).

    Args:
        cfg: the resolved config (its ``wandb`` block is used for W&B).
        run_dir: the run's results folder; CSV and offline W&B files go below it.

    Returns:
        A Lightning logger, or ``False`` for no logger.
    """
    require_logger_package(cfg)
    if cfg.logger == "none":
        return False
    csv = HistoryCSVLogger(save_dir=str(run_dir), name="logs", version="")
    if cfg.logger == "csv":
        return csv
    mode = wandb_mode(cfg)
    if mode == "offline":
        log.info("W&B: not logged in (or offline) - logging offline under %s/wandb; upload later with `wandb sync`.",
                 run_dir)
    try:
        logger = WandbLogger(
            project=cfg.wandb.project, entity=cfg.wandb.entity, name=f"{cfg.dataset}/{cfg.data.category}/{cfg.run}",
            id=_wandb_id(cfg), save_dir=str(run_dir), mode=mode, tags=list(cfg.wandb.tags) + [cfg.dataset],
            group=f"{cfg.dataset}-{cfg.model.injection}", job_type="train", resume="allow",
        )
        _ = logger.experiment  # start the run now (rank zero), so a W&B failure surfaces here, not mid-training
        logger.log_hyperparams(_plain(cfg))
        return logger
    except Exception as exc:  # noqa: BLE001 - any W&B failure must fall back, never stop training
        log.warning("W&B could not start (%s: %s); logging to CSV under %s instead.", type(exc).__name__, exc, run_dir)
        return csv


def _wandb_id(cfg: DictConfig) -> str:
    # Deterministic, so a resumed run (or every DDP rank) addresses the same W&B run.
    return f"{cfg.dataset}-{cfg.data.category}-{cfg.run}".replace("/", "-")[:120]


def _plain(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def log_summary(logger: Logger | bool, values: dict[str, Any]) -> None:
    """Per-run summary values (final metrics, oracle, durations) in the experiment logger; never raises."""
    if isinstance(logger, WandbLogger):
        try:
            if rank_zero_only.rank == 0:
                logger.experiment.summary.update(values)
        except Exception as exc:  # noqa: BLE001 - a W&B problem never kills a run
            log.warning("W&B summary update failed (%s).", exc)


# --- CSV history across resumes (issue 14) ---

class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps an existing ``metrics.csv``: a resumed run appends to it.

    (Lightning deletes the file when the folder is reused, so after ``resume=`` only the resumed part was left.)
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        if self._fs.isfile(self.metrics_file_path):  # continue with the earlier columns (new ones rewrite the header)
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        return None


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the whole history of a run, before and after a resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (made on first use, on rank zero), keeping the earlier rows."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
