"""Console logging and the experiment logger (W&B, TensorBoard, CSV or none).

W&B runs through Lightning's ``WandbLogger``: online when the user is logged in, otherwise offline with a one-line
notice (``wandb sync`` uploads the run later). A W&B problem never kills a training run: if the logger cannot
start, training continues with a CSV logger and a warning.
"""

from __future__ import annotations

import importlib.util
import logging
import netrc
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from typing_extensions import override

from urd_lightning.errors import ConfigError
from urd_lightning.files import write_atomic
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.history import HistoryCSVLogger

log = logging.getLogger("urd_lightning")
WANDB_ID_FILE = "wandb_run_id.txt"  # the W&B run of this run folder's current training attempt


class _LightningNoise(logging.Filter):
    """Drops three Lightning info lines that mislead here.

    ``Trainer.fit stopped: max_steps=N`` counts optimizer steps, twice the URD iterations the user asked for (the
    summary says which iteration the run reached), the LitLogger tip advertises a service unrelated to a run, and
    "Detected KeyboardInterrupt" precedes an exit code that train() replaces (``interrupt.py``: one line, 130).
    """

    PREFIXES = ("`Trainer.fit` stopped: `max_steps=", "💡 Tip: For seamless cloud", "\nDetected KeyboardInterrupt")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.PREFIXES)


