"""Two CPU processes started the way users start them (marker ``ddp``; CI runs them with ``make test-ci-extra``).

The command-line runs go through Lightning's real launcher (a subprocess re-runs ``python -m urd_lightning`` for
rank 1), which pytest cannot host in-process; the stock-Trainer runs use ``ddp_fork``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.module import URDModule

HANG_GUARD_S = 1800  # only a deadlock gets near this; never a speed limit


def cli_train(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "urd_lightning", "train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.ddp
def test_two_devices_without_a_strategy_key_train_like_explicit_ddp(mvtec_root, tmp_path):
    """The original failure: `trainer.devices=2` alone crashed with DDP's unused-parameters error."""
    common = tiny(mvtec_root, tmp_path, "trainer.devices=2", "trainer.max_steps=2", "data.train_batch_size=3")
    results = {}
    for name, extra in {"auto": [], "ddp": ["trainer.strategy=ddp"]}.items():
        cli_train([*common, f"run={name}", *extra], tmp_path)
        cfg = load_config([*common, f"run={name}", *extra])
        results[name] = json.loads((RunFolder.of(cfg).path / "metrics.json").read_text())
    assert results["auto"]["steps"] == results["ddp"]["steps"] == 2
    assert results["auto"]["final"] == results["ddp"]["final"]


class Iterations(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        (self.out / f"rank{trainer.global_rank}.txt").write_text(str(pl_module.iteration))


def stock_fit(mvtec_root, tmp_path, **trainer_args):
    torch.set_num_threads(1)
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=32)
    datamodule = AnomalyDataModule("mvtec", str(mvtec_root), "bottle", image_size=32, train_batch_size=3,
                                   eval_batch_size=7, num_workers=0, cache_dir=str(tmp_path / "cache"))
    trainer = Trainer(accelerator="cpu", devices=2, max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[Iterations(tmp_path)], **trainer_args)
    trainer.fit(module, datamodule=datamodule)


@pytest.mark.ddp
def test_stock_trainer_on_two_processes_stops_or_trains(mvtec_root, tmp_path):
    with pytest.raises(Exception, match=r"pass Trainer\(strategy='ddp_find_unused_parameters_true'\)"):
        stock_fit(mvtec_root, tmp_path, strategy="ddp_fork")
    with pytest.raises(Exception, match=r"pass Trainer\(use_distributed_sampler=False\)"):
        stock_fit(mvtec_root, tmp_path, strategy="ddp_fork_find_unused_parameters_true")
    stock_fit(mvtec_root, tmp_path, strategy="ddp_fork_find_unused_parameters_true", use_distributed_sampler=False)
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
