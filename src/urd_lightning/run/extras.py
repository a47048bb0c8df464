"""The checkpoint's extras: what inference, ``test`` and resume need besides the weights, as one typed record.

Every checkpoint this package writes (training's ``last.ckpt``, ``deploy.save_checkpoint``, the weights-only
``.safetensors`` of ``export format=weights``) carries ``checkpoint[EXTRAS_KEY]``, a mapping of plain Python types
(so ``torch.load(weights_only=True)`` reads it; in a safetensors file it is JSON metadata under the same key).
:class:`CheckpointExtras` is the one writer (``to_dict``) and the one reader (``read``) of that mapping, and the
one place that says what a key means when an older checkpoint lacks it. No torch and no Lightning here: ``deploy``
imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from urd_lightning import __version__
from urd_lightning.errors import CheckpointError

EXTRAS_KEY = "urd_lightning"  # the checkpoint entry (and safetensors metadata key) holding the extras
REWRITE = "write it again with urd-lightning's training (or export format=weights from a complete .ckpt)"
REQUIRED = {"model": dict, "image_size": int}  # what every reader needs to rebuild the network
TYPES = {**REQUIRED, "dataset": str, "category": str}  # checked where present or asked for
# What a key means in a checkpoint written before it existed: checkpoints older than ``resize`` were all trained
# with OpenCV's INTER_AREA; dataset and category may be given on the command line instead.
LEGACY = {"version": "unknown", "dataset": "unknown", "category": "unknown", "resize": "cv2", "thresholds": None,
          "score_stats": None}


@dataclass(frozen=True)
class CheckpointExtras:
    """What a checkpoint records about its network and run (``docs/design.md``, "checkpoints").

    Attributes:
        model: the ``URD(...)`` keyword arguments it was trained with.
        image_size: the square side it was trained and evaluated at.
        dataset: benchmark name, e.g. ``mvtec``.
        category: category name, e.g. ``bottle``.
        resize: how inputs were resized (``data.resize``: ``pil`` or ``cv2``); predict must resize the same way.
        thresholds: ``{"image", "pixel", "source"}`` F1-optimal thresholds, or ``None`` before an evaluation.
        score_stats: ``{"image_min", "image_max", "pixel_min", "pixel_max"}`` on the same set, or ``None``.
        version: the urd-lightning version that wrote it.
    """

    model: dict[str, Any]
    image_size: int
    dataset: str
    category: str
    resize: str = "pil"
    thresholds: dict[str, Any] | None = None
    score_stats: dict[str, float] | None = None
    version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        """The plain mapping stored under :data:`EXTRAS_KEY`."""
        out = asdict(self)
        out["model"] = dict(self.model)
        out["thresholds"] = dict(self.thresholds) if self.thresholds is not None else None
        out["score_stats"] = dict(self.score_stats) if self.score_stats is not None else None
        return out

    @classmethod
    def read(cls, path: str | Path, checkpoint: Any, also: tuple[str, ...] = (), fix: str = REWRITE
             ) -> CheckpointExtras:
        """The extras of a loaded checkpoint, checked the same way for ``test``, ``predict``, ``export`` and resume.

        Args:
            path: the file it was read from (named in every message).
            checkpoint: the loaded file (a ``.ckpt``'s dict, or a weights file read as ``{"state_dict", EXTRAS_KEY}``).
            also: keys this reader needs besides ``model`` and ``image_size`` (``test`` needs dataset and category
                unless the command line gives them).
            fix: how to repair a file whose extras lack a key or hold a wrong type (the end of the message).

        Raises:
            CheckpointError: one line naming the file and the fix: not a Lightning checkpoint, not one of this
                package's, an extra missing or of the wrong type.
        """
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict'). Give "
                                  "the .ckpt that training wrote, e.g. results/<dataset>/<category>/<run>/checkpoints/"
                                  "last.ckpt")
        extras = checkpoint.get(EXTRAS_KEY)
        if not isinstance(extras, dict):
            raise CheckpointError(f"{path} is a Lightning checkpoint but not one of urd-lightning's: it has no "
                                  f"'{EXTRAS_KEY}' entry (written by URDModule.on_save_checkpoint). Retrain with this "
                                  "package, or, for the authors' checkpoint, use "
                                  "urd_lightning.models.load_authors_checkpoint")
        missing = [key for key in (*REQUIRED, *also) if key not in extras]
        if missing:
            raise CheckpointError(f"{path}: checkpoint['{EXTRAS_KEY}'] lacks {', '.join(missing)}; the file is "
                                  f"incomplete: {fix}")
        wrong = [f"{key} ({type(extras[key]).__name__}, expected {kind.__name__})" for key, kind in TYPES.items()
                 if key in extras and (not isinstance(extras[key], kind) or isinstance(extras[key], bool))]
        if wrong:
            raise CheckpointError(f"{path}: checkpoint['{EXTRAS_KEY}'] has a malformed {', '.join(wrong)}: {fix}")
        known = {**LEGACY, **{key: value for key, value in extras.items() if key in LEGACY or key in REQUIRED}}
        return cls(model=dict(known["model"]), image_size=int(known["image_size"]), dataset=str(known["dataset"]),
                   category=str(known["category"]), resize=str(known["resize"]),
                   thresholds=dict(known["thresholds"]) if known["thresholds"] else None,
                   score_stats=dict(known["score_stats"]) if known["score_stats"] else None,
                   version=str(known["version"]))
