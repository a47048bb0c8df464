"""``benchmark --slurm`` (``benchmark/slurm.py``) on a SLURM simulated for real on this machine.

``helpers/fake_slurm.py`` stands in for ``sbatch``/``srun``/``sacct``/``scontrol``/``scancel``: submitit's own sbatch
script runs, each array task as a process with SLURM's variables, states read back through ``sacct``, signals and
requeues as SLURM delivers them. The demo's two categories go through it and give the sequential run's metrics; a
task preempted mid-training is requeued by submitit (once) and resumes exactly (``slow``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_runner import FAKE_TRAIN, tiny_demo

from helpers import fake_slurm
from urd_lightning.benchmark import runner as benchmark
from urd_lightning.benchmark import slurm
from urd_lightning.benchmark.runner import Job
from urd_lightning.config import to_yaml
from urd_lightning.config.files import dataset_categories
from urd_lightning.errors import ConfigError
from urd_lightning.training import preemption

GUARD_S = 600  # hang guard only: reached by a deadlock, never by a slow machine


@pytest.fixture
def fake_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The fake SLURM commands first on PATH; afterwards every task still running is cancelled."""
    state = tmp_path / "slurm-state"
    fake_slurm.install(tmp_path / "slurm-bin", state)
    monkeypatch.setenv("PATH", f"{tmp_path / 'slurm-bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_STATE", str(state))
    yield state
    arrays = [p.stem.split("_")[1] for p in state.glob("array_*.json")]
    if arrays:
        subprocess.run([sys.executable, fake_slurm.__file__, "scancel", *arrays],
                       env={**os.environ, "FAKE_SLURM_STATE": str(state)}, check=False)


def wait_for(condition, what: str) -> None:
    end = time.monotonic() + GUARD_S
    while not condition():
        assert time.monotonic() < end, f"hang guard: {what}"
        time.sleep(0.1)


def finals(out: Path) -> dict:
    return {c: json.loads((out / "demo" / c / "tiny" / "metrics.json").read_text())["final"] for c in ("weave", "disc")}


# A fake training (no torch start-up) that records what its process sees and waits until both demo categories have
# started (the hang guard aside): it can only finish when the array runs its tasks at the same time.
SEEN_TRAIN = r"""
import json, os, pathlib, signal, sys, time
barrier, run_dir, category = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
barrier.mkdir(parents=True, exist_ok=True)
barrier.joinpath(category).touch()
deadline = time.time() + 600
while len(list(barrier.iterdir())) < 2:
    if time.time() > deadline:
        sys.exit("the other category never started")
    time.sleep(0.05)
run_dir.mkdir(parents=True, exist_ok=True)
run_dir.joinpath("config.yaml").write_text(sys.argv[4])
keys = ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID",
        "URD_PARENT_REQUEUES", "URD_FROM_SETUP")
seen = {key: os.environ.get(key) for key in keys}
seen["usr2_ignored"] = signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
metrics = {"dataset": "demo", "category": category, "run": run_dir.name, "final": {"image_AUROC": 0.5}, "seen": seen}
run_dir.joinpath("metrics.json").write_text(json.dumps(metrics))
"""


