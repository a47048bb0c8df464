"""A SLURM on one machine for tests: ``sbatch``, ``srun``, ``sacct``, ``scontrol``, ``scancel`` in one script.

``install(bin_dir, state_dir)`` writes the five commands (shell wrappers calling this file) into ``bin_dir``; put
it first on PATH and set ``FAKE_SLURM_STATE=state_dir``. What they do with submitit's sbatch scripts:

- ``sbatch SCRIPT``: refuses a partition not in ``FAKE_SLURM_PARTITIONS`` (default ``gpu,debug``) as SLURM does;
  reads its ``#SBATCH`` lines (``--array=0-N%P``, ``--output``/``--error`` with ``%A``/``%a``/``%j``,
  ``--job-name``, ``--open-mode``), prints ``Submitted batch job <id>`` and leaves a scheduler process running the
  array's tasks, at most P at once, each ``bash SCRIPT`` with SLURM's job variables (``SLURM_JOB_ID`` per task,
  ``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ``SLURM_JOB_NAME``, node variables, ``SLURM_RESTART_COUNT``).
- ``srun [--output F] [--error F] CMD``: runs CMD as the job step (its own process group, recorded for
  ``scancel``) with the task variables (``SLURM_NTASKS=1``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``).
- ``sacct -o JobID,State,NodeList --parsable2 -j ID``: one line per array task (plus a ``.batch`` step line, which
  submitit skips), states PENDING, RUNNING, COMPLETED, FAILED, CANCELLED.
- ``scontrol requeue A_a``: recorded in ``<state>/scontrol.log``; the task runs again once its process has ended
  (same job id, ``SLURM_RESTART_COUNT`` + 1).
- ``scancel ID [--signal SIG]``: delivers SIG to every process of the task's step, as slurmstepd does (with
  ``FAKE_SLURM_SIGNAL_SCOPE=leader``: to the step's first process only); without ``--signal`` it cancels.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scontrol", "scancel")
FINAL = ("COMPLETED", "FAILED", "CANCELLED")


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(__file__)} {name} \"$@\"\n")
        path.chmod(0o755)


def state_dir() -> Path:
    return Path(os.environ["FAKE_SLURM_STATE"])


@contextmanager
def locked():
    with (state_dir() / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def task_file(task: str) -> Path:
    return state_dir() / "tasks" / f"{task}.json"


def read_task(task: str) -> dict:
    return json.loads(task_file(task).read_text())


def write_task(task: str, **changes) -> dict:
    """Update a task's record under the lock (read-modify-write), atomically replaced."""
    with locked():
        path = task_file(task)
        record = {**(json.loads(path.read_text()) if path.is_file() else {}), **changes}
        path.with_suffix(".tmp").write_text(json.dumps(record))
        path.with_suffix(".tmp").replace(path)
    return record


def record(name: str, argv: list[str]) -> None:
    with locked(), (state_dir() / f"{name}.log").open("a") as log:
        log.write(" ".join(argv) + "\n")


def substitute(pattern: str, array_id: str, index: str, job_id: str, name: str) -> str:
    return pattern.replace("%A", array_id).replace("%a", index).replace("%j", job_id).replace("%x", name)


