"""How much smaller ``export format=weights`` is than a training checkpoint, per backbone.

    python experiments/weights_size.py --backbones resnet18 wide_resnet50_2.tv_in1k
    python experiments/weights_size.py --ckpt results/demo/weave/<run>/checkpoints/last.ckpt   # a real file too

Without ``--ckpt`` nothing is trained or written: the URDModule is built as training builds it (random weights, so
no download), its optimizers are stepped once with zero gradients so Adam allocates its two moment tensors per
parameter, and the tensor bytes are added up. A training checkpoint holds the whole ``state_dict`` (teacher, student,
expert) plus the optimizer states; the weights file holds the teacher's and the student's entries only. File
headers add a few hundred kB, which ``--ckpt`` shows on real files. No size depends on ``data.image_size``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from urd_lightning.config import load_config  # noqa: E402
from urd_lightning.deploy.export import export  # noqa: E402
from urd_lightning.training.builders import build_module  # noqa: E402

MB = 2**20


def _bytes(tensors: object) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel() * tensors.element_size()
    if isinstance(tensors, dict):
        return sum(_bytes(v) for v in tensors.values())
    if isinstance(tensors, list | tuple):
        return sum(_bytes(v) for v in tensors)
    return 0


def estimate(backbone: str) -> dict[str, float]:
    """Tensor bytes (MB) of a training checkpoint's parts and of the weights-only file, without training."""
    cfg = load_config(["dataset=demo", f"model.backbone={backbone}", "model.pretrained=false", "logger=none"])
    module = build_module(cfg)
    optimizers = module.configure_optimizers()
    for optimizer in optimizers:  # zero gradients: Adam creates exp_avg and exp_avg_sq exactly as a real step does
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        optimizer.step()
    state = module.state_dict()
    parts = {part: _bytes({k: v for k, v in state.items() if k.startswith(f"model.{part}.")}) / MB
             for part in ("teacher", "student", "expert")}
    optimizer_mb = sum(_bytes(o.state_dict()["state"]) for o in optimizers) / MB
    checkpoint_mb = _bytes(state) / MB + optimizer_mb
    weights_mb = parts["teacher"] + parts["student"]
    return {**parts, "optimizer": optimizer_mb, "checkpoint": checkpoint_mb, "weights": weights_mb}


def measure(ckpt: Path) -> None:
    """Export ``ckpt`` to a temporary weights file and print both real sizes."""
    with tempfile.TemporaryDirectory() as folder:
        meta = export(ckpt, format="weights", output=Path(folder) / "w.safetensors")
    ratio = meta["bytes"] / meta["checkpoint_bytes"]
    print(f"{ckpt}: checkpoint {meta['checkpoint_bytes'] / MB:.1f} MB, weights {meta['bytes'] / MB:.1f} MB "
          f"({ratio:.0%}, {1 / ratio:.1f}x smaller)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="*", default=["resnet18", "wide_resnet50_2.tv_in1k"])
    parser.add_argument("--ckpt", type=Path, nargs="*", default=[], help="real checkpoints to export and measure")
    args = parser.parse_args()
    print("| backbone | teacher MB | student MB | expert MB | optimizer MB | checkpoint MB | weights MB | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        f = estimate(backbone)
        print(f"| {backbone} | {f['teacher']:.1f} | {f['student']:.1f} | {f['expert']:.1f} | {f['optimizer']:.1f} "
              f"| {f['checkpoint']:.1f} | {f['weights']:.1f} | {f['weights'] / f['checkpoint']:.0%} |")
    for ckpt in args.ckpt:
        measure(ckpt)


if __name__ == "__main__":
    main()
