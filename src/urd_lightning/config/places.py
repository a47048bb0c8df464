"""Where the caches go: ``data.cache_dir`` and ``data.pixel_cache_dir``, settled when the config is loaded.

The defaults (``.cache/urd/foreground``, ``.cache/urd/pixels``) are relative to the current folder, so that a
project keeps its caches beside its ``results/`` and ``datasets/``. When the current folder cannot be written (a
read-only checkout, a job started in a read-only folder), a default cache moves to the user's cache folder,
``$XDG_CACHE_HOME/urd/<name>`` or ``~/.cache/urd/<name>``, with one info line saying so. A cache folder the user
gave (any other value, wherever set, or the default spelled out on the command line or in an experiment) is never
moved: when it cannot be written, that is one line naming the key, before anything is built. The caches are
execution keys (``run/identity.py``): where they live does not change a run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from urd_lightning.config.schema import DataConfig
from urd_lightning.errors import OutputError
from urd_lightning.files import ensure_writable

log = logging.getLogger("urd_lightning")

CACHE_KEYS = ("cache_dir", "pixel_cache_dir")
_said: set[str] = set()  # a benchmark loads one config per category: the line is said once per process


def user_cache_root() -> Path:
    """``$XDG_CACHE_HOME/urd``, else ``~/.cache/urd`` (the XDG base-directory rule: a relative value is ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache") / "urd"


def place_caches(data: DictConfig, given: set[str]) -> None:
    """Set each default cache folder of ``data`` that cannot be written to the user's cache folder.

    Args:
        data: the config's ``data`` section (changed in place).
        given: the ``data.*`` keys set on the command line or in an experiment (a value other than the default
            counts as given wherever it was set).

    Raises:
        OutputError: a cache folder the user gave cannot be written, or neither the default nor the user's cache
            folder can.
    """
    moved: list[str] = []
    reason = ""
    for key in CACHE_KEYS:
        value, default = data[key], getattr(DataConfig, key)
        if value is None:  # the cache is off
            continue
        if value != default or f"data.{key}" in given:
            ensure_writable(value, f"data.{key}")  # the user's own choice: an error, never a silent move
            continue
        try:
            ensure_writable(value, f"data.{key}")
            continue
        except OutputError as exc:
            reason = getattr(exc.__cause__, "strerror", None) or "cannot be written"
        fallback = user_cache_root() / Path(default).name
        try:
            ensure_writable(fallback, f"data.{key}")
        except OutputError as exc:
            raise OutputError(f"data.{key}: neither {Path.cwd() / default} ({reason}) nor {fallback} can be written; "
                              f"give data.{key}=<a folder you can write to>") from exc
        data[key] = str(fallback)
        moved.append(f"data.{key}={fallback}")
    if moved:
        line = (f"the current folder {Path.cwd()} cannot hold the caches ({reason}), so they go to "
                f"{', '.join(moved)}; set those keys to choose another place")
        if line not in _said:
            _said.add(line)
            log.info(line)
