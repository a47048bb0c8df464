"""One command that measures a GPU: ``make bench-gpu`` (random weights, no dataset, bounded to a few minutes).

Writes ``<out>/gpu-<device>.json`` and ``.md`` (the table is also printed). Sections, in this order, each bounded
(warm-up + a fixed number of timed iterations, CUDA-synchronised, and a time cap), each wrapped so that a failure is
recorded in the json and the rest still runs, and all under one time budget (``--budget-s``):

- ``train_authors`` / ``train_default``: training iterations/s of the real step (``URDModule`` under a Lightning
  ``Trainer``, device-resident random batches) in the authors' settings (fp32, separate forwards, and what their
  ``setup_seed`` sets: ``cudnn.deterministic=True``, ``cudnn.benchmark=False``) and in the project defaults
  (bf16-mixed, channels-last, batched eval forwards, cudnn.benchmark), and their ratio;
- ``eval``: evaluation images/s (maps + σ = 4 blur + every metric) and the metrics computed on the device vs on the
  CPU from the same maps (equal to 1e-6);
- ``loader_<N>``: the real loader (``AnomalyDataModule`` on the embedded demo set, upscaled to the model size, N
  workers): loader-only samples/s and training iterations/s with it in the defaults (is the GPU starved?);
- ``train_compile``: the defaults + ``torch.compile``, in a child process killed at the budget (a compile can take
  minutes);
- ``projection``: wall time of the MVTec AD protocol (iteration budgets of configs/data/mvtec.yaml) at those rates.

    PYTHONPATH=src python experiments/bench_gpu.py --out results/_bench      # ~5-7 min on one GPU
    PYTHONPATH=src python experiments/bench_gpu.py --smoke --out /tmp/b      # tiny CPU run (the test runs it)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import yaml  # noqa: E402
from bench_gpu_report import markdown, projection  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from urd_lightning.hardware import native_bf16  # noqa: E402
from urd_lightning.training.module import URDModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START = time.perf_counter()


def say(message: str) -> None:
    print(f"[bench-gpu +{time.perf_counter() - START:6.1f}s] {message}", flush=True)


def remaining(args: argparse.Namespace) -> float:
    return args.budget_s - (time.perf_counter() - START)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def settings(mode: str, device: torch.device) -> dict[str, Any]:
    """The speed settings of a mode.

    ``authors``: as their code ran (fp32, separate forwards; their ``setup_seed`` sets cudnn.deterministic and turns
    cudnn.benchmark off, and nothing else). ``default``: the project's defaults, as train.py resolves them.
    ``default-fp32``: the defaults with ``trainer.precision=32-true``.
    ``deterministic``: the defaults with ``trainer.deterministic=true`` (what ``experiment=authors`` runs): Lightning
    also turns on ``torch.use_deterministic_algorithms``, which fills every new tensor's memory (a real cost).
    """
    cuda = device.type == "cuda"
    if mode == "authors":
        return {"precision": "32-true", "channels_last": False, "batched_eval_forwards": False, "fused_adam": False,
                "cudnn_deterministic": True, "benchmark": False, "torch_deterministic": False}
    if mode == "default-fp32":  # the defaults at trainer.precision=32-true: what bf16 adds, apart from the rest
        return {**settings("default", device), "precision": "32-true"}
    bf16 = native_bf16(cuda)  # as trainer.precision: null resolves (GPU or avx512_bf16/AMX CPU)
    strict = mode == "deterministic"
    return {"precision": "bf16-mixed" if bf16 else "32-true", "channels_last": cuda, "batched_eval_forwards": True,
            "fused_adam": True, "cudnn_deterministic": strict, "benchmark": cuda and not strict,
            "torch_deterministic": strict}


class IterationTimer(Callback):
    """Times each training iteration after ``warmup`` (CUDA-synchronised).

    Stops after ``iters`` timed iterations, when the timed ones have taken ``cap_s``, or when the warm-up has taken
    ``warmup_cap_s`` (a compile's warm-up is bounded by the child process's timeout instead).
    """

    def __init__(self, device: torch.device, warmup: int, iters: int, cap_s: float,
                 warmup_cap_s: float | None = None) -> None:
        self.device, self.warmup, self.iters, self.cap_s = device, warmup, iters, cap_s
        self.warmup_cap_s = cap_s if warmup_cap_s is None else warmup_cap_s
        self.count, self.times, self.start, self.last = 0, [], time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        sync(self.device)
        now = time.perf_counter()
        self.count += 1
        if self.count > self.warmup:
            self.times.append(now - self.last)
        self.last = now
        warming = self.count < self.warmup and now - self.start > self.warmup_cap_s
        if len(self.times) >= self.iters or sum(self.times) > self.cap_s or warming:
            trainer.should_stop = True

    def result(self, batch: int) -> dict[str, Any]:
        if not self.times:
            raise RuntimeError(f"the {self.warmup} warm-up iterations took over {self.warmup_cap_s:.0f} s")
        ordered = sorted(self.times)
        rate = len(self.times) / sum(self.times)
        return {"iterations_per_s": rate, "images_per_s": rate * batch, "timed_iterations": len(self.times),
                "min_ms": ordered[0] * 1e3, "median_ms": ordered[len(ordered) // 2] * 1e3}


class DeviceBatches:
    """The same device-resident random batch ``n`` times: compute only, no loader or host-to-device copy."""

    def __init__(self, batch: dict[str, torch.Tensor], n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


def random_batch(batch: int, size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"image": torch.randn(batch, 3, size, size, generator=g),
           "aug_image": torch.randn(batch, 3, size, size, generator=g),
           "aug_mask": (torch.rand(batch, 1, size, size, generator=g) > 0.9).float(), "index": torch.arange(batch)}
    return {k: v.to(device) for k, v in out.items()}


def fit_timed(template: URDModule, mode: str, args: argparse.Namespace, device: torch.device, loader: Any = None,
              datamodule: Any = None, compile_backend: str | None = None) -> dict[str, Any]:
    """Fit a copy of ``template`` for warm-up + timed iterations in ``mode``; rates, settings, peak memory."""
    s = settings(mode, device)
    module = copy.deepcopy(template)
    module.hparams.channels_last = s["channels_last"]
    module.hparams.batched_eval_forwards = s["batched_eval_forwards"]
    module.fused_adam = s["fused_adam"]
    if compile_backend:
        module.model.compile_parts(backend=compile_backend)
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    timer = IterationTimer(device, args.warmup, args.iters, args.cap_s,
                           warmup_cap_s=float("inf") if compile_backend else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(accelerator=device.type, devices=1, precision=s["precision"],
                      deterministic=s["torch_deterministic"],
                      benchmark=s["benchmark"], max_steps=args.warmup + args.iters,  # URD iterations (URDModule scales)
                      max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    if loader is None and datamodule is None:
        loader = DeviceBatches(random_batch(args.batch, args.size, device), args.warmup + args.iters)
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, datamodule=datamodule)
    out = {**timer.result(args.batch), "wall_s": time.perf_counter() - started, "settings": s,
           "compile": compile_backend}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    torch.use_deterministic_algorithms(False)
    del module, trainer
    return out


def evaluate(template: URDModule, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Evaluation images/s in the defaults (maps + blur + all metrics) and device-vs-CPU metric values."""
    from urd_lightning.metrics import AnomalyMetrics

    s = settings("default", device)
    torch.backends.cudnn.benchmark = s["benchmark"]
    model = copy.deepcopy(template.model).to(device).eval()
    if s["channels_last"]:
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.eval_batches, args.batch, 3, args.size, args.size, generator=g)
    masks = torch.zeros(args.eval_batches, args.batch, 1, args.size, args.size)
    for b in range(args.eval_batches):  # every other image gets a rectangular defect of random size and place
        for i in range(0, args.batch, 2):
            h, w = torch.randint(2, args.size // 4, (2,), generator=g).tolist()
            y, x = torch.randint(0, args.size - max(h, w), (2,), generator=g).tolist()
            masks[b, i, 0, y:y + h, x:x + w] = 1
    autocast = torch.autocast(device.type, enabled=False)  # evaluation runs fp32 whatever the training precision

    def one_pass(metrics: Any, keep: list | None) -> tuple[float, dict[str, float]]:
        sync(device)
        started = time.perf_counter()
        with torch.no_grad(), autocast:
            for b in range(args.eval_batches):
                x = images[b].to(device, non_blocking=True)
                x = x.contiguous(memory_format=torch.channels_last) if s["channels_last"] else x
                maps, scores = model.predict(x)
                maps, scores = maps.float(), scores.float()
                gt = masks[b].to(device)
                metrics.update(maps, gt, scores, gt.flatten(1).amax(1))
                if keep is not None:
                    keep.append((maps.cpu(), scores.cpu()))
        values = {k: float(v) for k, v in metrics.compute().items()}
        sync(device)
        return time.perf_counter() - started, values

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    one_pass(AnomalyMetrics().to(device), None)  # warm-up (cudnn autotuning, allocator)
    kept: list = []
    seconds, on_device = one_pass(AnomalyMetrics().to(device), kept)
    cpu_metrics = AnomalyMetrics()
    cpu_start = time.perf_counter()
    for b, (maps, scores) in enumerate(kept):
        cpu_metrics.update(maps, masks[b], scores, masks[b].flatten(1).amax(1))
    on_cpu = {k: float(v) for k, v in cpu_metrics.compute().items()}
    diff = {k: abs(on_device[k] - on_cpu[k]) for k in on_device}
    n = args.eval_batches * args.batch
    out = {"images_per_s": n / seconds, "images": n, "metrics_device": on_device, "metrics_cpu": on_cpu,
           "cpu_metrics_s": time.perf_counter() - cpu_start, "max_abs_diff": max(diff.values()),
           "equal_1e-6": all(d <= 1e-6 for d in diff.values()), "settings": s}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def loader_section(template: URDModule, args: argparse.Namespace, device: torch.device, workers: int,
                   demo_root: Path) -> dict[str, Any]:
    """Loader-only samples/s and training iterations/s with the real loader (defaults) at ``workers`` workers."""
    from urd_lightning.data.datamodule import AnomalyDataModule

    def datamodule() -> AnomalyDataModule:
        dm = AnomalyDataModule(benchmark="demo", root=str(demo_root), category="weave", image_size=args.size,
                               train_batch_size=args.batch, num_workers=workers, foreground="none",
                               cache_dir=str(demo_root / ".cache"))
        dm.setup("fit")
        return dm

    dm = datamodule()
    loader = dm.train_dataloader()  # one loader: its persistent workers serve every epoch, as in training
    batches, started, epoch = 0, time.perf_counter(), 0
    timed_from = time.perf_counter()
    while batches < args.warmup + args.iters and time.perf_counter() - started < args.cap_s:
        dm.set_epoch(epoch)
        for _ in loader:
            batches += 1
            if batches == args.warmup:
                timed_from = time.perf_counter()
            if batches >= args.warmup + args.iters:
                break
        epoch += 1
    timed = batches - args.warmup
    only = {"samples_per_s": timed * args.batch / (time.perf_counter() - timed_from)} if timed > 0 else {}
    batches_per_epoch = len(loader)
    del loader, dm  # stops its workers before training starts its own
    trained = fit_timed(template, "default", args, device, datamodule=datamodule())
    return {"workers": workers, "batches_per_epoch": batches_per_epoch, "loader_only": only, "train": trained}


def compile_in_child(args: argparse.Namespace, argv: list[str], budget_left: float) -> dict[str, Any]:
    """The compiled defaults in a child process, killed (with its compile workers) when the budget runs out."""
    limit = max(10.0, budget_left - args.reserve_s)
    part = Path(tempfile.mkdtemp(prefix="urd-bench-")) / "compile.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child-compile", str(part), *argv]
    # The child imports this checkout's code, like the parent; its own process group lets the timeout kill the
    # compile workers it starts as well.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen(command, start_new_session=True, env=env)
    try:
        child.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        raise RuntimeError(f"compile + timed iterations did not finish within the {limit:.0f} s left") from None
    if not part.is_file():
        raise RuntimeError(f"the compile child process exited with code {child.returncode} and no result")
    return json.loads(part.read_text())


