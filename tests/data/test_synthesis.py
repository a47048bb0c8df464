"""Anomaly synthesis (docs/method.md): seeded determinism, binary masks, untouched pixels, foreground."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from urd_lightning.data.dataset import AnomalyDataset, TrainSampler
from urd_lightning.data.synthesis import (
    BETA_MAX,
    DTDTextures,
    ProceduralTextures,
    make_texture_source,
    perlin_mask,
    perlin_noise,
    synthesize,
)
from urd_lightning.errors import DataError

SIZE = 64


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)


def test_same_seed_same_result_and_different_seed_differs():
    source = ProceduralTextures()
    a = synthesize(_image(), source, np.random.default_rng(5))
    b = synthesize(_image(), source, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    outs = [synthesize(_image(), source, np.random.default_rng(s))[1] for s in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_mask_binary_and_outside_unchanged_and_blend_range():
    image = _image()
    source = ProceduralTextures()
    nonempty = 0
    for seed in range(20):
        aug, mask = synthesize(image, source, np.random.default_rng(seed))
        assert aug.dtype == np.float32 and mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
        outside = mask == 0
        assert np.array_equal(aug[outside], image[outside])
        if mask.any():
            nonempty += 1
            assert not np.array_equal(aug[mask > 0], image[mask > 0])
        assert aug.min() >= 0 and aug.max() <= 1
    assert nonempty >= 10  # Perlin at threshold 0.5 usually leaves some anomalous pixels


def test_foreground_restriction():
    foreground = np.zeros((SIZE, SIZE), np.uint8)
    foreground[16:48, 16:48] = 1
    for seed in range(10):
        aug, mask = synthesize(_image(), ProceduralTextures(), np.random.default_rng(seed), foreground)
        assert not mask[foreground == 0].any()
        assert np.array_equal(aug[foreground == 0], _image()[foreground == 0])


def test_perlin_properties():
    rng = np.random.default_rng(0)
    noise = perlin_noise((SIZE, SIZE), (4, 2), rng)
    assert noise.shape == (SIZE, SIZE) and np.abs(noise).max() <= 1.5
    assert abs(float(noise[0, 0])) < 1e-6  # gradient noise is zero at lattice points
    masks = np.stack([perlin_mask(SIZE, np.random.default_rng(s)) for s in range(30)])
    coverage = masks.mean()
    assert 0.01 < coverage < 0.5


def test_beta_bound_visible_in_blend():
    # Where the texture is 0 the blend is β·x, so aug/x recovers β: it must stay below the authors' 0.8.
    class Black:
        def sample(self, rng, size):
            return np.zeros((size, size, 3), np.float32)

    image = np.full((SIZE, SIZE, 3), 0.5, np.float32)
    for seed in range(20):
        aug, mask = synthesize(image, Black(), np.random.default_rng(seed))
        if mask.any():
            assert (aug[mask > 0] / 0.5).max() < BETA_MAX + 1e-6


def test_dtd_source(tmp_path):
    import cv2

    (tmp_path / "images" / "banded").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "banded" / "a.jpg"), np.full((80, 90, 3), 200, np.uint8))
    source = make_texture_source(tmp_path)
    assert isinstance(source, DTDTextures)
    texture = source.sample(np.random.default_rng(0), SIZE)
    assert texture.shape == (SIZE, SIZE, 3) and abs(float(texture.mean()) - 200 / 255) < 0.02
    with pytest.raises(DataError, match="dtd_root"):
        DTDTextures(tmp_path / "images" / "missing")


def test_procedural_notice_logged(caplog, monkeypatch):
    # A training run earlier in the session (setup_console_logging) stops "urd_lightning" from propagating to root.
    monkeypatch.setattr(logging.getLogger("urd_lightning"), "propagate", True)
    with caplog.at_level("WARNING"):
        assert isinstance(make_texture_source(None), ProceduralTextures)
    assert "procedural" in caplog.text and "paper" in caplog.text


def test_dataset_seeded_by_epoch_and_index_not_workers(fake_roots):
    from urd_lightning.data.benchmarks import index

    samples = index("mvtec", fake_roots["mvtec"], "bottle", "train")
    ds = AnomalyDataset(samples, 32, train=True, source=ProceduralTextures(), seed=3)
    assert torch.equal(ds[(2, 1)]["aug_image"], ds[(2, 1)]["aug_image"])
    assert not torch.equal(ds[(2, 1)]["aug_image"], ds[(3, 1)]["aug_image"])

    def batches(num_workers: int) -> list[torch.Tensor]:
        sampler = TrainSampler(len(ds), seed=3)
        sampler.set_epoch(4)
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=sampler, num_workers=num_workers)
        return [b["aug_image"] for b in loader]

    zero, two = batches(0), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))


def test_train_sampler_epochs_and_ranks():
    s = TrainSampler(10, seed=1)
    s.set_epoch(0)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = [i for _, i in s]
    assert sorted(e0) == list(range(10)) and e0 != e1
    shards = []
    for rank in range(3):
        r = TrainSampler(10, seed=1, rank=rank, world_size=3)
        r.set_epoch(1)
        shards.append([i for _, i in r])
    assert all(len(x) == 4 for x in shards)  # padded to equal step counts for DDP
    assert set(sum(shards, [])) == set(range(10))
