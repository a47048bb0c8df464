"""Pixel cache: cached items equal uncached ones, workers share one file, keys follow the content;
and the faster Perlin noise is the per-pixel formula bit for bit."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch

from urd_lightning.data.benchmarks import index
from urd_lightning.data.cache import PixelCache
from urd_lightning.data.dataset import AnomalyDataset, TrainSampler
from urd_lightning.data.digests import MEMO_NAME
from urd_lightning.data.synthesis import DTDTextures, ProceduralTextures, perlin_noise
from urd_lightning.data.workers import init_worker, worker_context


def _perlin_per_pixel(shape, periods, rng):
    """The straightforward statement: gather each pixel's four corner gradients, dot, fade-interpolate."""
    height, width = shape
    py, px = periods
    angles = rng.uniform(0, 2 * np.pi, size=(py + 1, px + 1))
    gradients = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y, x = np.arange(height) * py / height, np.arange(width) * px / width
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy, dx):
        g = gradients[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (np.sqrt(2) * (top * (1 - v) + bottom * v)).astype(np.float32)


def test_perlin_noise_is_the_per_pixel_formula_bit_for_bit():
    for seed in range(60):
        draw = np.random.default_rng(seed)
        shape = (int(draw.integers(5, 300)), int(draw.integers(5, 300)))
        periods = (2 ** int(draw.integers(0, 6)), 2 ** int(draw.integers(0, 6)))
        expected = _perlin_per_pixel(shape, periods, np.random.default_rng(seed))
        assert np.array_equal(perlin_noise(shape, periods, np.random.default_rng(seed)), expected), (shape, periods)
    assert np.array_equal(perlin_noise((256, 256), (32, 4), np.random.default_rng(1)),
                          _perlin_per_pixel((256, 256), (32, 4), np.random.default_rng(1)))


@pytest.fixture
def dtd_root(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        folder = tmp_path / "dtd" / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        texture = cv2.GaussianBlur(rng.integers(0, 256, (60 + i, 70, 3), dtype=np.uint8), (0, 0), 1)
        cv2.imwrite(str(folder / f"{i}.jpg"), texture)
    return tmp_path / "dtd"


def _dataset(samples, texture, dtd_root, resize, cache):
    source = (DTDTextures(dtd_root, resize=resize, cache_dir=cache) if texture == "dtd"
              else ProceduralTextures(cache_dir=cache))
    return AnomalyDataset(samples, 24, train=True, source=source, seed=5, resize=resize, pixel_cache_dir=cache)


@pytest.mark.parametrize("texture", ["dtd", "procedural"])
@pytest.mark.parametrize("resize", ["pil", "cv2"])
def test_items_are_identical_with_and_without_the_cache(mvtec_root, dtd_root, tmp_path, texture, resize):
    samples = index("mvtec", mvtec_root, "bottle", "train")
    plain = _dataset(samples, texture, dtd_root, resize, None)
    cached = _dataset(samples, texture, dtd_root, resize, str(tmp_path / "pixels"))
    assert plain.cache is None and cached.cache is not None
    for _ in ("cold", "warm"):
        for item in [(0, i) for i in range(len(samples))] + [(1, 2), (7, 0)]:
            a, b = plain[item], cached[item]
            for key in ("image", "aug_image", "aug_mask"):
                assert torch.equal(a[key], b[key]), (item, key)
    # The digest memo is written beside the caches once the source files are older than its racy window (2 s).
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "pixels").iterdir() if p.name != MEMO_NAME)
    assert files == sorted(["train", texture])


def test_loader_workers_share_the_cache_file(mvtec_root, dtd_root, tmp_path):
    samples = index("mvtec", mvtec_root, "bottle", "train")
    cached = _dataset(samples, "dtd", dtd_root, "pil", str(tmp_path / "pixels"))
    cached[(0, 0)]  # the main process maps the file: a worker must still get only its path
    assert cached.cache is not None and len(pickle.dumps(cached)) < 0.5 * cached.cache.path.stat().st_size

    def batches(dataset, workers):
        sampler = TrainSampler(len(dataset), seed=5)
        sampler.set_epoch(3)
        context = {"multiprocessing_context": worker_context(), "worker_init_fn": init_worker} if workers else {}
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers, **context)
        return [b["aug_image"] for b in loader]

    plain = batches(_dataset(samples, "dtd", dtd_root, "pil", None), 0)
    shared = batches(cached, 2)
    assert all(torch.equal(a, b) for a, b in zip(plain, shared, strict=True))
    size = cached.cache.size
    flags = np.fromfile(cached.cache.path, np.uint8)[len(samples) * size * size * 3:]
    assert flags.all()  # the workers filled every training slot in the one shared file


def test_cache_file_keys_and_slots(tmp_path):
    a = PixelCache(tmp_path, "train", "digest-a|pil", 3, 8)
    assert a.path == PixelCache(tmp_path, "train", "digest-a|pil", 3, 8).path
    others = [("digest-b|pil", 3, 8), ("digest-a|cv2", 3, 8), ("digest-a|pil", 3, 16), ("digest-a|pil", 4, 8)]
    assert len({a.path} | {PixelCache(tmp_path, "train", *o).path for o in others}) == 5
    ones = np.ones((8, 8, 3), np.uint8)
    assert np.array_equal(a.get(1, lambda: ones), ones)
    assert np.array_equal(a.get(1, lambda: 2 * ones), ones)  # stored: not computed again
    b = PixelCache(tmp_path, "train", "digest-a|pil", 3, 8)
    b._create()  # a second process creating the same file must not wipe the first one's slots
    assert np.array_equal(b.get(1, lambda: 3 * ones), ones)
    assert np.array_equal(b.get(0, lambda: 3 * ones), 3 * ones)
    with pytest.raises(ValueError, match="uint8"):
        b.get(2, lambda: ones.astype(np.float32))


def test_dataset_cache_key_follows_file_content(mvtec_root, tmp_path):
    import shutil

    root = tmp_path / "mvtec"
    shutil.copytree(mvtec_root / "bottle", root / "bottle")
    samples = index("mvtec", root, "bottle", "train")
    before = AnomalyDataset(samples, 24, train=True, pixel_cache_dir=str(tmp_path / "px")).cache
    cv2.imwrite(samples[0].image_path, np.zeros((48, 48, 3), np.uint8))
    after = AnomalyDataset(samples, 24, train=True, pixel_cache_dir=str(tmp_path / "px")).cache
    assert before is not None and after is not None and before.path != after.path


def test_normalize_is_the_plain_formula_bit_for_bit():
    from urd_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize

    image = np.random.default_rng(0).uniform(0, 1, (20, 30, 3))
    for view in (image.astype(np.float32), image, image[:, ::-1].astype(np.float32)):
        expected = ((view.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        before = view.copy()
        assert torch.equal(normalize(view), torch.from_numpy(np.ascontiguousarray(expected)))
        assert np.array_equal(view, before)  # the input is left alone
