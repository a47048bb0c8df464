"""Typed configuration: the schema, loading with overrides, and ``print-config``.

Layers, later wins: ``configs/default.yaml`` ← ``configs/data/<dataset>.yaml`` (its ``data:`` block, optional
``model:``/``trainer:`` blocks, and the ``categories:`` table of the authors' per-category budgets, docs/method.md)
← optional ``configs/experiment/<name>.yaml`` ← ``key=value`` dotlist (the form W&B's ``${args_no_hyphens}`` gives).
The files are the package's (``files.py``), with a user's ``config_dir=PATH`` (or ``URD_CONFIG_DIR``) folder
of ``data/`` and ``experiment/`` files layered on top. Loading is pure — the same argv gives the same config on every
DDP rank, so no timestamps or prompts here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from urd_lightning.config.augment import resolve_augment
from urd_lightning.config.cli import (
    HELP_FLAGS,
    Arguments,
    Command,
    HelpRequested,
    closest,
    help_text,
    parse_command_line,
)
from urd_lightning.config.files import CONFIG_DIR, config_names, config_roots, find_config, key_descriptions, load_yaml
from urd_lightning.config.places import place_caches
from urd_lightning.config.ranges import check_ranges
from urd_lightning.config.schema import Config, key_types
from urd_lightning.config.textures import resolve_textures
from urd_lightning.errors import ConfigError
from urd_lightning.run.identity import run_name

__all__ = ["CONFIG_DIR", "Config", "load_config", "print_config_main", "read_command_line", "run_name", "to_yaml"]


RAW_STRING_KEYS = ("dataset", "experiment", "run", "data.category", "config_dir")
CHOICES = {
    "logger": ("wandb", "tensorboard", "csv", "none"),
    "loss_variant": ("head", "first_commit"),
    "model.injection": ("concat", "gii", "none"),
    "data.resize": ("pil", "cv2"),
    "data.textures": ("auto", "dtd", "procedural", "none"),
    "data.foreground": ("auto", "none", "otsu", "grabcut"),
}


def _schema_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in node.keys():
        full = f"{prefix}{key}"
        out[full] = node[key]
        if isinstance(node[key], DictConfig):
            out.update(_schema_keys(node[key], full + "."))
    return out


def _check_keys(values: dict[str, Any], schema: DictConfig, source: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``values`` that the schema lacks, with the closest valid keys."""
    valid = _schema_keys(schema)
    for key, value in values.items():
        full = f"{prefix}{key}"
        if full not in valid:
            raise ConfigError(f"unknown config key '{full}' in {source}.{closest(full, valid)} `print-config` lists "
                              "the valid keys.")
        if isinstance(valid[full], DictConfig) and not isinstance(value, dict):
            inside = [k for k in valid if k.startswith(full + ".")]
            raise ConfigError(f"'{full}={value}' in {source}: {full} is a section of keys, not a value; set one of "
                              f"them, e.g. {inside[0]}=... (`print-config` lists them)")
        if isinstance(value, dict) and isinstance(valid[full], DictConfig):
            _check_keys(value, schema, source, full + ".")


def _read_yaml(path: Traversable | None, what: str, options: list[str], name: str = "") -> dict[str, Any]:
    if path is None:
        raise ConfigError(f"no {what} config '{name}'; choose one of: {', '.join(options) or '(none found)'}, "
                          f"or add your own {name}.yaml under config_dir=PATH")
    loaded = load_yaml(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, not {type(loaded).__name__}")
    return loaded


def _dotlist(argv: list[str]) -> dict[str, Any]:
    for item in argv:
        if "=" not in item or item.startswith("-"):
            raise ConfigError(f"argument {item!r} is not of the form key=value (e.g. data.category=bottle)")
    try:
        values: dict[str, Any] = OmegaConf.to_container(OmegaConf.from_dotlist(argv))  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse command-line overrides {argv}: {exc}") from exc
    for item in argv:  # names stay text: BTAD's category "01" must not become the integer 1
        key, raw = item.split("=", 1)
        if key in RAW_STRING_KEYS:
            node = values
            *parents, leaf = key.split(".")
            for part in parents:
                node = node[part]
            node[leaf] = raw
    return values


def _merge(cfg: DictConfig, values: dict[str, Any], source: str) -> DictConfig:
    _check_keys(values, cfg, source)
    try:
        return OmegaConf.merge(cfg, values)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "?"
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"invalid value for '{key}' in {source}: {msg}") from exc


