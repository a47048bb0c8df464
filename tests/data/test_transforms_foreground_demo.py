"""Readers (grayscale/16-bit/RGBA → RGB, label-map masks), resizing, foreground cache, demo generator, CLI."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from urd_lightning.data import demo
from urd_lightning.data.cli import main as data_main
from urd_lightning.data.foreground import cached_foreground, compute_foreground
from urd_lightning.data.transforms import Resizer, denormalize, normalize, read_mask, read_rgb


def test_readers_make_rgb_and_binary(tmp_path):
    gray16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 2] = 200  # red in BGRA
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert read_rgb(tmp_path / "g16.png").shape == (64, 64, 3) and read_rgb(tmp_path / "g16.png").dtype == np.uint8
    assert tuple(read_rgb(tmp_path / "rgba.png")[0, 0]) == (200, 0, 0)
    label_map = np.zeros((8, 8), np.uint8)
    label_map[2:4, 2:4] = 1
    label_map[5, 5] = 3
    cv2.imwrite(str(tmp_path / "m.png"), label_map)
    assert read_mask(tmp_path / "m.png").sum() == 5


def test_cv2_resize_matches_pil_bilinear_closely():
    rng = np.random.default_rng(0)
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8), (0, 0), 3)
    image = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)  # fine detail aliases
    ours, _ = Resizer(128, "cv2")(image)
    pil = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR))
    naive = cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR)
    ours_err = np.abs(ours.astype(float) - pil).mean()
    assert ours_err < 0.6 * np.abs(naive.astype(float) - pil).mean()


def test_mask_resized_and_binarised():
    mask = np.zeros((100, 100), np.uint8)
    mask[10:60, 20:40] = 1
    _, small = Resizer(50)(np.zeros((100, 100, 3), np.uint8), mask)
    assert set(np.unique(small).tolist()) == {0.0, 1.0} and small.sum() == pytest.approx(250, abs=30)


def test_normalize_roundtrip():
    image = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    assert torch.allclose(denormalize(normalize(image)), torch.from_numpy(image).permute(2, 0, 1), atol=1e-6)


def test_foreground_methods_and_cache(tmp_path):
    image = np.full((64, 64, 3), 230, np.uint8)
    cv2.circle(image, (32, 32), 18, (40, 40, 40), -1)
    otsu = compute_foreground(image, "otsu", 64)
    assert otsu[32, 32] == 1 and otsu[2, 2] == 0  # darker object is foreground (inverted)
    grab = compute_foreground(image, "grabcut", 64)
    assert grab[32, 32] == 1 and grab.mean() < 0.9
    assert compute_foreground(image, "none", 64) is None
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), image)
    first = cached_foreground(path, "otsu", 64, tmp_path / "cache")
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    assert np.array_equal(cached_foreground(path, "otsu", 64, tmp_path / "cache"), first)
    cv2.imwrite(str(path), 255 - image)  # the image changed: a new cache entry
    cached_foreground(path, "otsu", 64, tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_demo_deterministic_stamped_and_valid(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert data_main(["demo", "--root", str(a)]) == 0
    demo.generate_demo(b)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 * (demo.NUM_TRAIN + demo.NUM_TEST_GOOD + 2 * 4 * demo.NUM_PER_DEFECT)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files[:: 17])
    assert (a / demo.STAMP).read_text().strip() == demo.generator_hash()
    (a / demo.STAMP).write_text("old\n")
    (a / "weave" / "train" / "good" / "000.png").unlink()
    demo.ensure_demo(a)  # outdated stamp: regenerated
    assert (a / "weave" / "train" / "good" / "000.png").exists()
    assert data_main(["check", "demo", "--root", str(a)]) == 0
