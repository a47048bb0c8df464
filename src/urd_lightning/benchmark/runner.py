"""Benchmark runner: train and evaluate every category of a benchmark, then write the results table.

``urd benchmark dataset=mvtec [experiment=paper] [seeds=111,1,2] [key=value ...] [categories=a,b] [jobs=N]
[gpus=0,1,2,3] [slurm=true [slurm_partition=P ...]] [in_process=true] [force=true] [task_index=N] [dry_run=true]
[report_only=true]``; each key also as a flag (``--categories a,b --jobs 8 --slurm --slurm-partition P``).

One (dataset, category) per process (design.md): each category runs ``python -m urd_lightning train`` in a fresh
subprocess, so memory, CUDA state and W&B runs stay separate. By default they run one after the other; ``--jobs N``
runs up to N at once, each on its own GPU (``--gpus`` picks which; on a machine without GPUs they share the CPU)
through submitit (:mod:`urd_lightning.benchmark.launchers`); ``--slurm`` submits them as one SLURM job array,
requeued and resumed when cut (:mod:`urd_lightning.benchmark.slurm`);
``--task-index`` runs one category of the list (a SLURM array task); ``--in-process`` calls ``train(cfg)`` here
(tests). ``seeds=111,1,2`` runs every category for every seed, each seed under its own run name
(``<name>-s<seed>``), then adds the mean ± std tables of :mod:`urd_lightning.benchmark.seeds`. All categories share one
run name, so their results sit side by side in
``<output_dir>/<dataset>/<category>/<run>/``. A category whose ``metrics.json`` exists for the same config is
skipped (resumable); a failed category is recorded and the runner goes on. The table and plots
(:mod:`urd_lightning.benchmark.report`) are written to ``<output_dir>/<dataset>/_reports/<run>/``.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from urd_lightning import config as urd_config
from urd_lightning.benchmark.launchers import gpu_slots, run_concurrently, run_logged
from urd_lightning.benchmark.records import RunRecord, read_run
from urd_lightning.benchmark.report import write_report
from urd_lightning.benchmark.seeds import group_by_config, group_name, parse_seeds, write_seed_report
from urd_lightning.benchmark.slurm import OPTIONS as SLURM_OPTIONS
from urd_lightning.benchmark.slurm import ArrayStillRunning, CategoryTask, SlurmOptions, run_array
from urd_lightning.benchmark.slurm import options as slurm_options
from urd_lightning.config import read_command_line
from urd_lightning.config.cli import Command, Option
from urd_lightning.config.files import dataset_categories, order_categories
from urd_lightning.data import demo
from urd_lightning.errors import ConfigError
from urd_lightning.files import ensure_writable
from urd_lightning.run.folder import RunFolder, category_log
from urd_lightning.run.identity import is_execution_key
from urd_lightning.training.train import train

log = logging.getLogger(__name__)

@dataclass
class Job:
    """One category of a benchmark: the train command line and the config it resolves to."""

    category: str
    argv: list[str]
    cfg: DictConfig

    @property
    def folder(self) -> RunFolder:
        """The category's run folder (design.md, results)."""
        return RunFolder.of(self.cfg)

    @property
    def run_dir(self) -> Path:
        """The run folder's path."""
        return self.folder.path


def benchmark_run_name(overrides: list[str]) -> str:
    """The run name shared by all categories of a benchmark.

    ``run=`` if given; else the experiment name (or ``default``) plus a short hash of the other result-changing
    overrides, so that the same command resumes into the same folders.
    """
    pairs = dict(item.split("=", 1) for item in overrides)
    if pairs.get("run"):
        return pairs["run"]
    name = pairs.get("experiment") or "default"
    rest = sorted(f"{k}={v}" for k, v in pairs.items()
                  if k not in ("experiment", "dataset") and not is_execution_key(k))
    return f"{name}-{hashlib.sha1(repr(rest).encode()).hexdigest()[:8]}" if rest else name


