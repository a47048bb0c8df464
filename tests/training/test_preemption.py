"""SLURM preemption on CPU, no cluster: the job's environment, a fake ``scontrol`` on PATH, ``SIGUSR1`` mid-run.

The requeued run (same command, ``resume=auto``) must end with weights identical to an uninterrupted run of the
same length. The 2-rank version (processes started as ``srun`` would) is in ``test_preemption_ddp.py``.
"""

import os
import signal
import stat

import pytest
import torch
from lightning.pytorch import Callback
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.errors import CheckpointError
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.preemption import resume_path
from urd_lightning.training.train import train

JOB_ID = "4242"


def fake_scontrol(folder):
    """An ``scontrol`` that records its arguments in ``<folder>/scontrol.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{folder}/scontrol.log"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder / "scontrol.log"


def slurm_env(ntasks, procid, job_id=JOB_ID):
    """The variables srun sets for one task of an ``ntasks``-task job on one node."""
    return {"SLURM_NTASKS": str(ntasks), "SLURM_NTASKS_PER_NODE": str(ntasks), "SLURM_PROCID": str(procid),
            "SLURM_LOCALID": str(procid), "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_NODELIST": "127.0.0.1",
            "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": "urd"}


class SignalAt(Callback):
    """Sends SIGUSR1 to this process after iteration ``at`` (as SLURM does, 90 s before the time limit)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.iteration == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def test_sigusr1_checkpoints_requeues_and_the_requeued_job_matches_an_uninterrupted_run(mvtec_root, tmp_path,
                                                                                          monkeypatch):
    # 6 train images, batch 2: 3 iterations per epoch, so the preemption (after iteration 2) cuts an epoch.
    args = tiny(mvtec_root, tmp_path / "slurm", "trainer.max_steps=3", "resume=auto")
    whole = load_config(tiny(mvtec_root, tmp_path / "whole", "trainer.max_steps=3"))
    train(whole)
    log = fake_scontrol(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for key, value in slurm_env(1, 0).items():
        monkeypatch.setenv(key, value)
    cfg = load_config(args)
    assert train(cfg, callbacks=[SignalAt(1)]) == {}  # stopped, requeued, no final evaluation
    run = RunFolder.of(cfg).path
    assert log.read_text().split() == ["requeue", JOB_ID]
    assert (run / "hpc_ckpt_1.ckpt").is_file() and not (run / "metrics.json").exists()
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert hpc["global_step"] == 4  # iteration 2 complete: teacher and student steps, nothing lost
    assert RunFolder.of(load_config(args)).path == run  # the requeued job computes the same run folder
    metrics = train(load_config(args))  # the requeued job: same command
    assert metrics and (run / "metrics.json").is_file() and not list(run.glob("hpc_ckpt_*"))
    a, b = weights(RunFolder.of(whole).path), weights(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_resume_auto_is_fresh_without_a_checkpoint_and_last_must_exist(tmp_path):
    assert resume_path("auto", RunFolder(tmp_path)) is None
    with pytest.raises(CheckpointError, match="resume=last"):
        resume_path("last", RunFolder(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resume_path("auto", RunFolder(tmp_path)) == str(tmp_path / "checkpoints" / "last.ckpt")
    for n in (2, 10):  # a preempted job's checkpoints win over last.ckpt; the highest number is the newest
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    assert resume_path("auto", RunFolder(tmp_path)) == str(tmp_path / "hpc_ckpt_10.ckpt")
