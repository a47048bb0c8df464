"""What a stock ``lightning.Trainer(...)`` must do for URD, checked when ``URDModule.setup("fit")`` runs.

``train(cfg)`` builds its Trainer right (``builders.trainer_kwargs``); a Lightning user who writes
``Trainer(max_steps=1000, devices=2)`` and calls ``fit(URDModule(...), datamodule=AnomalyDataModule(...))`` gets the
same training, or a one-line error that says which Trainer argument to pass:

- ``max_steps`` counts URD iterations: Lightning counts each of the two optimizers' steps, so the limit is scaled
  here once per Trainer (the paper's budgets are iterations, docs/method.md, "Optimizers and budgets").
- several processes need DDP with ``find_unused_parameters=True`` (two backward passes over disjoint parameters);
- ``AnomalyDataModule`` shards its data itself, so Lightning must not wrap its samplers a second time.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy

from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import ConfigError


def check_trainer(trainer: Trainer, steps_per_iteration: int) -> None:
    """Scale ``max_steps`` to optimizer steps and stop on a strategy or sampler setting URD cannot train with.

    Raises:
        ConfigError: naming the Trainer argument to pass.
    """
    strategy: Any = trainer.strategy
    if trainer.world_size > 1 and isinstance(strategy, DDPStrategy):
        # Lightning keeps the DDP arguments only in this attribute; it has no public accessor.
        if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise ConfigError("URDModule on several processes needs DDP with find_unused_parameters=True (two "
                              "backward passes per iteration): pass Trainer(strategy='ddp_find_unused_parameters_true')"
                              " or use `python -m urd_lightning train`")
        if isinstance(trainer.datamodule, AnomalyDataModule) and trainer._accelerator_connector.use_distributed_sampler:
            raise ConfigError("AnomalyDataModule shards its data across processes itself: pass "
                              "Trainer(use_distributed_sampler=False)")
    loop = trainer.fit_loop.epoch_loop
    # Once per Trainer: a second fit() with the same Trainer must not scale again.
    if loop.max_steps > 0 and getattr(loop, "_urd_scaled_max_steps", None) != loop.max_steps:
        loop.max_steps *= steps_per_iteration
        loop._urd_scaled_max_steps = loop.max_steps
