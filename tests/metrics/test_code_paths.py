"""Code paths the default CPU tests skip: the torch (accelerator) branches, float64 maps, float32 rounding."""

import numpy as np
import pytest
import torch
from tests.metrics.cases import edge_case_data, one_anomalous_image
from tests.reference.anomaly_metrics import (
    integrate_to_limit_ref,
    per_image_aupro_ref,
    pixel_metrics_ref,
    pooled_pro_curve_ref,
)

from urd_lightning.metrics import AUPRO, AnomalyMetrics
from urd_lightning.metrics import _ops as ops
from urd_lightning.metrics.per_image import _round_down, per_image_aupro

TOL = 1e-6
CASES = {"edge": edge_case_data(), "one_anomalous": one_anomalous_image(), "random_many": edge_case_data(5, 10, 28)}


def _check_all(maps: np.ndarray, masks: np.ndarray) -> None:
    t, m = torch.from_numpy(maps), torch.from_numpy(masks)
    metrics = AnomalyMetrics()
    metrics.update(t, m)
    values = metrics.compute()
    ref = pixel_metrics_ref(maps, masks)
    for key in ("pixel_AUROC", "pixel_AP", "pixel_F1Max"):
        assert float(values[key]) == pytest.approx(ref[key], abs=TOL), key
    curve = pooled_pro_curve_ref(maps, masks)
    assert float(values["pixel_AUPRO"]) == pytest.approx(integrate_to_limit_ref(*curve, 0.3), abs=TOL)
    per_image = per_image_aupro_ref(maps, masks)
    assert float(values["pixel_AUPRO_per_image"]) == pytest.approx(float(np.mean(per_image)), abs=TOL)
    np.testing.assert_allclose(per_image_aupro(t, m).numpy(), per_image, atol=TOL)
    for limit in (0.3, 0.05):
        pooled = AUPRO(fpr_limit=limit)  # the levels truncated at the limit
        pooled.update(t, m)
        assert float(pooled.compute()) == pytest.approx(integrate_to_limit_ref(*curve, limit), abs=TOL)


@pytest.mark.parametrize("case", list(CASES))
def test_accelerator_branches_run_on_the_cpu_match_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA tensors take torch's sort/searchsorted/kthvalue/unique instead of numpy's; force those branches here.
    monkeypatch.setattr(ops, "_on_cpu", lambda x: False)
    _check_all(*CASES[case])


@pytest.mark.parametrize("case", list(CASES))
def test_float64_maps_match_reference(case: str) -> None:
    maps, masks = CASES[case]
    rng = np.random.default_rng(11)
    # Offsets below float32 resolution: a float64 map must be compared in float64, not rounded to float32.
    _check_all(maps.astype(np.float64) + rng.random(maps.shape) * 1e-9, masks)


def test_thresholds_rounded_down_to_float32_keep_the_float64_comparison() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=20000).astype(np.float32)
    near = x.astype(np.float64)[:1000] + rng.choice([-1e-12, 0.0, 1e-12], 1000)  # thresholds at and around scores
    thr = torch.from_numpy(np.concatenate([rng.normal(size=1000), near, [np.inf, -1e30, 1e30]]))
    low = _round_down(thr, torch.float32).numpy()
    assert low.dtype == np.float32
    expected = x[:, None].astype(np.float64) > thr.numpy()[None, :]
    np.testing.assert_array_equal(x[:, None] > low[None, :], expected)
