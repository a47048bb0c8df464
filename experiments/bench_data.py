"""Data pipeline: the two resize methods (``data.resize``) compared, in difference and speed.

    python experiments/bench_data.py --resize-only [--size 256]

1024² → 256²: a blurred-noise RGB image (with and without fine noise on top) and a mask of 1-3 px wide lines;
the figures are quoted in ``data/transforms.py`` and ``docs/faithfulness.md``.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np


def _time(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def compare_resize(size: int = 256, source: int = 1024, repeat: int = 20) -> None:
    from urd_lightning.data.transforms import Resizer

    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (source, source, 3), dtype=np.uint8), (0, 0), 2)
    detailed = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)  # fine texture
    pil, cv = Resizer(size, "pil"), Resizer(size, "cv2")
    for name, image in (("blurred noise", smooth), ("blurred noise + fine noise", detailed)):
        diff = np.abs(pil(image)[0].astype(np.int16) - cv(image)[0].astype(np.int16))
        print(f"resize {source}²→{size}² RGB {name}, cv2 vs pil: mean |diff| {diff.mean():.2f} grey levels, "
              f"max {diff.max()}")
    mask = np.zeros((source, source), np.uint8)
    for _ in range(30):
        p0, p1 = rng.integers(0, source, 2), rng.integers(0, source, 2)
        cv2.line(mask, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1, int(rng.integers(1, 4)))
    a, b = pil.resize_mask(mask) > 0, cv.resize_mask(mask) > 0
    iou = (a & b).sum() / max((a | b).sum(), 1)
    print(f"thin-line mask (1-3 px lines) {source}²→{size}²: IoU cv2 vs pil {iou:.3f} (pil {a.sum()} px, "
          f"cv2 {b.sum()} px)")
    t_pil, t_cv = _time(lambda: pil(image), repeat), _time(lambda: cv(image), repeat)
    print(f"resize time per image: pil {1e3 * t_pil:.2f} ms, cv2 {1e3 * t_cv:.2f} ms ({t_pil / t_cv:.1f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--resize-only", action="store_true", help="only compare the resize methods")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    compare_resize(args.size)
    if args.resize_only:
        return


if __name__ == "__main__":
    main()
