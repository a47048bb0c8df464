"""Config -> objects, in one place: the ``Trainer`` arguments, the ``URDModule``, the ``AnomalyDataModule``.

Training (``train.py``) and checkpoint evaluation (``evaluate.py``) both build through these functions, so a
config key is unpacked exactly once (the lightning-hydra-template's rule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import ConfigError
from urd_lightning.training.module import URDModule

DDP_START = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork", "ddp_notebook": "fork"}


def _on_cuda(cfg: DictConfig) -> bool:
    return cfg.trainer.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """``Trainer`` arguments from ``cfg.trainer`` with per-accelerator defaults filled in."""
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.trainer, resolve=True)  # type: ignore[assignment]
    if kwargs["precision"] is None:  # bf16 autocast where the GPU supports it; full fp32 on CPU (the authors: fp32)
        kwargs["precision"] = "bf16-mixed" if _on_cuda(cfg) and torch.cuda.is_bf16_supported() else "32-true"
    # cuDNN autotuning picks the fastest convolution algorithms (not bit-reproducible); trainer.deterministic=true
    # turns it off, as the authors' setup_seed did (urd-method.md section 5). Lightning applies it.
    kwargs["benchmark"] = _on_cuda(cfg) and not kwargs["deterministic"]
    strategy = kwargs["strategy"]
    if strategy in DDP_START:
        # One training iteration does two backward passes over disjoint parameter sets (teacher, then student),
        # so each pass must tell DDP's reducer that the other set is unused this time: find_unused_parameters.
        kwargs["strategy"] = DDPStrategy(find_unused_parameters=True, start_method=DDP_START[strategy])
    elif strategy.startswith("ddp") and "find_unused_parameters_false" in strategy:
        raise ConfigError(f"trainer.strategy={strategy} cannot work: URD's two backward passes need "
                          "find_unused_parameters=True; use trainer.strategy=ddp")
    return kwargs


def execution_record(cfg: DictConfig, kwargs: dict[str, Any], module: Any) -> dict[str, Any]:
    """How the run computed (``execution`` in metrics.json): the speed settings in force, none a method choice."""
    return {"device": "cuda" if _on_cuda(cfg) else "cpu", "precision": str(kwargs["precision"]),
            "deterministic": kwargs["deterministic"], "cudnn_benchmark": bool(kwargs["benchmark"]),
            "channels_last": bool(module.hparams.channels_last), "compile": bool(cfg.compile),
            "batched_eval_forwards": bool(cfg.batched_eval_forwards)}


def run_dir_of(cfg: DictConfig) -> Path:
    """``<output_dir>/<dataset>/<category>/<run>``."""
    return Path(cfg.output_dir) / str(cfg.dataset) / str(cfg.data.category) / str(cfg.run)


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
