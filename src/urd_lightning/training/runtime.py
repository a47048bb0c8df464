"""How a run actually ran, in one ``runtime`` block: every setting in force, devices, versions and the git commit.

The config says what was asked (``trainer.precision: null`` means "pick for the hardware"); this block says what
was used, each fact once: precision, channels-last, cudnn autotuning, determinism, compile and batched forwards
(speed settings, none a method choice), accelerator, devices, strategy, versions. A CPU fp32 run and a GPU bf16 run
of the same config therefore differ in ``config.yaml``, ``metrics.json``, ``results.csv`` (flattened as
``config.runtime.*``) and the W&B config (``runtime.*``). Runs written before this block held the speed settings
had a second block, ``execution``; the benchmark report still reads it (``benchmark/records.py``).
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from urd_lightning import __version__

PACKAGES = ("torch", "lightning", "timm", "torchmetrics")
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit(where: Path = PACKAGE_DIR) -> str | None:
    """``<commit>`` (``+dirty`` with uncommitted changes) of the checkout holding the code, None outside git."""
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=False)
        if head.returncode != 0:
            return None  # an installed wheel, or no git: the package version says what ran
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def runtime_info(trainer: Trainer, module: LightningModule, deterministic: bool, cudnn_benchmark: bool
                 ) -> dict[str, Any]:
    """The effective settings of ``trainer`` (built, not necessarily fitted) and ``module``, and the versions.

    Args:
        trainer: the run's trainer.
        module: the run's ``URDModule`` (its hparams hold channels_last, compile and batched_eval_forwards).
        deterministic: the ``deterministic`` the trainer was built with.
        cudnn_benchmark: the ``benchmark`` (cuDNN autotuning) the trainer was built with.
    """
    device = trainer.strategy.root_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    hparams = module.hparams
    return {
        "precision": str(trainer.precision),  # Lightning's resolved value, e.g. 32-true or bf16-mixed
        "channels_last": bool(hparams.channels_last),
        "deterministic": bool(deterministic),
        "cudnn_benchmark": bool(cudnn_benchmark),
        "compile": bool(hparams.compile),
        "batched_eval_forwards": bool(hparams.batched_eval_forwards),
        "accelerator": device.type,
        "device_name": name,
        "devices_per_node": int(trainer.num_devices),
        "num_nodes": int(trainer.num_nodes),
        "processes": int(trainer.world_size),
        "strategy": str(getattr(trainer.strategy, "strategy_name", type(trainer.strategy).__name__)),
        "version": __version__,
        "git_commit": git_commit(),
        "versions": {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}},
    }
