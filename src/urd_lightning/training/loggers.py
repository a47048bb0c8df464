"""Console logging and the experiment logger (W&B, CSV or none).

W&B runs through Lightning's ``WandbLogger``: online when the user is logged in, otherwise offline with a one-line
notice (``wandb sync`` uploads the run later). A W&B problem never kills a training run: if the logger cannot
start, training continues with a CSV logger and a warning.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

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


def build_logger(cfg: DictConfig, run_dir: Path) -> Logger | bool:
    """The experiment logger named by ``cfg.logger`` (``wandb``, ``csv`` or ``none``).

    Args:
        cfg: the resolved config (its ``wandb`` block is used for W&B).
        run_dir: the run's results folder; CSV and offline W&B files go below it.

    Returns:
        A Lightning logger, or ``False`` for no logger.
    """
    if cfg.logger == "none":
        return False
    csv = CSVLogger(save_dir=str(run_dir), name="logs", version="")
    if cfg.logger == "csv":
        return csv
    mode = wandb_mode(cfg)
    if mode == "offline":
        log.info("W&B: not logged in (or offline) - logging offline under %s/wandb; upload later with `wandb sync`.",
                 run_dir)
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            logger = _wandb_logger(cfg, run_dir, attempt)
            _ = logger.experiment  # start the run now (rank zero), so a W&B failure surfaces here, not mid-training
            logger.log_hyperparams(_plain(cfg))
            return logger
        except Exception as exc:  # noqa: BLE001 - any W&B failure must fall back, never stop training
            if attempt == "online":
                # A key but no network (compute nodes): still a W&B run, offline, that `wandb sync` uploads later.
                log.warning("W&B could not start online within wandb.init_timeout=%ss (%s); logging offline under "
                            "%s/wandb instead (upload later with `wandb sync`).", cfg.wandb.init_timeout,
                            type(exc).__name__, run_dir)
                import wandb  # deferred as in _wandb_logger

                wandb.teardown()  # the failed attempt still holds the run id in W&B's service process
                continue
            log.warning("W&B could not start (%s: %s); logging to CSV under %s instead.", type(exc).__name__, exc,
                        run_dir)
    return csv


def _wandb_logger(cfg: DictConfig, run_dir: Path, mode: str) -> WandbLogger:
    import wandb  # deferred: only W&B runs pay for its import

    # init_timeout bounds the wait for the server: a configured key without network otherwise stalls ~100 s.
    settings = wandb.Settings(init_timeout=float(cfg.wandb.init_timeout))
    return WandbLogger(
        project=cfg.wandb.project, entity=cfg.wandb.entity, name=f"{cfg.dataset}/{cfg.data.category}/{cfg.run}",
        id=_wandb_id(cfg), save_dir=str(run_dir), mode=mode, tags=list(cfg.wandb.tags) + [cfg.dataset],
        group=f"{cfg.dataset}-{cfg.model.injection}", job_type="train", resume="allow", settings=settings,
    )


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
