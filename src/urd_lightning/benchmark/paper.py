"""The URD paper's published means and their caveats, for results tables.

The published means are those of Liu et al., "Unlocking the Potential of Reverse
Distillation for Anomaly Detection" (AAAI 2025), as listed in docs/method.md, "Published numbers". The
per-category tables of the paper were not available, so only means can be compared.
"""

from __future__ import annotations

# The paper's means in [0, 1] (Papers with Code values / 100). The paper's AUPRO is the per-image protocol of RD4AD
# (docs/method.md, "Per-image AUPRO"), so it is stored under our name for that protocol,
# ``pixel_AUPRO_per_image``. MPDD: no numbers.
PAPER_MEANS: dict[str, dict[str, float]] = {
    "mvtec": {"image_AUROC": 0.992, "pixel_AUROC": 0.990, "pixel_AUPRO_per_image": 0.963, "pixel_AP": 0.724},
    "visa": {"image_AUROC": 0.965, "pixel_AUROC": 0.991, "pixel_AUPRO_per_image": 0.951},
    "btad": {"image_AUROC": 0.939, "pixel_AUROC": 0.981, "pixel_AUPRO_per_image": 0.785, "pixel_AP": 0.652},
}

PAPER_SOURCE = "URD paper (Liu et al., AAAI 2025), published means"

# Why the paper's row is not like-for-like with ours; printed under every table that shows it.
PAPER_CAVEATS: tuple[str, ...] = (
    "The paper's AUPRO is the per-image protocol of RD4AD (200 thresholds per anomalous image, FPR <= 0.3 "
    "renormalised by the largest kept FPR, averaged over images); compare it with the per-image column, not the "
    "pooled MVTec-official one.",
    "The authors' published numbers are the best test-set evaluation over training (test-set model selection); ours "
    "are the final iteration's. The 'oracle' row, when present, is our equivalent of their selection.",
)
