"""``benchmark --slurm``: the categories still to run as ONE SLURM job array through submitit, requeued when cut.

submitit's ``SlurmExecutor`` writes the sbatch script (``#SBATCH --array=0-<n-1>%<--jobs>``, one task and one GPU
per array task, ``--signal=USR2@90``, ``--open-mode=append``) and keeps its own files (pickled tasks, results, its
logs ``<array>_<task>_0_log.out|err``) in ``_reports/<run>/submitit/``. Each array task runs a
:class:`CategoryTask`: the same ``python -m urd_lightning train ...`` command as the other launchers, its output in
``_reports/<run>/logs/<category>.log`` (one ``# started``/``# ended`` pair per attempt).

Requeue (time limit or preemption: SLURM sends USR2 90 s before the kill, to every process of the job step).
submitit's handler in the job process calls :meth:`CategoryTask.checkpoint`, which asks the training process to
save and stop after its current iteration (SIGUSR1: the ``Requeue`` callback writes ``hpc_ckpt_<N>.ckpt``), waits
for it while its output keeps being drained, and returns the next attempt; submitit pickles that and runs
``scontrol requeue``. The next attempt trains with ``resume=auto`` and continues exactly. The training process
never requeues itself (``URD_PARENT_REQUEUES``: exactly one requeue) and ignores USR2 from its start, so that
neither it nor the loader workers it starts (they inherit an ignored signal, not a handler) die of SLURM's signal.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from urd_lightning.benchmark.launchers import import_submitit, log_tail
from urd_lightning.config.cli import Option
from urd_lightning.errors import ConfigError
from urd_lightning.run.folder import RunFolder

log = logging.getLogger(__name__)

# training.preemption.PARENT_REQUEUES_ENV (not imported: the job process that waits for training stays Lightning-free)
PARENT_REQUEUES_ENV = "URD_PARENT_REQUEUES"
DEFAULT_TIME = "4:00:00"  # fits most partitions' limits; a category cut by it is requeued and continues
# submitit requeues a task cut by its time limit at most this many times (its default is 3). Each attempt continues
# from the last checkpoint, so a short --slurm-time only costs start-ups; the bound stops a task that never
# gets through one iteration. Preemptions do not count.
MAX_TIMEOUTS = 20
# How long checkpoint() waits for the training to save and stop: SLURM kills the task 90 s (submitit's
# signal_delay_s) after its signal, and submitit still has to pickle the next attempt and run scontrol requeue.
STOP_WAIT_S = 60.0
POLL_S = 1.0  # result files are checked this often; submitit's watcher calls sacct far less often


class ArrayStillRunning(KeyboardInterrupt):
    """Ctrl-C while waiting for the array: its tasks keep running on the cluster (nothing is cancelled)."""

    def __init__(self, array_id: str) -> None:
        super().__init__(array_id)
        self.array_id = array_id


@dataclass
class SlurmOptions:
    """What ``--slurm*`` asks of each array task (sbatch parameters in submitit's names)."""

    time_min: int
    parallelism: int = 0  # --jobs: array tasks running at once (0: all)
    partition: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    params: dict[str, str | bool] = field(default_factory=dict)  # any other sbatch option (--slurm-param)
    setup: list[str] = field(default_factory=list)  # shell lines before the task (--slurm-setup)

    def executor_parameters(self, name: str, count: int) -> dict[str, Any]:
        """``SlurmExecutor.update_parameters`` keywords for an array of ``count`` tasks named ``name``."""
        chosen = {"job_name": name, "time": self.time_min, "nodes": 1, "ntasks_per_node": 1, "gpus_per_node": 1,
                  "array_parallelism": self.parallelism or count, "partition": self.partition,
                  "cpus_per_task": self.cpus_per_task, "mem": self.mem, "setup": self.setup,
                  "additional_parameters": self.params}  # fmt: skip
        return {key: value for key, value in chosen.items() if value not in (None, [], {})}


# The ``--slurm*`` keys of the ``benchmark`` command (``--slurm-partition gpu`` is ``slurm_partition=gpu``).
OPTIONS = (
    Option("slurm", bool, False, "submit every category still to run as one SLURM job array (submitit), one GPU per "
           "task, requeued and resumed when cut; jobs=N: N tasks at once (needs the [cluster] extra)"),
    Option("slurm_partition", str, None, "partition of the array's tasks"),
    Option("slurm_time", str, DEFAULT_TIME, "time limit per task, in SLURM's format (minutes, H:MM:SS, D-HH:MM...); "
           "a cut task is requeued"),
    Option("slurm_cpus", int, None, "CPUs per task (give data.num_workers=N-1 too)"),
    Option("slurm_mem", str, None, "memory per task in SLURM's syntax, e.g. 64G"),
    Option("slurm_param", list, None, "any other sbatch option, repeatable: account=abc, qos=high, constraint=a100 "
           "(KEY alone: a flag)"),
    Option("slurm_setup", list, None, "shell line run before each task, repeatable: 'module load cuda', "
           "'source .venv/bin/activate'"),
)


def options(args: Any) -> SlurmOptions | None:
    """The ``--slurm*`` options, None without ``--slurm``; a one-line ConfigError for a bad or misplaced one."""
    given = [f"--slurm-{name}" for name in ("partition", "cpus", "mem", "param", "setup")
             if getattr(args, f"slurm_{name}") not in (None, [])]  # fmt: skip
    if not args.slurm:
        if given or args.slurm_time != DEFAULT_TIME:
            raise ConfigError(f"{(given or ['--slurm-time'])[0]} only applies to a SLURM array: add --slurm")
        return None
    for flag, given_flag in (("--gpus", args.gpus is not None), ("--task-index", args.task_index is not None),
                             ("--in-process", args.in_process)):  # fmt: skip
        if given_flag:
            raise ConfigError(f"--slurm and {flag} do not go together: SLURM gives each array task its own GPU "
                              "(--jobs N caps how many run at once)")
    if args.slurm_cpus is not None and args.slurm_cpus < 1:
        raise ConfigError(f"--slurm-cpus {args.slurm_cpus}: give at least 1")
    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs}: give at least 1 (or leave it out: every task at once)")
    params: dict[str, str | bool] = {}
    for item in args.slurm_param:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", key):
            raise ConfigError(f"--slurm-param {item!r}: give an sbatch option as KEY=VALUE (account=abc) or KEY")
        params[key.replace("_", "-")] = value if sep else True
    return SlurmOptions(time_to_minutes(args.slurm_time), args.jobs, args.slurm_partition, args.slurm_cpus,
                        args.slurm_mem, params, list(args.slurm_setup))  # fmt: skip