def plan(dataset: str, overrides: list[str], categories: list[str] | None = None, here: bool = True,
         seed: int | None = None) -> list[Job]:
    """Resolve the config of every category before training any (a typo fails in seconds, not hours).

    Args:
        dataset: Benchmark name (``configs/data/<dataset>.yaml``).
        overrides: ``key=value`` items passed to every category's training (no ``data.category``).
        categories: Subset to run; default all of the dataset's categories, in community order.
        here: The categories train on this machine (False for ``--slurm``: the trainer's devices are then checked
            on the compute node, by each category's own ``train``).
        seed: one seed of ``seeds=``: ``seed=<seed>`` for every category, and the run name (computed without it)
            ends in ``-s<seed>``, so the seeds of one config sit side by side and ``report`` groups them.

    Raises:
        ConfigError: For ``data.category`` in overrides, an unknown category or any invalid key or value.
    """
    if any(item.split("=", 1)[0] in ("data.category", "dataset") for item in overrides):
        raise ConfigError("benchmark sets dataset= and data.category itself; choose categories with --categories")
    run = benchmark_run_name([o for o in overrides if not o.startswith("seed=")] if seed is not None else overrides)
    if seed is not None:
        overrides = [*[o for o in overrides if not o.startswith(("seed=", "run="))], f"seed={seed}"]
    if not any(item.startswith("run=") for item in overrides):
        # The texture source is part of a run's identity (data.textures is not volatile, data.dtd_root is): runs on
        # procedural textures get their own folders and table, so a rerun once DTD is there never skips or mixes.
        if urd_config.load_config([f"dataset={dataset}", *overrides], here=here).data.textures == "procedural":
            run = f"{run}-procedural"
    run = f"{run}-s{seed}" if seed is not None else run
    argv_common = [f"dataset={dataset}", *[o for o in overrides if not o.startswith("run=")], f"run={run}"]
    config_dir = dict(o.split("=", 1) for o in overrides if "=" in o).get("config_dir")  # the user's dataset files
    known = (dataset_categories(dataset, config_dir) if categories is None
             else order_categories(dataset, categories, config_dir))
    return [Job(c, [*argv_common, f"data.category={c}"],
                urd_config.load_config([*argv_common, f"data.category={c}"], here=here)) for c in known]


def config_diff(job: Job) -> list[str]:
    """Identity keys (run/identity.py) whose value in the run folder's ``config.yaml`` differs from ``job``'s."""
    return [key for key, _, _ in job.folder.differences(job.cfg)]


def with_setting(job: Job, key: str, value: str) -> Job:
    """The same job with one more top-level ``key=value`` (an execution key: the run stays the same)."""
    cfg = job.cfg.copy()
    with open_dict(cfg):
        cfg[key] = value == "true" if value in ("true", "false") else value
    return Job(job.category, [*job.argv, f"{key}={value}"], cfg)


def with_resume(job: Job) -> Job:
    """The same job continuing from its run's ``checkpoints/last.ckpt`` (``resume=last``)."""
    return with_setting(job, "resume", "last")


def train_command(job: Job) -> list[str]:
    """The subprocess command of one category: ``<python> -m urd_lightning train <argv>``."""
    return [sys.executable, "-m", "urd_lightning", "train", *job.argv]


def _visible_gpus() -> int:
    return torch.cuda.device_count()


def _run_in_process(job: Job) -> str:
    try:
        train(job.cfg)
    except Exception as exc:  # noqa: BLE001 — one category's failure must not lose the others
        log.exception("category %s failed", job.category)
        return f"{type(exc).__name__}: {exc}"
    return ""


def _record(job: Job, error: str) -> RunRecord:
    if not error and job.folder.is_finished():
        return read_run(job.run_dir)
    error = error or f"training returned but wrote no {job.folder.metrics}"
    return RunRecord(job.cfg.dataset, job.category, str(job.cfg.run), "failed", job.run_dir, error=error)


