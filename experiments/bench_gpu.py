"""One command that measures a GPU in a few minutes: random weights, no dataset, nothing installed.

The GPU this is written for is lent for one short, offline call (docs/performance.md, "GPU"), so the script is built
to keep whatever it measured:

- **A hard time bound.** ``--budget-s`` counts from the start of this process (read from ``/proc``, so the
  interpreter's own start-up is counted) and the script exits within it. Every measurement runs in a child process
  (``bench_gpu_sections.py``) that is killed with its process group when its share of the budget, or the budget,
  runs out; this process only waits, so nothing in it can overrun. A section that does not fit is recorded as
  skipped, one that is killed as killed.
- **Results kept at every step.** The JSON report is rewritten atomically after every section; the markdown is
  formatted from it last. SIGTERM/SIGINT (``timeout``) stop the running child and write both; a SIGKILL leaves the
  JSON of every finished section. (The children need no signal handling: they are killed, never asked to stop, so
  Lightning's SIGTERM handling inside ``fit``, which logs and runs on, plays no part.)
- **Sections fail on their own.** A failing or crashing child (a sticky CUDA error, an out-of-memory) is recorded
  and the next section starts in a fresh process.

Sections, in this order (``bench_gpu_sections.py`` says what each measures; ``--sections`` picks a subset):
``train_authors``, ``train_default``, ``eval``, ``loader_<N>`` per ``--workers`` count, ``train_compile``; then the
projection of the MVTec AD protocol (``bench_gpu_report.py``). The results are ``<out>/gpu-<gpu name>.json`` and
``.md`` (the table is also printed).

    python3 experiments/bench_gpu.py --out results/_bench        # on a CUDA machine: <= --budget-s (420 s)
    python3 experiments/bench_gpu.py --smoke --out /tmp/b        # every section on the CPU, tiny (the tests)

This file imports only the standard library (and NVML, when present, for clocks and power): the children import
torch, Lightning and this package, with ``src`` put on their ``PYTHONPATH``.
"""

from __future__ import annotations

import time


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where that cannot be read)."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22, after the command name
            now = float(uptime.read().split()[0])
        import os

        return min(max(0.0, now - started_ticks / os.sysconf("SC_CLK_TCK")), 600.0)
    except (OSError, ValueError, IndexError):
        return 0.0


# The budget's zero: taken before any other import, at the process's start as the kernel recorded it. The clock is
# CLOCK_MONOTONIC, which is the same in the child processes (they receive their deadlines as values of it).
START = time.monotonic() - _process_age()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from bench_gpu_report import markdown, projection  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# `make bench-gpu-prep` writes the commit here (the copy of the tree on a GPU machine may have no .git).
SOURCE_FILE = ROOT / ".cache" / "bench-gpu" / "source.json"


def say(message: str) -> None:
    print(f"[bench-gpu +{time.monotonic() - START:6.1f}s] {message}", flush=True)


class Stopped(Exception):
    """SIGTERM or SIGINT reached this process: stop the running child, write what was measured."""


