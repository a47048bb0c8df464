"""Config -> objects, in one place: the ``Trainer`` arguments, the ``URDModule``, the ``AnomalyDataModule``.

Training (``train.py``) and checkpoint evaluation (``evaluate.py``) both build through these functions, so a
config key is unpacked exactly once (the lightning-hydra-template's rule).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig, OmegaConf

from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import ConfigError
from urd_lightning.hardware import native_bf16
from urd_lightning.training.module import URDModule

# Lightning's DDP names and their launch method; every one gets find_unused_parameters=True below.
DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def _on_cuda(cfg: DictConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def process_count(cfg: DictConfig) -> int:
    """How many training processes ``cfg.trainer`` starts, counted the way Lightning resolves ``devices``.

    ``devices=auto`` means every visible GPU on a GPU machine and one process on CPU (Lightning's rule); a
    launcher's environment (torchrun's ``WORLD_SIZE``, SLURM's ``SLURM_NTASKS``) counts too.
    """
    accelerator = CUDAAccelerator if _on_cuda(cfg) else CPUAccelerator
    devices = cfg.trainer.devices
    devices = list(devices) if isinstance(devices, ListConfig) else devices
    try:
        parsed = accelerator.parse_devices(accelerator.auto_device_count() if devices == "auto" else devices)
    except Exception:  # noqa: BLE001 - an invalid value is reported by the Trainer with Lightning's own message
        parsed = 1
    per_node = parsed if isinstance(parsed, int) else len(parsed or [])
    launched = max(int(os.environ.get(name, "1") or 1) for name in ("WORLD_SIZE", "SLURM_NTASKS"))
    return max(per_node * int(cfg.trainer.num_nodes), launched)


def _strategy(cfg: DictConfig) -> Any:
    """The strategy URD needs: DDP with find_unused_parameters=True whenever more than one process trains.

    One training iteration does two backward passes over disjoint parameter sets (teacher, then student), so each
    pass must tell DDP's reducer that the other set is unused this time: find_unused_parameters. Lightning's own
    choice for ``auto`` on several devices is plain DDP, which fails at the second iteration.
    """
    name = str(cfg.trainer.strategy)
    base = name.removesuffix("_find_unused_parameters_true")
    multi = process_count(cfg) > 1
    if base in DDP_START or (name == "auto" and multi):
        start = DDP_START.get(base, "fork" if _interactive() else "popen")  # notebooks cannot re-run a script
        return DDPStrategy(find_unused_parameters=True, start_method=start)
    if name == "auto" or (name == "single_device" and not multi):
        return name
    if name.startswith("ddp") and name.endswith("_find_unused_parameters_false"):
        raise ConfigError(f"trainer.strategy={name} cannot work: URD's two backward passes need "
                          "find_unused_parameters=True; use trainer.strategy=ddp (or auto)")
    raise ConfigError(f"trainer.strategy={name} cannot train URD (two optimizers, two backward passes per "
                      "iteration); use trainer.strategy=auto (or ddp, ddp_spawn, ddp_fork)")


def _interactive() -> bool:
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``Trainer`` arguments from ``cfg.trainer`` with per-accelerator defaults filled in."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if kwargs["precision"] is None:  # bf16 autocast where the hardware computes bf16 natively, else fp32 (the authors)
        kwargs["precision"] = "bf16-mixed" if native_bf16(_on_cuda(cfg)) else "32-true"
    # cuDNN autotuning picks the fastest convolution algorithms (not bit-reproducible); trainer.deterministic=true
    # turns it off, as the authors' setup_seed did (docs/method.md, "Optimizers and budgets"). Lightning applies it.
    kwargs["benchmark"] = _on_cuda(cfg) and not kwargs["deterministic"]
    kwargs["strategy"] = _strategy(cfg)
    return kwargs


def build_module(cfg: DictConfig) -> URDModule:
    """``URDModule`` from the config (the only place the model and optim sections are unpacked)."""
    channels_last = _on_cuda(cfg) if cfg.channels_last is None else bool(cfg.channels_last)
    return URDModule(
        model=OmegaConf.to_container(cfg.model, resolve=True), lr_teacher=cfg.optim.lr_teacher,
        lr_student=cfg.optim.lr_student, betas=tuple(cfg.optim.betas), loss_variant=cfg.loss_variant,
        synthesis=cfg.data.synthesis, image_size=cfg.data.image_size, dataset=cfg.dataset,
        category=cfg.data.category, num_samples=cfg.eval.num_samples, channels_last=channels_last,
        seed=cfg.seed, resize=cfg.data.resize, batched_eval_forwards=cfg.batched_eval_forwards, compile=cfg.compile,
    )


def build_datamodule(cfg: DictConfig) -> AnomalyDataModule:
    """``AnomalyDataModule(**cfg.data)``, already set up: missing or broken data stops here, before training."""
    datamodule = AnomalyDataModule(**OmegaConf.to_container(cfg.data, resolve=True))  # type: ignore[arg-type]
    datamodule.setup("fit")  # runs the data check (DataError with its message) before any model is built
    return datamodule
