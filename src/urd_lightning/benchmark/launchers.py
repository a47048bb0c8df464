"""How a benchmark's category processes are launched: one after the other here, or several at once via submitit.

Each category is one ``python -m urd_lightning train ...`` process whatever the launcher, its output in
``_reports/<run>/logs/<category>.log`` between a ``started``/``ended`` line (wall-clock time and process id), so a
log shows when and where it ran; a rerun (a resumed benchmark) appends its own pair, so a cut attempt's output
stays. ``--jobs N`` runs up to N of these processes at once through submitit's
``LocalExecutor`` (the ``[cluster]`` extra): submitit owns the processes and their GPU (``CUDA_VISIBLE_DEVICES``);
this module only keeps N of them busy. The command is built in the parent, so the job process needs nothing of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

from urd_lightning.errors import ConfigError

# submitit's local executor stops a job after timeout_min (default 2 minutes); a category may train for days.
LOCAL_TIMEOUT_MIN = 60 * 24 * 30


def log_tail(path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns count as line ends)."""
    text = path.read_text(errors="replace").replace("\r", "\n") if path.is_file() else ""
    return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])[-500:]


def run_logged(command: list[str], log_path: Path, echo: bool = False) -> str:
    """Run one category's command, its output to ``log_path`` (and the terminal when ``echo``); "" on success."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as sink:  # append: the output of an earlier, cut attempt is kept
        sink.write(f"# started {time.time():.6f} pid {os.getpid()}\n".encode())
        sink.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(4096) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
            sink.write(chunk)
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        code = proc.wait()
        sink.write(f"\n# ended {time.time():.6f} pid {os.getpid()} exit code {code}\n".encode())
    return "" if code == 0 else f"exit code {code}: {log_tail(log_path)} (full log: {log_path})"


def import_submitit(flags: str = "--jobs and --gpus") -> Any:
    """The submitit module, or a one-line error naming the ``flags`` that need it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"submitit is not installed ({flags} run categories through it): pip install "
                          "'urd-lightning[cluster]' (or run without them, one category at a time)") from None
    return submitit


def gpu_slots(jobs: int, gpus: list[str] | None, visible: int) -> list[int | None]:
    """One entry per concurrent job: the GPU id it owns, or None (CPU) when the machine has no GPU.

    Args:
        jobs: ``--jobs`` (None/0: one job per GPU of ``gpus``).
        gpus: ``--gpus`` ids; default the first ``jobs`` of the ``visible`` GPUs.
        visible: GPUs this process sees (``torch.cuda.device_count()``).
    """
    if gpus:
        if not all(g.isdigit() for g in gpus):
            raise ConfigError(f"--gpus takes integer device ids like 0,1,2,3, not {','.join(gpus)}")
        ids = [int(g) for g in gpus]
    else:
        ids = list(range(visible))
    jobs = jobs or len(ids)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give at least 1")
    if not ids:
        return [None] * jobs  # CPU machine: N processes share the cores
    if jobs > len(ids):
        raise ConfigError(f"--jobs {jobs} but only {len(ids)} GPU(s) ({','.join(map(str, ids))}): one category "
                          f"per GPU, so use --jobs {len(ids)} or fewer")  # fmt: skip
    return list(ids[:jobs])


def run_concurrently(
    tasks: list[tuple[list[str], Path]], slots: list[int | None], folder: Path, done: Callable[[int, str], Any]
) -> None:
    """Run ``(command, log_path)`` tasks, at most one per slot at a time, each a submitit local job.

    ``done(index, error)`` is called as each task ends (``error`` is "" on success).
    """
    submitit = import_submitit()
    free: Queue[Any] = Queue()
    for gpu in slots:  # one executor per slot: its parameters pin that slot's GPU for every job it starts
        executor = submitit.LocalExecutor(folder=folder / "%j")
        executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0 if gpu is None else 1,
                                   visible_gpus=() if gpu is None else (gpu,))  # fmt: skip
        free.put(executor)

    def one(index: int) -> None:
        executor = free.get()
        try:
            command, log_path = tasks[index]
            try:
                error = executor.submit(run_logged, command, log_path).result()
            except Exception as exc:  # noqa: BLE001 — the job process died (killed, timed out): record, go on
                error = f"{type(exc).__name__}: {str(exc)[-500:]} (full log: {log_path})"
        finally:
            free.put(executor)
        done(index, error)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(one, range(len(tasks))))
