"""Data side of URD: benchmark indexing, anomaly synthesis, the datamodule, checks, downloads and the demo set.

Import the submodules directly (``from urd_lightning.data.datamodule import AnomalyDataModule``); this package
re-exports only the datamodule so that ``data check`` stays fast to start.
"""

from urd_lightning.data.datamodule import AnomalyDataModule

__all__ = ["AnomalyDataModule"]
