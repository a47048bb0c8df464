"""Benchmark runner (``benchmark/runner.py``): planning, resuming, failures, subprocess and per-GPU scheduling, CLI.

Training is replaced by a fake that writes what train() writes (config.yaml, metrics.json) except in the end-to-end
test at the bottom, which runs the real training on the embedded demo dataset with a tiny budget.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from urd_lightning.benchmark import runner as benchmark
from urd_lightning.benchmark.runner import Job, benchmark_run_name, plan, run_benchmark
from urd_lightning.config import to_yaml
from urd_lightning.config.files import dataset_categories
from urd_lightning.errors import ConfigError

FAKE_TRAIN = r"""
import json, os, pathlib, sys, time
run_dir, category, fail = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
print("training", category, "on", os.environ.get("CUDA_VISIBLE_DEVICES"), flush=True)
if fail:
    sys.exit("CUDA out of memory (fake)")
time.sleep(0.2)
run_dir.mkdir(parents=True, exist_ok=True)
run_dir.joinpath("config.yaml").write_text(sys.argv[4])
metrics = {"dataset": sys.argv[5], "category": category, "run": run_dir.name, "final": {"image_AUROC": 0.5},
           "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "t": time.time()}
run_dir.joinpath("metrics.json").write_text(json.dumps(metrics))
"""


def write_fake_results(job: Job, value: float = 0.9) -> None:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "config.yaml").write_text(to_yaml(job.cfg))
    final = {"image_AUROC": value, "pixel_AUROC": value, "pixel_AUPRO": value, "pixel_AUPRO_per_image": value}
    payload = {"dataset": job.cfg.dataset, "category": job.category, "run": str(job.cfg.run), "final": final}
    (job.run_dir / "metrics.json").write_text(json.dumps(payload))


@pytest.fixture
def fake_in_process(monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    failing: set[str] = set()

    def fake(job: Job) -> str:
        calls.append(job.category)
        if job.category in failing:
            return "RuntimeError: boom"
        write_fake_results(job)
        return ""

    monkeypatch.setattr(benchmark, "_run_in_process", fake)
    return calls, failing


def test_plan_resolves_every_category_in_community_order(tmp_path: Path):
    jobs = plan("mvtec", ["experiment=paper", f"output_dir={tmp_path}"])
    assert [j.category for j in jobs] == dataset_categories("mvtec")  # the dataset file's order
    assert {str(j.cfg.run) for j in jobs} == {"paper"}
    by_cat = {j.category: j for j in jobs}
    assert by_cat["cable"].cfg.trainer.max_steps == 10000  # the dataset file's per-category budget still applies
    assert by_cat["bottle"].run_dir == tmp_path / "mvtec" / "bottle" / "paper"
    assert "data.category=bottle" in by_cat["bottle"].argv and "dataset=mvtec" in by_cat["bottle"].argv


def test_plan_fails_fast_on_bad_input():
    with pytest.raises(ConfigError, match="model.injektion"):
        plan("demo", ["model.injektion=gii"])
    with pytest.raises(ConfigError, match="--categories"):
        plan("demo", ["data.category=weave"])
    with pytest.raises(ConfigError, match="unknown category"):
        plan("demo", [], categories=["nope"])


def test_run_name_is_shared_stable_and_ignores_where_runs_execute():
    assert benchmark_run_name(["experiment=rd4ad"]) == "rd4ad"
    assert benchmark_run_name(["run=mine", "experiment=rd4ad"]) == "mine"
    a = benchmark_run_name(["experiment=paper", "optim.lr_student=0.001"])
    assert a.startswith("paper-") and a != "paper"
    assert a == benchmark_run_name(["optim.lr_student=0.001", "experiment=paper", "data.num_workers=1"])
    assert a != benchmark_run_name(["experiment=paper", "optim.lr_student=0.002"])
    assert benchmark_run_name(["output_dir=/x", "data.root=/y"]) == "default"


def test_resume_skips_finished_and_failure_does_not_stop_the_others(tmp_path: Path, fake_in_process):
    calls, failing = fake_in_process
    jobs = plan("mvtec", [f"output_dir={tmp_path}"], categories=["bottle", "carpet", "zipper"])
    failing.add("carpet")
    records = run_benchmark(jobs, in_process=True)
    assert [(r.category, r.status) for r in records] == [("carpet", "failed"), ("bottle", "done"), ("zipper", "done")]
    assert "boom" in records[0].error
    failing.clear()
    calls.clear()
    records = run_benchmark(jobs, in_process=True)
    assert calls == ["carpet"]  # only the failed one is retried
    assert all(r.status == "done" for r in records)
    run_benchmark(jobs, in_process=True, force=True)
    assert calls == ["carpet", "carpet", "bottle", "zipper"]


def test_interrupted_category_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen: list[Job] = []

    def fake(job: Job) -> str:
        seen.append(job)
        write_fake_results(job)
        return ""

    monkeypatch.setattr(benchmark, "_run_in_process", fake)
    jobs = plan("mvtec", [f"output_dir={tmp_path}", "run=r"], categories=["bottle", "cable"])
    for job in jobs:  # both were interrupted: config.yaml and a checkpoint, no metrics.json
        (job.run_dir / "checkpoints").mkdir(parents=True)
        (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        (job.run_dir / "config.yaml").write_text(to_yaml(job.cfg))
    (jobs[1].run_dir / "config.yaml").write_text(to_yaml(plan("mvtec", ["seed=5"], ["cable"])[0].cfg))
    run_benchmark(jobs, in_process=True)
    assert seen[0].cfg.resume == "last" and "resume=last" in seen[0].argv
    assert seen[1].cfg.resume is None  # its checkpoint is from another config (seed): start over


def test_results_of_another_config_are_a_conflict_not_a_skip(tmp_path: Path, fake_in_process):
    calls, _ = fake_in_process
    old = plan("mvtec", [f"output_dir={tmp_path}", "run=r", "optim.lr_student=0.001"], categories=["bottle"])
    run_benchmark(old, in_process=True)
    new = plan("mvtec", [f"output_dir={tmp_path}", "run=r", "optim.lr_student=0.002", "data.num_workers=0"],
               categories=["bottle"])  # fmt: skip
    (record,) = run_benchmark(new, in_process=True)
    assert record.status == "conflict" and "optim.lr_student" in record.error and "num_workers" not in record.error
    assert calls == ["bottle"]


def test_report_only_lists_missing(tmp_path: Path, fake_in_process, capsys: pytest.CaptureFixture[str]):
    jobs = plan("mvtec", [f"output_dir={tmp_path}", "run=r", "data.textures=procedural"], categories=["bottle", "wood"])
    write_fake_results(jobs[1])  # bottle finished, wood not (order: wood is a texture, listed first)
    code = benchmark.main(["dataset=mvtec", f"output_dir={tmp_path}", "run=r", "data.textures=procedural",
                           "--categories", "bottle,wood",
                           "--report-only", "--no-plots"])  # fmt: skip
    assert code == 1
    table = (tmp_path / "mvtec" / "_reports" / "r" / "results.md").read_text()
    assert "wood (missing)" in table and "| bottle † | 90.0 |" in table  # † procedural textures (no DTD here)
    assert fake_in_process[0] == []


def test_subprocess_runner_logs_each_category_and_records_exit_codes(tmp_path: Path, monkeypatch):
    jobs = plan("demo", [f"output_dir={tmp_path}", "run=r"])
    fail = {jobs[0].category}

    def command(job: Job) -> list[str]:
        flag = "1" if job.category in fail else "0"
        return [sys.executable, "-c", FAKE_TRAIN, str(job.run_dir), job.category, flag, to_yaml(job.cfg), "demo"]

    monkeypatch.setattr(benchmark, "train_command", command)
    records = run_benchmark(jobs)
    assert records[0].status == "failed" and "exit code 1" in records[0].error and "out of memory" in records[0].error
    assert records[1].status == "done"
    logs = tmp_path / "demo" / "_reports" / "r" / "logs"
    assert f"training {jobs[1].category}" in (logs / f"{jobs[1].category}.log").read_text()


def test_each_seeds_run_keeps_its_own_category_logs_and_a_rerun_appends(tmp_path: Path, monkeypatch):
    # Seeds share category names: one shared logs/ folder let the last seed's log replace the others'.
    jobs = [job for seed in (111, 1) for job in plan("demo", [f"output_dir={tmp_path}", "run=r"], seed=seed)]
    failing = {str(jobs[0].run_dir)}

    def command(job: Job) -> list[str]:
        flag = "1" if str(job.run_dir) in failing else "0"
        code = "import sys; print('run dir', sys.argv[1], flush=True)" + FAKE_TRAIN
        return [sys.executable, "-c", code, str(job.run_dir), job.category, flag, to_yaml(job.cfg), "demo"]

    monkeypatch.setattr(benchmark, "train_command", command)
    run_benchmark(jobs)
    failing.clear()
    run_benchmark(jobs)  # the failed category again: a resumed benchmark
    assert len({job.folder.reports for job in jobs}) == 2  # one reports folder per seed's run
    for job in jobs:
        log = (job.folder.reports / "logs" / f"{job.category}.log").read_text()
        assert log.count("# started") == (2 if job is jobs[0] else 1)
        assert set(re.findall(r"^run dir (.*)$", log, flags=re.M)) == {str(job.run_dir)}
    first = (jobs[0].folder.reports / "logs" / f"{jobs[0].category}.log").read_text()
    assert "out of memory" in first  # the cut attempt's output is still there


def test_one_process_per_gpu(tmp_path: Path, monkeypatch):
    jobs = plan("mvtec", [f"output_dir={tmp_path}", "run=r"], categories=["bottle", "cable", "capsule", "carpet"])

    def command(job: Job) -> list[str]:
        return [sys.executable, "-c", FAKE_TRAIN, str(job.run_dir), job.category, "0", to_yaml(job.cfg), "mvtec"]

    monkeypatch.setattr(benchmark, "train_command", command)
    records = run_benchmark(jobs, gpus=["0", "1"])
    assert all(r.status == "done" for r in records)
    assert {r.metrics["gpu"] for r in records} == {"0", "1"}


# A fake training that waits until every category of the benchmark has started (or gives up after argv[4] seconds):
# it can only succeed when the categories run at the same time.
BARRIER_TRAIN = r"""
import pathlib, sys, time
barrier, category, expected, patience = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
barrier.mkdir(parents=True, exist_ok=True)
barrier.joinpath(category).touch()
deadline = time.time() + patience
while len(list(barrier.iterdir())) < expected:
    if time.time() > deadline:
        sys.exit("the other categories never started")
    time.sleep(0.05)
"""


@pytest.mark.parametrize("at_once", [2, 1])
def test_jobs_runs_categories_at_the_same_time(tmp_path: Path, monkeypatch, at_once: int):
    jobs = plan("demo", [f"output_dir={tmp_path}", "run=r"])
    assert len(jobs) == 2

    def command(job: Job) -> list[str]:
        patience = "120" if at_once == 2 else "1"  # 120: a hang guard; 1: the other never starts, however long
        barrier = [sys.executable, "-c", BARRIER_TRAIN, str(tmp_path / "barrier"), job.category, "2", patience]
        fake = [sys.executable, "-c", FAKE_TRAIN, str(job.run_dir), job.category, "0", to_yaml(job.cfg), "demo"]
        return ["sh", "-c", f"{shlex.join(barrier)} && {shlex.join(fake)}"]

    monkeypatch.setattr(benchmark, "train_command", command)
    records = run_benchmark(jobs, jobs_at_once=at_once)
    # --jobs 1 runs them one after the other: the first waits for the second in vain (the test's own control).
    assert [r.status for r in records] == (["done", "done"] if at_once == 2 else ["failed", "done"]), records
    if at_once == 1:
        assert "never started" in records[0].error


def test_jobs_beyond_the_gpus_is_a_one_line_error():
    from urd_lightning.benchmark.launchers import gpu_slots

    assert gpu_slots(2, None, 0) == [None, None] and gpu_slots(0, ["3", "1"], 8) == [3, 1]
    assert gpu_slots(2, None, 4) == [0, 1]
    with pytest.raises(ConfigError, match="--jobs 8 but only 4 GPU"):
        gpu_slots(8, None, 4)
    with pytest.raises(ConfigError, match="integer device ids"):
        gpu_slots(0, ["GPU-a1"], 0)


def test_dry_run_and_task_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert benchmark.main(["dataset=btad", f"output_dir={tmp_path}", "experiment=paper", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all("-m urd_lightning train dataset=btad" in line for line in lines)
    assert "data.category=02" in lines[1] and "run=paper" in lines[1] and "experiment=paper" in lines[1]
    assert benchmark.main(["dataset=btad", "--task-index", "2", "--dry-run"]) == 0
    assert "data.category=03" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="out of range"):
        benchmark.main(["dataset=btad", "--task-index", "3", "--dry-run"])
    with pytest.raises(ConfigError, match="--frobnicate"):
        benchmark.main(["dataset=btad", "--frobnicate"])


def tiny_demo(tmp_path: Path, data_root: Path) -> list[str]:
    return [
        "dataset=demo", f"output_dir={tmp_path}", "run=tiny", "logger=none", "model.backbone=resnet18",
        "model.pretrained=false", "trainer.max_steps=1", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.enable_progress_bar=false", "data.image_size=32", "data.train_batch_size=2", "data.eval_batch_size=16",
        "data.num_workers=0", f"data.root={data_root}", f"data.cache_dir={tmp_path / 'cache'}", "eval.num_samples=1",
        "data.textures=procedural",  # the same on machines with datasets/dtd (the table marks procedural rows)
    ]  # fmt: skip


def test_demo_benchmark_end_to_end(tmp_path: Path):
    """benchmark -> table with the real training (in-process) on one demo category; the full demo is `slow`."""
    argv = [*tiny_demo(tmp_path, tmp_path / "demo_data"), "--in-process", "--categories", "weave"]
    assert benchmark.main(argv) == 0
    report = tmp_path / "demo" / "_reports" / "tiny"
    table = (report / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| weave † |"))  # † procedural textures
    metrics = json.loads((tmp_path / "demo" / "weave" / "tiny" / "metrics.json").read_text())
    assert row.split("|")[2].strip() == f"{100 * metrics['final']['image_AUROC']:.1f}"
    assert "**mean** (1/1)" in table and (report / "bars.png").is_file() and (report / "roc_curves.png").is_file()
    csv_text = (report / "results.csv").read_text()
    assert "config.model.backbone" in csv_text and "train_s" in csv_text
    # Resumable: a second call trains nothing (the checkpoint is untouched) and gives the same table.
    ckpt = tmp_path / "demo" / "weave" / "tiny" / "checkpoints" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    assert benchmark.main(argv) == 0
    assert ckpt.stat().st_mtime_ns == stamp and (report / "results.md").read_text() == table


@pytest.mark.slow
def test_demo_benchmark_every_category_through_the_cli(tmp_path: Path):
    """What `make benchmark` runs: the CLI, one subprocess per category, every demo category, then the table."""
    import subprocess

    argv = [sys.executable, "-m", "urd_lightning", "benchmark", *tiny_demo(tmp_path, tmp_path / "demo_data")]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "**mean** (2/2)" in done.stdout
    for category in ("weave", "disc"):
        assert (tmp_path / "demo" / category / "tiny" / "metrics.json").is_file()
        assert (tmp_path / "demo" / "_reports" / "tiny" / "logs" / f"{category}.log").is_file()


def times(log: Path) -> tuple[float, float]:
    """(started, ended) wall-clock times a category's log records."""
    marks = dict(re.findall(r"^# (started|ended) ([0-9.]+)", log.read_text(), flags=re.M))
    return float(marks["started"]), float(marks["ended"])


@pytest.mark.slow
def test_demo_with_two_jobs_runs_both_at_once_and_matches_the_sequential_run(tmp_path: Path):
    """--jobs 2 on the CPU: two training processes at the same time, the same metrics as one after the other."""
    finals = {}
    for mode, extra in (("sequential", []), ("parallel", ["--jobs", "2"])):
        out = tmp_path / mode
        assert benchmark.main([*tiny_demo(out, tmp_path / "demo_data"), *extra]) == 0
        finals[mode] = {c: json.loads((out / "demo" / c / "tiny" / "metrics.json").read_text())["final"]
                        for c in ("weave", "disc")}  # fmt: skip
    assert finals["parallel"] == finals["sequential"]
    logs = tmp_path / "parallel" / "demo" / "_reports" / "tiny" / "logs"
    (weave_start, weave_end), (disc_start, disc_end) = times(logs / "weave.log"), times(logs / "disc.log")
    assert max(weave_start, disc_start) < min(weave_end, disc_end)  # each started before the other ended


# ---- cluster scripts: they parse, and the commands they build resolve to valid configs -------------------------
SLURM = Path(__file__).parents[2] / "experiments" / "slurm"


@pytest.mark.parametrize("script", ["array_categories.sbatch", "multinode_ddp.sbatch"])
def test_slurm_scripts_parse(script: str):
    import subprocess

    assert subprocess.run(["bash", "-n", str(SLURM / script)]).returncode == 0


def test_array_task_trains_its_category(tmp_path: Path):
    import os
    import subprocess

    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "3", "DATASET": "mvtec", "PYTHON": sys.executable,
           "ARGS": f"experiment=paper output_dir={tmp_path} --dry-run", "SLURM_CPUS_PER_TASK": "6"}  # fmt: skip
    done = subprocess.run(["bash", str(SLURM / "array_categories.sbatch")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert dataset_categories("mvtec")[3] == "tile" and "data.category=tile" in line
    assert "trainer.devices=1" in line and "data.num_workers=6" in line and "run=paper " in line
    # The dependent --report-only job (README) computes the same run name without the per-task keys.
    assert benchmark_run_name(["experiment=paper", "trainer.devices=1", "data.num_workers=6"]) == "paper"


def test_multinode_script_builds_a_valid_ddp_config(tmp_path: Path):
    import os
    import shlex
    import subprocess

    from lightning.pytorch.strategies import DDPStrategy

    from urd_lightning.config import load_config
    from urd_lightning.training.builders import trainer_kwargs

    fake_srun = tmp_path / "srun"
    fake_srun.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {shlex.quote(str(tmp_path / "argv"))}\n')
    fake_srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_NNODES": "2",
           "SLURM_NTASKS_PER_NODE": "4", "DATASET": "visa", "CATEGORY": "pcb1", "ARGS": "experiment=paper"}  # fmt: skip
    done = subprocess.run(["bash", str(SLURM / "multinode_ddp.sbatch")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[1:4] == ["-m", "urd_lightning", "train"]
    cfg = load_config(argv[4:], here=False)  # a GPU node's config: this machine's GPUs are not the node's
    assert (cfg.dataset, cfg.data.category, cfg.model.injection) == ("visa", "pcb1", "gii")
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.resume) == (2, 4, "auto")
    # No strategy key: 8 processes get DDP with find_unused_parameters=True (training/builders.py).
    strategy = trainer_kwargs(cfg)["strategy"]
    assert isinstance(strategy, DDPStrategy) and strategy._ddp_kwargs["find_unused_parameters"] is True


def readme_commands(module_command: str) -> list[list[str]]:
    """Arguments of every documented `-m urd_lightning <module_command>` line in experiments/README.md."""
    import re
    import shlex

    text = (Path(__file__).parents[2] / "experiments" / "README.md").read_text().replace("\\\n", " ")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line.split(" #")[0].strip("$ ").replace("$e", "paper"))
            at = words.index("-m") if "-m" in words else -1
            if at >= 0 and words[at + 1 : at + 3] == ["urd_lightning", module_command]:
                found.append(words[at + 3 :])
    return found


def test_documented_commands_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from urd_lightning.config import load_config

    trains, benches = readme_commands("train"), readme_commands("benchmark")
    assert trains and len(benches) >= 5
    for argv in trains:
        load_config(argv)
    for argv in benches:  # the runner's flags parse, and the overrides resolve (for one category: fast)
        parsed = benchmark.read_command_line(benchmark.BENCHMARK, argv)
        args, pairs = parsed.values, dict(item.split("=", 1) for item in parsed.overrides)
        dataset = pairs.pop("dataset", "demo")
        first = args["categories"].split(",")[:1] if args["categories"] else dataset_categories(dataset)[:1]
        plan(dataset, [f"{k}={v}" for k, v in pairs.items()], categories=first)
