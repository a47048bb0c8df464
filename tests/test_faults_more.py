"""The fault suite, continued: more bad inputs and interruptions a careful user meets, each one line and nothing lost.

Same style as ``tests/test_faults.py`` (whose helpers it uses): the command line's exit code, its one line, no
traceback, and every file that existed before unchanged. Tests that train longer are marked ``slow``.
"""

import json
from pathlib import Path

import pytest
import torch

from tests.test_faults import SMALL
from urd_lightning.__main__ import main

# --- silent wrong results: a resume with loader workers continues exactly where the checkpoint stopped ---------------


def _weights_and_final(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    return {k: v for k, v in state.items() if k.startswith("model.")}, final


def test_resume_with_a_loader_worker_mid_epoch_equals_the_uninterrupted_run(mvtec_root, tmp_path):
    # 6 training images in batches of 2: 3 iterations an epoch. The resume starts inside epoch 0 (after iteration 1)
    # and runs into epoch 1, with one loader worker (which takes its first indices before training starts).
    argv = ["train", f"data.root={mvtec_root}", *SMALL, "data.num_workers=1", "checkpoint_every_n_steps=1", "run=r"]
    assert main([*argv, f"output_dir={tmp_path / 'straight'}", "trainer.max_steps=4"]) == 0
    assert main([*argv, f"output_dir={tmp_path / 'resumed'}", "trainer.max_steps=1"]) == 0
    assert main([*argv, f"output_dir={tmp_path / 'resumed'}", "trainer.max_steps=4", "resume=last"]) == 0
    straight, straight_final = _weights_and_final(next((tmp_path / "straight").rglob("r")))
    resumed, resumed_final = _weights_and_final(next((tmp_path / "resumed").rglob("r")))
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ, first {differing[:3]}"
    assert json.dumps(straight_final, sort_keys=True) == json.dumps(resumed_final, sort_keys=True)  # NaN-safe

