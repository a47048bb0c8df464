"""Allowed ranges of the numeric config keys, checked when the config is loaded.

The schema (``config.py``) checks types; these checks catch values of the right type that cannot work
(``optim.lr_student=-1``, ``data.image_size=100``), before anything is built or written, with one line that names
the key, the value and the allowed range.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from urd_lightning.errors import ConfigError

# key -> (lowest, highest or None, what the range means to a user). Bounds are inclusive.
RANGES: dict[str, tuple[float, float | None, str]] = {
    "seed": (0, 2**32 - 1, "an integer in [0, 2^32-1] (numpy's seed range)"),
    "checkpoint_every_n_steps": (1, None, "an integer >= 1 (URD iterations between checkpoints)"),
    "data.train_batch_size": (1, None, "an integer >= 1"),
    "data.eval_batch_size": (1, None, "an integer >= 1"),
    "data.num_workers": (0, None, "an integer >= 0 (0 = load in the main process)"),
    "data.seed": (0, 2**32 - 1, "an integer in [0, 2^32-1] (numpy's seed range)"),
    "data.normal_split_ratio": (0, 1, "a fraction in [0, 1]"),
    "trainer.num_nodes": (1, None, "an integer >= 1"),
    "trainer.max_steps": (0, None, "an integer >= 0, counted in URD iterations (each is one teacher and one "
                                   "student update; 0 = evaluate the untrained network)"),
    "trainer.log_every_n_steps": (1, None, "an integer >= 1"),
    "optim.lr_teacher": (0, None, "a finite number > 0"),
    "optim.lr_student": (0, None, "a finite number > 0"),
    "eval.every_n_steps": (0, None, "an integer >= 0 (0 = no periodic evaluation)"),
    "eval.num_samples": (0, None, "an integer >= 0"),
}
STRICTLY_POSITIVE = ("optim.lr_teacher", "optim.lr_student")
IMAGE_SIZE_STEP = 32  # the encoder halves the input five times; the decoder must meet the same feature sizes


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"'{key}={value}' is out of range: {key} must be {allowed}")


def check_ranges(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first numeric key outside its allowed range."""
    for key, (low, high, allowed) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            _fail(key, value, allowed)
        too_low = value <= low if key in STRICTLY_POSITIVE else value < low
        if too_low or (high is not None and value > high):
            _fail(key, value, allowed)
    size = cfg.data.image_size
    if size < IMAGE_SIZE_STEP or size % IMAGE_SIZE_STEP:
        _fail("data.image_size", size, f"a multiple of {IMAGE_SIZE_STEP}, at least {IMAGE_SIZE_STEP} (e.g. 256)")
    betas = list(cfg.optim.betas)
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        _fail("optim.betas", betas, "two numbers in [0, 1), e.g. [0.5, 0.999]")
    limit = cfg.trainer.limit_test_batches
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or (
            isinstance(limit, float) and not 0 < limit <= 1) or (isinstance(limit, int) and limit < 1):
        _fail("trainer.limit_test_batches", limit, "a fraction in (0, 1] or a number of batches >= 1")