def run_benchmark(
    jobs: list[Job],
    in_process: bool = False,
    gpus: list[str] | None = None,
    force: bool = False,
    collect_only: bool = False,
    on_done: Callable[[RunRecord], Any] | None = None,
    jobs_at_once: int = 0,
    slurm: SlurmOptions | None = None,
) -> list[RunRecord]:
    """Run every job that is not already finished; returns one record per job, in the jobs' order.

    Args:
        jobs: From :func:`plan`.
        in_process: Call ``train(cfg)`` in this process instead of a subprocess per category.
        gpus: Device ids; at most one subprocess per id runs at a time, with ``CUDA_VISIBLE_DEVICES`` set to it.
        jobs_at_once: Run up to this many categories at once (:mod:`~urd_lightning.benchmark.launchers`), each on
            a GPU of ``gpus`` (default: the visible ones) or, on a machine without GPUs, all on the CPU.
        force: Rerun categories that already have ``metrics.json`` (finished or from another config).
        collect_only: Do not train anything; just collect what exists (``--report-only``).
        on_done: Called with each record as it is known (progress reporting).
        slurm: Submit the categories to run as one SLURM job array instead (``jobs_at_once``: its parallelism).
    """
    records: dict[Path, RunRecord] = {}
    todo: list[Job] = []
    for job in jobs:
        if job.folder.is_finished() and not force:
            diff = config_diff(job)
            records[job.run_dir] = read_run(job.run_dir) if not diff else RunRecord(
                job.cfg.dataset, job.category, str(job.cfg.run), "conflict", job.run_dir,
                error=f"{job.run_dir} holds results of another config (differs in {', '.join(diff[:5])}); "
                "use another run= name, or --force to overwrite",
            )  # fmt: skip
            log.info("%s: %s", job.category, "already finished, skipped" if not diff else records[job.run_dir].error)
        elif collect_only:
            records[job.run_dir] = RunRecord(job.cfg.dataset, job.category, str(job.cfg.run), "missing", job.run_dir)
        else:
            todo.append(job)
    reports = jobs[0].folder.reports if jobs else None  # submitit's files of the whole launch (all seeds) go here

    def prepared(job: Job) -> Job:
        if not force and job.folder.last_checkpoint.is_file() and not config_diff(job):
            job = with_resume(job)  # an interrupted run of this config: continue it rather than start over
        elif force and config_diff(job):
            job = with_setting(job, "overwrite", "true")  # --force: another config's run is moved aside, not lost
        log.info("%s: training (%s)", job.category, " ".join(job.argv))
        return job

    def finish(job: Job, error: str) -> None:
        record = records[job.run_dir] = _record(job, error)
        log.info("%s: %s", job.category, record.status if record.status == "done" else f"FAILED — {record.error}")
        if on_done:
            on_done(record)

    def log_path(job: Job) -> Path:  # the job's own run's reports: seeds share categories, not logs
        return category_log(job.folder.reports, job.category)

    if slurm is not None and todo:
        todo = [prepared(job) for job in todo]
        tasks = [CategoryTask(train_command(job), log_path(job), job.run_dir) for job in todo]
        run_array(tasks, slurm, reports / "submitit", f"urd-{todo[0].cfg.dataset}",
                  lambda index, error: finish(todo[index], error))  # fmt: skip
    elif (jobs_at_once or gpus) and not in_process and todo:
        slots = gpu_slots(jobs_at_once, gpus, _visible_gpus())
        todo = [prepared(job) for job in todo]
        run_concurrently([(train_command(job), log_path(job)) for job in todo], slots, reports / "submitit",
                         lambda index, error: finish(todo[index], error))  # fmt: skip
    else:
        for job in todo:
            job = prepared(job)
            finish(job, _run_in_process(job) if in_process else run_logged(train_command(job), log_path(job), True))
    return [records[job.run_dir] for job in jobs]


def check_places(jobs: list[Job]) -> None:
    """One line before any category starts when a place the benchmark writes cannot be written.

    The output folder (logs, runs, the table) and, for a demo dataset still to be written, its folder; the caches
    are placed when each category's config is loaded (``config/places.py``).
    """
    if not jobs:
        return
    ensure_writable(jobs[0].cfg.output_dir, "output_dir")
    if jobs[0].cfg.data.benchmark == "demo":
        demo.check_root(jobs[0].cfg.data.root, "data.root")