def sbatch(argv: list[str]) -> int:
    script = Path(argv[-1]).resolve()
    directives = {}
    for line in script.read_text().splitlines():
        if match := re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line.strip()):
            directives[match.group(1)] = shlex.split(match.group(2))[0] if match.group(2) else True
    partitions = os.environ.get("FAKE_SLURM_PARTITIONS", "gpu,debug").split(",")
    if directives.get("partition", partitions[0]) not in partitions:
        print(f"sbatch: error: invalid partition specified: {directives['partition']}", file=sys.stderr)
        print("sbatch: error: Batch job submission failed: Invalid partition name specified", file=sys.stderr)
        return 1
    indices, parallel = [0], 1
    if "array" in directives:
        spec, _, limit = directives["array"].partition("%")
        first, _, last = spec.partition("-")
        indices = list(range(int(first), int(last or first) + 1))
        parallel = int(limit) if limit else len(indices)
    with locked():  # job ids unique across the tests of a session: the watcher of submitit caches finished ids
        counter = state_dir() / "next_id"
        array_id = int(counter.read_text()) if counter.is_file() else 1000 + int(time.time() * 1000) % 10**8 * 100
        counter.write_text(str(array_id + len(indices)))
    (state_dir() / "tasks").mkdir(exist_ok=True)
    is_array = "array" in directives
    tasks = []
    for offset, index in enumerate(indices):
        task = f"{array_id}_{index}" if is_array else str(array_id)
        write_task(task, state="PENDING", requeue=False, restarts=0, job_id=str(array_id + offset),
                   index=str(index) if is_array else "", array_id=str(array_id))
        tasks.append(task)
    plan = {"script": str(script), "tasks": tasks, "parallel": parallel, "directives": directives,
            "array": is_array, "cwd": os.getcwd()}
    (state_dir() / f"array_{array_id}.json").write_text(json.dumps(plan))
    record("sbatch", argv)
    with (state_dir() / f"scheduler_{array_id}.log").open("ab") as log:
        subprocess.Popen([sys.executable, __file__, "_schedule", str(array_id)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True)
    print(f"Submitted batch job {array_id}")
    return 0


def schedule(array_id: str) -> int:
    """Run an array's tasks, P at once; a task whose requeue was asked runs again when its process ends."""
    plan = json.loads((state_dir() / f"array_{array_id}.json").read_text())
    directives, running = plan["directives"], {}
    name = str(directives.get("job-name", "sbatch"))
    while True:
        for task in plan["tasks"]:
            if task not in running and read_task(task)["state"] == "PENDING" and len(running) < plan["parallel"]:
                running[task] = start_task(plan, task, name)
        for task, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[task]
            current = read_task(task)
            if current.get("requeue") and current["state"] != "CANCELLED":
                write_task(task, state="PENDING", requeue=False, restarts=current["restarts"] + 1, step_pgid=None)
            elif current["state"] != "CANCELLED":
                write_task(task, state="COMPLETED" if proc.returncode == 0 else "FAILED", step_pgid=None)
        if not running and all(read_task(task)["state"] in FINAL for task in plan["tasks"]):
            return 0
        time.sleep(0.05)


def start_task(plan: dict, task: str, name: str) -> subprocess.Popen:
    current = write_task(task, state="RUNNING")
    directives = plan["directives"]
    job_id, index = current["job_id"], current["index"]
    env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": name,
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_JOB_NODELIST": "127.0.0.1",
           "SLURM_NODELIST": "127.0.0.1", "SLURM_SUBMIT_DIR": plan["cwd"],
           "SLURM_RESTART_COUNT": str(current["restarts"]), "FAKE_SLURM_TASK": task}
    if plan["array"]:
        env.update(SLURM_ARRAY_JOB_ID=current["array_id"], SLURM_ARRAY_TASK_ID=index)
    for key in ("cpus-per-task", "ntasks-per-node", "gpus-per-node"):
        if key in directives:
            env["SLURM_" + key.upper().replace("-", "_")] = str(directives[key])
    output = substitute(str(directives.get("output", "slurm-%j.out")), current["array_id"], index, job_id, name)
    error = substitute(str(directives.get("error", output)), current["array_id"], index, job_id, name)
    mode = "a" if directives.get("open-mode") == "append" else "w"
    with open(output, mode) as out, open(error, mode) as err:
        return subprocess.Popen(["bash", plan["script"]], env=env, stdout=out, stderr=err, cwd=plan["cwd"])


def srun(argv: list[str]) -> int:
    task = os.environ["FAKE_SLURM_TASK"]
    current = read_task(task)
    paths, rest = {}, list(argv)
    while rest and rest[0].startswith("-"):
        flag = rest.pop(0)
        if flag in ("--output", "--error", "-o", "-e"):
            paths[flag.lstrip("-")[0]] = rest.pop(0)
    fill = {"%A": current["array_id"], "%a": current["index"], "%j": current["job_id"], "%t": "0"}
    opened = {}
    for key, pattern in paths.items():
        for tag, value in fill.items():
            pattern = pattern.replace(tag, value)
        opened[key] = open(pattern, "a")
    env = {**os.environ, "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0"}
    proc = subprocess.Popen(rest, env=env, stdout=opened.get("o"), stderr=opened.get("e", opened.get("o")),
                            start_new_session=True)  # the step: its own process group, signalled as a whole
    write_task(task, step_pgid=proc.pid)
    return proc.wait()


def sacct(argv: list[str]) -> int:
    ids = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-j"]
    lines = ["JobID|State|NodeList"]
    for path in sorted((state_dir() / "tasks").glob("*.json")):
        task = path.stem
        if task.split("_")[0] in ids:
            state = read_task(task)["state"]
            lines += [f"{task}|{state}|127.0.0.1", f"{task}.batch|{state}|127.0.0.1"]
    print("\n".join(lines))
    return 0


def scontrol(argv: list[str]) -> int:
    record("scontrol", argv)
    if argv[:1] != ["requeue"] or len(argv) != 2 or not task_file(argv[1]).is_file():
        print(f"scontrol: error: fake SLURM only knows 'requeue <array>_<task>', not {argv}", file=sys.stderr)
        return 1
    write_task(argv[1], requeue=True)
    return 0


def scancel(argv: list[str]) -> int:
    record("scancel", argv)
    rest, signame = [], None
    items = iter(argv)
    for arg in items:
        if arg in ("--signal", "-s"):
            signame = next(items)
        elif arg.startswith("--signal="):
            signame = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    targets = [p.stem for p in (state_dir() / "tasks").glob("*.json") if p.stem in rest or p.stem.split("_")[0] in rest]
    for task in targets:
        current = read_task(task)
        pgid = current.get("step_pgid")
        if signame is None:
            write_task(task, state="CANCELLED")
            signum = signal.SIGKILL
        else:
            signum = getattr(signal, signame if signame.startswith("SIG") else "SIG" + signame)
        if pgid and current["state"] in ("RUNNING", "CANCELLED"):
            try:
                if os.environ.get("FAKE_SLURM_SIGNAL_SCOPE") == "leader":
                    os.kill(pgid, signum)
                else:
                    os.killpg(pgid, signum)
            except ProcessLookupError:
                pass
    return 0


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "_schedule":
        return schedule(argv[0])
    return {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "scancel": scancel}[name](argv)


if __name__ == "__main__":
    sys.exit(main())
