"""Exact pooled curves and the per-image protocol against the slow numpy references (tests/reference)."""

import numpy as np
import pytest
import torch
from tests.metrics.cases import edge_case_data, one_anomalous_image
from tests.reference.anomaly_metrics import (
    f1_max_ref,
    integrate_to_limit_ref,
    per_image_aupro_ref,
    pixel_metrics_ref,
    pooled_pro_curve_ref,
)

from urd_lightning.metrics import functional as F
from urd_lightning.metrics.per_image import arange_thresholds, label_regions, per_image_aupro

TOL = 1e-6


def _levels(maps: np.ndarray, masks: np.ndarray) -> F.Levels:
    t, m = torch.from_numpy(maps), torch.from_numpy(masks)
    labels, sizes = label_regions(m)
    w = 1.0 / sizes.gather(1, labels.flatten(1)).view_as(labels)[m].double()
    return F.exact_levels(t[~m], t[m], w, float((sizes > 0).sum()))


CASES = {"edge": edge_case_data(), "one_anomalous": one_anomalous_image(), "random_many": edge_case_data(5, 10, 28)}


@pytest.mark.parametrize("case", list(CASES))
def test_pooled_metrics_match_reference(case: str) -> None:
    maps, masks = CASES[case]
    levels = _levels(maps, masks)
    ref = pixel_metrics_ref(maps, masks)
    assert float(F.auroc(levels)) == pytest.approx(ref["pixel_AUROC"], abs=TOL)
    assert float(F.average_precision(levels)) == pytest.approx(ref["pixel_AP"], abs=TOL)
    assert float(F.f1_max(levels)[0]) == pytest.approx(ref["pixel_F1Max"], abs=TOL)
    curve = pooled_pro_curve_ref(maps, masks)
    for limit in (0.3, 0.05, 1.0):
        assert float(F.pooled_aupro(levels, limit)) == pytest.approx(integrate_to_limit_ref(*curve, limit), abs=TOL)


def _truncation_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(3)
    coarse = (np.round(rng.random((4, 16, 16)) * 8) / 8).astype(np.float32)  # normals tie anomalous values
    coarse_masks = rng.random((4, 16, 16)) < 0.2
    separated = rng.random((3, 16, 16)).astype(np.float32)
    separated_masks = np.zeros((3, 16, 16), bool)
    separated_masks[1, 2:6, 2:6] = True
    high, low = separated.copy(), separated.copy()
    high[separated_masks] += 2.0  # every anomalous score above every normal one
    low[separated_masks] -= 2.0  # every anomalous score below every normal one
    return {
        **CASES,
        "coarse_ties": (coarse, coarse_masks),
        "high": (high, separated_masks),
        "low": (low, separated_masks),
    }


@pytest.mark.parametrize("case", list(_truncation_cases()))
def test_levels_truncated_at_the_fpr_limit_give_the_same_aupro(case: str) -> None:
    maps, masks = _truncation_cases()[case]
    full = _levels(maps, masks)
    t, m = torch.from_numpy(maps), torch.from_numpy(masks)
    labels, sizes = label_regions(m)
    w = 1.0 / sizes.gather(1, labels.flatten(1)).view_as(labels)[m].double()
    curve = pooled_pro_curve_ref(maps, masks)
    for limit in (0.3, 0.05, 0.01, 0.5, 0.999, 1.0):
        cut = F.exact_levels(t[~m], t[m], w, float((sizes > 0).sum()), fpr_limit=limit)
        assert float(cut.neg.sum()) == float(full.neg.sum())
        assert float(F.pooled_aupro(cut, limit)) == pytest.approx(float(F.pooled_aupro(full, limit)), abs=1e-12)
        assert float(F.pooled_aupro(cut, limit)) == pytest.approx(integrate_to_limit_ref(*curve, limit), abs=TOL)


def test_pro_curve_vertices_contain_reference_points() -> None:
    maps, masks = edge_case_data()
    fpr, pro, _ = F.pro_curve(_levels(maps, masks))
    ref_fpr, ref_pro = pooled_pro_curve_ref(maps, masks)
    ours = set(zip(np.round(fpr.numpy(), 12), np.round(pro.numpy(), 12), strict=True))
    missing = [p for p in zip(np.round(ref_fpr, 12), np.round(ref_pro, 12), strict=True) if p not in ours]
    horizontal = [p for p in missing if np.any(np.isclose(pro.numpy(), p[1]))]
    assert len(missing) == len(horizontal)  # only points inside horizontal runs (normal-only groups) are merged