def test_demo_categories_run_as_one_array_at_once(tmp_path: Path, fake_cluster: Path, monkeypatch):
    def command(job: Job) -> list[str]:
        return [sys.executable, "-c", SEEN_TRAIN, str(tmp_path / "barrier"), str(job.run_dir), job.category,
                to_yaml(job.cfg)]  # fmt: skip

    monkeypatch.setattr(benchmark, "train_command", command)
    argv = ["dataset=demo", f"output_dir={tmp_path}", "run=r", "--slurm", "jobs=2", "--slurm-time", "1:30:00",
            "--slurm-param", "account=abc", "--slurm-setup", "export URD_FROM_SETUP=yes", "--no-plots"]  # fmt: skip
    assert benchmark.main(argv) == 0
    reports = tmp_path / "demo" / "_reports" / "r"
    assert "**mean** (2/2)" in (reports / "results.md").read_text()
    # One array of both categories, two at once, one task and one GPU each, our options in submitit's script.
    (script,) = (reports / "submitit").glob("*_submission.sh")
    for line in ("--array=0-1%2", "--gpus-per-node=1", "--ntasks-per-node=1", "--time=90", "--account=abc",
                 "--signal=USR2@90", "--job-name=urd-demo", "export URD_FROM_SETUP=yes"):  # fmt: skip
        assert line in script.read_text(), line
    seen = [json.loads((tmp_path / "demo" / c / "r" / "metrics.json").read_text())["seen"] for c in ("weave", "disc")]
    assert sorted(s["SLURM_ARRAY_TASK_ID"] for s in seen) == ["0", "1"] and len({s["SLURM_JOB_ID"] for s in seen}) == 2
    assert len({s["SLURM_ARRAY_JOB_ID"] for s in seen}) == 1
    for one in seen:  # a task of the array, its training told that submitit requeues, SLURM's USR2 ignored
        assert (one["SLURM_NTASKS"], one["SLURM_PROCID"], one["URD_FROM_SETUP"]) == ("1", "0", "yes")
        assert one["URD_PARENT_REQUEUES"] == "submitit" and one["usr2_ignored"] is True
    for category in ("weave", "disc"):
        log = (reports / "logs" / f"{category}.log").read_text()
        assert len(re.findall(r"^# started .* attempt 0$", log, flags=re.M)) == 1
        assert re.search(r"^# ended .* exit code 0$", log, flags=re.M)
    assert not (fake_cluster / "scontrol.log").exists()  # nothing was requeued
    # Resumable as with the other launchers: everything has finished, so nothing is submitted again.
    assert benchmark.main(argv) == 0 and len(list(fake_cluster.glob("array_*.json"))) == 1


@pytest.mark.slow
def test_demo_as_a_slurm_array_matches_the_sequential_run(tmp_path: Path, fake_cluster: Path):
    """The real training of both demo categories through the array: the sequential run's metrics."""
    data = tmp_path / "demo_data"
    assert benchmark.main([*tiny_demo(tmp_path / "sequential", data), "--in-process"]) == 0
    assert benchmark.main([*tiny_demo(tmp_path / "slurm", data), "--slurm", "--jobs", "2"]) == 0
    assert finals(tmp_path / "slurm") == finals(tmp_path / "sequential")
    assert "**mean** (2/2)" in (tmp_path / "slurm" / "demo" / "_reports" / "tiny" / "results.md").read_text()


# A training process that, once running, does what the Requeue callback does on SIGUSR1 (flag, then save and stop)
# and writes more than a pipe holds while it stops: it only gets to exit if its output keeps being read.
CHATTY_TRAIN = r"""
import pathlib, signal, sys, time
asked = []
signal.signal(signal.SIGUSR1, lambda *_: asked.append(1))
pathlib.Path(sys.argv[1]).touch()
while not asked:
    time.sleep(0.01)
sys.stdout.write("x" * 1_000_000)
print("saved hpc_ckpt_1.ckpt", flush=True)
"""


def test_checkpoint_stops_the_training_while_draining_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """What submitit does on its signal, in the task's own process: the handler interrupts the task's wait in the
    main thread, calls checkpoint() and exits; the training must have saved and stopped by itself (exit code 0)."""
    monkeypatch.setattr(slurm, "STOP_WAIT_S", 20.0)  # a child blocked on a full pipe is killed after this
    ready, log_path = tmp_path / "ready", tmp_path / "logs" / "weave.log"
    task = slurm.CategoryTask([sys.executable, "-c", CHATTY_TRAIN, str(ready), "resume=last"], log_path,
                              tmp_path / "run")  # fmt: skip
    resubmitted = []

    def submitit_handler(signum, frame):
        resubmitted.append(task.checkpoint())
        sys.exit(-1)  # submitit exits after requeueing

    def signal_when_ready() -> None:
        wait_for(ready.is_file, "the training never started")
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        threading.Thread(target=signal_when_ready, daemon=True).start()
        with pytest.raises(SystemExit):
            task()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    following = resubmitted[0]
    log = log_path.read_text()
    assert "x" * 1_000_000 in log and "saved hpc_ckpt_1.ckpt" in log
    assert re.search(r"^# ended .* exit code 0 \(stopped for a requeue", log, flags=re.M), log[-300:]
    assert log.count("# ended") == 1
    nxt = following.function
    assert isinstance(nxt, slurm.CategoryTask) and (nxt.attempt, nxt.finished) == (1, False)
    # The requeued attempt appends to the log and resumes from the preemption checkpoint.
    nxt.command = [sys.executable, "-c", "import sys; print(sys.argv[1:])", "x=1", "resume=last"]
    assert nxt() == ""
    log = log_path.read_text()
    assert "saved hpc_ckpt_1.ckpt" in log and "['x=1', 'resume=auto']" in log and "attempt 1" in log


