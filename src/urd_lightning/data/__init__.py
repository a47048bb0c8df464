"""Data side of URD: benchmark indexing, anomaly synthesis, the datamodule, checks, downloads and the demo set.

Import the submodules directly (``from urd_lightning.data.datamodule import AnomalyDataModule``). The datamodule
(the only Lightning import here) is re-exported lazily, so that ``data check`` and ``urd_lightning.deploy``, which
use the plain-numpy parts (transforms, benchmarks), never load Lightning.

May import ``config`` and ``errors``; never ``training``, ``deploy`` or ``benchmark``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AnomalyDataModule"]


def __getattr__(name: str) -> Any:
    if name == "AnomalyDataModule":
        from urd_lightning.data.datamodule import AnomalyDataModule

        return AnomalyDataModule
    raise AttributeError(f"module 'urd_lightning.data' has no attribute {name!r}")
