"""A ``bf16-mixed`` run evaluates in fp32 (fp32 maps; bf16 is the CPU default where the CPU
has bf16 instructions, and predict reproduces the test stage's scores only if both run the network in fp32).

The network's features during ``trainer.test`` under Lightning's CPU bf16 autocast are fp32, and every metric and
score statistic equals an fp32 Trainer's evaluation of the same weights.
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


def _evaluate(module, precision):
    seen = []
    forward = module.model.forward

    def recording_forward(x):
        out = forward(x)
        seen.append(out)
        return out

    module.model.forward = recording_forward
    trainer = Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    trainer.test(module, dataloaders=DataLoader(_test_set(), batch_size=3), verbose=False)
    module.model.forward = forward
    return seen, dict(module.final), dict(module.score_stats)


def test_a_bf16_mixed_run_evaluates_in_fp32_like_predict():
    # Training may run under bf16 autocast; evaluation never does, so test numbers, thresholds and score statistics
    # are those predict/export compute from the checkpoint in fp32 (tests/deploy/test_predict.py, slow, end to end).
    torch.manual_seed(0)
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=SIZE, num_samples=0)
    seen, final, stats = _evaluate(module, "bf16-mixed")
    assert all(f.dtype == torch.float32 for out in seen for f in out.teacher + out.student)
    _, final_fp32, stats_fp32 = _evaluate(module, "32-true")
    assert final == final_fp32 and stats == stats_fp32

    reference = AnomalyMetrics()  # and the metrics are those of the fp32 maps of those features
    items = _test_set()
    for out, start in zip(seen, range(0, len(items), 3), strict=True):
        batch = items[start:start + 3]
        maps, scores = score_maps(anomaly_map(out.teacher, out.student, (SIZE, SIZE)), module.model.blur)
        reference.update(maps, torch.stack([b["gt_mask"] for b in batch]), scores,
                         torch.stack([b["gt_label"] for b in batch]))
    for key, value in reference.compute().items():
        assert final[key] == pytest.approx(float(value), abs=1e-6), key
