"""Gaussian smoothing against scipy.ndimage.gaussian_filter(sigma=4) and the summed 1 − cos map (docs/method.md)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from urd_lightning.models.anomaly_map import (
    GaussianBlur2d,
    anomaly_map,
    gaussian_kernel1d,
    reflect_indices,
    score_maps,
)


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (5, 7), (1, 3), (16, 40)])
def test_blur_matches_scipy_reflect_sigma4(size):
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, *size))
    x[0, 0, size[0] // 2, size[1] // 2] += 5.0  # an impulse makes the kernel itself visible
    ours = GaussianBlur2d(4.0)(torch.from_numpy(x).float()).numpy()
    for b in range(2):
        ref = gaussian_filter(x[b, 0], sigma=4)  # scipy defaults: mode="reflect", truncate=4.0
        np.testing.assert_allclose(ours[b, 0], ref, atol=1e-5, rtol=0)


def test_blur_double_precision_is_exact_to_1e12():
    x = np.random.default_rng(1).random((1, 1, 20, 9))
    ours = GaussianBlur2d(4.0).double()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours[0, 0], gaussian_filter(x[0, 0], sigma=4), atol=1e-12)


def test_kernel_has_33_taps_and_sums_to_one():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33  # radius int(4*4 + 0.5) = 16
    assert torch.isclose(k.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_reflect_is_half_sample_symmetric_not_torch_reflect():
    # scipy "reflect" = numpy "symmetric": d c b a | a b c d | d c b a
    idx = reflect_indices(4, 6).tolist()
    assert idx == np.pad(np.arange(4), 6, mode="symmetric").tolist()
    assert idx[5] == 0 and idx[6] == 0  # the edge sample repeats (torch's "reflect" would not repeat it)


def test_blur_kernel_is_a_non_persistent_buffer():
    blur = GaussianBlur2d()
    assert "kernel" in dict(blur.named_buffers())
    assert blur.state_dict() == {}


def test_anomaly_map_sums_levels_and_upsamples():
    torch.manual_seed(0)
    t = [torch.rand(2, 4, 8, 8), torch.rand(2, 6, 4, 4), torch.rand(2, 8, 2, 2)]
    same = anomaly_map(t, [f.clone() for f in t], (32, 32))
    assert same.shape == (2, 1, 32, 32)
    assert same.abs().max() < 1e-6
    # Student = −teacher on every level: 1 − cos = 2 everywhere, three levels → 6.
    opposite = anomaly_map(t, [-f for f in t], (32, 32))
    torch.testing.assert_close(opposite, torch.full_like(opposite, 6.0))


def test_anomaly_map_uses_align_corners_true():
    # One level, 1×2 positions with 2 channels: left teacher (1,0) vs student (1,0) → 1 − cos = 0;
    # right teacher (0,1) vs student (1,0) → 1 − cos = 1.
    t = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]).reshape(1, 2, 1, 2)]
    s = [torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 2, 1, 2)]
    out = anomaly_map(t, s, (1, 5))
    # align_corners=True: the end pixels equal the two source values exactly and the rest interpolate linearly
    # (align_corners=False would give 0, 0, 0.5, 1, 1).
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))


def _features(dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4)]
    teacher = [torch.rand(s, generator=g) for s in shapes]
    # Low-contrast maps (student close to teacher), where bf16's ~0.004 steps would collapse thresholds.
    student = [t + 0.2 * torch.rand(t.shape, generator=g) for t in teacher]
    return [t.to(dtype) for t in teacher], [s.to(dtype) for s in student]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-features", "bf16-features"])
def test_map_and_score_are_fp32_under_bf16_autocast(dtype):
    # Whatever precision the network ran in, map, blur and score are computed in fp32. The reference runs
    # outside autocast on the same features cast to fp32, so it does not depend on the guard under test.
    teacher, student = _features(dtype)
    blur = GaussianBlur2d()
    ref_map, ref_score = score_maps(anomaly_map([t.float() for t in teacher], [s.float() for s in student], (64, 64)),
                                    blur)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_map, got_score = score_maps(anomaly_map(teacher, student, (64, 64)), blur)
    assert got_map.dtype == torch.float32 and got_score.dtype == torch.float32
    torch.testing.assert_close(got_map, ref_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_score, ref_score, atol=1e-6, rtol=0)


def test_urd_predict_is_fp32_under_bf16_autocast(monkeypatch):
    from urd_lightning.models import URD
    from urd_lightning.models.urd import URDOutput

    torch.manual_seed(0)
    net = URD(backbone="resnet18", pretrained=False).eval()
    teacher, student = _features()
    monkeypatch.setattr(net, "forward", lambda x: URDOutput(teacher=teacher, student=student))
    x = torch.zeros(2, 3, 64, 64)
    ref_map, ref_score = net.predict(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_map, got_score = net.predict(x)
    torch.testing.assert_close(got_map, ref_map, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_score, ref_score, atol=1e-6, rtol=0)
