"""The Metric classes: reference values across batch splits, state handling, errors, and two-process DDP."""

import pickle
from functools import partial

import numpy as np
import pytest
import torch
from tests.metrics._tester import SPLITS, feed, reference, run_ddp, values
from tests.metrics.cases import edge_case_data, one_anomalous_image

from urd_lightning.metrics import AUPRO, METRIC_NAMES, AnomalyMetrics, MetricInputError, PixelAP

TOL = 1e-6
MAPS, MASKS = edge_case_data()
REF = reference(MAPS, MASKS)


@pytest.mark.parametrize("split", list(SPLITS))
def test_anomaly_metrics_match_reference_for_any_batch_split(split: str) -> None:
    out = feed(AnomalyMetrics(), MAPS, MASKS, SPLITS[split](len(MAPS)), channel=split == "uneven").compute()
    assert set(out) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert float(out[name]) == pytest.approx(REF[name], abs=TOL), name


@pytest.mark.parametrize("split", list(SPLITS))
def test_single_metrics_match_reference(split: str) -> None:
    sizes = SPLITS[split](len(MAPS))
    assert float(feed(AUPRO(), MAPS, MASKS, sizes).compute()) == pytest.approx(REF["pixel_AUPRO"], abs=TOL)
    per_image = feed(AUPRO(protocol="per_image"), MAPS, MASKS, sizes).compute()
    assert float(per_image) == pytest.approx(REF["pixel_AUPRO_per_image"], abs=TOL)
    assert float(feed(PixelAP(), MAPS, MASKS, sizes).compute()) == pytest.approx(REF["pixel_AP"], abs=TOL)


def test_one_anomalous_image_only() -> None:
    maps, masks = one_anomalous_image()
    ref = reference(maps, masks)
    out = feed(AnomalyMetrics(), maps, masks, [1, 2]).compute()
    for name in METRIC_NAMES:
        assert float(out[name]) == pytest.approx(ref[name], abs=TOL), name


def test_given_scores_and_labels_override_the_map() -> None:
    metric = AnomalyMetrics()
    maps, masks = torch.from_numpy(MAPS), torch.from_numpy(MASKS)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0])  # image 6 has a one-pixel defect but is labelled normal
    metric.update(maps, masks, pred_score=-maps.flatten(1).mean(1), gt_label=labels)
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score(labels.numpy(), -MAPS.reshape(8, -1).mean(1))
    assert float(metric.compute()["image_AUROC"]) == pytest.approx(expected, abs=TOL)


def test_thresholds_and_curves() -> None:
    metric = feed(AnomalyMetrics(), MAPS, MASKS, [8])
    thresholds = metric.thresholds()
    flat, gt = MAPS.ravel(), MASKS.ravel()
    pred = flat >= thresholds["pixel"]
    f1 = 2 * (pred & gt).sum() / (pred.sum() + gt.sum())
    assert f1 == pytest.approx(REF["pixel_F1Max"], abs=TOL)
    curves = metric.curves()
    fpr, tpr, _ = curves["pixel_roc"]
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(REF["pixel_AUROC"], abs=TOL)
    fpr, pro, thr = curves["pixel_pro"]
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == pytest.approx(1.0)
    assert bool((fpr.diff() >= 0).all() and (thr.diff() <= 0).all())
    assert set(curves) == {"image_roc", "pixel_roc", "pixel_pro"}


def test_reset_clone_pickle_and_empty_state_dict() -> None:
    metric = feed(AnomalyMetrics(), MAPS, MASKS, [3, 5])
    before = {k: float(v) for k, v in metric.compute().items()}
    clone = metric.clone()
    restored = pickle.loads(pickle.dumps(metric))
    for m in (clone, restored):
        assert {k: float(v) for k, v in m.compute().items()} == pytest.approx(before, abs=TOL)
    assert metric.state_dict() == {}
    metric.reset()
    assert metric.image_scores == [] and metric.normal_scores == [] and int(metric.aupro_count) == 0
    feed(metric, MAPS[:4], MASKS[:4], [4])
    assert float(metric.compute()["pixel_AUPRO"]) == pytest.approx(reference(MAPS[:4], MASKS[:4])["pixel_AUPRO"])


