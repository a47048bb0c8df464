"""Each benchmark's categories: the community order of results tables and the list a benchmark run covers.

The orders follow the anomalib conventions: MVTec AD lists the five textures first and then
the ten objects, each group alphabetical, as anomalib's README tables do; VisA, BTAD and MPDD use their usual
alphabetical order. The list of a benchmark comes from its dataset file (``configs/data/<benchmark>.yaml``,
``categories:``), so the runner and the report agree on what a complete benchmark is.
"""

from __future__ import annotations

from pathlib import Path

from urd_lightning.config_files import read_dataset_file
from urd_lightning.errors import ConfigError

# Community order of each benchmark's categories (anomalib's README order for MVTec: textures, then objects).
CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "mvtec": (
        "carpet", "grid", "leather", "tile", "wood",
        "bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
    ),
    "visa": (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    ),
    "btad": ("01", "02", "03"),
    "mpdd": ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes"),
}  # fmt: skip


def order_categories(dataset: str, categories: list[str] | tuple[str, ...]) -> list[str]:
    """Sort categories into the benchmark's community order.

    Args:
        dataset: Benchmark name (``mvtec``, ``visa``, ``btad``, ``mpdd``, or any other).
        categories: Category names, in any order; duplicates are dropped.

    Returns:
        Known categories in community order, followed by unknown ones alphabetically.
    """
    known = CATEGORY_ORDER.get(dataset, ())
    unique = list(dict.fromkeys(categories))
    ordered = [c for c in known if c in unique]
    return ordered + sorted(c for c in unique if c not in known)


def dataset_categories(dataset: str, config_dir: str | Path | None = None) -> list[str]:
    """The categories of a benchmark: its dataset file's ``categories:`` table, else the community list.

    Args:
        dataset: the dataset file's name (``data/<dataset>.yaml``).
        config_dir: the user's config folder layered over the shipped configs (``config_dir=``; default
            ``URD_CONFIG_DIR``).
    """
    table = (read_dataset_file(dataset, config_dir) or {}).get("categories")
    names = [str(c) for c in table] if table else list(CATEGORY_ORDER.get(dataset, ()))
    if not names:
        raise ConfigError(f"data/{dataset}.yaml has no categories: table; pass the categories with --categories a,b,c")
    return order_categories(dataset, names)
