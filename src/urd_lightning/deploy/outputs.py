"""What ``predict`` writes for each image and for the whole run.

Per image, at the image's original size: a heatmap overlay PNG (the map drawn with the JET colour map over the
image, the predicted-mask outline on top) and a binary mask PNG (0/255); at model resolution, the raw smoothed map
as ``.npy`` float32. Per run: ``results.csv`` (one row per file, unreadable files included with their error) and
``results.json`` (the same rows plus thresholds, score statistics and the normalisation formula).

The heatmap colour scale is fixed across images so that pictures can be compared: it shows the normalised map
(pixel threshold at the middle of the scale, see :func:`urd_lightning.deploy.inference.normalize_scores`); without score
statistics it shows ``clamp(raw / (2 · pixel threshold), 0, 1)``, which also puts the threshold at the middle.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from urd_lightning.errors import ConfigError
from urd_lightning.files import write_atomic, write_via

# Weight of the heatmap in the overlay: half and half keeps the defect visible under the colours.
OVERLAY_ALPHA = 0.5
CSV_COLUMNS = (
    "image_path",
    "status",
    "pred_score",
    "pred_label",
    "decision",
    "raw_score",
    "normalized_score",
    "image_threshold",
    "width",
    "height",
    "overlay_path",
    "mask_path",
    "map_path",
    "error",
)


def heatmap_overlay(image: np.ndarray, display_map: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a [0, 1] map, coloured with JET, over an RGB image and outline the predicted mask.

    Args:
        image: ``(H, W, 3) uint8`` RGB.
        display_map: ``(H, W)`` float in [0, 1], same size as ``image``.
        mask: optional ``(H, W)`` bool predicted mask whose outline is drawn in white.

    Returns:
        ``(H, W, 3) uint8`` RGB overlay.
    """
    levels = np.clip(np.rint(display_map * 255.0), 0, 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    overlay = cv2.addWeighted(image, 1.0 - OVERLAY_ALPHA, heat, OVERLAY_ALPHA, 0.0)
    if mask is not None and mask.any():
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        thickness = max(1, min(image.shape[:2]) // 200)
        cv2.drawContours(overlay, contours, -1, (255, 255, 255), thickness)
    return overlay


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB ``(H, W, 3)`` or gray ``(H, W)`` uint8 array as PNG, creating parent folders.

    Raises:
        OSError: the file cannot be written.
    """
    data = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", data)
    if not ok:
        raise OSError(f"cannot encode PNG for {path}")
    write_atomic(path, encoded.tobytes())  # bytes rather than cv2.imwrite: works with non-ASCII paths on every OS


def write_map(path: Path, anomaly_map: np.ndarray) -> None:
    """Save a raw anomaly map as ``.npy`` float32."""
    write_via(path, lambda tmp: np.save(tmp, anomaly_map.astype(np.float32)))


def output_names(files: list[Path], root: Path | None) -> list[Path]:
    """Relative output names (``.png``) that keep the input's sub-folders and exact name, and never collide.

    The input's name is kept whole and ``.png`` appended unless it already ends in ``.png`` (``x.PNG`` →
    ``x.PNG.png``, ``y.jpg`` → ``y.jpg.png``, ``x.png`` → ``x.png``), so different inputs give different names.
    Names are compared case-folded (a case-insensitive disk would merge ``A.png`` and ``a.png``); a name still
    taken gets ``~2``, ``~3``… before ``.png``, handing out numbers in sorted input order, so the same inputs
    always give the same names. ``results.csv``/``results.json`` record which input each output belongs to.

    Args:
        files: input files.
        root: the input folder (names are relative to it), or ``None`` for a single file.

    Returns:
        One relative path per file, in order.
    """
    relative = [f.relative_to(root) if root is not None else Path(f.name) for f in files]
    wanted = [r if r.name.endswith(".png") else r.with_name(r.name + ".png") for r in relative]
    taken: set[str] = set()
    chosen: dict[int, Path] = {}
    for i in sorted(range(len(files)), key=lambda k: (str(relative[k]), k)):
        name, k = wanted[i], 1
        while str(name).casefold() in taken:
            k += 1
            name = wanted[i].with_name(f"{wanted[i].name[: -len('.png')]}~{k}.png")
        taken.add(str(name).casefold())
        chosen[i] = name
    return [chosen[i] for i in range(len(files))]


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the per-image rows as CSV (columns :data:`CSV_COLUMNS`; missing values left empty)."""
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in CSV_COLUMNS})
    write_atomic(path, handle.getvalue())


def write_json(path: Path, summary: dict[str, Any]) -> None:
    """Write the run summary as indented JSON."""
    write_atomic(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


# What predict writes into its output folder: a folder holding any of these holds an earlier prediction.
PREDICT_OUTPUTS = ("results.csv", "results.json", "overlays", "masks", "maps")


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` (links resolved)."""
    return path.resolve().is_relative_to(folder.resolve())


def clear_previous(out: Path, files: Sequence[Path], overwrite: bool) -> None:
    """Refuse an output folder with an earlier prediction, or (``overwrite``) remove that prediction's files.

    Writing a new set over an old one would leave the old overlays, masks and maps of images that are not in the new
    tables; the tables and the files must describe the same images.
    """
    found = [name for name in PREDICT_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    if not found:
        return
    if not overwrite:
        raise ConfigError(f"predict: output {out} already holds a prediction ({', '.join(found)}); give a new "
                          "output=... or add overwrite=true to replace it")
    if any(inside(f, out / name) for f in files for name in found):
        raise ConfigError(f"predict: the input images lie inside {out}'s earlier prediction, which overwrite=true "
                          "would remove; give another output=...")
    for name in found:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