def test_a_task_slurm_requeued_by_itself_resumes_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A preemption SLURM requeues without submitit (SLURM_RESTART_COUNT > 0) runs the first attempt's pickle."""
    log_path = tmp_path / "logs" / "weave.log"
    log_path.parent.mkdir()
    log_path.write_text("# started 1 pid 1 attempt 0\n")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    task = slurm.CategoryTask([sys.executable, "-c", "import sys; print(sys.argv[1:])", "x=1", "resume=last"],
                              log_path, tmp_path / "run")  # fmt: skip
    assert task() == ""
    log = log_path.read_text()
    assert log.startswith("# started 1 pid 1") and "['x=1', 'resume=auto']" in log and "attempt 1" in log


def test_the_training_process_never_requeues_itself_under_submitit():
    assert slurm.PARENT_REQUEUES_ENV == preemption.PARENT_REQUEUES_ENV  # one name on both sides


def test_bad_slurm_flags_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base = ["dataset=demo", f"output_dir={tmp_path}", "run=r"]
    for extra, message in ((["--slurm", "--slurm-time", "soon"], "--slurm-time 'soon'"),
                           (["--slurm-partition", "gpu"], "--slurm-partition only applies"),
                           (["--slurm", "--slurm-param", "=x"], "--slurm-param '=x'"),
                           (["--slurm", "gpus=0,1"], "--slurm and --gpus"),
                           (["--slurm", "--task-index", "0"], "--slurm and --task-index")):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)) as caught:
            benchmark.main([*base, *extra])
        assert "\n" not in str(caught.value)
    assert slurm.time_to_minutes("90") == 90 and slurm.time_to_minutes("1-02:00:30") == 1561
    assert slurm.time_to_minutes("4:00:00") == 240 and slurm.time_to_minutes("10:30") == 11  # M:S
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun: not a cluster
    with pytest.raises(ConfigError, match="--slurm needs SLURM's commands") as caught:
        benchmark.main([*base, "--slurm"])
    assert "\n" not in str(caught.value)
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    with pytest.raises(ConfigError, match=r"submitit is not installed \(--slurm") as caught:
        benchmark.main([*base, "--slurm"])
    assert "\n" not in str(caught.value)


def quick_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Categories train with a 0.2 s fake that writes what train() writes (no torch start-up)."""

    def command(job: Job) -> list[str]:
        return [sys.executable, "-c", FAKE_TRAIN, str(job.run_dir), job.category, "0", to_yaml(job.cfg), "demo"]

    monkeypatch.setattr(benchmark, "train_command", command)


def test_sbatch_refusal_is_one_line(tmp_path: Path, fake_cluster: Path, monkeypatch: pytest.MonkeyPatch):
    quick_training(monkeypatch)
    with pytest.raises(ConfigError, match="sbatch refused the array: .*Invalid partition") as caught:
        benchmark.main(["dataset=demo", f"output_dir={tmp_path}", "run=r", "--slurm", "--slurm-partition", "nope"])
    assert "\n" not in str(caught.value)


def test_ctrl_c_leaves_the_array_running_and_says_how_to_get_the_table(tmp_path: Path, fake_cluster: Path,
                                                                       monkeypatch: pytest.MonkeyPatch, capsys):
    quick_training(monkeypatch)
    import submitit

    def interrupted(self, force_check: bool = False) -> bool:
        raise KeyboardInterrupt

    done = submitit.SlurmJob.done
    monkeypatch.setattr(submitit.SlurmJob, "done", interrupted)
    argv = ["dataset=demo", f"output_dir={tmp_path}", "run=r", "data.textures=procedural", "--slurm", "--no-plots"]
    assert benchmark.main(argv) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "keeps running" in line and "--report-only" in line
    assert not (fake_cluster / "scancel.log").exists()  # never cancelled
    monkeypatch.setattr(submitit.SlurmJob, "done", done)
    # The array finishes on its own; the command the line gives then writes the table.
    metrics = [tmp_path / "demo" / c / "r" / "metrics.json" for c in ("weave", "disc")]
    wait_for(lambda: all(p.is_file() for p in metrics), "the array never finished")
    command = line.split("`")[1].split()
    assert benchmark.main(command[command.index("benchmark") + 1:]) == 0
    assert "**mean** (2/2)" in (tmp_path / "demo" / "_reports" / "r" / "results.md").read_text()


# The train command with one addition: on the first attempt it waits after iteration 1 until the preemption request
# has arrived (the Requeue callback's flag), so the test's signal lands mid-training however fast the machine is.
PAUSED_TRAIN = r"""
import pathlib, sys, time
from lightning.pytorch import Callback
from urd_lightning.training import train as training
from urd_lightning.training.preemption import Requeue