def _stop(signum: int, _frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader sees the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_child(command: list[str], limit_s: float, env: dict[str, str] | None = None, tick=None,
              on_start=None) -> tuple[int | None, float]:
    """Run ``command`` in its own process group for at most ``limit_s`` seconds.

    Returns (exit code, seconds), the code None when the group was killed at the limit. ``on_start(pid)`` is called
    once it runs, ``tick()`` every few seconds while it runs (to sample clocks). The child also dies with this
    process (``bench_gpu_sections.die_with_parent``).
    """
    started = time.monotonic()
    child = subprocess.Popen(command, env=env, process_group=0)
    if on_start is not None:
        on_start(child.pid)
    try:
        while True:
            left = limit_s - (time.monotonic() - started)
            if left <= 0:
                raise subprocess.TimeoutExpired(command, limit_s)
            try:
                code = child.wait(timeout=min(left, 5.0))
                return code, time.monotonic() - started
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
    except subprocess.TimeoutExpired:
        _kill_group(child)
        return None, time.monotonic() - started
    except BaseException:  # Stopped, KeyboardInterrupt: never leave a child (and its loader workers) behind
        _kill_group(child)
        raise


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.wait()


class Clocks:
    """GPU clocks, power and temperature sampled through NVML while a section runs (nothing where NVML is absent)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no NVML library, no GPU, or no permission: the report says "not sampled"
            self.nvml = self.handle = None
        self.samples: list[dict[str, float]] = []

    def static(self) -> dict[str, Any]:
        if self.nvml is None:
            return {}
        nv, h = self.nvml, self.handle
        out: dict[str, Any] = {}
        for key, read in (("driver", lambda: nv.nvmlSystemGetDriverVersion()),
                          ("max_sm_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
                          ("max_memory_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
                          ("power_limit_w", lambda: nv.nvmlDeviceGetPowerManagementLimit(h) / 1000),
                          ("persistence_mode", lambda: nv.nvmlDeviceGetPersistenceMode(h))):
            try:
                value = read()
                out[key] = value.decode() if isinstance(value, bytes) else value
            except Exception:
                pass
        return out

    def sample(self) -> None:
        if self.nvml is None:
            return
        nv, h = self.nvml, self.handle
        try:
            self.samples.append({"sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                                 "memory_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
                                 "power_w": nv.nvmlDeviceGetPowerUsage(h) / 1000,
                                 "temperature_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
                                 "utilization_pct": nv.nvmlDeviceGetUtilizationRates(h).gpu})
        except Exception:
            pass

    def take(self) -> dict[str, Any] | None:
        """min/max of each reading since the last call (None when nothing was sampled)."""
        samples, self.samples = self.samples, []
        if not samples:
            return None
        return {k: {"min": min(s[k] for s in samples), "max": max(s[k] for s in samples)} for k in samples[0]}


def source_digest() -> str:
    """sha1 of the files a run depends on: tells whether the commit in SOURCE_FILE is still the tree's."""
    import hashlib

    digest = hashlib.sha1()
    files = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "configs").rglob("*.yaml")),
             *sorted((ROOT / "experiments").glob("bench_gpu*.py"))]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def commit() -> dict[str, Any]:
    """The commit the code is at: from git, else from SOURCE_FILE when the tree is unchanged since it was written."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        if head:
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return {"commit": head, "dirty": bool(dirty), "from": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        recorded = json.loads(SOURCE_FILE.read_text())
    except (OSError, ValueError):
        return {"commit": None, "from": f"no .git and no {SOURCE_FILE.relative_to(ROOT)} (make bench-gpu-prep)"}
    if recorded.get("source_digest") != source_digest():
        return {"commit": None, "from": f"{SOURCE_FILE.relative_to(ROOT)} is of another tree (commit "
                                        f"{recorded.get('commit')}): run make bench-gpu-prep again"}
    return {"commit": recorded.get("commit"), "dirty": recorded.get("dirty"), "from": "make bench-gpu-prep"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "_bench"), help="folder for gpu-<device>.json/.md")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU run of every section (resnet18, 32², batch 2), defaults as on a GPU where a CPU can")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cuda (default: exits at once without one) or cpu, to rehearse the full-size run on a CPU")
    p.add_argument("--backbone", default="wide_resnet50_2.tv_in1k")
    p.add_argument("--injection", default="gii", help="the project default (the authors' scripts: concat)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per measurement (cudnn autotuning)")
    p.add_argument("--iters", type=int, default=40, help="timed iterations per measurement")
    p.add_argument("--cap-s", type=float, default=30.0, help="time cap of one measurement's timed iterations")
    p.add_argument("--eval-batches", type=int, default=10, help="evaluation batches (10 x 16 = a test set)")
    p.add_argument("--workers", default="4", help="loader worker counts to measure, e.g. 4,8 (the default config: 4)")
    p.add_argument("--train-images", type=int, default=280,
                   help="training images of the loader's generated category (MVTec carpet: 280 of 1024²)")
    p.add_argument("--image-side", type=int, default=1024, help="side of the loader's generated PNGs")
    p.add_argument("--sections", default="", help="comma-separated subset, e.g. train_compile (default: all)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the whole process ends within this many seconds of its start (default 420; --smoke: 3600)")
    p.add_argument("--reserve-s", type=float, default=10.0, help="kept back for the projection and the writing")
    p.add_argument("--record-source", action="store_true",
                   help=f"write the commit into {SOURCE_FILE.relative_to(ROOT)} and exit (make bench-gpu-prep)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a section, run by the parent in a child
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:  # every section on the CPU in seconds; the compile section with the no-op "eager" backend
        args.device = "cpu"
        args.backbone, args.size, args.batch, args.warmup, args.iters = "resnet18", 32, 2, 1, 1
        args.eval_batches, args.compile_backend, args.cap_s = 1, "eager", 600.0
        args.train_images, args.image_side = 24, 64
        args.workers = "1" if args.workers == "4" else args.workers
    if args.budget_s is None:  # a smoke run checks that every section works, however loaded the CPU is
        args.budget_s = 3600.0 if args.smoke else 420.0
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(section, its share of the budget in seconds on top of a child's start-up); compile gets what is left."""
    # warm-up (capped like the timed part) + timed iterations + Trainer set-up; a smoke run checks that every section
    # works however loaded the CPU is: only the budget bounds it.
    measure = float("inf") if args.smoke else args.cap_s * 2 + 20
    sections = [("train_authors", measure), ("train_default", measure), ("eval", measure)]
    sections += [(f"loader_{w.strip()}", 2 * measure + 30) for w in args.workers.split(",") if w.strip()]
    sections.append(("train_compile", float("inf")))
    chosen = {s.strip() for s in args.sections.split(",") if s.strip()}
    return [(name, share) for name, share in sections if not chosen or name in chosen]


