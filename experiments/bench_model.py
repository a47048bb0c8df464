"""Parameter counts of the URD network per part and injection, and CPU forward time of the tiny config.

Compares with docs/method.md, "Size" (counted from the authors' modules: teacher 24.9 M used, student 140.0 M
instantiated of which 8.4 M ``bn.conv4/bn4`` always dead and 11.8 M ``conv3x3_simattn`` dead in the branch their
scripts run). Counts are taken on the meta device (no memory, no weights). Usage:

    python experiments/bench_model.py [--backbone wide_resnet50_2.tv_in1k] [--time]
"""

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from urd_lightning.models import URD  # noqa: E402


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="wide_resnet50_2.tv_in1k")
    parser.add_argument("--time", action="store_true", help="also time predict() of resnet18 at 64² on CPU")
    args = parser.parse_args()
    for injection in ("gii", "concat", "none"):
        with torch.device("meta"):
            net = URD(backbone=args.backbone, pretrained=False, injection=injection)
        s = net.student
        parts = {"teacher": count(net.teacher), "student": count(s), "bottleneck": count(s.bottleneck),
                 "decoder": count(s.decoder)}
        for name in ("fuse_skip", "fuse_encoder", "conv3x3_simattn", "conv1x1_downsample_dim"):
            if hasattr(s, name):
                parts[name] = count(getattr(s, name))
        print(f"{args.backbone} injection={injection}: " + ", ".join(f"{k} {v:.2f} M" for k, v in parts.items()))
    if args.time:
        net = URD(backbone="resnet18", pretrained=False).eval()
        x = torch.randn(8, 3, 64, 64)
        with torch.no_grad():
            net.predict(x)
            start = time.perf_counter()
            for _ in range(5):
                net.predict(x)
        print(f"resnet18 64² predict, batch 8, CPU threads {torch.get_num_threads()}: "
              f"{(time.perf_counter() - start) / 5 * 1000:.0f} ms/batch")


if __name__ == "__main__":
    main()
