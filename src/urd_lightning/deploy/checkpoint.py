"""Safe loading of urd-lightning checkpoints for inference and export.

A checkpoint is the Lightning file ``URDModule`` writes (``docs/design.md``, "checkpoints"): the network's weights
under the ``model.`` prefix of ``state_dict`` and, under ``checkpoint[EXTRAS_KEY]``, plain-Python extras
(URD kwargs, image size, thresholds, score statistics: ``run/extras.py``). Loading never needs Lightning or the
``URDModule`` class:

1. ``torch.load(weights_only=True)`` — no arbitrary code runs while unpickling. Only a user who trusts a file
   can opt out (``trust_checkpoint=True``), and the error says so.
2. The extras are validated; a file that is not one of ours, or is truncated, raises :class:`CheckpointError`
   before anything else happens.
3. ``URD(**extras["model"])`` is rebuilt with ``pretrained=False`` (the weights come from the file, the hub is
   never touched) and without the expert, which URD uses only during training (docs/method.md, "Expert and teacher").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from urd_lightning.checkpoint_io import load_inference_file, save_weights_file
from urd_lightning.errors import CheckpointError
from urd_lightning.files import write_via
from urd_lightning.run.extras import EXTRAS_KEY, CheckpointExtras

MODEL_PREFIX = "model."


@dataclass(frozen=True)
class CheckpointInfo(CheckpointExtras):
    """A checkpoint's :class:`~urd_lightning.run.extras.CheckpointExtras` and the file they were read from.

    Attributes:
        path: the file it was read from.
    """

    path: Path = Path()

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The ``URD(...)`` arguments it was trained with."""
        return self.model


def _load(path: Path, trust_checkpoint: bool) -> tuple[CheckpointExtras, dict[str, torch.Tensor]]:
    """The validated extras and the network's weights (``model.`` prefix removed) of a .ckpt or .safetensors."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass ckpt=PATH to a .ckpt written by training")
    checkpoint = load_inference_file(path, trust_checkpoint, trust_hint="pass trust_checkpoint=true to load it")
    extras = CheckpointExtras.read(path, checkpoint)
    state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    if not state:
        raise CheckpointError(f"{path}: 'state_dict' has no '{MODEL_PREFIX}*' weights; the file is incomplete.")
    return extras, state


def read_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read and validate a checkpoint without building the network.

    Args:
        path: a ``.ckpt`` written by urd-lightning training, or the weights-only ``.safetensors`` that
            ``export format=weights`` writes from it.
        trust_checkpoint: load with ``weights_only=False`` (runs pickled code: only for files you trust).

    Returns:
        The network's weights (``model.`` prefix removed) and the checkpoint's :class:`CheckpointInfo`.

    Raises:
        CheckpointError: missing, truncated, unsafe or foreign file.
    """
    path = Path(path)
    extras, state = _load(path, trust_checkpoint)
    info = CheckpointInfo(path=path, **vars(extras))
    return state, info


def save_weights(ckpt: str | Path, output: str | Path, trust_checkpoint: bool = False) -> Path:
    """Write the weights-only ``.safetensors`` of a checkpoint: what ``predict`` and ``test`` need, nothing else.

    Kept: the teacher's and the student's weights and buffers under their ``state_dict`` names, and the
    ``urd_lightning`` extras (as JSON metadata). Dropped: the expert (it only supervises training, docs/method.md),
    the optimizer states and the loop state, which make up most of a training checkpoint.
    """
    extras, state = _load(Path(ckpt), trust_checkpoint)
    weights = {MODEL_PREFIX + key: value for key, value in state.items() if not key.startswith("expert.")}
    return save_weights_file(output, weights, extras.to_dict())


def build_inference_model(state: dict[str, torch.Tensor], info: CheckpointInfo) -> nn.Module:
    """Rebuild the URD network from a checkpoint's kwargs and weights, in eval mode, without the expert.

    Args:
        state: weights as returned by :func:`read_checkpoint`.
        info: the checkpoint's info.

    Returns:
        ``URD`` in eval mode with ``expert=None``; ``.predict(x)`` gives ``(smoothed map, score)``.

    Raises:
        CheckpointError: the weights do not fit the architecture the kwargs describe.
    """
    from urd_lightning.models import URD  # deferred: importing timm takes seconds, and errors above need none

    # The expert only supervises training; at inference the map compares teacher and student (docs/method.md).
    # `expert=False` implies `train_teacher=False` (design.md, ablations); neither changes teacher or student.
    kwargs = {**info.model_kwargs, "pretrained": False, "checkpoint": None, "expert": False, "train_teacher": False}
    try:
        model = URD(**kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{info.path}: cannot rebuild URD from its stored kwargs {info.model_kwargs}: {exc}"
        ) from exc
    weights = {key: value for key, value in state.items() if not key.startswith("expert.")}
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{info.path}: weights do not match URD({info.model_kwargs}): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]} "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected in all)."
        )
    return model.eval()


def load_model(path: str | Path, trust_checkpoint: bool = False) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint as an inference-ready URD network (eval mode, CPU, no expert).

    Args:
        path: a ``.ckpt`` written by urd-lightning training.
        trust_checkpoint: see :func:`read_checkpoint`.

    Returns:
        The network and the checkpoint's :class:`CheckpointInfo`.
    """
    state, info = read_checkpoint(path, trust_checkpoint)
    return build_inference_model(state, info), info


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    image_size: int,
    dataset: str = "custom",
    category: str = "custom",
    thresholds: dict[str, Any] | None = None,
    score_stats: dict[str, float] | None = None,
    resize: str = "pil",
) -> Path:
    """Write a plain ``URD`` as a checkpoint that ``predict``, ``export`` and :func:`load_model` read.

    The layout is the one Lightning writes for ``URDModule`` (``docs/design.md``), so a network trained outside
    this package's training loop can use the same inference path.

    Args:
        model: a ``URD`` (its ``config`` attribute holds the constructor kwargs).
        path: file to write.
        image_size: square input side the model was trained at.
        dataset: benchmark name, recorded for the user.
        category: category name, recorded for the user.
        thresholds: ``{"image", "pixel", "source"}`` raw thresholds, or ``None``.
        score_stats: ``{"image_min", "image_max", "pixel_min", "pixel_max"}``, or ``None``.
        resize: how the model's inputs were resized (``data.resize``: ``pil`` or ``cv2``).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {MODEL_PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()}
    extras = CheckpointExtras(model=dict(model.config), image_size=int(image_size), dataset=dataset, category=category,
                              resize=resize, thresholds=thresholds, score_stats=score_stats)
    write_via(path, lambda tmp: torch.save({"state_dict": state, EXTRAS_KEY: extras.to_dict()}, tmp), suffix=".tmp")
    return path
