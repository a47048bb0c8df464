"""Regenerate tests/golden/tiny_urd.pt: input, per-level features and maps of the tiny URD at a fixed seed.

Run ``python tests/golden/regenerate.py`` only when a change to the network is *meant* to change its outputs, and
say why in the commit message. The test (tests/models/test_golden.py) rebuilds the same network and compares with
rtol 1e-4, atol 1e-5 on CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("tiny_urd.pt")
SEED = 0
# The tiny config: resnet18, random weights, 64² input, GII injection (the paper's branch).
CONFIG = {"backbone": "resnet18", "pretrained": False, "injection": "gii"}


def build_and_run() -> dict[str, torch.Tensor]:
    """Build the tiny URD at ``SEED`` and return the tensors the golden file stores."""
    from urd_lightning.models import URD

    torch.manual_seed(SEED)
    net = URD(**CONFIG).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        out = net(x)
        smoothed, score = net.predict(x)
        raw = net.anomaly_map(x)
    tensors = {"input": x, "raw_map": raw, "smoothed_map": smoothed, "score": score}
    for i, (t, s) in enumerate(zip(out.teacher, out.student, strict=True), start=1):
        tensors[f"teacher_{i}"] = t
        tensors[f"student_{i}"] = s
    return tensors


def main() -> None:
    """Write the golden file."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.save(build_and_run(), GOLDEN)


if __name__ == "__main__":
    main()
