"""Evaluation metrics of industrial anomaly detection: exact, batch-split independent and DDP-correct.

- ``AnomalyMetrics``: everything one evaluation reports (``METRIC_NAMES``), plus F1-optimal thresholds and curves.
- ``AUPRO(protocol="pooled" | "per_image")``: MVTec AD's official AUPRO or the RD4AD/URD per-image protocol.
- ``PixelAP``: step-wise pixel average precision.
- ``functional``: the exact tie-aware curves behind them, for use on plain tensors.
"""

from urd_lightning.metrics.anomaly import METRIC_NAMES, AnomalyMetrics
from urd_lightning.metrics.aupro import AUPRO, PixelAP
from urd_lightning.metrics.functional import MetricInputError

__all__ = ["AUPRO", "METRIC_NAMES", "AnomalyMetrics", "MetricInputError", "PixelAP"]
