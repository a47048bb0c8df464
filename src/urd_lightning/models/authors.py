"""Import (and export) checkpoints in the key layout of the authors' URD code (github.com/hito2448/URD).

Their ``train.py`` saves ``torch.save({'teacher': teacher.state_dict(), 'student': student.state_dict()}, path)``
(keys and shapes: ``tests/golden/authors-checkpoint-keys.json``; method: docs/method.md, "Network"). Key mapping:

    teacher ``encoder.<torchvision name>``      → ``teacher.<name>`` (timm uses the same names for conv1..layer3)
    student ``bn.<name>``                       → ``student.bottleneck.<name>``
    student ``decoder.layerK.*``, ``fuse_skip.*``, ``fuse_encoder.*``, ``conv1x1_downsample_dim.*``,
            ``conv3x3_simattn.*``               → ``student.<same>``

Keys dropped on purpose (never used by the authors' forward): ``encoder.layer4.*``, ``encoder.fc.*``,
``bn.conv4.*``/``bn.bn4.*``, and ``conv3x3_simattn.*`` unless ``injection="gii"`` (their scripts run the
unguided branch, so those weights never trained). Any other missing or unexpected key is an error naming it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from urd_lightning.errors import CheckpointError
from urd_lightning.models.encoder import DEFAULT_BACKBONE, compare_state_dicts
from urd_lightning.models.student import Injection, _conv_bn_relu, init_student_weights
from urd_lightning.models.urd import URD

log = logging.getLogger(__name__)

_DEAD_TEACHER = ("encoder.layer4.", "encoder.fc.")
_DEAD_STUDENT = ("bn.conv4.", "bn.bn4.")
_SIMATTN = "conv3x3_simattn."


def _to_ours(group: str, key: str) -> str:
    if group == "teacher":
        return "teacher." + key.removeprefix("encoder.")
    if key.startswith("bn."):
        return "student.bottleneck." + key.removeprefix("bn.")
    return "student." + key


def _read(path: Path) -> dict[str, dict[str, Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"Authors' checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"Cannot read {path} as a checkpoint of the authors' URD code ({err}); the file may be "
                              "truncated or not a torch.save file") from err
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(g), dict) for g in ("teacher", "student")):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a checkpoint of the authors' URD code: expected a dict with 'teacher' "
                              f"and 'student' state dicts, found {found}. For this project's own checkpoints use "
                              "the .ckpt files under results/")
    return ckpt


def load_authors_checkpoint(path: str | os.PathLike, backbone: str = DEFAULT_BACKBONE,
                            injection: Injection = "concat") -> URD:
    """Load a checkpoint saved by the authors' code into a :class:`URD`, in eval mode.

    The network has no expert (it is only used in training) and a frozen teacher, so it is for inference:
    ``net.anomaly_map(x)`` gives the raw map, ``net.predict(x)`` the σ = 4 smoothed map and image score, for a batch
    of ImageNet-normalised images.

    Args:
        path: the ``.pth`` file their ``train.py`` wrote.
        backbone: timm name of their encoder (they use WideResNet-50-2).
        injection: ``"concat"`` reproduces what their scripts run; ``"gii"`` also loads ``conv3x3_simattn``.

    Raises:
        CheckpointError: unreadable/truncated file, wrong structure, or missing/unexpected/mis-shaped keys.
    """
    path = Path(path)
    ckpt = _read(path)
    net = URD(backbone=backbone, pretrained=False, injection=injection, expert=False, train_teacher=False)
    dead = _DEAD_STUDENT + (() if injection == "gii" else (_SIMATTN,))
    state: dict[str, Tensor] = {}
    for group, dead_prefixes in (("teacher", _DEAD_TEACHER), ("student", dead)):
        for key, value in ckpt[group].items():
            if key.startswith(dead_prefixes):
                continue
            if not isinstance(value, Tensor):
                raise CheckpointError(f"{path}: {group}[{key!r}] is not a tensor")
            state[_to_ours(group, key)] = value
    missing, unexpected, reshaped = compare_state_dicts(net.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match URD(backbone={backbone!r}, injection={injection!r}): "
                              f"missing keys {missing[:8]}, unexpected keys {unexpected[:8]} (our names)")
    if reshaped:
        key, got, want = reshaped[0]
        raise CheckpointError(f"{path}: {key} has shape {got}, URD(backbone={backbone!r}) expects "
                              f"{want}; pass the backbone the checkpoint was trained with")
    net.load_state_dict(state, strict=True)
    log.info("Loaded the authors' checkpoint %s (injection=%s)", path, injection)
    return net.eval()


def authors_state_dicts(net: URD) -> dict[str, dict[str, Tensor]]:
    """``{'teacher': ..., 'student': ...}`` in the authors' key layout, dead entries included.

    The entries the authors' modules hold but never use (layer4, fc, ``bn.conv4``/``bn4``, and
    ``conv3x3_simattn`` when ``net`` does not use GII) are filled with freshly initialised modules of the right
    shapes, so the file loads strictly into their code.
    """
    device = next(net.parameters()).device
    with torch.device(device):
        full = timm.create_model(net.config["backbone"], pretrained=False)
    teacher = {f"encoder.{k}": v for k, v in full.state_dict().items()}
    teacher.update({f"encoder.{k}": v for k, v in net.teacher.state_dict().items()})
    c2, c3, c4 = net.spec.channels[1:]
    student = {f"bn.{k}": v for k, v in net.student.bottleneck.state_dict().items()}
    with torch.device(device):
        dead_bn = nn.ModuleDict({"conv4": nn.Conv2d(2 * c4, c4, 1, bias=False), "bn4": nn.BatchNorm2d(c4)})
    student.update({f"bn.{k}": v for k, v in dead_bn.state_dict().items()})
    student.update({f"decoder.{k}": v for k, v in net.student.decoder.state_dict().items()})
    for name in ("fuse_skip", "conv3x3_simattn", "conv1x1_downsample_dim", "fuse_encoder"):
        module = getattr(net.student, name, None)
        if module is None and name == "conv3x3_simattn":
            with torch.device(device):
                module = nn.ModuleList([_conv_bn_relu(c2, c2, 3), _conv_bn_relu(c3, c3, 3)])
            module.apply(init_student_weights)
        if module is None:
            raise CheckpointError(f"URD(injection={net.injection!r}) has no {name}; the authors' layout needs a skip "
                                  "branch (injection='concat' or 'gii')")
        student.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    return {"teacher": teacher, "student": student}


def save_authors_checkpoint(net: URD, path: str | os.PathLike) -> None:
    """Write ``net`` as the authors' ``train.py`` would: ``torch.save({'teacher': ..., 'student': ...})``."""
    torch.save(authors_state_dicts(net), Path(path))