def time_to_minutes(text: str) -> int:
    """SLURM's time formats (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``) in whole minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match or int(match.group(0).replace("-", "").replace(":", "")) == 0:
        raise ConfigError(f"--slurm-time {text!r}: give minutes or SLURM's [D-]HH:MM:SS, e.g. 240 or 4:00:00")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # H:M:S
        seconds = first * 3600 + (second or 0) * 60 + third
    else:  # M or M:S
        seconds = first * 60 + (second or 0)
    return -(-seconds // 60)


@dataclass
class CategoryTask:
    """One array task (submitit calls it in the job process): the category's training, restartable where it stopped.

    Args:
        command: the ``python -m urd_lightning train ...`` command of the category.
        log_path: ``_reports/<run>/logs/<category>.log``; every attempt appends to it.
        run_dir: the category's run folder (to tell a finished training from a stopped one).
        attempt: 0 for the first run; requeued attempts train with ``resume=auto``.
        finished: the previous attempt's training had already ended well when it was stopped.
    """

    command: list[str]
    log_path: Path
    run_dir: Path
    attempt: int = 0
    finished: bool = False

    def __call__(self) -> str:
        """Run the training to its end (or until :meth:`checkpoint` stops it); "" on success, else the error."""
        if self.finished:
            return ""
        # SLURM_RESTART_COUNT: SLURM itself requeued the task (a preemption that submitit did not handle).
        self._attempt = max(self.attempt, int(os.environ.get("SLURM_RESTART_COUNT") or 0))
        command = self.command if not self._attempt else [
            *(a for a in self.command if not a.startswith("resume=")), "resume=auto"]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._started = time.time()
        with self.log_path.open("ab") as sink:  # append: an earlier submission's or attempt's output is kept
            self._sink = sink
            sink.write(f"# started {self._started:.6f} pid {os.getpid()} attempt {self._attempt}\n".encode())
            sink.flush()
            self._child = _Child(command, sink)
            try:
                code = self._child.wait()
            finally:
                self._child.kill()  # nothing to do when it has ended; only an error here can leave it running
            if not getattr(self, "_stopped", False):  # else checkpoint() wrote this attempt's end
                sink.write(f"\n# ended {time.time():.6f} pid {os.getpid()} exit code {code}\n".encode())
        return "" if code == 0 else f"exit code {code}: {log_tail(self.log_path)} (full log: {self.log_path})"

    def checkpoint(self) -> Any:
        """Stop the training at a checkpoint and return the next attempt (submitit pickles it and requeues).

        Called by submitit's handler of its preemption/time-limit signal, in the job process's main thread.
        """
        child: _Child | None = getattr(self, "_child", None)
        attempt = getattr(self, "_attempt", self.attempt)
        finished = False
        if child is not None:
            code = child.stop(STOP_WAIT_S)
            self._stopped = True
            metrics = RunFolder(self.run_dir).metrics
            finished = code == 0 and metrics.is_file() and metrics.stat().st_mtime >= self._started
            self._sink.write(f"\n# ended {time.time():.6f} pid {os.getpid()} exit code {code} (stopped for a "
                             "requeue: submitit requeues this task, which continues with resume=auto)\n".encode())
            self._sink.flush()
        submitit = import_submitit("--slurm")
        return submitit.helpers.DelayedSubmission(replace(self, attempt=attempt + 1, finished=finished))


def _ignore_preemption_signals() -> None:
    """Ignore the preemption signals in the training process, before it starts (``preexec_fn``).

    SLURM's signal must never kill it or its loader workers; its ``Requeue`` callback replaces the SIGUSR1 setting
    with its own handler once training runs.
    """
    submitit_signal = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    for signum in {signal.SIGUSR1, signal.SIGUSR2, submitit_signal}:
        signal.signal(signum, signal.SIG_IGN)


class _Child:
    """The training process, its output drained into the log by a thread.

    The thread keeps reading while :meth:`stop` waits (the child never blocks on a full pipe), then records the
    exit code in a plain attribute: waiting polls it, holding no lock, so a wait inside a signal handler cannot
    deadlock with the wait it interrupted.
    """

    def __init__(self, command: list[str], sink: BinaryIO) -> None:
        env = {**os.environ, PARENT_REQUEUES_ENV: "submitit"}
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_ignore_preemption_signals)  # fmt: skip
        self.code: int | None = None
        self._drain = threading.Thread(target=self._copy, args=(sink,), daemon=True)
        self._drain.start()

    def _copy(self, sink: BinaryIO) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            sink.write(chunk)
            sink.flush()
        self.code = self.proc.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None while it still runs after ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.code is None and (end is None or time.monotonic() < end):
            time.sleep(0.1)
        return self.code

    def _send(self, signum: int) -> None:
        if self.code is None:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    def stop(self, wait_s: float) -> int | None:
        """Ask it to save and stop; its exit code, after a kill if it has not stopped within ``wait_s`` seconds.

        The request is resent each second (it ignores SIGUSR1 until training runs). After a kill the requeued
        attempt resumes from the last periodic checkpoint.
        """
        end = time.monotonic() + wait_s
        while self.code is None and time.monotonic() < end:
            self._send(signal.SIGUSR1)
            self.wait(1.0)
        self.kill()
        return self.code

    def kill(self) -> None:
        if self.code is None:
            self._send(signal.SIGKILL)
            self.wait(30.0)


def run_array(tasks: list[CategoryTask], opts: SlurmOptions, folder: Path, name: str,
              done: Callable[[int, str], Any]) -> None:  # fmt: skip
    """Submit ``tasks`` as one job array, then wait, calling ``done(index, error)`` as each task ends.

    Raises:
        ConfigError: no SLURM here, or sbatch refused the array (one line: its message).
        ArrayStillRunning: Ctrl-C while waiting (the array is not cancelled).
    """
    submitit = import_submitit("--slurm")
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUTS)
    except RuntimeError:  # submitit's "Could not detect srun"
        raise ConfigError("--slurm needs SLURM's commands (sbatch, srun) on PATH: run it on the cluster's login "
                          "node (on one machine, --jobs N runs categories side by side)") from None
    executor.update_parameters(**opts.executor_parameters(name, len(tasks)))
    errors = (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError)
    try:
        jobs = executor.submit_array(tasks)
    except errors as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ConfigError(f"sbatch refused the array: {lines[-1] if lines else exc}") from None
    array_id = jobs[0].job_id.split("_")[0]
    log.info("submitted SLURM array %s: %d task(s), %s at once; logs in %s, submitit's files in %s", array_id,
             len(jobs), opts.parallelism or len(jobs), tasks[0].log_path.parent, folder)
    pending = dict(enumerate(jobs))
    try:
        while pending:
            for index, job in list(pending.items()):
                if job.done():
                    del pending[index]
                    done(index, _outcome(job))
            if pending:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise ArrayStillRunning(array_id) from None


def _outcome(job: Any) -> str:
    try:
        return str(job.result())
    except Exception as exc:  # noqa: BLE001 — the task died outside its training (cancelled, killed, node failure)
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return f"{type(exc).__name__}: {' | '.join(lines[-3:])[-500:]} (submitit's logs: {job.paths.stdout})"
