"""Regenerate tests/golden/train_batches.npz: tiny training batches with ``data.augment`` false and flips.

The file was written by the data code as it was before augmentation pipelines existed (``augment: bool``, flips
drawn from the synthesis generator), so the test (tests/data/test_augmentation.py) pins that ``false`` and
``flips`` still give those batches bit for bit. Run ``python tests/golden/regenerate_batches.py`` only when a change
is *meant* to change training batches, and say why in the commit message.

Everything is made here from integers (PNG images and textures from a seeded generator, the Otsu foreground, Pillow's
resize, Perlin masks, the blend), so the batches do not depend on the test fixtures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

GOLDEN = Path(__file__).with_name("train_batches.npz")
SIZE, SEED, EPOCHS, IMAGES = 32, 7, (0, 1), 4
MODES = {"false": False, "flips": True}  # True: how flips were asked for before "flips" existed


def write_data(root: Path) -> tuple[list[str], Path]:
    """Four 48x40 training images (a bright disc on a dark ground, so Otsu finds a foreground) and three textures."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(IMAGES):
        image = rng.integers(10, 60, (40, 48, 3), dtype=np.uint8)
        cv2.circle(image, (int(rng.integers(14, 34)), int(rng.integers(14, 26))), 12, (200, 180, 160), -1)
        paths.append(str(root / "train" / f"{i}.png"))
        Path(paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(paths[-1], image)
    for i in range(3):
        (root / "dtd" / "images" / f"class{i}").mkdir(parents=True)
        cv2.imwrite(str(root / "dtd" / "images" / f"class{i}" / "t.png"),
                    rng.integers(0, 256, (30, 36, 3), dtype=np.uint8))
    return paths, root / "dtd"


def build_batches(augment_of: dict[str, object] | None = None) -> dict[str, np.ndarray]:
    """``{"<mode>/<epoch>/<key>": array}``: every training item of each epoch, stacked, for each mode."""
    from urd_lightning.data.benchmarks import Sample
    from urd_lightning.data.dataset import AnomalyDataset
    from urd_lightning.data.foreground import foreground_masks
    from urd_lightning.data.synthesis import DTDTextures

    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths, dtd = write_data(Path(tmp))
        samples = [Sample(p, None, 0, "good") for p in paths]
        foregrounds = foreground_masks(paths, "otsu", SIZE, Path(tmp) / "fg", progress=False)
        for mode, augment in (augment_of or MODES).items():
            dataset = AnomalyDataset(samples, SIZE, train=True, source=DTDTextures(dtd), foregrounds=foregrounds,
                                     seed=SEED, augment=augment)
            for epoch in EPOCHS:
                items = [dataset[(epoch, i)] for i in range(IMAGES)]
                for key in ("image", "aug_image", "aug_mask"):
                    out[f"{mode}/{epoch}/{key}"] = np.stack([item[key].numpy() for item in items])
    return out


def main() -> None:
    """Write the golden file."""
    np.savez_compressed(GOLDEN, **build_batches())


if __name__ == "__main__":
    main()
