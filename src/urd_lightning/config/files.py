"""Where config files come from: the configs shipped in the package, with a user's folder layered on top.

The shipped configs (``default.yaml``, ``data/*.yaml``, ``experiment/*.yaml``) are package data, read through
:mod:`importlib.resources`, so an installed wheel works from any directory. In a source checkout
``src/urd_lightning/configs`` is a symlink to the repository's top-level ``configs/``, the one copy people read and
edit. A user's folder (``config_dir=PATH`` or ``URD_CONFIG_DIR``) adds files with the same layout: its
``data/<name>.yaml`` and ``experiment/<name>.yaml`` are found first (a same-named shipped file is shadowed, the
others stay available), and its ``default.yaml``, if any, is merged over the shipped one.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from urd_lightning.errors import ConfigError


def _shipped_configs() -> Traversable:
    packaged = files("urd_lightning") / "configs"
    if packaged.is_dir():
        return packaged
    # A checkout whose symlinks became plain files (Windows without core.symlinks): the repository's folder.
    return Path(__file__).resolve().parents[3] / "configs"


CONFIG_DIR = _shipped_configs()


def config_roots(user_dir: str | Path | None = None) -> list[Traversable]:
    """The folders searched for config files, first match wins: the user's folder (if any), then the shipped one.

    Args:
        user_dir: the ``config_dir=`` value; ``None`` falls back to the ``URD_CONFIG_DIR`` environment variable.

    Raises:
        ConfigError: the user's folder does not exist.
    """
    user_dir = user_dir or os.environ.get("URD_CONFIG_DIR") or None
    if user_dir is None:
        return [CONFIG_DIR]
    path = Path(user_dir).expanduser()
    if not path.is_dir():
        raise ConfigError(f"config_dir={user_dir}: no such folder (it holds your data/<name>.yaml and "
                          "experiment/<name>.yaml files; the shipped configs are always available)")
    return [path, CONFIG_DIR]


def config_names(kind: str, roots: list[Traversable]) -> list[str]:
    """The names available for ``kind`` (``data`` or ``experiment``) across ``roots``."""
    names = set()
    for root in roots:
        folder = root / kind
        if folder.is_dir():
            names.update(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    return sorted(names)


def find_config(kind: str, name: str, roots: list[Traversable]) -> Traversable | None:
    """The first ``<root>/<kind>/<name>.yaml`` that exists (``kind=""``: ``<root>/<name>.yaml``), else None."""
    for root in roots:
        candidate = (root / kind / f"{name}.yaml") if kind else (root / f"{name}.yaml")
        if candidate.is_file():
            return candidate
    return None


def load_yaml(path: Traversable) -> Any:
    """A YAML file (on disk or inside an installed package) as plain Python data.

    Raises:
        ConfigError: the file is not valid YAML, or holds a tag that is never executed (``!!python/...``), or an
            interpolation that cannot be resolved: one line with the file and the line.
    """
    try:
        with path.open("r", encoding="utf-8") as handle:
            return OmegaConf.to_container(OmegaConf.load(handle), resolve=True)
    except yaml.YAMLError as exc:
        mark, opened = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if opened is not None and mark is not None and opened.line != mark.line:
            problem += f", in what line {opened.line + 1} opened"
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix that line (YAML tags such as !!python/... are "
                          "never executed)") from None
    except OmegaConfBaseException as exc:
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"{path}: {msg}") from None


def read_dataset_file(dataset: str, user_dir: str | Path | None = None) -> dict[str, Any] | None:
    """``data/<dataset>.yaml`` from the user's folder or the shipped configs as a dict, or None if there is none."""
    path = find_config("data", dataset, config_roots(user_dir))
    loaded = load_yaml(path) if path is not None else None
    return loaded if isinstance(loaded, dict) else None


def dataset_categories(dataset: str, user_dir: str | Path | None = None) -> list[str]:
    """The categories of ``data/<dataset>.yaml``: its ``categories:`` table, in the file's order.

    The dataset files are the one list of each benchmark's categories; their order is the order of results tables
    (for MVTec AD the community's: the five textures, then the ten objects).

    Args:
        dataset: the dataset file's name.
        user_dir: the user's config folder layered over the shipped configs (``config_dir=``; default
            ``URD_CONFIG_DIR``).

    Raises:
        ConfigError: no such dataset file, or it has no ``categories:`` table.
    """
    loaded = read_dataset_file(dataset, user_dir)
    table = (loaded or {}).get("categories")
    if not table:
        where = f"data/{dataset}.yaml has no categories: table" if loaded else f"no data/{dataset}.yaml config"
        raise ConfigError(f"{where}; name the categories with categories=a,b,c")
    return [str(name) for name in table]


def order_categories(dataset: str, categories: list[str] | tuple[str, ...],
                     user_dir: str | Path | None = None) -> list[str]:
    """``categories`` (duplicates dropped) in the dataset file's order, then those it lacks alphabetically."""
    try:
        known = dataset_categories(dataset, user_dir)
    except ConfigError:
        known = []
    unique = list(dict.fromkeys(categories))
    return [c for c in known if c in unique] + sorted(c for c in unique if c not in known)


def key_descriptions(path: Traversable | None = None) -> dict[str, str]:
    """Each key's one-line comment in ``default.yaml`` (dotted keys): the description ``--help`` shows.

    The file is written one key per line, ``key: value  # description``, sections indented by two spaces; the
    comment is the one text a reader of the file and a reader of ``urd train --help`` see.
    """
    text = (path or CONFIG_DIR / "default.yaml").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    parents: list[str] = []
    for line in text.splitlines():
        match = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        parents = parents[:depth]
        key = ".".join([*parents, match.group(2)])
        _, sep, comment = match.group(3).partition(" #")
        if sep:
            found[key] = comment.strip()
        parents.append(match.group(2))
    return found
