"""``urd predict``: score new images with a trained checkpoint.

    urd predict ckpt=results/mvtec/bottle/run/checkpoints/last.ckpt input=photos/ output=out/
    urd predict ckpt=last.ckpt input=part.tif output=out/ threshold=0.62 score=normalized

For every image: a raw score (maximum of the σ=4-smoothed anomaly map, docs/method.md), its normalised form,
a decision at the image threshold, the map (``maps/*.npy``, model resolution), a heatmap overlay and a binary mask
at the original size (``overlays/*.png``, ``masks/*.png``); for the run ``results.csv`` and ``results.json``.
Images of any size and mode are read by :func:`urd_lightning.data.transforms.read_rgb` and preprocessed exactly as
in evaluation; files that cannot be read are listed (CSV ``status=unreadable``, JSON ``skipped``) and skipped.
A folder's hidden files and folders (names starting with ``.``: macOS's ``._a.png``, a ``.cache/``) are not listed.
A broken or foreign checkpoint stops everything before any output is written. See ``docs/inference.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from urd_lightning.config import read_command_line
from urd_lightning.config.cli import Command, Option
from urd_lightning.data.transforms import read_rgb
from urd_lightning.deploy.inference import URDInferencer, resize_map
from urd_lightning.deploy.outputs import (
    clear_previous,
    heatmap_overlay,
    inside,
    output_names,
    write_csv,
    write_json,
    write_map,
    write_png,
)
from urd_lightning.errors import ConfigError, DataError
from urd_lightning.files import ensure_writable

log = logging.getLogger(__name__)

# Extensions Pillow/OpenCV decode that industrial data sets use (BTAD mixes .bmp and .png, VisA uses .JPG).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
NORMALIZATION_FORMULA = "clamp((raw - threshold) / (max - min) + 0.5, 0, 1)"

PREDICT = Command("predict", "Score images with a trained checkpoint: scores, decisions, maps, overlays and masks, "
                  "results.csv and results.json under output/.", options=(
    Option("ckpt", str, None, "checkpoint written by training, or export's .safetensors", required=True),
    Option("input", str, None, "an image file or a folder of images (hidden files and folders, names starting "
           "with '.', are skipped)", required=True),
    Option("output", str, "predictions", "folder for the outputs (created)"),
    Option("threshold", float, None, "raw image threshold overriding the checkpoint's"),
    Option("pixel_threshold", float, None, "raw pixel threshold overriding the checkpoint's"),
    Option("score", str, "raw", "which score fills pred_score (both are always written)",
           choices=("raw", "normalized")),
    Option("batch_size", int, 8, "images per forward pass"),
    Option("device", str, "auto", "auto, cpu, cuda or cuda:N"),
    Option("recursive", bool, True, "look into sub-folders of input"),
    Option("save_maps", bool, True, "also write the raw maps as .npy"),
    Option("progress", bool, True, "show a progress bar"),
    Option("trust_checkpoint", bool, False, "allow unsafe (weights_only=False) loading of a file you trust"),
    Option("overwrite", bool, False, "replace an earlier prediction in output (without it such a folder is refused)"),
), examples=("urd predict ckpt=results/mvtec/bottle/<run>/checkpoints/last.ckpt input=photos/ output=out/",
             "urd predict ckpt=last.ckpt input=part.tif threshold=0.62 score=normalized"))


def _hidden(relative: Path) -> bool:
    """A name below the input folder starts with a dot (macOS ``._*`` resource forks, caches, version control)."""
    return any(part.startswith(".") for part in relative.parts)


def list_images(source: Path, recursive: bool = True) -> list[Path]:
    """Image files of a file or folder, sorted, without hidden ones; a single named file is returned whatever it is.

    Raises:
        DataError: ``source`` does not exist, or a folder holds no image files.
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"input {source} does not exist: give input=FILE or input=DIR")
    candidates = source.rglob("*") if recursive else source.glob("*")
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not _hidden(p.relative_to(source)))
    if not files:
        raise DataError(f"input folder {source} has no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _broken_links(source: Path, recursive: bool) -> list[Path]:
    """Symbolic links under ``source`` with an image name whose target is missing (listed, never skipped silently)."""
    if not source.is_dir():
        return []
    candidates = source.rglob("*") if recursive else source.glob("*")
    return sorted(p for p in candidates if p.is_symlink() and not p.exists() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _display_map(normalized: np.ndarray | None, raw: np.ndarray, pixel_threshold: float) -> np.ndarray:
    if normalized is not None:
        return normalized
    return np.clip(raw / max(2.0 * pixel_threshold, 1e-12), 0.0, 1.0)  # threshold at mid-scale, as normalised


def _judge_batch(
    inferencer: URDInferencer, images: list[np.ndarray], names: list[Path], out: Path, score_mode: str, save_maps: bool
) -> list[dict[str, Any]]:
    """Predict one batch of decoded images, write their files, return their result rows."""
    result = inferencer.predict(inferencer.preprocess(images))
    rows = []
    for i, (image, name) in enumerate(zip(images, names, strict=True)):
        height, width = image.shape[:2]
        raw_map = resize_map(result.anomaly_map[i], height, width)[0].numpy()
        norm_map = None
        if result.normalized_map is not None:
            norm_map = resize_map(result.normalized_map[i], height, width)[0].numpy()
        mask = raw_map >= inferencer.pixel_threshold
        write_png(out / "masks" / name, mask.astype(np.uint8) * 255)
        display = _display_map(norm_map, raw_map, inferencer.pixel_threshold)
        write_png(out / "overlays" / name, heatmap_overlay(image, display, mask))
        map_path = None
        if save_maps:
            map_path = Path("maps") / name.with_suffix(".npy")
            write_map(out / map_path, result.anomaly_map[i, 0].numpy())
        raw = float(result.pred_score[i])
        normalized = None if result.normalized_score is None else float(result.normalized_score[i])
        label = bool(result.pred_label[i])
        rows.append(
            {
                "status": "ok",
                "pred_score": normalized if score_mode == "normalized" else raw,
                "pred_label": int(label),
                "decision": "anomalous" if label else "normal",
                "raw_score": raw,
                "normalized_score": normalized,
                "image_threshold": inferencer.image_threshold,
                "width": width,
                "height": height,
                "overlay_path": str(Path("overlays") / name),
                "mask_path": str(Path("masks") / name),
                "map_path": None if map_path is None else str(map_path),
                "error": None,
            }
        )
    return rows


def predict(
    ckpt: str | Path,
    input: str | Path,  # noqa: A002 - the CLI key users type
    output: str | Path = "predictions",
    threshold: float | None = None,
    pixel_threshold: float | None = None,
    score: str = "raw",
    batch_size: int = 8,
    device: str = "auto",
    recursive: bool = True,
    save_maps: bool = True,
    progress: bool = True,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every image of ``input`` and write the outputs under ``output`` (see the module docstring).

    Args:
        ckpt: checkpoint written by training.
        input: an image file or a folder of images.
        output: folder for the outputs (created).
        threshold: raw image threshold overriding the checkpoint's.
        pixel_threshold: raw pixel threshold overriding the checkpoint's.
        score: ``raw`` or ``normalized``: which score fills the ``pred_score`` column (both are always written).
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        recursive: look into sub-folders of ``input``.
        save_maps: also write the raw maps as ``.npy``.
        progress: show a progress bar.
        trust_checkpoint: allow unsafe (``weights_only=False``) loading of a file you trust.
        overwrite: replace an earlier prediction in ``output`` (without it such a folder is refused).

    Returns:
        The run summary written to ``results.json``.

    Raises:
        CheckpointError: the checkpoint is missing, broken, foreign, or has no thresholds and none was given.
        ConfigError: an invalid option.
        DataError: ``input`` is missing or holds no images.
    """
    if score not in {"raw", "normalized"}:
        raise ConfigError(f"predict: score={score!r}; use score=raw or score=normalized")
    if batch_size < 1:
        raise ConfigError(f"predict: batch_size={batch_size} must be at least 1")
    inferencer = URDInferencer.from_checkpoint(ckpt, threshold, pixel_threshold, device, trust_checkpoint)
    if score == "normalized" and inferencer.info.score_stats is None:
        raise ConfigError(f"predict: {ckpt} stores no score statistics, so score=normalized is unavailable; use raw")
    source, out = Path(input), Path(output)
    ensure_writable(out, "output")
    files = list_images(source, recursive)
    if source.is_dir() and inside(out, source):  # never score the outputs of an earlier run into this folder
        files = [f for f in files if not inside(f, out)]
        if not files:
            raise DataError(f"input folder {source} has no image files outside the output folder {out}")
    clear_previous(out, files, overwrite)
    names = output_names(files, source if source.is_dir() else None)
    rows: list[dict[str, Any]] = []
    for link in _broken_links(source, recursive):
        log.warning("skipping broken symbolic link %s (its target %s does not exist)", link, link.readlink())
        rows.append({"image_path": str(link), "status": "unreadable",
                     "error": f"broken symbolic link: its target {link.readlink()} does not exist"})
    with tqdm(total=len(files), unit="img", desc="predict",
              disable=None if progress else True) as bar:  # None: no bar without a terminal (no \r in logs)
        for start in range(0, len(files), batch_size):
            chunk = list(zip(files[start : start + batch_size], names[start : start + batch_size], strict=True))
            decoded, decoded_names, slots, chunk_rows = [], [], [], []
            for path, name in chunk:
                try:
                    decoded.append(read_rgb(path))
                except (DataError, cv2.error, ValueError, OSError) as exc:
                    log.warning("skipping unreadable image %s: %s", path, exc)
                    chunk_rows.append({"image_path": str(path), "status": "unreadable", "error": str(exc)})
                    continue
                decoded_names.append(name)
                slots.append((len(chunk_rows), path))
                chunk_rows.append({})
            if decoded:
                judged = _judge_batch(inferencer, decoded, decoded_names, out, score, save_maps)
                for (slot, path), row in zip(slots, judged, strict=True):
                    chunk_rows[slot] = {"image_path": str(path), **row}
            rows.extend(chunk_rows)
            bar.update(len(chunk))
    ok = [row for row in rows if row["status"] == "ok"]
    summary = {
        "checkpoint": str(ckpt),
        "dataset": inferencer.info.dataset,
        "category": inferencer.info.category,
        "image_size": inferencer.image_size,
        "thresholds": {
            "image": inferencer.image_threshold,
            "pixel": inferencer.pixel_threshold,
            "source": inferencer.threshold_source,
        },
        "score_stats": inferencer.info.score_stats,
        "score_reported": score,
        "normalization": NORMALIZATION_FORMULA,
        "counts": {
            "images": len(rows),
            "anomalous": sum(row["pred_label"] for row in ok),
            "normal": sum(1 - row["pred_label"] for row in ok),
            "unreadable": len(rows) - len(ok),
        },
        "images": rows,
        "skipped": [{"image_path": r["image_path"], "error": r["error"]} for r in rows if r["status"] != "ok"],
    }
    write_csv(out / "results.csv", rows)
    write_json(out / "results.json", summary)
    return summary


def main(argv: Sequence[str]) -> int:
    """CLI entry point: ``predict ckpt=PATH input=FILE|DIR [output=DIR] [key=value ...]``; returns the exit code."""
    args = read_command_line(PREDICT, argv)
    if args is None:  # --help
        return 0
    summary = predict(**args.values)
    counts = summary["counts"]
    print(
        f"{counts['images']} images: {counts['anomalous']} anomalous, {counts['normal']} normal, "
        f"{counts['unreadable']} unreadable (listed in results.json) -> {Path(args.values['output']) / 'results.csv'}"
    )
    return 0 if counts["unreadable"] < counts["images"] else 1
