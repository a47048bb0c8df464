"""Training iterations/s of URD in the authors' settings beside the project defaults, same run, interleaved.

Runs the real training step (``URDModule.training_step`` under a Lightning ``Trainer``, manual optimisation, two
Adams) on random tensors, so it measures compute only (no disk, no synthesis), in these modes (settings as in
``bench_gpu_sections.settings``):

- ``authors``: fp32, the expert's and the eval-mode teacher's forwards of x and x~ run separately, PyTorch's
  default (unfused) Adam, cudnn deterministic without cudnn.benchmark (their ``setup_seed``) — what the authors'
  code does;
- ``default``: the project defaults on this device: batched eval forwards, fused Adam, bf16-mixed where the device
  has bf16 hardware (a GPU, or a CPU with ``avx512_bf16``/AMX; else fp32); on CUDA also channels-last and
  cudnn.benchmark;
- ``default-fp32``: the defaults with ``trainer.precision=32-true`` (what bf16 adds, apart from the rest);
- ``deterministic``: the defaults with ``trainer.deterministic=true`` (torch deterministic algorithms, as
  ``experiment=authors`` runs);
- ``compile`` (``--compile``): the defaults + ``torch.compile`` (compiled once, in the first repeat's warm-up).

Each repeat runs every mode once (interleaved, so load swings on a shared machine hit all modes alike); the first
``--warmup`` iterations of each run are not timed. Prints min and median seconds per iteration per mode, their
ratio to ``authors``, and evaluation images/s (``URD.predict`` in fp32 as evaluation runs: map + σ = 4 blur + score).

    python experiments/bench_train.py --backbone wide_resnet50_2.tv_in1k --size 128 --batch 4 --iters 3 --repeats 3
    python experiments/bench_train.py --backbone resnet18 --size 128 --batch 8 --compile
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from bench_gpu_sections import DeviceBatches, IterationTimer, random_batch, settings
from lightning.pytorch import Trainer

from urd_lightning.training.module import URDModule


def run_once(module: URDModule, mode: str, args: argparse.Namespace, device: torch.device) -> list[float]:
    """Seconds of each timed iteration of one fit of ``module`` in ``mode``."""
    s = settings("default" if mode == "compile" else mode, device)
    torch.backends.cudnn.deterministic = s["cudnn_deterministic"]
    timer = IterationTimer(device, args.warmup, args.iters, cap_s=float("inf"))
    trainer = Trainer(accelerator=device.type, devices=1, precision=s["precision"],
                      deterministic=s["torch_deterministic"],
                      benchmark=s["benchmark"], max_steps=args.warmup + args.iters,  # URD iterations (URDModule scales)
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[timer])
    batches = DeviceBatches(random_batch(args.batch, args.size, device), args.warmup + args.iters)
    trainer.fit(module, train_dataloaders=batches)
    torch.use_deterministic_algorithms(False)
    return timer.times


def build(template: URDModule, mode: str, device: torch.device) -> URDModule:
    s = settings("default" if mode == "compile" else mode, device)
    module = copy.deepcopy(template)
    module.hparams.channels_last = s["channels_last"]
    module.hparams.batched_eval_forwards = s["batched_eval_forwards"]
    module.fused_adam = s["fused_adam"]
    module.hparams.compile = mode == "compile"
    return module


def eval_images_per_s(module: URDModule, args: argparse.Namespace, device: torch.device) -> float:
    s = settings("default", device)
    model = module.model.to(device).eval()
    autocast = torch.autocast(device.type, enabled=False)  # evaluation runs fp32 whatever the training precision
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if s["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast:
        model.predict(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.eval_batches):
            model.predict(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return args.eval_batches * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3, help="timed training iterations per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per mode")
    parser.add_argument("--modes", default="authors,default",
                        help="comma-separated: authors, default, default-fp32, deterministic, compile")
    parser.add_argument("--compile", action="store_true", help="add the compile mode")
    parser.add_argument("--eval-batches", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", help="cpu or cuda")
    parser.add_argument("--injection", default="gii")
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    modes = [m for m in args.modes.split(",") if m] + (["compile"] if args.compile else [])
    torch.manual_seed(0)
    template = URDModule(model={"backbone": args.backbone, "pretrained": False, "injection": args.injection},
                         image_size=args.size)
    modules = {mode: build(template, mode, device) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            times[mode] += run_once(modules[mode], mode, args, device)
            print(f"repeat {repeat + 1}/{args.repeats} {mode}: median so far {statistics.median(times[mode]):.3f} "
                  f"s/iteration", flush=True)
    print(f"\nbackbone={args.backbone} size={args.size} batch={args.batch} device={device.type} "
          f"threads={torch.get_num_threads()} injection={args.injection}; {args.repeats} interleaved repeats x "
          f"{args.iters} timed iterations (after {args.warmup} warm-up) per mode")
    base = statistics.median(times[modes[0]])
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"{mode:>8}: min {min(times[mode]):.3f} s, median {med:.3f} s per iteration "
              f"({1 / med:.3f} iterations/s); median / {modes[0]}'s = {med / base:.3f}")
    print(f"eval (fp32, as every evaluation runs): {eval_images_per_s(modules[modes[-1]], args, device):.2f} images/s")


if __name__ == "__main__":
    main()