def environment(device: torch.device) -> dict[str, Any]:
    import lightning

    env = {"torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count(), "device": str(device), "cuda": torch.version.cuda,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}")
    try:
        env["commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["commit"] = None
    return env


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "results" / "_bench"), help="folder for gpu-<device>.json/.md")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: resnet18, 32², batch 2, 1 iteration")
    p.add_argument("--backbone", default="wide_resnet50_2.tv_in1k")
    p.add_argument("--injection", default="gii", help="the project default (the authors' scripts: concat)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations per measurement (cudnn autotuning)")
    p.add_argument("--iters", type=int, default=40, help="timed iterations per measurement")
    p.add_argument("--cap-s", type=float, default=40.0, help="time cap of one measurement")
    p.add_argument("--eval-batches", type=int, default=10, help="evaluation batches (10 x 16 = a test set)")
    p.add_argument("--workers", default="8,16", help="loader worker counts to measure")
    p.add_argument("--sections", default="", help="comma-separated subset, e.g. train_compile (default: all)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--budget-s", type=float, default=None,
                   help="the whole script stays within this many seconds (default 420; --smoke: 3600)")
    p.add_argument("--reserve-s", type=float, default=20.0, help="kept back for the projection and writing")
    p.add_argument("--child-compile", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:  # every section on the CPU in seconds; the compile section with the no-op "eager" backend
        args.backbone, args.size, args.batch, args.warmup, args.iters = "resnet18", 32, 2, 1, 1
        args.eval_batches, args.compile_backend = 1, "eager"
        args.workers = "1" if args.workers == "8,16" else args.workers
    if args.budget_s is None:  # a smoke run checks that every section works, however loaded the CPU is
        args.budget_s = 3600.0 if args.smoke else 420.0
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    global START
    START = time.perf_counter()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    torch.manual_seed(0)
    started = time.perf_counter()
    template = URDModule(model={"backbone": args.backbone, "pretrained": False, "injection": args.injection},
                         image_size=args.size)
    build_s = time.perf_counter() - started
    if args.child_compile:  # the compile measurement, run by compile_in_child
        say(f"compile child: model built in {build_s:.1f} s; compiling ({args.compile_backend}) in the warm-up")
        result = fit_timed(template, "default", args, device, compile_backend=args.compile_backend)
        Path(args.child_compile).write_text(json.dumps(result))
        return result
    env = environment(device)
    name = "cpu-smoke" if args.smoke else re.sub(r"[^a-z0-9]+", "-", str(env.get("gpu", "cpu")).lower()).strip("-")
    report: dict[str, Any] = {"name": name, "args": vars(args), "environment": env,
                              "model_build_s": build_s, "sections": {}, "errors": {}}
    say(f"{name}: {args.backbone} {args.size}² batch {args.batch}, model built in {build_s:.1f} s")
    demo_root = Path(tempfile.mkdtemp(prefix="urd-bench-demo-"))
    plan: list[tuple[str, Any, float]] = [
        ("train_authors", lambda: fit_timed(template, "authors", args, device), args.cap_s),
        ("train_default", lambda: fit_timed(template, "default", args, device), args.cap_s),
        ("eval", lambda: evaluate(template, args, device), args.cap_s),
    ]
    for n in [int(w) for w in args.workers.split(",") if w.strip()]:
        plan.append((f"loader_{n}", lambda n=n: loader_section(template, args, device, n, demo_root), 2 * args.cap_s))
    plan.append(("train_compile", lambda: compile_in_child(args, argv, remaining(args)), 60))
    chosen = {s.strip() for s in args.sections.split(",") if s.strip()}
    for key, run, needs in plan:
        if chosen and key not in chosen:
            continue
        left = remaining(args)
        if left - args.reserve_s < needs:
            report["errors"][key] = f"skipped: {left:.0f} s of the budget left, the section needs up to {needs:.0f} s"
            say(f"{key}: {report['errors'][key]}")
            continue
        say(f"{key} ...")
        try:
            report["sections"][key] = run()
            say(f"{key}: {short(report['sections'][key])}")
        except Exception as exc:  # one failed section is recorded; the others still run
            report["errors"][key] = f"{type(exc).__name__}: {exc}".strip()[:2000]
            say(f"{key} FAILED: {report['errors'][key]}\n{traceback.format_exc(limit=6)}")
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, False
        if device.type == "cuda":
            torch.cuda.empty_cache()
    try:
        budgets = yaml.safe_load((ROOT / "configs" / "data" / "mvtec.yaml").read_text())["categories"]
        report["projection"] = projection(report, {c: int(v["max_steps"]) for c, v in budgets.items()})
    except Exception as exc:
        report["errors"]["projection"] = f"{type(exc).__name__}: {exc}"
    report["total_s"] = time.perf_counter() - START
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(report)
    (out / f"gpu-{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"gpu-{name}.md").write_text(table + "\n")
    print(table, flush=True)
    say(f"wrote {out / f'gpu-{name}.json'} and .md")
    return report


def short(result: dict[str, Any]) -> str:
    if "train" in result:
        result = {**result["train"], "loader_only": result.get("loader_only")}
    keys = ("iterations_per_s", "images_per_s", "median_ms", "max_abs_diff", "peak_memory_gib", "loader_only")
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items() if k in keys)


if __name__ == "__main__":
    main()
