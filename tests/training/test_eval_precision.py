"""Issue 13 §1: a ``bf16-mixed`` evaluation gives the metrics of the fp32 map computed from the same features.

The network runs under Lightning's CPU bf16 autocast (its features come out in bf16); the reference reads those very
features, cast to fp32, and computes map, blur, score and metrics outside autocast. Without the fp32 guard in
``models/anomaly_map.py`` the blur runs in bf16 and the numbers differ.
"""

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from urd_lightning.metrics import AnomalyMetrics
from urd_lightning.models.anomaly_map import anomaly_map, score_maps
from urd_lightning.training.module import URDModule

SIZE = 64


def _test_set(n=6):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        if i % 2:
            mask[:, 8 + 4 * i:24 + 4 * i, 10:30] = 1.0
        items.append({"image": torch.randn(3, SIZE, SIZE, generator=g), "gt_mask": mask,
                      "gt_label": torch.tensor(i % 2), "index": torch.tensor(i), "image_path": f"{i}.png",
                      "defect_type": "cut" if i % 2 else "good"})
    return items


def test_bf16_mixed_evaluation_equals_fp32_maps_of_the_same_features():
    torch.manual_seed(0)
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=SIZE, num_samples=0)
    seen = []
    forward = module.model.forward

    def recording_forward(x):
        out = forward(x)
        seen.append(out)
        return out

    module.model.forward = recording_forward
    items = _test_set()
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.test(module, dataloaders=DataLoader(items, batch_size=3), verbose=False)
    # The network really ran in bf16 (otherwise this test would show nothing).
    assert all(f.dtype == torch.bfloat16 for out in seen for f in out.teacher + out.student)

    reference = AnomalyMetrics()
    lows, highs = [], []
    for out, start in zip(seen, range(0, len(items), 3), strict=True):
        batch = items[start:start + 3]
        raw = anomaly_map([f.float() for f in out.teacher], [f.float() for f in out.student], (SIZE, SIZE))
        maps, scores = score_maps(raw, module.model.blur)
        reference.update(maps, torch.stack([b["gt_mask"] for b in batch]), scores,
                         torch.stack([b["gt_label"] for b in batch]))
        lows.append(maps.min())
        highs.append(maps.max())
    expected = {k: float(v) for k, v in reference.compute().items()}
    assert module.final.keys() == expected.keys()
    for key, value in expected.items():
        assert module.final[key] == pytest.approx(value, abs=1e-6), key
    # The map values themselves (extremes over the test set), not only the rank-based metrics.
    assert module.score_stats["pixel_min"] == pytest.approx(float(min(lows)), abs=1e-6)
    assert module.score_stats["pixel_max"] == pytest.approx(float(max(highs)), abs=1e-6)
