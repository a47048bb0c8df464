"""Ctrl+C during training (``training/interrupt.py``): exit code 130, one ``interrupted:`` line naming the checkpoint
and the command that continues, and that command finishes the run.

The real thing runs in a subprocess: ``python -m urd_lightning train`` gets SIGINT once its first checkpoint exists
(training has started); the fast tests check the line for each case without training.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train import tiny

from urd_lightning.config import load_config
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.interrupt import TrainingInterrupted, continue_from
from urd_lightning.training.train import train

HANG_GUARD_S = 1800  # only a hang gets near this; never a speed limit


def test_the_line_names_this_attempts_checkpoint_or_says_there_is_none(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"global_step": 6}, last)
    started = time.time() - 60  # the attempt started before last.ckpt was written: it is this attempt's
    kept, resume = continue_from(RunFolder(tmp_path), None, started, 2, 5)
    assert kept == f"the last checkpoint is {last} (iteration 3)" and resume == "resume=last"
    kept, resume = continue_from(RunFolder(tmp_path), None, time.time() + 60, 2, 5)  # an earlier attempt's last.ckpt
    assert resume is None and "no checkpoint was written yet (the first comes at iteration 5)" in kept
    # resumed from it, nothing newer
    kept, resume = continue_from(RunFolder(tmp_path), str(last), time.time() + 60, 2, 5)
    assert resume == "resume=last"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    torch.save({"global_step": 4}, hpc)
    kept, resume = continue_from(RunFolder(tmp_path), str(hpc), time.time() + 60, 2, 5)
    assert kept == f"no newer checkpoint than {hpc} (iteration 2)" and resume == f"resume={hpc}"
    line = TrainingInterrupted("training stopped after iteration 3: x", "resume=last").line(
        ["data.category=my bottle", "resume=auto"])
    assert line.endswith("continue with: python -m urd_lightning train 'data.category=my bottle' resume=last")


@pytest.mark.slow  # a subprocess trains until SIGINT, then the run is resumed to its end
def test_ctrl_c_mid_fit_exits_130_with_the_continue_command_and_the_run_resumes(mvtec_root, tmp_path):
    args = tiny(mvtec_root, tmp_path, "trainer.max_steps=100000", "checkpoint_every_n_steps=1", "run=r")
    run_dir = RunFolder.of(load_config(args)).path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "urd_lightning", "train", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():  # the first iteration is done
            assert process.poll() is None, process.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared (hang guard)"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=HANG_GUARD_S)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, output[-3000:]
    assert "Traceback" not in output and "Detected KeyboardInterrupt" not in output
    assert f"the last checkpoint is {run_dir / 'checkpoints' / 'last.ckpt'} (iteration " in lines[0]
    assert lines[0].endswith(" resume=last") and "continue with: python -m urd_lightning train data.root=" in lines[0]
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    # The command the line gives, with a budget one iteration past the checkpoint so that the resume ends soon.
    command = shlex.split(lines[0].split("continue with: python -m urd_lightning train ")[1])
    iterations = step // 2 + 1
    metrics = train(load_config([*(a for a in command if not a.startswith("trainer.max_steps=")),
                                 f"trainer.max_steps={iterations}"]))
    assert metrics and json.loads((run_dir / "metrics.json").read_text())["steps"] == iterations
