"""The measurements of ``bench_gpu.py``, one per child process (``bench_gpu.py --child <section>``).

Each child imports torch, Lightning and this package, builds the model (random weights), runs its one section and
writes its result as JSON; its parent kills it when its share of the budget runs out. Inside, every loop also
stops by itself a few seconds before that deadline, so a slow section usually ends with fewer timed iterations
instead of being killed.

- ``environment``: versions (torch, CUDA, cuDNN, Lightning, timm, torchmetrics, ...), GPU, CPU model, date; its
  wall time is the start-up every other child pays (imports, CUDA initialisation, model build).
- ``train_authors`` / ``train_default``: training iterations/s of the real step (``URDModule`` under a Lightning
  ``Trainer``, device-resident random batches, CUDA-synchronised after each iteration) in the authors' settings
  (fp32, separate forwards, PyTorch's default Adam, and what their ``setup_seed`` sets: ``cudnn.deterministic=True``,
  ``cudnn.benchmark=False``) and in the project defaults (bf16-mixed, channels-last, batched eval forwards, fused
  Adam, cudnn.benchmark). What the step really ran with (autocast dtype, memory format, fused Adam) is read off the
  module during the fit and recorded beside the settings.
- ``eval``: evaluation images/s of the model (maps + σ = 4 blur + score, fp32) and, apart, of the metrics on the
  device; the device-to-host copy of the maps timed on its own; device vs CPU metrics from the same maps (1e-6).
- ``loader_<N>``: the default config's loader (``AnomalyDataModule``: synthesis with procedural textures, the pixel
  cache on, N workers) on a generated MVTec-layout category as large as MVTec's (``--train-images`` PNGs of
  ``--image-side``²): the loader alone (first epoch, cold cache, apart) and training iterations/s fed by it.
- ``train_compile``: the defaults + ``torch.compile`` (the compile happens in the warm-up).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

MARGIN_S = 3.0  # a child stops its loops this long before its deadline, to write its result


def die_with_parent() -> None:
    """Linux: this child gets SIGKILL when its parent dies (a ``timeout -s KILL`` of the parent leaves no GPU user)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.environ.get("URD_BENCH_PARENT", str(os.getppid())) != str(os.getppid()):  # it died before the prctl
        os._exit(1)


