"""Training iterations/s and evaluation images/s of URD for a backbone, image size and batch size.

Runs the real training step (``URDModule.training_step`` under a Lightning ``Trainer``, manual optimisation, two
Adams) on random tensors, so it measures compute only (no disk, no synthesis), then times ``URD.predict`` (map +
σ = 4 blur + max score) in eval mode. The first ``--warmup`` iterations are not timed.

    python experiments/bench_train.py --backbone resnet18 --size 128 --batch 8 --iters 10
    python experiments/bench_train.py --backbone wide_resnet50_2.tv_in1k --size 256 --batch 16 --accelerator gpu \
        --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from urd_lightning.training.module import URDModule  # noqa: E402


class RandomBatches(Dataset):
    def __init__(self, size: int, length: int) -> None:
        self.size, self.length = size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        mask = (torch.rand(1, self.size, self.size, generator=g) > 0.9).float()
        return {"image": torch.randn(3, self.size, self.size, generator=g),
                "aug_image": torch.randn(3, self.size, self.size, generator=g), "aug_mask": mask,
                "index": torch.tensor(index)}


class Timer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.timed = warmup, 0.0, 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.timed += 1
            self._sync()
            self.elapsed = time.perf_counter() - self.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-batches", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--injection", default="concat")
    args = parser.parse_args()

    module = URDModule(model={"backbone": args.backbone, "pretrained": False, "injection": args.injection},
                       image_size=args.size, channels_last=args.channels_last)
    total = args.iters + args.warmup
    loader = DataLoader(RandomBatches(args.size, total * args.batch), batch_size=args.batch)
    timer = Timer(args.warmup)
    trainer = Trainer(accelerator=args.accelerator, devices=1, precision=args.precision,
                      max_steps=total, logger=False, enable_checkpointing=False,  # iterations (URDModule scales)
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    train_its = timer.timed / timer.elapsed

    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    model = module.model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in args.precision)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
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
        eval_ips = args.eval_batches * args.batch / (time.perf_counter() - start)
    print(f"backbone={args.backbone} size={args.size} batch={args.batch} accelerator={args.accelerator} "
          f"precision={args.precision} threads={torch.get_num_threads()}")
    print(f"train: {train_its:.3f} iterations/s ({train_its * args.batch:.2f} images/s), "
          f"{timer.timed} timed iterations")
    print(f"eval:  {eval_ips:.2f} images/s")


if __name__ == "__main__":
    main()