# Third-party warnings that every run printed and that say nothing about the run; matched by their exact text.
# Lightning's own pytree helper builds torch's deprecated LeafSpec (lightning/pytorch/utilities/_pytree.py).
KNOWN_HARMLESS = (("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                   "treespec.is_leaf()` instead.", FutureWarning),)


def silence_known_warnings() -> None:
    """Ignore exactly the :data:`KNOWN_HARMLESS` warnings (any other warning still shows)."""
    for message, category in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=re.escape(message) + "$", category=category)


class BarSafeHandler(logging.StreamHandler):
    """Writes each line above an active tqdm progress bar (``tqdm.write``) instead of into it."""

    def emit(self, record: logging.LogRecord) -> None:
        """One formatted line through ``tqdm.write`` (plain output when no bar is active)."""
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)


def setup_console_logging(level: int = logging.INFO) -> None:
    """``urd_lightning`` messages on stderr, on rank zero only (other ranks only warn)."""
    silence_known_warnings()
    # Lightning's rank-zero messages go through whichever of these two loggers was imported last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        lightning_info = logging.getLogger(name)
        if not any(isinstance(f, _LightningNoise) for f in lightning_info.filters):
            lightning_info.addFilter(_LightningNoise())
    logger = logging.getLogger("urd_lightning")
    if not logger.handlers:
        handler = BarSafeHandler()
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


# Optional logger packages (extras of the wheel; `make install` installs them): logger value -> (module, extra).
LOGGER_PACKAGES = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}


def require_logger_package(cfg: DictConfig) -> None:
    """Stop before any work when the chosen logger's package (an optional extra) is not installed.

    W&B is the default logger but an extra: without it the run logs to CSV (:func:`build_logger`), so that a bare
    ``pip install urd-lightning`` trains.
    """
    module, extra = LOGGER_PACKAGES.get(str(cfg.logger), (None, None))
    if module is not None and module != "wandb" and importlib.util.find_spec(module) is None:
        raise ConfigError(f"logger={cfg.logger} needs the {module} package: pip install 'urd-lightning[{extra}]' "
                          "(or choose logger=csv or logger=none)")


def build_logger(cfg: DictConfig, run_dir: Path, resumed_at: int | None = None) -> Logger | bool:
    """The experiment logger named by ``cfg.logger`` (``wandb``, ``tensorboard``, ``csv`` or ``none``).

    Args:
        cfg: the resolved config (its ``wandb`` block is used for W&B).
        run_dir: the run's results folder; CSV and offline W&B files go below it.
        resumed_at: the URD iteration of the checkpoint training continues from (``resume=``, a requeued SLURM job):
            continue that attempt's W&B run and CSV history (``history.py``). None: a new attempt gets a new W&B run
            and a new ``metrics.csv``.

    Returns:
        A Lightning logger, or ``False`` for no logger.
    """
    require_logger_package(cfg)
    if cfg.logger == "none":
        return False
    csv = HistoryCSVLogger(resumed_at, save_dir=str(run_dir), name=RunFolder.LOGS, version="")
    if cfg.logger == "csv":
        return csv
    if cfg.logger == "wandb" and importlib.util.find_spec("wandb") is None:
        log.info("W&B is not installed: logging to CSV under %s/logs; to log to W&B, pip install "
                 "'urd-lightning[wandb]' (logger=csv says CSV without this line)", run_dir)
        return csv
    if cfg.logger == "tensorboard":  # for clusters without W&B: `tensorboard --logdir <run>/tensorboard`
        return IterationTensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="",
                                          default_hp_metric=False)
    mode = wandb_mode(cfg)
    if mode == "offline":
        log.info("W&B: not logged in (or offline) - logging offline under %s/wandb; upload later with `wandb sync`.",
                 run_dir)
    run_id = _wandb_id(run_dir, resuming=resumed_at is not None)
    for attempt in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            logger = _wandb_logger(cfg, run_dir, attempt, run_id)
            _ = logger.experiment  # start the run now (rank zero), so a W&B failure surfaces here, not mid-training
            if rank_zero_only.rank == 0:
                # The run's own id: the one given, or under a sweep agent the agent's (WANDB_RUN_ID).
                write_atomic(run_dir / WANDB_ID_FILE, str(logger.experiment.id) + "\n")
                # One x-axis for everything (losses, evaluations, images): the URD iteration, which the module logs
                # with every value. Lightning's default axis, global_step, counts both optimizers' steps.
                logger.experiment.define_metric("iteration")
                logger.experiment.define_metric("*", step_metric="iteration", step_sync=True)
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


def _wandb_logger(cfg: DictConfig, run_dir: Path, mode: str, run_id: str) -> WandbLogger:
    import wandb  # deferred: only W&B runs pay for its import

    # init_timeout bounds the wait for the server: a configured key without network otherwise stalls ~100 s.
    settings = wandb.Settings(init_timeout=float(cfg.wandb.init_timeout))
    logger = WandbLogger(
        project=cfg.wandb.project, entity=cfg.wandb.entity, name=f"{cfg.dataset}/{cfg.data.category}/{cfg.run}",
        id=run_id, save_dir=str(run_dir), mode=mode, tags=list(cfg.wandb.tags) + [cfg.dataset],
        group=f"{cfg.dataset}-{cfg.model.injection}", job_type="train", resume="allow", settings=settings,
    )
    # WandbLogger always passes anonymous=None, which wandb 0.31 answers with a deprecation line on every run; the
    # argument has no effect, so it is not passed at all.
    logger._wandb_init.pop("anonymous", None)
    return logger


def _wandb_id(run_dir: Path, resuming: bool) -> str | None:
    """The W&B run id: the stored one when training resumes, else a new one (stored for a later resume).

    A rerun of a finished config is a new attempt: it must neither append to the old W&B run nor be refused because
    that run was deleted on the server. Only rank zero starts W&B, so only rank zero writes the file. Under a sweep
    agent (``WANDB_SWEEP_ID``) the agent has chosen the run (``WANDB_RUN_ID``): None, so W&B keeps it, and
    :func:`build_logger` records that id once the run has started.
    """
    if os.environ.get("WANDB_SWEEP_ID"):
        return None
    stored = run_dir / WANDB_ID_FILE
    if resuming and stored.is_file() and stored.read_text().strip():
        return stored.read_text().strip()
    run_id = uuid.uuid4().hex[:8]  # W&B's own ids are 8 characters of [a-z0-9]
    if rank_zero_only.rank == 0:
        write_atomic(stored, run_id + "\n")
    return run_id


class IterationTensorBoardLogger(TensorBoardLogger):
    """TensorBoard with the URD iteration as the step of every scalar, as in W&B (the keys are the same).

    Lightning passes its ``global_step``, which counts both optimizers' steps; every value the module logs carries
    ``iteration``, which becomes the step (so the periodic evaluation of iteration k is plotted at k).
    """

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        iteration = metrics.pop("iteration", None)
        super().log_metrics(metrics, step=int(iteration) if iteration is not None else step)


def _plain(cfg: DictConfig) -> dict[str, Any]:
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def finish(logger: Logger | bool) -> None:
    """End the W&B run (flushes it; a later ``train`` in this process must not log into it); never raises."""
    if isinstance(logger, WandbLogger) and rank_zero_only.rank == 0:
        try:
            logger.experiment.finish()
        except Exception as exc:  # noqa: BLE001 - a W&B problem never kills a run
            log.warning("W&B finish failed (%s).", exc)


def log_summary(logger: Logger | bool, values: dict[str, Any]) -> None:
    """Per-run summary values (final metrics, oracle, durations) in the experiment logger; never raises."""
    if isinstance(logger, WandbLogger):
        try:
            if rank_zero_only.rank == 0:
                logger.experiment.summary.update(values)
        except Exception as exc:  # noqa: BLE001 - a W&B problem never kills a run
            log.warning("W&B summary update failed (%s).", exc)