paused = pathlib.Path(sys.argv[1])  # "-": never pause

class PauseOnce(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.iteration != 1 or str(paused) == "-" or paused.exists():
            return
        (requeue,) = [c for c in trainer.callbacks if isinstance(c, Requeue)]
        paused.touch()
        end = time.monotonic() + 600
        while not requeue.requested and time.monotonic() < end:
            time.sleep(0.05)

original = training.train
training.train = lambda cfg, callbacks=None: original(cfg, [*(callbacks or []), PauseOnce()])
sys.exit(training.main(sys.argv[2:]))
"""


def model_weights(run_dir: Path) -> dict:
    import torch

    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["step", "leader"])
def test_a_preempted_task_is_requeued_by_submitit_and_resumes_exactly(tmp_path: Path, fake_cluster: Path,
                                                                      monkeypatch: pytest.MonkeyPatch, scope: str):
    """SLURM's USR2 to weave's task mid-training: to every process of its step (``step``) or to submitit's process
    only (``leader``). Disc, the array's other task, runs through untouched."""
    import torch

    monkeypatch.setenv("FAKE_SLURM_SIGNAL_SCOPE", scope)
    data, steps = tmp_path / "demo_data", ["trainer.max_steps=4"]
    assert benchmark.main([*tiny_demo(tmp_path / "whole", data), *steps, "--in-process"]) == 0
    paused = tmp_path / "paused"

    def command(job: Job) -> list[str]:
        return [sys.executable, "-c", PAUSED_TRAIN, str(paused) if job.category == "weave" else "-", *job.argv]

    monkeypatch.setattr(benchmark, "train_command", command)
    out, result = tmp_path / "slurm", []
    argv = [*tiny_demo(out, data), *steps, "--slurm", "--jobs", "2"]
    waiting = threading.Thread(target=lambda: result.append(benchmark.main(argv)), daemon=True)
    waiting.start()
    wait_for(paused.is_file, "the training never reached iteration 1")
    tasks = sorted(p.stem for p in (fake_cluster / "tasks").glob("*.json"))
    task = f"{tasks[0].split('_')[0]}_{dataset_categories('demo').index('weave')}"  # the array's order
    assert len(tasks) == 2 and task in tasks
    subprocess.run(["scancel", task, "--signal", "USR2"], check=True)  # what submitit's job._interrupt() runs
    waiting.join(GUARD_S)
    assert result == [0]
    assert (fake_cluster / "scontrol.log").read_text().split() == ["requeue", task]  # submitit's, and only once
    log = (out / "demo" / "_reports" / "tiny" / "logs" / "weave.log").read_text()
    assert re.search(r"^# ended .* exit code 0 \(stopped for a requeue", log, flags=re.M), log[-2000:]
    assert "preempted at iteration 2" in log and "attempt 1" in log  # hpc_ckpt_1 after iteration 2, then resumed
    assert re.search(r"^# ended .* exit code 0$", log, flags=re.M)
    run, whole = out / "demo" / "weave" / "tiny", tmp_path / "whole" / "demo" / "weave" / "tiny"
    assert not list(run.glob("hpc_ckpt_*"))  # spent once the training finished
    assert finals(out) == finals(tmp_path / "whole")  # both categories
    assert "attempt 1" not in (out / "demo" / "_reports" / "tiny" / "logs" / "disc.log").read_text()
    a, b = model_weights(whole), model_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
