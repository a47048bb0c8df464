"""Deployment: scoring new images with a trained model, without Lightning's training machinery.

- ``inference.py``: ``URDInferencer`` — the Python API (image or batch -> anomaly map and score);
- ``predict.py``: the ``predict`` command (folders of images -> overlays, masks, CSV/JSON);
- ``outputs.py``: the files predict writes and how they are named;
- ``export.py``: ONNX / TorchScript export with a parity check;
- ``checkpoint.py``: reading a training checkpoint safely for inference.

May import ``models``, ``data`` (its plain-numpy parts), ``config`` and ``errors``; never ``training`` or
``benchmark``, and nothing that imports Lightning (``import urd_lightning.deploy`` stays fast).
"""

from urd_lightning.deploy.inference import PredictionBatch, URDInferencer

__all__ = ["PredictionBatch", "URDInferencer"]
