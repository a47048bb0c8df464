"""Allowed ranges of the numeric config keys, checked when the config is loaded.

The schema (``schema.py``, applied by ``load.py``) checks types; these checks catch values of the right type that
cannot work (``optim.lr_student=-1``, ``data.image_size=100``), before anything is built or written, with one line that
names the key, the value and the allowed range.
"""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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
# The precisions Lightning's Trainer accepts (lightning.fabric's _PRECISION_INPUT; tests/test_config.py compares);
# null is this project's "bf16-mixed where the hardware has bf16, else 32-true".
PRECISIONS = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16",
              "transformer-engine", "transformer-engine-float16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
MAX_TIME = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")  # Lightning's Timer: DD:HH:MM:SS
IMAGE_SIZE_STEP = 32  # the encoder halves the input five times; the decoder must meet the same feature sizes


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"'{key}={value}' is out of range: {key} must be {allowed}")


def check_ranges(cfg: DictConfig, here: bool = True) -> None:
    """Raise :class:`ConfigError` for the first key outside its allowed range (``here``: see :func:`check_trainer`)."""
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
    check_trainer(cfg, here)
    limit = cfg.trainer.limit_test_batches
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or (
            isinstance(limit, float) and not 0 < limit <= 1) or (isinstance(limit, int) and limit < 1):
        _fail("trainer.limit_test_batches", limit, "a fraction in (0, 1] or a number of batches >= 1")


def _gpus(accelerator: str) -> int:
    """How many GPUs ``accelerator`` would train on (0: the CPU); torch is imported only for a GPU question."""
    if accelerator == "cpu":
        return 0
    import torch  # only here: loading a config for the CPU, or for `data check`, stays free of torch

    if accelerator == "mps":
        return int(torch.backends.mps.is_available())
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_trainer(cfg: DictConfig, here: bool = True) -> None:
    """Raise :class:`ConfigError` for a ``trainer.*`` value Lightning would reject.

    ``here``: the accelerator and the devices are checked against this machine's GPUs (the run starts here);
    otherwise only their form is.
    """
    trainer = cfg.trainer
    if trainer.precision is not None and str(trainer.precision) not in PRECISIONS:
        _fail("trainer.precision", trainer.precision, f"null (automatic) or one of {', '.join(PRECISIONS[:6])}")
    if trainer.max_time is not None and not MAX_TIME.fullmatch(str(trainer.max_time).strip()):
        _fail("trainer.max_time", trainer.max_time, 'null or a duration "DD:HH:MM:SS", e.g. 00:12:00:00')
    accelerator = str(trainer.accelerator)
    if accelerator not in ACCELERATORS:
        _fail("trainer.accelerator", accelerator, f"one of {', '.join(ACCELERATORS)}")
    if not here:
        return
    gpus = _gpus(accelerator)
    if accelerator in ("gpu", "cuda", "mps") and not gpus:
        raise ConfigError(f"'trainer.accelerator={accelerator}' needs a GPU and this machine has none (torch sees "
                          "no CUDA device); use trainer.accelerator=auto or cpu")
    devices = trainer.devices
    if devices == "auto":
        return
    if isinstance(devices, ListConfig) or (isinstance(devices, str) and "," in devices):
        indices = list(devices) if isinstance(devices, ListConfig) else devices.split(",")
        if not gpus:
            _fail("trainer.devices", list(indices), "a number of processes (e.g. 2) or auto: a list of device "
                                                    "indices needs GPUs, and this run uses the CPU")
        if not indices or not all(str(i).strip().isdigit() and int(i) < gpus for i in indices):
            _fail("trainer.devices", list(indices), f"GPU indices below {gpus} (this machine has {gpus})")
        return
    count = int(devices) if isinstance(devices, int) or str(devices).lstrip("-").isdigit() else None
    if count is None or isinstance(devices, bool) or count == 0 or count < -1 or (count == -1 and not gpus):
        _fail("trainer.devices", devices, "auto, a number of processes >= 1" + (", -1 (every GPU)" if gpus else "")
              + " or a list of GPU indices")
    if gpus and count > gpus:
        _fail("trainer.devices", devices, f"at most {gpus}: this machine has {gpus} GPU(s)")
