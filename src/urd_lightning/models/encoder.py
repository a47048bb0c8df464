"""Encoders for the expert and the teacher: timm ResNet-family backbones cut after layer3.

Follows docs/method.md, "Expert and teacher": expert and teacher are the same torchvision-style ResNet (default
WideResNet-50-2 with the torchvision ImageNet weights ``wide_resnet50_2-95faca4d.pth``, which timm serves as
``wide_resnet50_2.tv_in1k``), returning ``[layer1, layer2, layer3]`` outputs. The authors' code builds the full network
(layer4 and fc included) only to load the torchvision file strictly; here timm's ``features_only`` drops them, and the
decoder sizes are read from a shape-only (meta-device) copy of the full network (:func:`describe_backbone`).

Weights come from exactly one place: ``checkpoint=PATH`` (a local ``.pth``/``.pt``/``.bin``/``.safetensors`` file,
torchvision or timm key names), or ``pretrained=True`` (local caches first, then the hub), or random weights with
``pretrained=False``. Offline, the hub is never tried: a :class:`~urd_lightning.errors.WeightsError` says how to fix it.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from urd_lightning.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "wide_resnet50_2.tv_in1k"
# timm ResNet feature indices: 0 = stem (stride 2), 1..4 = layer1..layer4. URD uses layer1..layer3.
OUT_INDICES = (1, 2, 3)
# Prefixes that wrap a backbone state dict in common checkpoint files (DataParallel, Lightning, the authors' Teacher).
_WRAPPER_PREFIXES = ("module.", "model.", "encoder.", "backbone.")


@dataclass(frozen=True)
class BackboneSpec:
    """What the student needs to know about a ResNet-family backbone.

    Attributes:
        block: ``"bottleneck"`` or ``"basic"``.
        channels: output channels of layer1..layer4.
        widths: inner width of the blocks of layer1..layer4 (3×3 conv width; equals channels for BasicBlock).
        depths: number of blocks in layer1..layer4.
    """

    block: str
    channels: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]


def describe_backbone(name: str) -> BackboneSpec:
    """Read block type, channels, widths and depths of a timm ResNet on the meta device (no memory, no weights).

    Raises:
        ConfigError: if ``name`` is not a timm model or not a ResNet with ``layer1..layer4``.
    """
    try:
        with torch.device("meta"):
            net = timm.create_model(name, pretrained=False)
    except RuntimeError as err:  # timm raises RuntimeError("Unknown model ...")
        raise ConfigError(f"model.backbone={name!r} is not a timm model ({err}); use e.g. 'resnet18' or "
                          f"'{DEFAULT_BACKBONE}'") from err
    layers = [getattr(net, f"layer{i}", None) for i in range(1, 5)]
    if any(layer is None for layer in layers):
        raise ConfigError(f"model.backbone={name!r} is not a ResNet-family model (it has no layer1..layer4); "
                          "URD's decoder mirrors a ResNet, use e.g. 'resnet18' or 'wide_resnet50_2.tv_in1k'")
    first = layers[0][0]
    block = "bottleneck" if hasattr(first, "conv3") else "basic"
    last_conv = "conv3" if block == "bottleneck" else "conv2"
    channels = tuple(getattr(layer[-1], last_conv).out_channels for layer in layers)
    widths = tuple(layer[0].conv2.out_channels for layer in layers)
    depths = tuple(len(layer) for layer in layers)
    return BackboneSpec(block, channels, widths, depths)  # type: ignore[arg-type]


def build_encoder(name: str = DEFAULT_BACKBONE, pretrained: bool = True, checkpoint: str | None = None) -> nn.Module:
    """Build the layer1..layer3 feature extractor and load its weights.

    Args:
        name: timm model name, with weight tag (e.g. ``wide_resnet50_2.tv_in1k``).
        pretrained: load ImageNet weights (ignored when ``checkpoint`` is given).
        checkpoint: local weight file; takes precedence over ``pretrained``.

    Returns:
        A timm ``FeatureListNet`` whose forward maps ``(B,3,H,W)`` to ``[(B,C1,H/4,W/4), (B,C2,H/8,W/8),
        (B,C3,H/16,W/16)]``.

    Raises:
        WeightsError: weights were asked for and cannot be obtained.
    """
    describe_backbone(name)  # fails early with a ConfigError for non-ResNet names
    if checkpoint is not None:
        encoder = timm.create_model(name, pretrained=False, features_only=True, out_indices=OUT_INDICES)
        load_encoder_weights(encoder, checkpoint)
        return encoder
    if not pretrained:
        return timm.create_model(name, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    return _build_pretrained(name)


def _build_pretrained(name: str) -> nn.Module:
    with torch.device("meta"):
        cfg = dict(timm.create_model(name, pretrained=False).pretrained_cfg)
    cached = _cached_file(cfg)
    if cached is not None:
        log.info("Loading %s weights from the local cache %s", name, cached)
        encoder = timm.create_model(name, pretrained=False, features_only=True, out_indices=OUT_INDICES)
        load_encoder_weights(encoder, cached)
        return encoder
    fix = (f"Fix: download the weights on a machine with internet (timm.create_model('{name}', pretrained=True) "
           f"fills ~/.cache/huggingface), or pass model.checkpoint=/path/to/{_file_hint(cfg)}, "
           "or model.pretrained=false for random weights (tests only).")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise WeightsError(f"Pretrained weights for model.backbone={name!r} are not cached and HF_HUB_OFFLINE is "
                           f"set. {fix}")
    if not _reachable("huggingface.co") and not _reachable("download.pytorch.org"):
        raise WeightsError(f"Pretrained weights for model.backbone={name!r} are not cached and the hub is not "
                           f"reachable (no internet). {fix}")
    try:
        return timm.create_model(name, pretrained=True, features_only=True, out_indices=OUT_INDICES)
    except Exception as err:  # network, HTTP and hub errors all mean the same thing to the user
        raise WeightsError(f"Downloading pretrained weights for model.backbone={name!r} failed: {err}. {fix}") from err


def _file_hint(cfg: dict) -> str:
    url = cfg.get("url")
    return url.rsplit("/", 1)[-1] if url else "weights.pth"


def _cached_file(cfg: dict) -> str | None:
    """The weight file if it is already on disk: the HF hub cache (timm) or torch.hub's cache (torchvision URL)."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(hub_id, filename)
            if isinstance(path, str) and Path(path).is_file():
                return path
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if path.is_file():
            return str(path)
    return None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds instead of hanging in hub retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    Raises:
        WeightsError: missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weight file {path} does not exist; check model.checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"Cannot read weight file {path} ({err}); it must be a .safetensors file or a "
                           "torch.save'd state dict of tensors (it may be truncated)") from err
    for key in ("state_dict", "model"):  # common wrappers: Lightning checkpoints, timm train checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"Weight file {path} does not hold a state dict of tensors")
    return state


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Load torchvision- or timm-named ResNet weights into a features_only encoder.

    layer4 and fc (present in full-network files) are dropped explicitly; any other key that does not belong to
    the encoder, or any encoder key the file lacks, is an error naming that key.

    Raises:
        WeightsError: unreadable file, missing or unexpected keys, or mismatched shapes.
    """
    state = read_state_dict(path)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
    missing, unexpected, reshaped = compare_state_dicts(encoder.state_dict(), state)
    if missing or unexpected:
        raise WeightsError(f"Weight file {path} does not match the encoder: missing keys {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}; is model.backbone the network it was saved from?")
    if reshaped:
        key, got, want = reshaped[0]
        raise WeightsError(f"Weight file {path}: {key} has shape {got}, the encoder expects "
                           f"{want}; is model.backbone the network it was saved from?")
    encoder.load_state_dict(state, strict=True)


def compare_state_dicts(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """What stops ``load_state_dict(state, strict=True)``, so callers can word the error for their file.

    Returns missing and unexpected keys (sorted) and, among the shared keys, ``(key, shape in state, shape expected)``
    for every shape mismatch.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                if k in own and v.shape != own[k].shape]
    return missing, unexpected, reshaped