def test_binned_mode_is_close_and_bounded() -> None:
    lo, hi = float(MAPS.min()), float(MAPS.max())
    out = feed(AnomalyMetrics(num_bins=4096, score_range=(lo, hi)), MAPS, MASKS, [8]).compute()
    for name in ("pixel_AUROC", "pixel_AP", "pixel_AUPRO"):
        assert float(out[name]) == pytest.approx(REF[name], abs=1e-3), name
    state = feed(AUPRO(num_bins=128), MAPS, MASKS, [8])
    assert state.neg_hist.numel() == 128 and not hasattr(state, "normal_scores")


def test_degenerate_inputs_give_nan_with_warning() -> None:
    metric = AnomalyMetrics()
    metric.update(torch.rand(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.warns(UserWarning, match="no anomalous"):
        out = metric.compute()
    assert all(torch.isnan(out[k]) for k in ("pixel_AUROC", "pixel_AP", "pixel_AUPRO", "pixel_AUPRO_per_image"))
    assert torch.isnan(out["image_AUROC"])


@pytest.mark.parametrize(
    ("maps", "masks", "match"),
    [
        (torch.rand(2, 8, 8), torch.zeros(2, 1, 8, 8), "shape"),
        (torch.randint(0, 3, (2, 8, 8)), torch.zeros(2, 8, 8), "floating"),
        (torch.full((2, 8, 8), float("nan")), torch.zeros(2, 8, 8), "NaN"),
        (torch.rand(8, 8), torch.zeros(8, 8), r"\(B,H,W\)"),
    ],
)
def test_bad_inputs_raise_clear_errors(maps: torch.Tensor, masks: torch.Tensor, match: str) -> None:
    with pytest.raises(MetricInputError, match=match):
        AnomalyMetrics().update(maps, masks)


def test_bad_arguments_raise() -> None:
    with pytest.raises(MetricInputError, match="protocol"):
        AUPRO(protocol="mvtec")
    with pytest.raises(MetricInputError, match="fpr_limit"):
        AUPRO(fpr_limit=0)


@pytest.mark.ddp
def test_two_processes_with_uneven_shards_equal_single_process() -> None:
    # Unpadded sharding as the project's evaluation loader does it: rank 0 gets 5 images, rank 1 gets 3.
    shards = [np.array([0, 2, 4, 6, 7]), np.array([1, 3, 5])]
    makers = [AnomalyMetrics, partial(AUPRO, protocol="per_image"), AUPRO, PixelAP]
    single = []
    for make in makers:
        single.append(values(feed(make(), MAPS, MASKS, [8])))
    for rank_results in run_ddp(makers, MAPS, MASKS, shards):
        for result, expected in zip(rank_results, single, strict=True):
            assert result == pytest.approx(expected, abs=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("num_bins", [None, 2048])
def test_cuda_tensors_give_the_cpu_values(num_bins: int | None) -> None:
    cpu = feed(AnomalyMetrics(num_bins=num_bins, score_range=(-3.0, 4.0)), MAPS, MASKS, [3, 5]).compute()
    metric = AnomalyMetrics(num_bins=num_bins, score_range=(-3.0, 4.0)).cuda()
    for i in (0, 3):
        n = 3 if i == 0 else 5
        metric.update(torch.from_numpy(MAPS[i : i + n]).cuda(), torch.from_numpy(MASKS[i : i + n]).cuda())
    gpu = metric.compute()
    for name in METRIC_NAMES:
        assert float(gpu[name]) == pytest.approx(float(cpu[name]), abs=1e-9), name