def test_f1_threshold_is_reference_threshold() -> None:
    maps, masks = edge_case_data()
    f1, thr = F.f1_max(_levels(maps, masks))
    ref_f1, ref_thr = f1_max_ref(maps.ravel().astype(np.float64), masks.ravel())
    assert float(f1) == pytest.approx(ref_f1, abs=TOL)
    assert float(thr) == pytest.approx(ref_thr, abs=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_per_image_protocol_matches_rd4ad_reference(case: str) -> None:
    maps, masks = CASES[case]
    ours = per_image_aupro(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()
    np.testing.assert_allclose(ours, per_image_aupro_ref(maps, masks), atol=TOL)


def test_per_image_protocol_degenerate_images() -> None:
    maps = np.zeros((4, 8, 8), np.float32)
    masks = np.zeros((4, 8, 8), bool)
    masks[:, 2:4, 2:4] = True
    maps[1, 2:4, 2:4] = 1.0  # perfect separation: every kept FPR is 0 -> PRO at the lowest kept threshold
    maps[2] = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    masks[3] = True  # no normal pixel
    maps[3] = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    ours = per_image_aupro(torch.from_numpy(maps), torch.from_numpy(masks)).numpy()
    assert ours[0] == 0.0  # constant map: defined as 0
    assert ours[1] == 1.0
    np.testing.assert_allclose(ours, per_image_aupro_ref(maps, masks), atol=TOL)


def test_arange_thresholds_replicate_numpy_lengths() -> None:
    rng = np.random.default_rng(3)
    lo = rng.normal(size=2000)
    hi = lo + np.abs(rng.normal(size=2000)) * 10.0 ** rng.integers(-6, 3, 2000)
    thr, count = arange_thresholds(torch.from_numpy(lo), torch.from_numpy(hi))
    lengths = set()
    for i in range(len(lo)):
        ref = np.arange(lo[i], hi[i], (hi[i] - lo[i]) / 200)
        lengths.add(len(ref))
        assert int(count[i]) == len(ref)
        np.testing.assert_array_equal(thr[i, : len(ref)].numpy(), ref)
    assert lengths >= {200, 201}  # the rounding trap exists in this sample and is replicated


def test_label_regions_use_8_connectivity() -> None:
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0, 0] = mask[0, 1, 1] = mask[0, 2, 2] = True
    mask[0, 5, 0] = True
    labels, sizes = label_regions(mask)
    assert int(labels.max()) == 2
    assert sorted(sizes[0, 1:].tolist()) == [1, 3]


def test_degenerate_pooled_inputs() -> None:
    normal = torch.rand(100)
    no_anom = F.exact_levels(normal, torch.zeros(0), num_regions=0)
    assert torch.isnan(F.auroc(no_anom)) and torch.isnan(F.average_precision(no_anom))
    assert torch.isnan(F.pooled_aupro(no_anom)) and torch.isnan(F.f1_max(no_anom)[0])
    no_normal = F.exact_levels(torch.zeros(0), torch.rand(10), torch.ones(10), 10)
    assert torch.isnan(F.auroc(no_normal)) and float(F.average_precision(no_normal)) == 1.0
    constant = F.exact_levels(torch.full((90,), 0.5), torch.full((10,), 0.5), torch.full((10,), 0.1), 1)
    assert float(F.auroc(constant)) == pytest.approx(0.5)
    assert float(F.average_precision(constant)) == pytest.approx(0.1)
    assert float(F.pooled_aupro(constant)) == pytest.approx(0.15)  # the diagonal, integrated to 0.3 / 0.3


def test_normal_placement_fast_path_equals_binary_search() -> None:
    # Crowded buckets (runs of adjacent floats), exact ties between normal and anomalous scores, values out of range.
    rng = np.random.default_rng(7)
    base = rng.random(300).astype(np.float32)
    crowd = np.nextafter(np.float32(0.5), np.float32(1), dtype=np.float32) + np.arange(50, dtype=np.float32) * 1e-7
    a_vals = torch.from_numpy(np.unique(np.concatenate([base, crowd]).astype(np.float32)))
    normal = torch.from_numpy(
        np.concatenate([rng.random(5000), base[:100], crowd[::3], [-5.0, 7.0]]).astype(np.float32)
    )
    counts = F._normal_level_counts(normal, a_vals)
    idx = torch.searchsorted(a_vals, normal)
    level = 2 * idx + (a_vals[idx.clamp(max=len(a_vals) - 1)] == normal)
    assert torch.equal(counts, torch.bincount(level, minlength=2 * len(a_vals) + 1).double())
