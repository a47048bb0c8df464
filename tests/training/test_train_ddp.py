"""Two CPU processes (gloo, ``ddp_fork``): training completes, ranks agree, evaluation equals one process."""

import json

import pytest
import torch
from lightning.pytorch import Callback
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.evaluate import evaluate_checkpoint
from urd_lightning.training.train import train


class SaveRankState(Callback):
    """Each rank writes its model state after training (after the module synced BN statistics)."""

    def __init__(self, out):
        self.out = out

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.ddp
def test_two_process_training_and_exact_synced_evaluation(mvtec_root, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(tiny(mvtec_root, tmp_path, "trainer.devices=2", "trainer.strategy=ddp_fork",
                           "trainer.max_steps=2", "data.train_batch_size=3", "data.eval_batch_size=2"))
    metrics = train(cfg, callbacks=[SaveRankState(tmp_path)])
    payload = json.loads((RunFolder.of(cfg).path / "metrics.json").read_text())
    assert payload["steps"] == 2
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    # The same checkpoint evaluated by one process gives the same numbers (unpadded shards, synced states).
    ckpt = RunFolder.of(cfg).path / "checkpoints" / "last.ckpt"
    assert evaluate_checkpoint([f"ckpt={ckpt}", f"data.root={mvtec_root}", "data.num_workers=0",
                                "trainer.accelerator=cpu", "trainer.devices=1",
                                "data.cache_dir=" + str(tmp_path / "cache")]) == 0
    single = json.loads((RunFolder.of(cfg).path / "test_metrics.json").read_text())["final"]
    assert single == pytest.approx(metrics, abs=1e-6)
