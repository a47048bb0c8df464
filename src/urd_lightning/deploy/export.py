"""``urd export``: one deployable graph, normalised image → (smoothed map, score).

    urd export ckpt=results/mvtec/bottle/run/checkpoints/last.ckpt format=onnx
    urd export ckpt=last.ckpt format=torchscript output=bottle.pt
    urd export ckpt=last.ckpt format=weights       # last.safetensors, for predict and test

The graph holds the teacher and the student only (the expert supervises training and is not needed to score,
docs/method.md, "Expert and teacher") and ends with the σ=4 Gaussian smoothing, which is a separable convolution with a
fixed kernel in ``models/anomaly_map.py`` and so exports as plain convolutions. Input ``image``: ``(B, 3, S, S)``
ImageNet-normalised float32, ``S`` the checkpoint's image size, dynamic ``B``. Outputs ``anomaly_map`` ``(B, 1, S, S)``
and ``pred_score`` ``(B,)``, both raw.

Every export is checked against PyTorch on batches of 1 and 3 (ONNX through onnxruntime on the CPU, TorchScript by
reloading the saved file); a maximum absolute difference above 1e-4 deletes the file and raises
:class:`ExportParityError`. Next to the model, ``<file>.json`` records the preprocessing, thresholds, score
statistics and measured differences a deployment needs (also stored inside the ONNX file as metadata).

``format=weights`` is no graph: it writes the checkpoint's inference weights (teacher and student; no expert, no
optimizer or loop state) and its extras to a ``.safetensors`` file that ``predict``, ``test`` and
``URDInferencer.from_checkpoint`` read in place of the ``.ckpt`` (``deploy/checkpoint.py``, ``save_weights``).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from urd_lightning.config import read_command_line
from urd_lightning.config.cli import Command, Option
from urd_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from urd_lightning.deploy.checkpoint import CheckpointInfo, load_model, save_weights
from urd_lightning.deploy.predict import NORMALIZATION_FORMULA
from urd_lightning.errors import ConfigError, URDError
from urd_lightning.files import ensure_writable, write_atomic, write_via
from urd_lightning.run.extras import EXTRAS_KEY

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max abs difference to PyTorch accepted at export, on maps and scores
PARITY_BATCH_SIZES = (1, 3)  # 1 and a batch other than the trace's, to prove the batch axis is dynamic
DEFAULT_OPSET = 17  # the lowest opset accepted and tested; reflect padding and every op used exist since opset 11
INPUT_NAME, OUTPUT_NAMES = "image", ("anomaly_map", "pred_score")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "weights": ".safetensors"}

EXPORT = Command("export", "Export a trained model: one graph, normalised image -> (smoothed map, score), checked "
                 "against PyTorch; or format=weights, the inference weights as .safetensors for predict and test.",
                 options=(
    Option("ckpt", str, None, "checkpoint written by training", required=True),
    Option("format", str, "onnx", "what to write", choices=tuple(SUFFIXES)),
    Option("output", str, None, "the file to write; null = beside the checkpoint, named by the format"),
    Option("opset", int, DEFAULT_OPSET, "ONNX opset"),
    Option("trust_checkpoint", bool, False, "allow unsafe (weights_only=False) loading of a file you trust"),
), examples=("urd export ckpt=results/mvtec/bottle/<run>/checkpoints/last.ckpt format=onnx",
             "urd export ckpt=last.ckpt format=torchscript output=bottle.pt",
             "urd export ckpt=last.ckpt format=weights"))


class ExportParityError(URDError):
    """The exported graph disagrees with PyTorch by more than :data:`PARITY_TOLERANCE`."""


class InferenceGraph(nn.Module):
    """The exported computation: ``URD.predict`` on a normalised batch, returning ``(anomaly_map, pred_score)``.

    Args:
        model: URD network in eval mode (its expert may be ``None``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def train(self, mode: bool = True) -> InferenceGraph:
        """Always eval mode, whatever ``mode`` says.

        The legacy ONNX exporter restores the wrapper's mode after export; train mode would switch BatchNorm to
        batch statistics (and update them) in the parity reference.
        """
        return super().train(False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, S, S)`` normalised image → ``(B, 1, S, S)`` smoothed map, ``(B,)`` score."""
        anomaly_map, score = self.model.predict(image)
        return anomaly_map, score


def _parity_inputs(image_size: int) -> list[Tensor]:
    # Standard-normal values cover the range of ImageNet-normalised pixels; seeded so reruns match.
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, image_size, image_size, generator=generator) for b in PARITY_BATCH_SIZES]


def _max_differences(reference: tuple[Tensor, Tensor], candidate: Sequence[Any]) -> dict[str, float]:
    return {
        name: float((ref.float() - torch.as_tensor(cand).float()).abs().max())
        for name, ref, cand in zip(OUTPUT_NAMES, reference, candidate, strict=True)
    }


def check_parity(graph: nn.Module, run_exported: Any, image_size: int, path: Path) -> list[dict[str, Any]]:
    """Compare an exported model with PyTorch on batches of 1 and 3; delete ``path`` and raise if they differ.

    Args:
        graph: the PyTorch :class:`InferenceGraph`.
        run_exported: callable ``Tensor -> (map, score)`` running the exported file.
        image_size: square input side.
        path: the exported file (removed on failure so no bad model is left behind).

    Returns:
        One ``{"batch_size", "anomaly_map", "pred_score"}`` record of max abs differences per batch size.

    Raises:
        ExportParityError: a difference above :data:`PARITY_TOLERANCE`.
    """
    records = []
    for image in _parity_inputs(image_size):
        graph.eval()
        with torch.no_grad():
            reference, exported = graph(image), run_exported(image)
        diffs = _max_differences(reference, exported)
        records.append({"batch_size": image.shape[0], **diffs})
        if not all(value <= PARITY_TOLERANCE for value in diffs.values()):
            path.unlink(missing_ok=True)
            raise ExportParityError(
                f"exported {path.name} differs from PyTorch at batch {image.shape[0]}: {diffs} > "
                f"{PARITY_TOLERANCE}; the file was removed. Please report this with your torch/onnx versions."
            )
    return records


def _export_onnx(graph: nn.Module, path: Path, image_size: int, opset: int) -> Any:
    try:
        import onnx  # noqa: F401 - needed below to write the metadata; checked here, before the export work
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError("format=onnx needs onnx and onnxruntime: pip install 'urd-lightning[export]'") from exc
    example = torch.zeros(1, 3, image_size, image_size)
    batch_axis = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False) is deprecated in favour of torch.export, which needs the
        # extra onnxscript package; its deprecation and constant-folding notices say nothing actionable to users.
        warnings.simplefilter("ignore")
        write_via(path, lambda tmp: torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: batch_axis, OUTPUT_NAMES[0]: batch_axis, OUTPUT_NAMES[1]: batch_axis},
        ))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda image: session.run(list(OUTPUT_NAMES), {INPUT_NAME: image.numpy()})


def _export_torchscript(graph: nn.Module, path: Path, image_size: int, metadata: dict[str, Any]) -> Any:
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice; the trace is checked below
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        # Serialised in memory, then written by Python: torch.jit.save writing to a full disk aborts the process
        # in C++ (exit 134) and leaves its temporary file behind; a Python write fails with ENOSPC (write_atomic).
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={f"{EXTRAS_KEY}.json": json.dumps(metadata)})
        write_atomic(path, buffer.getvalue())
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(image: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return loaded(image)

    return run


def _metadata(info: CheckpointInfo) -> dict[str, Any]:
    return {
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, info.image_size, info.image_size],
            "preprocessing": f"RGB, resize to image_size (data/transforms.py Resizer, method {info.resize}), /255, "
                             "ImageNet normalisation",
            "resize": info.resize,
            "mean": [float(v) for v in IMAGENET_MEAN],
            "std": [float(v) for v in IMAGENET_STD],
        },
        "outputs": {OUTPUT_NAMES[0]: ["batch", 1, info.image_size, info.image_size], OUTPUT_NAMES[1]: ["batch"]},
        "image_size": info.image_size,
        "model": info.model_kwargs,
        "dataset": info.dataset,
        "category": info.category,
        "thresholds": info.thresholds,
        "score_stats": info.score_stats,
        "normalization": NORMALIZATION_FORMULA,
        "checkpoint": str(info.path),
        "version": info.version,
    }


def _check_output_file(output: str | Path | None, format: str) -> None:  # noqa: A002 - the CLI key
    """An output that is a folder stops before any work (it would fail only after the export and its check)."""
    if output is not None and Path(output).is_dir():
        raise ConfigError(f"export: output={output} is a folder; give a file name, e.g. "
                          f"output={Path(output) / ('last' + SUFFIXES[format])}")


def _export_weights(ckpt: Path, output: str | Path | None, trust_checkpoint: bool) -> dict[str, Any]:
    path = Path(output) if output is not None else ckpt.with_name(ckpt.stem + SUFFIXES["weights"])
    ensure_writable(path.parent, "output")
    save_weights(ckpt, path, trust_checkpoint)
    log.info("wrote %s (weights only)", path)
    return {"format": "weights", "path": str(path), "bytes": path.stat().st_size,
            "checkpoint_bytes": ckpt.stat().st_size}


def export(
    ckpt: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI key users type
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint to ONNX or TorchScript and check it against PyTorch, or write its weights only.

    Args:
        ckpt: checkpoint written by training.
        format: ``onnx``, ``torchscript`` or ``weights``.
        output: the model file; default next to the checkpoint (``last.onnx``, ``last.torchscript.pt``,
            ``last.safetensors``).
        opset: ONNX opset, at least 17.
        trust_checkpoint: allow unsafe (``weights_only=False``) loading of a file you trust.

    Returns:
        The metadata written to ``<output>.json``, including ``"path"`` and the ``"parity"`` records; for
        ``weights`` only ``{"format", "path", "bytes", "checkpoint_bytes"}`` (no graph, no parity, no .json).

    Raises:
        CheckpointError: a missing, broken or foreign checkpoint (nothing is written).
        ConfigError: an unknown format or too low an opset.
        ExportParityError: the exported graph differs from PyTorch by more than 1e-4 (the file is removed).
    """
    if format not in SUFFIXES:
        raise ConfigError(f"export: format={format!r}; use format=onnx, format=torchscript or format=weights")
    if opset < DEFAULT_OPSET:
        raise ConfigError(f"export: opset={opset} is below {DEFAULT_OPSET}, the lowest this export supports")
    _check_output_file(output, format)
    if format == "weights":
        return _export_weights(Path(ckpt), output, trust_checkpoint)
    model, info = load_model(ckpt, trust_checkpoint=trust_checkpoint)
    path = Path(output) if output is not None else info.path.with_name(info.path.stem + SUFFIXES[format])
    ensure_writable(path.parent, "output")
    graph = InferenceGraph(model)
    metadata = _metadata(info)
    metadata.update({"format": format, "path": str(path), "parity_tolerance": PARITY_TOLERANCE})
    if format == "onnx":
        import onnx

        # Exported and checked in a hidden file beside the target; only the finished model (with its metadata)
        # replaces ``path``, so a failure or a full disk never leaves a truncated or unchecked .onnx there.
        work = path.with_name(f".{path.stem}.unchecked.onnx")
        try:
            run_exported = _export_onnx(graph, work, info.image_size, opset)
            metadata["parity"] = check_parity(graph, run_exported, info.image_size, work)
            onnx_model = onnx.load(str(work))
            onnx.helper.set_model_props(onnx_model, {EXTRAS_KEY: json.dumps(metadata)})
            write_via(path, lambda tmp: onnx.save(onnx_model, str(tmp)))
        finally:
            work.unlink(missing_ok=True)
    else:
        run_exported = _export_torchscript(graph, path, info.image_size, metadata)
        metadata["parity"] = check_parity(graph, run_exported, info.image_size, path)
    write_atomic(Path(str(path) + ".json"), json.dumps(metadata, indent=2) + "\n")
    log.info("exported %s (parity %s)", path, metadata["parity"])
    return metadata


def main(argv: Sequence[str]) -> int:
    """CLI entry point: ``export ckpt=PATH format=onnx|torchscript|weights [output=FILE] [opset=17]``."""
    args = read_command_line(EXPORT, argv)
    if args is None:  # --help
        return 0
    metadata = export(**args.values)
    if args.values["format"] == "weights":
        print(f"wrote {metadata['path']} (weights only): {metadata['bytes'] / 2**20:.1f} MB, "
              f"{metadata['bytes'] / metadata['checkpoint_bytes']:.0%} of the checkpoint's "
              f"{metadata['checkpoint_bytes'] / 2**20:.1f} MB")
        return 0
    worst = max(max(r["anomaly_map"], r["pred_score"]) for r in metadata["parity"])
    print(f"exported {metadata['path']} ({args.values['format']}); max abs difference to PyTorch {worst:.2e}")
    return 0
