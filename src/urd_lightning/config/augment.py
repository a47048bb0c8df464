"""Augmentation of the normal training images: ``data.augment`` (``false``, ``flips`` or an albumentations pipeline).

The bottom layer beside ``config`` (which resolves ``data.augment`` when it loads a config, so that the recorded config
and a run's identity hold the pipeline itself, never only a file name); ``data/dataset.py`` applies it. A pipeline is
what albumentations serialises (``A.save`` / ``A.to_dict``: ``{"__version__": ..., "transform": {...}}``), read from
a YAML or JSON file, from ``configs/augment/<name>.yaml`` by name, or given inline; it is resolved to
``A.to_dict(A.from_dict(...))``, every argument spelled out, as the installed albumentations reads it.

albumentations is an optional extra (``pip install 'urd-lightning[augment]'``), imported only when a pipeline is
configured, with its network version check at import turned off (``NO_ALBUMENTATIONS_UPDATE``): training nodes are
often offline and a run must not wait on the network.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import warnings
from collections.abc import Mapping
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np

from urd_lightning.config.files import config_names, config_roots, find_config, load_yaml
from urd_lightning.errors import ConfigError

FLIPS = "flips"
INSTALL = "pip install 'urd-lightning[augment]'"
# The pipeline draws from its own stream of (seed, epoch, index): synthesis keeps its generator and its draws.
STREAM = 0x617567  # "aug"
KEY = "data.augment"


def albumentations() -> Any:
    """The albumentations module, imported without its network version check; ConfigError when it is missing."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # read once, at albumentations' import
    try:
        import albumentations as A  # noqa: N812 - the library's own convention
    except ImportError as exc:
        raise ConfigError(f"{KEY} is an albumentations pipeline but albumentations is not installed: "
                          f"{INSTALL}") from exc
    return A


def resolve_augment(value: Any, roots: list[Traversable] | None = None) -> bool | str | dict[str, Any]:
    """``False``, ``"flips"`` or the pipeline as albumentations serialises it (resolved values map to themselves).

    Args:
        value: ``false``/``null``, ``flips`` (``true`` is its older spelling), a pipeline file (YAML or JSON, as
            ``A.save`` writes), the name of a file in ``configs/augment/`` (or a user's ``config_dir``), or the
            serialised pipeline itself as a mapping.
        roots: config folders searched for a name (default: the shipped configs and ``URD_CONFIG_DIR``).

    Raises:
        ConfigError: one line naming the file, transform and argument at fault, or the install command.
    """
    if value is None or value is False:
        return False
    if value is True or value == FLIPS:
        return FLIPS
    if isinstance(value, Mapping):
        return _canonical(dict(value), KEY)
    if not isinstance(value, str):
        raise ConfigError(f"{KEY}={value!r}: use false, flips, or an albumentations pipeline (a file A.save wrote)")
    path, source = _locate(value, roots if roots is not None else config_roots())
    return _canonical(_read(path, source), source)


def _locate(value: str, roots: list[Traversable]) -> tuple[Traversable, str]:
    path = Path(value).expanduser()
    if path.is_file():
        return path, f"{KEY}={value}"
    named = find_config("augment", value, roots) if "/" not in value and "." not in value else None
    if named is not None:
        return named, f"{KEY}={value} ({named})"
    names = config_names("augment", roots)
    raise ConfigError(f"{KEY}={value}: no such file; use false, flips, a pipeline file written by albumentations' "
                      f"A.save (YAML or JSON), or one of: {', '.join(names) or '(none found)'}")


