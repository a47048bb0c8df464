"""``AnomalyMetrics``: every image- and pixel-level metric of one evaluation in one Metric, pixels stored once.

Computes what URD's ``train.py::test`` reports and what MVTec AD defines (docs/method.md, "Evaluation protocols"): image
score = max of the (smoothed) map unless given, image label = max of the mask unless given; AUROC, step-wise AP and
F1-max at image and pixel level, the pooled AUPRO (``pixel_AUPRO``, MVTec official) and the per-image AUPRO the papers
report (``pixel_AUPRO_per_image``). One store of pixel scores feeds all pixel metrics: 4 bytes per pixel (+4 per
anomalous pixel), where separate torchmetrics ``BinaryAUROC`` / ``BinaryAveragePrecision`` objects would each keep a
float and an int64 target per pixel. Memory, binning and DDP behaviour are those of ``aupro.PooledPixelStore``.

Use from a LightningModule (compute once per epoch, then read the cached thresholds and curves)::

    metrics.update(anomaly_map, batch["gt_mask"])            # in test_step
    values = metrics.compute()                                # in on_test_epoch_end; dict of 0-d tensors
    self.log_dict({f"test/{k}": v for k, v in values.items()})
    thresholds = metrics.thresholds()                         # {"image": float, "pixel": float}, F1-optimal
    curves = metrics.curves()                                 # ROC and PRO arrays for plots
    metrics.reset()
"""

from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities import rank_zero_warn

from urd_lightning.metrics import functional as F
from urd_lightning.metrics._ops import cpu_single_threaded
from urd_lightning.metrics.aupro import FPR_LIMIT, PooledPixelStore, _cat, prepare_inputs
from urd_lightning.metrics.per_image import per_image_aupro

METRIC_NAMES = (
    "image_AUROC", "image_AP", "image_F1Max",
    "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO", "pixel_AUPRO_per_image",
)  # fmt: skip


class AnomalyMetrics(PooledPixelStore):
    """All evaluation metrics of anomaly detection; ``compute()`` returns ``{name: value}`` for ``METRIC_NAMES``.

    Args:
        fpr_limit: FPR limit of both AUPRO protocols (0.3, MVTec AD and the papers).
        num_bins: ``None`` (exact) or the number of histogram bins for the pooled pixel metrics (bounded memory).
        score_range: range of the pixel scores covered by the bins (binned mode only).
        kwargs: passed to ``torchmetrics.Metric``.
    """

    def __init__(
        self,
        fpr_limit: float = FPR_LIMIT,
        num_bins: int | None = None,
        score_range: tuple[float, float] = (0.0, 1.0),
        **kwargs: Any,
    ):
        super().__init__(num_bins=num_bins, score_range=score_range, **kwargs)
        self.fpr_limit = float(fpr_limit)
        self.add_state("image_scores", [], dist_reduce_fx="cat")
        self.add_state("image_labels", [], dist_reduce_fx="cat")
        self.add_state("aupro_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("aupro_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self._results: dict[str, Any] | None = None

    @cpu_single_threaded
    def update(
        self,
        anomaly_map: Tensor,
        gt_mask: Tensor,
        pred_score: Tensor | None = None,
        gt_label: Tensor | None = None,
    ) -> None:
        """Add a batch.

        Args:
            anomaly_map: (B,1,H,W) or (B,H,W) float, any range, any device.
            gt_mask: same shape; any non-zero value is anomalous.
            pred_score: (B,) image scores; default the maximum of each map.
            gt_label: (B,) image labels (non-zero = anomalous); default the maximum of each mask, as URD does.
        """
        scores, mask = prepare_inputs(anomaly_map, gt_mask)
        batch = scores.shape[0]
        pred_score = scores.flatten(1).max(1).values if pred_score is None else pred_score.detach().reshape(-1)
        gt_label = mask.flatten(1).any(1) if gt_label is None else gt_label.detach().reshape(-1) != 0
        if pred_score.numel() != batch or gt_label.numel() != batch:
            raise F.MetricInputError(
                f"pred_score has {pred_score.numel()} and gt_label {gt_label.numel()} values for a batch of {batch} "
                "maps; pass one score and one label per image, shaped (B,)"
            )
        self._results = None
        self.image_scores.append(pred_score.to(scores.dtype))
        self.image_labels.append(gt_label.long())  # gloo cannot gather bool tensors
        self._update_pixels(scores, mask)
        values = per_image_aupro(scores, mask, self.fpr_limit)
        self.aupro_sum += values.sum()
        self.aupro_count += values.numel()

    @cpu_single_threaded
    def compute(self) -> dict[str, Tensor]:
        """All metrics as 0-d float64 tensors; an undefined one is NaN (with a warning), see ``functional``."""
        scores = _cat(self.image_scores, torch.float32, self.device)
        labels = _cat(self.image_labels, torch.long, self.device) != 0
        image = F.exact_levels(scores[~labels], scores[labels])
        pixel = self.levels()
        self._warn_degenerate("AnomalyMetrics (pixel level)", pixel)
        if self.aupro_count == 0:
            rank_zero_warn("AnomalyMetrics: no anomalous image was seen; image and AUPRO metrics are NaN.")
        image_f1, image_thr = F.f1_max(image)
        pixel_f1, pixel_thr = F.f1_max(pixel)
        self._results = {"image": image, "pixel": pixel, "thresholds": {"image": image_thr, "pixel": pixel_thr}}
        return {
            "image_AUROC": F.auroc(image),
            "image_AP": F.average_precision(image),
            "image_F1Max": image_f1,
            "pixel_AUROC": F.auroc(pixel),
            "pixel_AP": F.average_precision(pixel),
            "pixel_F1Max": pixel_f1,
            "pixel_AUPRO": F.pooled_aupro(pixel, self.fpr_limit),
            "pixel_AUPRO_per_image": self.aupro_sum / self.aupro_count,
        }

    def _computed_results(self) -> dict[str, Any]:
        if self._results is None:
            self._computed = None  # make torchmetrics run compute() (with its DDP sync) instead of its cache
            self.compute()
        assert self._results is not None
        return self._results

    def thresholds(self) -> dict[str, float]:
        """F1-optimal thresholds ``{"image": t, "pixel": t}`` (anomalous when score >= t); NaN if undefined.

        Computes the metrics first if needed; after ``compute()`` it costs nothing.
        """
        cache = self._computed_results()
        return {k: float(v) for k, v in cache["thresholds"].items()}

    def curves(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """Exact curve vertices for plots, each ``(x, y, thresholds)`` from threshold +inf down (float64, CPU).

        Keys: ``image_roc`` and ``pixel_roc`` (fpr, tpr), ``pixel_pro`` (fpr, pooled PRO). Ties are one diagonal
        segment; pixel curves can have ~2 points per distinct anomalous score, so decimate before plotting many.
        """
        cache = self._computed_results()
        out = {
            "image_roc": F.roc_curve(cache["image"]),
            "pixel_roc": F.roc_curve(cache["pixel"]),
            "pixel_pro": F.pro_curve(cache["pixel"]),
        }
        return {k: tuple(t.cpu() for t in v) for k, v in out.items()}

    def reset(self) -> None:
        """Clear the states and the cached curves."""
        super().reset()
        self._results = None