def _check_interpolations(cfg: DictConfig) -> None:
    """Resolve every ``${...}`` once, so a broken one is one line naming its key, before anything reads it."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", "") or "?"
        raw: Any = OmegaConf.to_container(cfg, resolve=False)  # the value as given, ${...} and all
        for part in str(key).split("."):
            raw = raw.get(part, "?") if isinstance(raw, dict) else "?"
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        raise ConfigError(f"cannot resolve '{key}={raw}': {msg}; give {key} a plain value, or an interpolation "
                          "of an existing key (${data.category}) or a set variable (${oc.env:NAME,default})") from None


def _has(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def load_config(argv: list[str] | None = None, config_dir: Path | str | None = None, here: bool = True) -> DictConfig:
    """Build the validated config from the layered YAML files and ``key=value`` overrides.

    Args:
        argv: dotlist overrides such as ``["dataset=visa", "data.category=pcb1", "trainer.max_steps=10"]``.
        config_dir: a folder of ``data/`` and ``experiment/`` files (and optionally ``default.yaml``) layered on
            top of the shipped configs; default: the ``config_dir=`` override, else ``URD_CONFIG_DIR``.
        here: check ``trainer.accelerator`` and ``trainer.devices`` against this machine's GPUs, and place the
            caches where this process can write (``places.py``); False for a config resolved here to run elsewhere
            (``benchmark --slurm`` on a login node).

    Returns:
        A struct-mode DictConfig of :class:`Config`, with ``run`` filled in.

    Raises:
        ConfigError: unknown key (with the closest valid ones), bad value, unknown dataset/experiment/category.
        OutputError: a cache folder the user gave cannot be written.
    """
    overrides = _dotlist(list(argv or []))
    user_dir = config_dir if config_dir is not None else overrides.get("config_dir")
    roots = config_roots(user_dir)
    cfg: DictConfig = OmegaConf.structured(Config)
    for root in reversed(roots):  # the shipped default.yaml, then the user's on top
        default = find_config("", "default", [root])
        if default is not None:
            cfg = _merge(cfg, _read_yaml(default, "default", []), str(default))
    if user_dir is not None:
        cfg.config_dir = str(Path(user_dir).expanduser().resolve())
    dataset = str(overrides.get("dataset", cfg.dataset))
    data_path = find_config("data", dataset, roots)
    data_file = _read_yaml(data_path, "dataset", config_names("data", roots), dataset)
    categories = data_file.pop("categories", None) or {}
    cfg = _merge(cfg, {**data_file, "dataset": dataset}, str(data_path))
    experiment = overrides.get("experiment", cfg.experiment)
    user: dict[str, Any] = {}
    if experiment:
        exp_path = find_config("experiment", str(experiment), roots)
        user = _read_yaml(exp_path, "experiment", config_names("experiment", roots), str(experiment))
        cfg = _merge(cfg, {**user, "experiment": experiment}, str(exp_path))
    overrides.pop("config_dir", None)  # already applied (as an absolute path, so every rank reads the same folder)
    cfg = _merge(cfg, overrides, "the command line")
    _check_interpolations(cfg)
    user = OmegaConf.to_container(OmegaConf.merge(user, overrides))  # type: ignore[assignment]
    if categories:
        category = str(cfg.data.category)
        if category not in categories:
            raise ConfigError(
                f"unknown category '{category}' for dataset '{dataset}'; valid: {', '.join(map(str, categories))}"
            )
        # The authors' per-category iteration budget and foreground method (docs/method.md), unless overridden.
        chosen = categories[category] or {}
        if "max_steps" in chosen and not _has(user, "trainer.max_steps"):
            cfg.trainer.max_steps = int(chosen["max_steps"])
        if "foreground" in chosen and not _has(user, "data.foreground"):
            cfg.data.foreground = str(chosen["foreground"])
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"'{key}={value}' is not valid; choose one of: {', '.join(allowed)}")
    if cfg.data.foreground == "auto":  # the category's method from the dataset file; none for a category it lacks
        chosen = categories.get(str(cfg.data.category)) or {}
        cfg.data.foreground = str(chosen.get("foreground", "none"))
    if cfg.model.train_teacher and cfg.model.expert and not cfg.data.synthesis:
        raise ConfigError("model.train_teacher=true needs data.synthesis=true (the teacher learns from synthetic "
                          "anomalies); set model.train_teacher=false for a frozen teacher")
    if not cfg.model.expert and cfg.model.train_teacher:
        # Without the expert there is nothing to train the teacher against (design.md, models).
        cfg.model.train_teacher = False
    if cfg.data.seed is None:  # the data follow the run's seed, as the authors' one setup_seed(111) does
        cfg.data.seed = int(cfg.seed)
    check_ranges(cfg, here)  # values within their ranges, before anything is built or written (ranges.py)
    if here:  # caches this process can write (the current folder's, else the user's): places.py
        place_caches(cfg.data, {f"data.{key}" for key in (user.get("data") or {})})
    # The texture source is recorded resolved (dtd | procedural | none): part of the run's identity.
    cfg.data.textures, cfg.data.dtd_root = resolve_textures(cfg.data.textures, cfg.data.dtd_root, cfg.data.synthesis)
    # The pipeline itself, not a file name, is recorded and hashed into the run's identity (config/augment.py).
    cfg.data.augment = resolve_augment(OmegaConf.to_container(cfg.data, resolve=True)["augment"], roots)
    cfg.run = run_name(cfg)  # also checks that run, dataset and category are each one safe folder name
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig | ListConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)


PRINT_CONFIG = Command("print-config", "Show the resolved config (YAML) for these arguments: every key, after the "
                       "dataset, experiment and command-line layers.", config=True,
                       examples=("urd print-config dataset=visa data.category=pcb1",))


def read_command_line(command: Command, argv: Sequence[str]) -> Arguments | None:
    """Parse ``argv`` for ``command`` (:func:`~urd_lightning.config.cli.parse_command_line`); None after ``--help``.

    ``--help`` prints the command's keys with type, default and description; for a command that takes config keys
    the defaults shown are the values these arguments resolve to (``train --help dataset=visa`` shows VisA's).
    """
    types = key_types()
    try:
        return parse_command_line(command, argv, types)
    except HelpRequested:
        rest = parse_command_line(command, [a for a in argv if a not in HELP_FLAGS], types, required=False)
    rows: list[tuple[str, str, Any, str]] = []
    if command.config:
        resolved = load_config(rest.overrides)
        descriptions = key_descriptions()
        rows = [(key, kind, OmegaConf.select(resolved, key), descriptions.get(key, "")) for key, kind in types.items()]
    sys.stdout.write(help_text(command, rows))
    return None


def print_config_main(argv: list[str]) -> int:
    """``urd print-config [key=value ...]``: show the resolved config."""
    args = read_command_line(PRINT_CONFIG, argv)
    if args is not None:
        sys.stdout.write(to_yaml(load_config(args.overrides)))
    return 0