BENCHMARK = Command(
    "benchmark", "Train every category of a benchmark, then write the results table beside the paper's means. Every "
    "config key is passed to each category's training; runs live in <output_dir>/<dataset>/<category>/<run>/.",
    config=True, options=(
        Option("categories", str, None, "comma-separated subset (default: all of the dataset file's)"),
        Option("seeds", str, None, "comma-separated seeds: every category for every seed, each its own run "
               "(<run>-s<seed>), then mean ± std over the seeds"),
        Option("jobs", int, 0, "train up to N categories at once, one per GPU (on a CPU-only machine all on the CPU); "
               "needs the [cluster] extra (submitit)"),
        Option("gpus", str, None, "comma-separated device ids for jobs (default: all visible); alone: jobs = their "
               "number"),
        Option("in_process", bool, False, "call train(cfg) here, not a subprocess each"),
        Option("force", bool, False, "rerun categories that already have metrics.json"),
        Option("task_index", int, None, "run only the N-th category (0-based; SLURM array tasks)"),
        Option("dry_run", bool, False, "resolve every config and print the commands only"),
        Option("report_only", bool, False, "train nothing; table of what has finished"),
        Option("plots", bool, True, "write the plots beside the CSV and markdown table", aliases=("--no-plots",)),
        *SLURM_OPTIONS,
    ), examples=(
        "urd benchmark dataset=mvtec experiment=paper",
        "urd benchmark dataset=mvtec experiment=paper --slurm --jobs 8 --slurm-partition gpu",
        "urd benchmark dataset=btad experiment=paper categories=01,03 dry_run=true",
        "urd benchmark dataset=mvtec experiment=paper seeds=111,1,2",
    ))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 when every category has finished, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parsed = read_command_line(BENCHMARK, argv)
    if parsed is None:  # --help
        return 0
    args, overrides = SimpleNamespace(**parsed.values), parsed.overrides
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pairs = dict(item.split("=", 1) for item in overrides)
    dataset = pairs.get("dataset") or urd_config.load_config([]).dataset
    overrides = [item for item in overrides if not item.startswith("dataset=")]
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    slurm = slurm_options(args)
    seeds = parse_seeds(args.seeds)
    here = slurm is None and not args.report_only
    # Every category for every seed, each a run of its own (seed-major: a cut benchmark has whole seeds done).
    jobs = [job for seed in seeds for job in plan(dataset, overrides, categories, here, seed)] if seeds else plan(
        dataset, overrides, categories, here)
    if args.task_index is not None:
        if not 0 <= args.task_index < len(jobs):
            raise ConfigError(f"--task-index {args.task_index} is out of range: {dataset} has {len(jobs)} categories "
                              f"(0..{len(jobs) - 1}: {', '.join(j.category for j in jobs)})")  # fmt: skip
        jobs = [jobs[args.task_index]]
    if args.dry_run:
        for index, job in enumerate(jobs):
            state = "finished" if job.folder.is_finished() else "to run"
            sys.stdout.write(f"[{index}] {job.category} ({state}): {' '.join(train_command(job))}\n")
        return 0
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    check_places(jobs)
    try:
        records = run_benchmark(jobs, args.in_process, gpus, args.force, args.report_only, jobs_at_once=args.jobs,
                                slurm=slurm)
    except ArrayStillRunning as stopped:  # never scancel: the array is the user's, and it may be nearly done
        again = shlex.join(["python", "-m", "urd_lightning", "benchmark", *argv, "--report-only"])
        sys.stderr.write(f"interrupted: SLURM array {stopped.array_id} keeps running (scancel {stopped.array_id} "
                         f"stops it); once it has ended, `{again}` writes the table\n")
        return 130
    if args.task_index is None:
        for run in dict.fromkeys(str(job.cfg.run) for job in jobs):  # one table per seed's run, as without seeds
            mine = [j for j in jobs if str(j.cfg.run) == run]
            paths = write_report(dataset, run, [r for r in records if r.run == run], mine[0].folder.reports,
                                 [j.category for j in mine], args.plots)
            sys.stdout.write(paths["markdown"].read_text())
            log.info("results: %s", ", ".join(str(p) for p in paths.values()))
        if len(seeds) > 1:
            for group in group_by_config(records):
                out = jobs[0].folder.reports.parent / group_name(group)  # beside the per-seed reports
                paths = write_seed_report(dataset, group, out, args.plots)
                sys.stdout.write(paths["seeds_markdown"].read_text())
                log.info("over the seeds: %s", ", ".join(str(p) for p in paths.values()))
    missing = [r for r in records if r.status != "done"]
    if missing:
        log.warning("not finished (%d): %s", len(missing), ", ".join(f"{r.category} ({r.status})" for r in missing))
    return 1 if missing else 0
