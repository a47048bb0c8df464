"""What makes two runs the same run: every config key except the ones that say how or where it executes.

A run is named by its identity (``<injection>-s<seed>-<hash>`` unless ``run=`` names it), and ``train``, ``test``,
``benchmark`` and ``report`` all use this one definition: ``resume=last`` after switching the logger, the loader
workers, the device count or a cache folder continues the same folder; the benchmark skips a finished category only
when its identity matches; a run name that already holds another identity is refused (``folder.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from urd_lightning.errors import ConfigError

# Keys that say where or how a run executes, is logged or is resumed, not what is trained and measured: they change
# neither the run name nor whether a folder holds "the same run". A key names itself and everything below it.
# The device count is here so that a SLURM array (trainer.devices=1) and its --report-only job agree on the run;
# a DDP run changes the effective batch size, so give it its own run= when comparing. data.dtd_root only says where
# DTD lies; whether DTD or procedural textures were used is data.textures, which is identity.
EXECUTION_KEYS = (
    "run", "resume", "ckpt", "output_dir", "config_dir", "overwrite", "logger", "wandb", "checkpoint_every_n_steps",
    "data.root", "data.dtd_root", "data.cache_dir", "data.pixel_cache_dir", "data.num_workers", "data.eval_batch_size",
    "eval.num_samples", "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "trainer.enable_progress_bar", "trainer.log_every_n_steps", "trainer.max_time",
    "batched_eval_forwards", "compile",  # how fast, not what is computed
    "runtime",  # the block config.yaml adds: what the hardware resolved, recorded, never asked for
)  # fmt: skip
MAX_NAME = 120  # bytes (UTF-8); below every file system's 255-byte limit for one name, with room for suffixes
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")  # separators (POSIX and Windows) and control characters


def is_execution_key(key: str) -> bool:
    """Whether the dotted ``key`` is (or lies under) one of :data:`EXECUTION_KEYS`."""
    return any(key == k or key.startswith(k + ".") for k in EXECUTION_KEYS)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"dotted.key": value}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def identity(config: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """The run's identity: every flattened key of ``config`` (resolved) that is not an execution key."""
    plain = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    assert isinstance(plain, dict)
    return {key: value for key, value in flatten(plain).items() if not is_execution_key(key)}


def identity_diff(saved: DictConfig | dict[str, Any], now: DictConfig | dict[str, Any]) -> list[str]:
    """The identity keys whose values differ between two configs (e.g. a run's ``config.yaml`` and a new config)."""
    a, b = identity(saved), identity(now)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def check_name(value: Any, key: str) -> str:
    """``value`` as one safe path component, or a ConfigError naming ``key``.

    A name becomes one folder under ``output_dir``: not empty, no path separator or control character (so not
    absolute and no ``..`` step), not starting with ``.`` (hidden, ``.`` and ``..``), at most :data:`MAX_NAME`
    bytes. Checked before any folder is made.
    """
    name = str(value)
    if len(name.encode()) > MAX_NAME:
        raise ConfigError(f"{key}= is {len(name.encode())} bytes long; a name that becomes a folder may have at "
                          f"most {MAX_NAME}")
    if not name or name.startswith(".") or _UNSAFE.search(name):
        raise ConfigError(f"{key}={name!r} cannot be a folder name: give one name without '/', '\\' or a leading "
                          "'.' (e.g. run=base); it becomes <output_dir>/<dataset>/<category>/<run>")
    return name


def run_name(cfg: DictConfig) -> str:
    """``run=``, else ``URD_RUN``, else ``<injection>-s<seed>-<hash of the identity>`` (the same on every rank).

    Raises:
        ConfigError: the run, dataset or category name is not one safe path component.
    """
    check_name(cfg.dataset, "dataset")
    check_name(cfg.data.category, "data.category")
    given = cfg.run or os.environ.get("URD_RUN")
    if given:
        return check_name(given, "run" if cfg.run else "URD_RUN")
    digest = hashlib.sha1(repr(sorted(identity(cfg).items())).encode()).hexdigest()[:8]
    return f"{cfg.model.injection}-s{cfg.seed}-{digest}"
