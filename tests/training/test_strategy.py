"""Which strategy a run gets, and a stock ``lightning.Trainer`` with ``URDModule`` (multi-device defaults).

Every run of more than one process needs DDP with find_unused_parameters=True (two backward passes per iteration);
the 2-process runs themselves are in ``test_launch_ddp.py`` (marker ``ddp``).
"""

import pytest
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.strategies import DDPStrategy
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import ConfigError
from urd_lightning.training.builders import process_count, trainer_kwargs
from urd_lightning.training.module import URDModule, check_trainer


def strategy_of(*args):
    return trainer_kwargs(load_config(["trainer.accelerator=cpu", *args]))["strategy"]


@pytest.mark.parametrize("args", [["trainer.devices=2"], ["trainer.devices=2", "trainer.strategy=ddp_spawn"],
                                  ["trainer.num_nodes=2", "trainer.devices=1"],
                                  ["trainer.devices=2", "trainer.strategy=ddp_fork_find_unused_parameters_true"]])
def test_every_multi_process_run_gets_ddp_with_find_unused_parameters(args):
    strategy = strategy_of(*args)
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["find_unused_parameters"] is True


def test_single_process_keeps_auto_and_the_launch_method_is_kept():
    assert strategy_of() == "auto" and process_count(load_config(["trainer.accelerator=cpu"])) == 1
    assert strategy_of("trainer.devices=2", "trainer.strategy=ddp_spawn")._start_method == "spawn"


def test_slurm_tasks_count_as_processes(monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert isinstance(strategy_of(), DDPStrategy)


@pytest.mark.parametrize("name", ["ddp_find_unused_parameters_false", "fsdp", "deepspeed"])
def test_a_strategy_that_cannot_work_stops_naming_the_key(name):
    with pytest.raises(ConfigError, match=f"trainer.strategy={name} .*use trainer.strategy="):
        strategy_of("trainer.devices=2", f"trainer.strategy={name}")


def test_stock_trainer_with_plain_ddp_stops_saying_what_to_pass():
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", logger=False)
    with pytest.raises(ConfigError, match="strategy='ddp_find_unused_parameters_true'"):
        check_trainer(trainer, 2)


class Iterations(Callback):
    def on_train_end(self, trainer, pl_module):
        self.done = pl_module.iteration


def test_stock_trainer_max_steps_counts_urd_iterations(mvtec_root, tmp_path):
    """What a Lightning user writes first: Trainer(max_steps=N) trains N URD iterations (2N optimizer steps)."""
    cfg = load_config(tiny(mvtec_root, tmp_path))
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=32)
    datamodule = AnomalyDataModule("mvtec", str(mvtec_root), "bottle", image_size=32, train_batch_size=2,
                                   eval_batch_size=7, num_workers=0, cache_dir=cfg.data.cache_dir)
    seen = Iterations()
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, callbacks=[seen])
    trainer.fit(module, datamodule=datamodule)
    assert seen.done == 3 and trainer.global_step == 6
    # Lightning's default evaluation after each epoch ran; its sanity check before training is no evaluation.
    assert module.periodic and all(row["step"] > 0 for row in module.periodic)
