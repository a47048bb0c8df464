"""A 2-task SLURM job on CPU: both ranks started as ``srun`` starts them, SIGUSR1 mid-run, requeue, relaunch.

Marker ``ddp`` (CI: ``make test-ci-extra``). The single-process version is in ``test_preemption.py``.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_preemption import fake_scontrol, slurm_env, weights
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder

HANG_GUARD_S = 1800  # only a deadlock gets near this; never a speed limit


def srun(args, job_id, cwd, extra_env, signal_when=None):
    """Start both ranks of the job (srun's environment) and wait; SIGUSR1 to both once ``signal_when`` exists."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", **extra_env}
    ranks = [subprocess.Popen([sys.executable, "-m", "urd_lightning", "train", *args], cwd=cwd,
                              env={**env, **slurm_env(2, rank, job_id)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    deadline = time.monotonic() + HANG_GUARD_S
    while signal_when is not None and not signal_when.exists() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in ranks), "training ended before the signal could be sent"
        time.sleep(0.2)
    if signal_when is not None:
        for p in ranks:
            p.send_signal(signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90 reaches every task of the step
    outputs = [p.communicate(timeout=HANG_GUARD_S)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    return outputs


@pytest.mark.ddp
def test_two_rank_job_preempted_requeued_and_resumed_matches_an_uninterrupted_job(mvtec_root, tmp_path):
    job = str(random.randrange(10_000, 99_999))  # Lightning derives the master port from the job id
    # 64 px, batch 1: 3 iterations per epoch on each rank, so the preemption may cut an epoch.
    common = ["trainer.devices=2", "trainer.max_steps=6", "checkpoint_every_n_steps=2", "resume=auto",
              "data.image_size=64", "data.train_batch_size=1"]
    path = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    log = fake_scontrol(tmp_path / "bin")
    whole = tiny(mvtec_root, tmp_path / "whole", *common)
    srun(whole, str(int(job) + 1), tmp_path, path)
    args = tiny(mvtec_root, tmp_path / "job", *common)
    run = RunFolder.of(load_config(args)).path
    srun(args, job, tmp_path, path, signal_when=run / "checkpoints" / "last.ckpt")
    assert log.read_text().split() == ["requeue", job]  # rank zero only, once
    assert list(run.glob("hpc_ckpt_*.ckpt")) and not (run / "metrics.json").exists()
    srun(args, job, tmp_path, path)  # the requeued job runs the same script
    assert json.loads((run / "metrics.json").read_text())["steps"] == 6 and not list(run.glob("hpc_ckpt_*"))
    a, b = weights(RunFolder.of(load_config(whole)).path), weights(run)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