def run_section(args: argparse.Namespace) -> dict[str, Any]:
    """Run section ``args.child`` and write ``{...}`` or ``{"error": ...}`` to ``args.result``."""
    die_with_parent()
    started = time.monotonic()
    try:
        result = SECTIONS[args.child](args, started)
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}".strip()[:2000]}
    tmp = Path(f"{args.result}.tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, args.result)
    return result


# ---- shared helpers (imported lazily: the parent never loads torch) ----------------------------------------------

def soft_deadline(args: argparse.Namespace) -> float:
    return (args.deadline if args.deadline is not None else math.inf) - MARGIN_S


def device_of(args: argparse.Namespace):
    import torch

    return torch.device("cuda" if args.device == "cuda" else "cpu")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_template(args: argparse.Namespace):
    import torch

    from urd_lightning.training.module import URDModule

    torch.manual_seed(0)
    return URDModule(model={"backbone": args.backbone, "pretrained": False, "injection": args.injection},
                     image_size=args.size)


def settings(mode: str, device, smoke: bool = False) -> dict[str, Any]:
    """The speed settings of a mode.

    ``authors``: as their code ran (fp32, separate forwards, PyTorch's default Adam; their ``setup_seed`` sets
    cudnn.deterministic and turns cudnn.benchmark off, and nothing else). ``default``: the project's defaults on a
    GPU, as train.py resolves them there; a smoke run uses them on the CPU too, as far as a CPU runs them (bf16
    autocast, channels-last and fused Adam run there; the cudnn flags do nothing), so that the CPU tests run the code
    path the GPU will; other CPU runs use what the defaults resolve to on that CPU.
    ``default-fp32``: the defaults with ``trainer.precision=32-true``.
    ``deterministic``: the defaults with ``trainer.deterministic=true`` (what ``experiment=authors`` runs): Lightning
    also turns on ``torch.use_deterministic_algorithms``, which fills every new tensor's memory (a real cost).
    """
    from urd_lightning.hardware import native_bf16

    if mode == "authors":
        return {"precision": "32-true", "channels_last": False, "batched_eval_forwards": False, "fused_adam": False,
                "cudnn_deterministic": True, "benchmark": False, "torch_deterministic": False}
    if mode == "default-fp32":  # what bf16 adds, apart from the rest
        return {**settings("default", device, smoke), "precision": "32-true"}
    gpu_like = device.type == "cuda" or smoke
    bf16 = smoke or native_bf16(device.type == "cuda")  # as trainer.precision: null resolves
    strict = mode == "deterministic"
    return {"precision": "bf16-mixed" if bf16 else "32-true", "channels_last": gpu_like, "batched_eval_forwards": True,
            "fused_adam": True, "cudnn_deterministic": strict, "benchmark": gpu_like and not strict,
            "torch_deterministic": strict}


def _callback_base():
    from lightning.pytorch import Callback

    return Callback


class IterationTimer(_callback_base()):
    """Times each training iteration after ``warmup`` (CUDA-synchronised) and records what the step ran with.

    Stops after ``iters`` timed iterations, when the timed ones have taken ``cap_s``, when the warm-up has taken
    ``warmup_cap_s``, or at ``deadline`` (``time.monotonic()``).
    """

    def __init__(self, device, warmup: int, iters: int, cap_s: float, deadline: float = math.inf,
                 warmup_cap_s: float | None = None) -> None:
        self.device, self.warmup, self.iters, self.cap_s, self.deadline = device, warmup, iters, cap_s, deadline
        self.warmup_cap_s = cap_s if warmup_cap_s is None else warmup_cap_s
        self.count, self.times, self.start, self.last = 0, [], time.monotonic(), 0.0
        self.observed: dict[str, Any] = {}
        self._hook = None

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        conv = next(m for m in pl_module.model.teacher.modules() if isinstance(m, torch.nn.Conv2d))

        def look(module, inputs, output) -> None:  # the first convolution of the first iteration
            channels_last = inputs[0].is_contiguous(memory_format=torch.channels_last)
            self.observed = {"first_conv_input_channels_last": channels_last,
                             "first_conv_output_dtype": str(output.dtype).replace("torch.", "")}
            self._hook.remove()

        self._hook = conv.register_forward_hook(look)
        optimizers = trainer.optimizers
        self.observed_optim = {"adam_fused": [bool(o.defaults.get("fused")) for o in optimizers],
                               "trainer_precision": str(trainer.precision),
                               "cudnn_benchmark": torch.backends.cudnn.benchmark,
                               "cudnn_deterministic": torch.backends.cudnn.deterministic}
        self.start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        now = time.monotonic()
        self.count += 1
        if self.count > self.warmup:
            self.times.append(now - self.last)
        self.last = now
        warming = self.count < self.warmup and now - self.start > self.warmup_cap_s
        if len(self.times) >= self.iters or sum(self.times) > self.cap_s or warming or now > self.deadline:
            trainer.should_stop = True

    def result(self, batch: int) -> dict[str, Any]:
        if not self.times:
            raise RuntimeError(f"no timed iteration: the {self.warmup} warm-up iterations took over "
                               f"{self.warmup_cap_s:.0f} s or reached the deadline")
        ordered = sorted(self.times)
        rate = len(self.times) / sum(self.times)
        return {"iterations_per_s": rate, "images_per_s": rate * batch, "timed_iterations": len(self.times),
                "min_ms": ordered[0] * 1e3, "median_ms": ordered[len(ordered) // 2] * 1e3,
                "observed": {**self.observed, **getattr(self, "observed_optim", {})}}


class DeviceBatches:
    """The same device-resident random batch ``n`` times: compute only, no loader or host-to-device copy."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


def random_batch(batch: int, size: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {"image": torch.randn(batch, 3, size, size, generator=g),
           "aug_image": torch.randn(batch, 3, size, size, generator=g),
           "aug_mask": (torch.rand(batch, 1, size, size, generator=g) > 0.9).float(), "index": torch.arange(batch)}
    return {k: v.to(device) for k, v in out.items()}


def fit_timed(template, mode: str, args: argparse.Namespace, device, datamodule: Any = None,
              compile_backend: str | None = None) -> dict[str, Any]:
    """Fit a copy of ``template`` for warm-up + timed iterations in ``mode``; rates, settings, what ran, memory."""
    import torch
    from lightning.pytorch import Trainer

    s = settings(mode, device, args.smoke)
    module = copy.deepcopy(template)
    module.hparams.channels_last = s["channels_last"]
    module.hparams.batched_eval_forwards = s["batched_eval_forwards"]
    module.fused_adam = s["fused_adam"]
    if compile_backend:
        module.model.compile_parts(backend=compile_backend)
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    # A compile's warm-up is bounded by the deadline alone (it can take minutes).
    timer = IterationTimer(device, args.warmup, args.iters, args.cap_s, soft_deadline(args),
                           warmup_cap_s=math.inf if compile_backend else None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(accelerator=device.type, devices=1, precision=s["precision"], benchmark=s["benchmark"],
                      deterministic=s["torch_deterministic"],
                      max_steps=args.warmup + args.iters,  # URD iterations (URDModule scales them)
                      max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    loader = None
    if datamodule is None:
        loader = DeviceBatches(random_batch(args.batch, args.size, device), args.warmup + args.iters)
    started = time.monotonic()
    trainer.fit(module, train_dataloaders=loader, datamodule=datamodule)
    out = {**timer.result(args.batch), "wall_s": time.monotonic() - started, "settings": s,
           "compile": compile_backend}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# ---- sections ----------------------------------------------------------------------------------------------------

def environment(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Versions and hardware; importing everything the other sections import and building the model is the
    start-up every child pays, measured here."""
    import lightning
    import numpy
    import timm
    import torch
    import torchmetrics

    import urd_lightning.data.datamodule  # noqa: F401  (the loader sections' import path)
    import urd_lightning.metrics  # noqa: F401

    device = device_of(args)
    env = {"date_utc": datetime.now(UTC).isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": lightning.__version__,
           "timm": timm.__version__, "torchmetrics": torchmetrics.__version__, "numpy": numpy.__version__,
           "cpu": _cpu_model(), "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           # TF32: torch's defaults, which this script leaves as they are in every section (the authors' included):
           # cuDNN convolutions may use TF32 on Ampere or newer, fp32 matmuls may not.
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "torch_threads": torch.get_num_threads()}
    try:
        import cv2

        env["opencv"] = cv2.__version__
    except ImportError:
        pass
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count)
        torch.ones(1, device=device).sum().item()  # CUDA initialisation is part of every child's start-up
    build_template(args)
    return env


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def train_section(mode: str):
    def run(args: argparse.Namespace, started: float) -> dict[str, Any]:
        device = device_of(args)
        template = build_template(args)
        return {**fit_timed(template, mode, args, device), "startup_s": time.monotonic() - started}

    return run


def train_compile(args: argparse.Namespace, started: float) -> dict[str, Any]:
    device = device_of(args)
    template = build_template(args)
    return {**fit_timed(template, "default", args, device, compile_backend=args.compile_backend),
            "startup_s": time.monotonic() - started}


def evaluate(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """Evaluation in the defaults: the model's images/s (maps + blur + score, fp32 as every evaluation runs), the
    metrics' updates and compute on the device, the device-to-host copy of maps and scores, each timed apart; and the
    metrics computed on the CPU from the same maps (equal to 1e-6)."""
    import torch

    from urd_lightning.metrics import AnomalyMetrics

    device = device_of(args)
    template = build_template(args)
    startup_s = time.monotonic() - started
    deadline = soft_deadline(args)
    s = settings("default", device, args.smoke)
    torch.backends.cudnn.benchmark = s["benchmark"]
    model = template.model.to(device).eval()
    if s["channels_last"]:
        model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.eval_batches, args.batch, 3, args.size, args.size, generator=g)
    masks = torch.zeros(args.eval_batches, args.batch, 1, args.size, args.size)
    for b in range(args.eval_batches):  # every other image gets a rectangular defect of random size and place
        for i in range(0, args.batch, 2):
            h, w = torch.randint(2, max(3, args.size // 4), (2,), generator=g).tolist()
            y, x = torch.randint(0, args.size - max(h, w), (2,), generator=g).tolist()
            masks[b, i, 0, y:y + h, x:x + w] = 1
    inputs = [images[b].to(device) for b in range(args.eval_batches)]  # on the device before timing, as a loader's
    gts = [masks[b].to(device) for b in range(args.eval_batches)]

    def model_pass(batches: int) -> tuple[float, list]:
        outputs = []
        sync(device)
        begun = time.monotonic()
        with torch.no_grad(), torch.autocast(device.type, enabled=False):  # evaluation runs fp32 whatever training
            for b in range(batches):
                x = inputs[b].contiguous(memory_format=torch.channels_last) if s["channels_last"] else inputs[b]
                maps, scores = model.predict(x)
                outputs.append((maps.float(), scores.float()))
                if time.monotonic() > deadline:
                    break
        sync(device)
        return time.monotonic() - begun, outputs

    def metrics_pass(outputs: list) -> tuple[float, dict[str, float]]:
        metrics = AnomalyMetrics().to(device)
        sync(device)
        begun = time.monotonic()
        for b, (maps, scores) in enumerate(outputs):
            metrics.update(maps, gts[b], scores, gts[b].flatten(1).amax(1))
        values = {k: float(v) for k, v in metrics.compute().items()}
        sync(device)
        return time.monotonic() - begun, values

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model_pass(1)  # warm-up: cudnn autotuning, allocator
    model_s, outputs = model_pass(args.eval_batches)
    metrics_s, on_device = metrics_pass(outputs)
    sync(device)
    begun = time.monotonic()
    kept = [(maps.cpu(), scores.cpu()) for maps, scores in outputs]
    copy_s = time.monotonic() - begun
    cpu_metrics = AnomalyMetrics()
    begun = time.monotonic()
    for b, (maps, scores) in enumerate(kept):
        cpu_metrics.update(maps, masks[b], scores, masks[b].flatten(1).amax(1))
    on_cpu = {k: float(v) for k, v in cpu_metrics.compute().items()}
    diff = {k: abs(on_device[k] - on_cpu[k]) for k in on_device}
    n = len(outputs) * args.batch
    out = {"images_per_s": n / model_s, "images": n, "model_s": model_s,
           "metrics_device_s": metrics_s, "metrics_images_per_s": n / metrics_s,
           "device_to_host_s": copy_s, "device_to_host_mb": sum(m.nbytes + c.nbytes for m, c in kept) / 1e6,
           "metrics_device": on_device, "metrics_cpu": on_cpu, "cpu_metrics_s": time.monotonic() - begun,
           "max_abs_diff": max(diff.values()), "equal_1e-6": all(d <= 1e-6 for d in diff.values()), "settings": s,
           "startup_s": startup_s}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def write_category(root: Path, count: int, side: int, workers: int) -> None:
    """An MVTec-layout category ``carpet`` under ``root``: ``count`` training PNGs of ``side``² (a weave texture
    from the demo generator, upscaled, with per-pixel noise so that the PNGs decode like photographs), and a small
    test split (the datamodule checks the layout)."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import numpy as np

    from urd_lightning.data.demo import weave_image

    def one(item: tuple[str, int]) -> None:
        kind, i = item
        rng = np.random.default_rng(i)
        image, mask = weave_image(rng, "stain" if kind == "bad" else None)
        big = cv2.resize((np.clip(image, 0, 1) * 255).astype(np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
        big = np.clip(big.astype(np.int16) + rng.integers(-6, 7, big.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        folder = {"train": "train/good", "good": "test/good", "bad": "test/stain"}[kind]
        cv2.imwrite(str(root / "carpet" / folder / f"{i:03d}.png"), big[..., ::-1])
        if kind == "bad":
            m = cv2.resize((mask > 0).astype(np.uint8) * 255, (side, side), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / "carpet" / "ground_truth" / "stain" / f"{i:03d}_mask.png"), m)

    for folder in ("train/good", "test/good", "test/stain", "ground_truth/stain"):
        (root / "carpet" / folder).mkdir(parents=True, exist_ok=True)
    items = [("train", i) for i in range(count)] + [("good", i) for i in range(2)] + [("bad", i) for i in range(2)]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # OpenCV releases the GIL while it encodes
        list(pool.map(one, items))


def loader_section(args: argparse.Namespace, started: float) -> dict[str, Any]:
    """The default config's loader at N workers: alone (first epoch apart), then feeding the defaults' training."""
    from urd_lightning.data.datamodule import AnomalyDataModule

    workers = int(args.child.removeprefix("loader_"))
    device = device_of(args)
    template = build_template(args)
    startup_s = time.monotonic() - started
    deadline = soft_deadline(args)
    root = Path(tempfile.mkdtemp(prefix="urd-bench-data-"))
    begun = time.monotonic()
    write_category(root, args.train_images, args.image_side, os.cpu_count() or 1)
    write_s = time.monotonic() - begun

    def datamodule() -> AnomalyDataModule:
        # As `train dataset=mvtec data.category=carpet` builds it (configs/default.yaml), except the generated root
        # and the caches in a fresh folder, and procedural textures (no DTD on the machine).
        dm = AnomalyDataModule(benchmark="mvtec", root=str(root), category="carpet", image_size=args.size,
                               train_batch_size=args.batch, num_workers=workers, synthesis=True,
                               textures="procedural", foreground="none", cache_dir=str(root / "foreground"),
                               pixel_cache_dir=str(root / "pixels"), resize="pil")
        dm.setup("fit")
        return dm

    begun = time.monotonic()
    dm = datamodule()
    setup_s = time.monotonic() - begun
    loader = dm.train_dataloader()  # one loader: its persistent workers serve every epoch, as in training
    batches_per_epoch = len(loader)
    epochs, first_epoch_s, samples, timed_s = 0, None, 0, 0.0
    begun = time.monotonic()
    # The first epoch, then whole warm epochs (their boundaries are part of what a run sees) until --iters batches.
    while samples < args.iters * args.batch and time.monotonic() - begun < args.cap_s and time.monotonic() < deadline:
        dm.set_epoch(epochs)
        epoch_start = time.monotonic()
        for batch in loader:
            if epochs > 0:
                samples += len(batch["index"])
            if time.monotonic() > deadline:
                break
        if epochs == 0:  # the first epoch decodes each PNG once into the pixel cache
            first_epoch_s = time.monotonic() - epoch_start
        else:
            timed_s += time.monotonic() - epoch_start
        epochs += 1
    del loader, dm  # stops its workers before training starts its own
    only = {"first_epoch_s": first_epoch_s, "warm_epochs": max(0, epochs - 1),
            "samples_per_s": samples / timed_s if timed_s else None}
    trained = fit_timed(template, "default", args, device, datamodule=datamodule())
    return {"workers": workers, "train_images": args.train_images, "image_side": args.image_side,
            "batches_per_epoch": batches_per_epoch, "write_s": write_s, "setup_s": setup_s, "loader_only": only,
            "train": trained, "startup_s": startup_s}


SECTIONS = {"environment": environment, "train_authors": train_section("authors"),
            "train_default": train_section("default"), "eval": evaluate, "train_compile": train_compile}


class _Sections(dict):
    def __missing__(self, key: str):
        if key.startswith("loader_"):
            return loader_section
        raise KeyError(f"unknown section {key!r}")


SECTIONS = _Sections(SECTIONS)

if __name__ == "__main__":
    sys.exit("run experiments/bench_gpu.py, which runs this module's sections in child processes")
