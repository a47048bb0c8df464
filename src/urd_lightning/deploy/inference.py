"""Python inference API: load a checkpoint, predict a batch.

    from urd_lightning.deploy.inference import URDInferencer
    inferencer = URDInferencer.from_checkpoint("results/mvtec/bottle/run/checkpoints/last.ckpt")
    result = inferencer.predict_images(["a.png", "b.jpg"])      # or .predict(normalised_batch)
    result.pred_score, result.pred_label, result.anomaly_map    # raw score, decision, (B,1,S,S) smoothed map

Scores follow the paper's evaluation (docs/method.md, "Anomaly map and score"): the map is the sum over three levels of
1 − cos(S, T), upsampled to the input size and Gaussian-smoothed (σ=4); the image score is its maximum. Decisions use
the F1-optimal thresholds that training stored in the checkpoint (or ``threshold=`` overrides), with ``score >=
threshold`` meaning anomalous.

Normalised scores use anomalib's convention so that numbers mean the same in both tools::

    normalized = clamp((raw - threshold) / (max - min) + 0.5, 0, 1)

with ``min``/``max`` the score statistics of the set the threshold was chosen on (image-level stats for scores,
pixel-level stats for maps). The threshold maps to exactly 0.5; raw values stay available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from urd_lightning.data.transforms import Resizer, normalize, read_rgb
from urd_lightning.deploy.checkpoint import CheckpointInfo, load_model
from urd_lightning.errors import CheckpointError, ConfigError

_EPS = 1e-12


def normalize_scores(raw: Tensor, threshold: float, min_value: float, max_value: float) -> Tensor:
    """Min-max normalise around a threshold (anomalib's convention): ``threshold → 0.5``, clamped to [0, 1].

    Args:
        raw: raw scores or maps, any shape.
        threshold: raw threshold, mapped to 0.5.
        min_value: smallest raw value on the statistics set.
        max_value: largest raw value on the statistics set.

    Returns:
        ``clamp((raw - threshold) / (max_value - min_value) + 0.5, 0, 1)``, same shape as ``raw``.
    """
    span = max(float(max_value) - float(min_value), _EPS)
    return ((raw - threshold) / span + 0.5).clamp(0.0, 1.0)


def preprocess(images: Sequence[np.ndarray], image_size: int, resizer: Resizer | None = None) -> Tensor:
    """Turn 8-bit RGB arrays into the normalised batch the model was evaluated on.

    Reuses the evaluation pipeline of :mod:`urd_lightning.data.transforms` (its ``Resizer`` and ``normalize``), so
    a test image scored here gets exactly the input it got during training's evaluation.

    Args:
        images: ``(H, W, 3) uint8`` RGB arrays of any sizes.
        image_size: the checkpoint's square input side.
        resizer: the checkpoint's ``Resizer(image_size, method)`` (built here with the default ``pil`` when ``None``).

    Returns:
        ``(B, 3, image_size, image_size) float32``.
    """
    resizer = resizer if resizer is not None else Resizer(image_size)
    return torch.stack([normalize(resizer(image)[0].astype(np.float32) / 255.0) for image in images])


@dataclass
class PredictionBatch:
    """Predictions for a batch, at model resolution.

    Attributes:
        anomaly_map: ``(B, 1, S, S)`` raw smoothed anomaly map.
        pred_score: ``(B,)`` raw image score (maximum of the map).
        pred_label: ``(B,)`` bool, ``pred_score >= image threshold``.
        pred_mask: ``(B, 1, S, S)`` bool, ``anomaly_map >= pixel threshold``.
        normalized_score: ``(B,)`` in [0, 1], or ``None`` without score statistics.
        normalized_map: ``(B, 1, S, S)`` in [0, 1], or ``None`` without score statistics.
    """

    anomaly_map: Tensor
    pred_score: Tensor
    pred_label: Tensor
    pred_mask: Tensor
    normalized_score: Tensor | None
    normalized_map: Tensor | None


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device={device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device=cpu")
    return resolved


def _raw_score_scale(info: CheckpointInfo) -> str:
    """Where a threshold for this checkpoint's raw scores lies (they are not probabilities in [0, 1])."""
    stats = info.score_stats
    if stats:
        return f"its raw image scores ran from {stats['image_min']:.3g} to {stats['image_max']:.3g} on the test set"
    return ("raw scores are the anomaly map's maximum, a sum of three cosine distances (0 to 6, not a probability): "
            "predict images you know to be good with threshold=6 and take one above their raw_score")


class URDInferencer:
    """A trained URD network plus its thresholds and score statistics, ready to judge images.

    Args:
        model: URD network (``.predict(x) -> (map, score)``); put into eval mode here.
        info: the checkpoint's :class:`CheckpointInfo`.
        threshold: raw image threshold overriding the checkpoint's.
        pixel_threshold: raw pixel threshold overriding the checkpoint's; defaults to the checkpoint's, else to
            the image threshold (the image score is the map maximum, so both live on the same scale).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.

    Raises:
        CheckpointError: the checkpoint stores no thresholds and none was given.
    """

    def __init__(
        self,
        model: nn.Module,
        info: CheckpointInfo,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
        device: str = "cpu",
    ) -> None:
        for key, value in (("threshold", threshold), ("pixel_threshold", pixel_threshold)):
            if value is not None and not math.isfinite(value):  # NaN would call every image normal, silently
                raise ConfigError(f"{key}={value} is not a finite number: give a raw score, e.g. {key}=1.5")
        stored = info.thresholds or {}
        image_threshold = threshold if threshold is not None else stored.get("image")
        if image_threshold is None:
            raise CheckpointError(f"{info.path} stores no thresholds (trained without evaluation): pass "
                                  f"threshold=<raw score> to decide anomalous vs normal; {_raw_score_scale(info)}")
        if pixel_threshold is None:
            pixel_threshold = stored.get("pixel", image_threshold)
        self.info = info
        self.image_threshold = float(image_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self.threshold_source = "override" if threshold is not None else str(stored.get("source", "checkpoint"))
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self._resizer = Resizer(info.image_size, info.resize)  # as training resized (cv2 for older checkpoints)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        threshold: float | None = None,
        pixel_threshold: float | None = None,
        device: str = "cpu",
        trust_checkpoint: bool = False,
    ) -> URDInferencer:
        """Load a checkpoint safely (see :mod:`urd_lightning.deploy.checkpoint`) and wrap it.

        Args:
            path: ``.ckpt`` written by training.
            threshold: see the class.
            pixel_threshold: see the class.
            device: see the class.
            trust_checkpoint: allow ``weights_only=False`` loading for a file you trust.

        Returns:
            The inferencer.
        """
        model, info = load_model(path, trust_checkpoint=trust_checkpoint)
        return cls(model, info, threshold=threshold, pixel_threshold=pixel_threshold, device=device)

    @property
    def image_size(self) -> int:
        """The square input side the model expects."""
        return self.info.image_size

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:
        """Resize and normalise 8-bit RGB arrays into a model batch (see :func:`preprocess`)."""
        return preprocess(images, self.image_size, self._resizer)

    @torch.no_grad()
    def predict(self, batch: Tensor) -> PredictionBatch:
        """Judge a normalised batch.

        Args:
            batch: ``(B, 3, S, S)`` ImageNet-normalised images at the checkpoint's size.

        Returns:
            Raw and normalised maps and scores with decisions, on the CPU.
        """
        anomaly_map, score = self.model.predict(batch.to(self.device))
        anomaly_map, score = anomaly_map.float().cpu(), score.float().cpu()
        stats = self.info.score_stats
        normalized_score = normalized_map = None
        if stats is not None:
            normalized_score = normalize_scores(score, self.image_threshold, stats["image_min"], stats["image_max"])
            normalized_map = normalize_scores(anomaly_map, self.pixel_threshold, stats["pixel_min"], stats["pixel_max"])
        return PredictionBatch(
            anomaly_map=anomaly_map,
            pred_score=score,
            pred_label=score >= self.image_threshold,
            pred_mask=anomaly_map >= self.pixel_threshold,
            normalized_score=normalized_score,
            normalized_map=normalized_map,
        )

    def predict_images(self, images: Sequence[np.ndarray | str | Path]) -> PredictionBatch:
        """Read (if paths), preprocess and judge images of any size and mode.

        Args:
            images: paths, or ``(H, W, 3) uint8`` RGB arrays.

        Returns:
            Predictions at model resolution; resize maps back with :func:`resize_map` if needed.
        """
        arrays = [read_rgb(item) if isinstance(item, str | Path) else item for item in images]
        return self.predict(self.preprocess(arrays))


def resize_map(anomaly_map: Tensor, height: int, width: int) -> Tensor:
    """Resize a ``(1, S, S)`` or ``(B, 1, S, S)`` map to an original image size (bilinear).

    Args:
        anomaly_map: map(s) at model resolution.
        height: target height.
        width: target width.

    Returns:
        The map(s) at ``height × width``, same rank as the input.
    """
    squeeze = anomaly_map.dim() == 3
    maps = anomaly_map.unsqueeze(0) if squeeze else anomaly_map
    resized = torch.nn.functional.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
    return resized.squeeze(0) if squeeze else resized
