"""The pooled AUPRO's cut at the FPR limit, placed from a sample of the normals, gives exactly the full levels'
AUPRO, whether the sample places it (fast path) or misleads and the exact T-th largest normal decides (fallback)."""

import numpy as np
import pytest
import torch

from urd_lightning.metrics import functional as F


def _inputs(kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    n, m = 20000, 600
    if kind == "smooth":  # nearly all distinct
        normal, anomalous = rng.random(n, dtype=np.float32), (0.4 + 0.6 * rng.random(m)).astype(np.float32)
    elif kind == "ties":  # normals tie anomalous values
        normal = (np.round(rng.random(n) * 16) / 16).astype(np.float32)
        anomalous = (np.round(rng.random(m) * 16) / 16).astype(np.float32)
    else:  # "strided": every sampled normal is high, the others low, so the sample overestimates the cut
        normal = rng.random(n, dtype=np.float32) * 0.1
        normal[::8] += 0.9
        anomalous = rng.random(m, dtype=np.float32)
    weight = torch.from_numpy(1.0 / rng.integers(1, 50, m))
    return torch.from_numpy(normal), torch.from_numpy(anomalous), weight


@pytest.mark.parametrize("kind, fallback", [("smooth", False), ("ties", False), ("strided", True)])
def test_sampled_cut_gives_the_exact_aupro(monkeypatch, kind, fallback):
    monkeypatch.setattr(F, "_SAMPLE", 2500)  # stride 8 on 20,000 normals: the sample is every 8th normal
    calls: list[int] = []
    kth = F.kth_largest
    monkeypatch.setattr(F, "kth_largest", lambda x, k: calls.append(x.numel()) or kth(x, k))
    normal, anomalous, weight = _inputs(kind)
    full = F.exact_levels(normal, anomalous, weight, 40.0)
    for limit in (0.3, 0.05, 0.6):
        calls.clear()
        cut = F.exact_levels(normal, anomalous, weight, 40.0, fpr_limit=limit)
        assert float(cut.neg.sum()) == normal.numel()
        assert cut.neg[1:].sum() < normal.numel()  # the cut did drop normals below it
        assert torch.equal(F.pooled_aupro(cut, limit), F.pooled_aupro(full, limit))  # bit for bit
        assert (normal.numel() in calls) == fallback, calls  # the full T-th largest only when the sample misled