def child_command(args: argparse.Namespace, argv: list[str], section: str, result: Path, deadline: float) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--child", section, "--result", str(result),
            "--deadline", repr(deadline)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark (``argv`` None: this process's arguments, and the budget counts from its start; a list:
    a call from Python, e.g. a test, and the budget counts from the call)."""
    started = START if argv is None else time.monotonic()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.record_source:
        source = {**commit(), "source_digest": source_digest(), "recorded_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                time.gmtime())}
        write_atomic(SOURCE_FILE, json.dumps(source, indent=2) + "\n")
        print(f"{SOURCE_FILE.relative_to(ROOT)}: commit {source['commit']}{' (dirty)' if source.get('dirty') else ''}")
        return source
    if args.child:  # this is a child: run one section (the heavy imports happen only here)
        from bench_gpu_sections import run_section

        return run_section(args)
    return Bench(args, argv, started).run()


class Bench:
    """The parent: runs each section in a child within the budget, writes the report after each."""

    def __init__(self, args: argparse.Namespace, argv: list[str], started: float) -> None:
        self.args, self.argv, self.started = args, argv, started
        self.end = started + args.budget_s - args.reserve_s  # every child is dead by then
        self.tmp = Path(tempfile.mkdtemp(prefix="urd-bench-"))
        # The children import this checkout's package and anything put on PYTHONPATH (the carried omegaconf).
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                            os.environ.get("PYTHONPATH")])),
                    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
                    "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"), "PYTHONUNBUFFERED": "1",
                    "URD_BENCH_PARENT": str(os.getpid())}
        self.clocks = Clocks()
        self.report: dict[str, Any] = {"name": "unknown", "args": vars(args), "sections": {}, "errors": {},
                                       "skipped": {}, "complete": False}
        self.out = Path(args.out)

    def left(self) -> float:
        return self.end - time.monotonic()

    def path(self, suffix: str) -> Path:
        return self.out / f"gpu-{self.report['name']}{suffix}"

    def save(self, final: bool = False) -> None:
        if self.report["name"] == "unknown" and not final:  # the file is named after the GPU: known after a child
            return
        self.report["total_s"] = time.monotonic() - self.started
        write_atomic(self.path(".json"), json.dumps(self.report, indent=2, default=str) + "\n")

    def section(self, name: str, limit_s: float) -> dict[str, Any] | None:
        """Run one section in a child for at most ``limit_s``; its result, or None with the reason recorded."""
        result = self.tmp / f"{name}.json"
        deadline = time.monotonic() + limit_s
        command = child_command(self.args, self.argv, name, result, deadline)
        def started(pid: int) -> None:  # a reader of a killed run's JSON sees what was running
            self.report["running"] = {"section": name, "pid": pid, "result": str(result)}
            self.save()

        code, seconds = run_child(command, limit_s, self.env, tick=self.clocks.sample, on_start=started)
        self.report.pop("running", None)
        clocks = self.clocks.take()
        if code is None:
            self.report["errors"][name] = (f"killed after {seconds:.0f} s: its share of the budget "
                                           f"({limit_s:.0f} s) ran out")
            return None
        try:
            data = json.loads(result.read_text())
        except (OSError, ValueError):
            self.report["errors"][name] = f"the child process exited with code {code} and wrote no result"
            return None
        if "error" in data:
            self.report["errors"][name] = data["error"]
            return None
        data["child_s"] = seconds
        if clocks:
            data["gpu_clocks"] = clocks
        return data

    def run(self) -> dict[str, Any]:
        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._run()
        except Stopped as stop:
            self.report["stopped"] = f"{stop} received: sections not started are missing"
            say(self.report["stopped"])
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.finish()
        return self.report

    def _run(self) -> None:
        args = self.args
        say(f"budget {args.budget_s:.0f} s from process start ({time.monotonic() - self.started:.1f} s ago)")
        self.report["source"] = commit()
        if self.left() <= 0:
            self.report["skipped"] = {name: "no time left in the budget" for name, _ in plan(args)}
            return
        env = self.section("environment", min(300.0, self.left()))
        if env is None:
            self.report["skipped"] = {name: "the environment section failed" for name, _ in plan(args)}
            error = self.report["errors"].get("environment", "")
            if error.startswith("ModuleNotFoundError"):  # the GPU machine's Python lacks a dependency
                self.report["errors"]["environment"] = (
                    f"{error}: a package this project needs is missing here; for omegaconf, run `make "
                    "bench-gpu-prep` on a connected machine and run this with .cache/bench-gpu/site on PYTHONPATH "
                    "(docs/performance.md, GPU)")
            say(f"environment FAILED: {self.report['errors']['environment']}")
            return
        env.update(self.clocks.static())
        self.report["environment"] = env
        smoke_name = "cpu-smoke" if args.smoke else "cpu"
        self.report["name"] = re.sub(r"[^a-z0-9]+", "-", str(env.get("gpu") or smoke_name).lower()).strip("-")
        if args.device == "cuda" and not env.get("gpu"):
            self.report["errors"]["environment"] = (
                f"no CUDA device visible to torch {env.get('torch')} (built for CUDA {env.get('cuda')}): this script "
                "measures a GPU; --smoke runs it on the CPU, --device cpu measures the CPU at full size")
            return
        startup = float(env["child_s"])  # what every child spends before measuring: imports, CUDA, model build
        say(f"{self.report['name']}: {env.get('gpu') or 'CPU'}, torch {env.get('torch')}, child start-up "
            f"{startup:.1f} s; {self.left():.0f} s left")
        self.save()
        for name, share in plan(args):
            left = self.left()
            if left < startup + 10:
                self.report["skipped"][name] = (f"{left:.0f} s of the budget left, a child needs {startup:.0f} s to "
                                                "start")
                say(f"{name}: skipped ({self.report['skipped'][name]})")
                continue
            say(f"{name} ... (at most {min(left, startup + share):.0f} s)")
            data = self.section(name, min(left, startup + share))
            if data is not None:
                self.report["sections"][name] = data
                say(f"{name}: {short(data)}")
            else:
                say(f"{name} FAILED: {self.report['errors'][name].splitlines()[0]}")
            self.save()

    def finish(self) -> None:
        """Projection, JSON, then the markdown (a formatting error loses neither the JSON nor the run)."""
        try:
            budgets = _read_budgets(ROOT / "configs" / "data" / "mvtec.yaml")
            paper = (ROOT / "configs" / "experiment" / "paper.yaml").read_text()
            every = int(re.search(r"^\s*every_n_steps:\s*(\d+)", paper, re.M).group(1))
            self.report["projection"] = projection(self.report, budgets, every)
        except Exception as exc:
            self.report["errors"]["projection"] = f"{type(exc).__name__}: {exc}"
        self.report["complete"] = "stopped" not in self.report
        self.save(final=True)
        try:
            table = markdown(self.report)
            write_atomic(self.path(".md"), table + "\n")
            print(table, flush=True)
        except Exception as exc:
            self.report["errors"]["markdown"] = f"{type(exc).__name__}: {exc}"
            self.save(final=True)
        say(f"wrote {self.path('.json')} and .md")


def _read_budgets(path: Path) -> dict[str, int]:
    """category -> max_steps from the dataset file (its `categories:` block, one ``name: {max_steps: N, ...}`` line
    each), read without a YAML library so that this process stays on the standard library."""
    budgets = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s+(\w+):\s*\{.*max_steps:\s*(\d+)", line)
        if match:
            budgets[match.group(1)] = int(match.group(2))
    if not budgets:
        raise ValueError(f"no 'name: {{max_steps: N}}' lines in {path}")
    return budgets


def short(result: dict[str, Any]) -> str:
    if "train" in result:
        result = {**result["train"], "loader_only": result.get("loader_only")}
    keys = ("iterations_per_s", "images_per_s", "median_ms", "max_abs_diff", "peak_memory_gib", "child_s")
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if k in keys)


def cli() -> int:
    """Exit code: 0 when every planned section ran or was skipped for time, 1 when stopped by a signal or a section
    failed, 2 when nothing could be measured (no CUDA device, an import error: the one line printed says which)."""
    report = main()
    if "sections" not in report:  # --record-source, or a child (whose parent reads its result file)
        return 1 if "error" in report else 0
    env_error = report.get("errors", {}).get("environment")
    if env_error and not report.get("sections"):
        print(f"bench-gpu: {env_error.splitlines()[0]}", file=sys.stderr)
        return 2
    return 0 if report.get("complete") and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(cli())