def _read(path: Traversable, source: str) -> Any:
    try:
        if path.name.endswith(".json"):
            with path.open("r", encoding="utf-8") as handle:
                return json.load(handle)
        return load_yaml(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{source}: cannot read the pipeline file: {first}") from exc


def _canonical(spec: Any, source: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or not isinstance(spec.get("transform"), Mapping):
        raise ConfigError(f"{source}: not an albumentations pipeline; expected what A.save writes: "
                          "{'__version__': ..., 'transform': {'__class_fullname__': 'Compose', 'transforms': [...]}}")
    A = albumentations()  # noqa: N806
    pipeline = _build(A, _plain(spec["transform"]), "transform", source)
    if type(pipeline) is not A.Compose:  # a single transform (or OneOf...) saved on its own: one Compose to seed
        pipeline = A.Compose([pipeline])
    return _plain(A.to_dict(pipeline))  # lists, as the config and the YAML files hold them


def _plain(node: Any) -> Any:
    """Lists and dicts all the way down (a config gives ListConfig-free data, a file may give tuples)."""
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _build(A: Any, node: Any, where: str, source: str) -> Any:  # noqa: N803
    """``A.from_dict`` of one node, children first, so that an error names the innermost transform at fault."""
    if not isinstance(node, dict) or "__class_fullname__" not in node:
        raise ConfigError(f"{source}: {where} is not a serialised transform (a mapping with '__class_fullname__')")
    name = str(node["__class_fullname__"]).rsplit(".", 1)[-1]
    at = f"{source}: {name} ({where})"
    for i, child in enumerate(node.get("transforms") or []):
        _build(A, child, f"{where}.transforms[{i}]", source)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            built = A.from_dict({"transform": node})
        except KeyError as exc:
            if exc.args and exc.args[0] == name:
                known = list(getattr(A.core.serialization, "SERIALIZABLE_REGISTRY", {}))
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"{at}: albumentations {A.__version__} has no transform {name!r}{hint}") from exc
            raise ConfigError(f"{at}: missing key {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{at}: {_argument_error(exc)}") from exc
    for warning in caught:  # albumentations only warns about an unknown argument; a typo must not pass silently
        if "are not valid for transform" in str(warning.message):
            raise ConfigError(f"{at}: {warning.message}")
    return built


def _argument_error(exc: Exception) -> str:
    # albumentations re-raises pydantic's ValidationError as a ValueError: the cause says which argument, and why.
    errors = getattr(exc, "errors", None) or getattr(exc.__cause__, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            argument = ".".join(str(part) for part in first.get("loc", ()) if not isinstance(part, int))
            argument = argument.split(".")[0] or "?"
            if first.get("type") == "missing":
                return f"argument '{argument}' is required"
            return f"argument '{argument}': {first.get('msg', exc)} (got {first.get('input')!r})"
        except Exception:  # noqa: BLE001 - fall back to the message's first line
            pass
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class Pipeline:
    """An albumentations pipeline whose random draws are a pure function of (seed, epoch, index).

    Each call gives the pipeline a fresh numpy generator and Python ``random.Random`` (the two sources every
    albumentations 2 transform draws from: ``Compose.set_random_state`` hands them down to every transform), both
    derived from ``(seed, epoch, index)``: the same sample in the same epoch gets the same augmentation whatever the
    worker, the batch order or a resume. Pickled without the built transforms (loader workers rebuild them).
    """

    def __init__(self, spec: Mapping[str, Any], image_size: int | None = None) -> None:
        self.spec = resolve_augment(spec)
        self._compose: Any = None
        if image_size is not None:
            self._check_shape(image_size)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_compose": None}

    def compose(self) -> Any:
        """The built ``A.Compose`` (built once per process)."""
        if self._compose is None:
            self._compose = albumentations().from_dict(self.spec)
        return self._compose

    def __call__(self, image: np.ndarray, foreground: np.ndarray | None, seed: int, epoch: int,
                 index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image, foreground)`` after the pipeline: ``(S, S, 3)`` uint8 and the mask moved with it (or None)."""
        compose = self.compose()
        numpy_seed, python_seed = np.random.SeedSequence([seed, epoch, index, STREAM]).spawn(2)
        compose.set_random_state(np.random.default_rng(numpy_seed),
                                 random.Random(int.from_bytes(python_seed.generate_state(4).tobytes(), "little")))
        if foreground is None:
            return compose(image=image)["image"], None
        out = compose(image=image, mask=foreground)
        return out["image"], out["mask"]

    def _check_shape(self, size: int) -> None:
        """Every top-level transform, forced on, must keep a ``(size, size, 3)`` uint8 image.

        Batches are stacked (one size), and normalisation comes after synthesis (uint8 in, uint8 out).
        """
        compose = albumentations().from_dict(self.spec)  # its own copy: the checks move its random state
        compose.set_random_seed(0)
        image = np.full((size, size, 3), 128, np.uint8)
        mask = np.ones((size, size), np.uint8)
        for i, transform in enumerate(compose.transforms):
            name = type(transform).__name__
            try:
                out = transform(image=image, mask=mask, force_apply=True)
            except Exception as exc:  # noqa: BLE001 - one line naming the transform
                lines = str(exc).strip().splitlines()
                raise ConfigError(f"{KEY}: {name} (transform.transforms[{i}]) fails on a {size}x{size} RGB image: "
                                  f"{lines[0] if lines else type(exc).__name__}") from exc
            got = out["image"]
            if not isinstance(got, np.ndarray) or got.shape != image.shape or got.dtype != np.uint8:
                what = f"{tuple(got.shape)} {got.dtype}" if hasattr(got, "shape") else type(got).__name__
                raise ConfigError(f"{KEY}: {name} (transform.transforms[{i}]) turns the ({size}, {size}, 3) uint8 "
                                  f"training image into {what}; use transforms that keep its size and type "
                                  "(the model size is data.image_size; normalisation comes after synthesis)")
