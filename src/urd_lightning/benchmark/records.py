"""What a results folder holds, as records: one ``RunRecord`` per (dataset, category, run).

Reads the ``results/<dataset>/<category>/<run>/metrics.json`` (and ``config.yaml``) files that training writes
(docs/design.md, "results"). The runner builds records for the categories it ran or skipped; the report and the
plots only read them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urd_lightning.errors import URDError
from urd_lightning.run.folder import RunFolder

# Runs written before metrics.json had one ``runtime`` block kept the speed settings in a second block, ``execution``;
# its keys under their ``runtime`` names (the others are the same in both).
LEGACY_EXECUTION_KEYS = {"device": "accelerator"}


@dataclass
class RunRecord:
    """One (dataset, category, run): its metrics.json content, or why there is none.

    Attributes:
        dataset: Benchmark name.
        category: Category name.
        run: Run name (the results sub-folder).
        status: ``done`` (metrics.json read), ``failed``, ``missing`` or ``conflict`` (set by the runner).
        path: The run folder, when known.
        metrics: The parsed metrics.json (empty unless done).
        config: The run's ``config.yaml`` flattened to dotted keys (empty if absent), with ``runtime.*`` completed
            from metrics.json (:func:`runtime_of`).
        error: What went wrong, for failed/conflict rows.
    """

    dataset: str
    category: str
    run: str
    status: str = "done"
    path: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys; lists become JSON strings so every value fits a CSV cell."""
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree) if isinstance(tree, list) else tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def runtime_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """How a run ran, from its metrics.json: the ``runtime`` block, completed by an older run's ``execution`` block."""
    runtime = dict(metrics.get("runtime") or {})
    for key, value in (metrics.get("execution") or {}).items():
        runtime.setdefault(LEGACY_EXECUTION_KEYS.get(key, key), value)
    return runtime


def read_run(run_dir: Path) -> RunRecord:
    """Read one run folder (``metrics.json`` and, if present, ``config.yaml``).

    Raises:
        URDError: If metrics.json is not valid JSON or lacks the design's identity keys.
    """
    folder = RunFolder(run_dir)
    metrics_path = folder.metrics
    try:
        metrics = json.loads(metrics_path.read_text())
        for block in ("final", "oracle"):  # an undefined metric is written as null (strict JSON): NaN again here
            if isinstance(metrics.get(block), dict):
                metrics[block] = {k: math.nan if v is None else v for k, v in metrics[block].items()}
        dataset, category, run = metrics["dataset"], metrics["category"], metrics["run"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise URDError(
            f"{metrics_path} is not a metrics.json of this project ({exc!r}); it needs the keys dataset, category, "
            "run and final (docs/design.md, 'results'). Delete it, or rerun that category, to fix it."
        ) from exc
    config: dict[str, Any] = {}
    config_path = folder.config
    if config_path.is_file():
        import yaml  # PyYAML ships with omegaconf

        config = flatten(yaml.safe_load(config_path.read_text()) or {})
    # One set of runtime.* columns for old and new runs alike: metrics.json's facts win over config.yaml's copy.
    config.update(flatten(runtime_of(metrics), "runtime"))
    return RunRecord(str(dataset), str(category), str(run), "done", run_dir, metrics, config)


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every finished run under ``root`` (any depth), skipping ``_reports`` and other ``_``-prefixed folders."""
    root = Path(root)
    if not root.is_dir():
        raise URDError(f"results folder {root} does not exist; pass the folder training wrote (e.g. results/mvtec).")
    found = []
    for path in sorted(root.rglob(RunFolder.METRICS)):
        if any(part.startswith("_") for part in path.relative_to(root).parts[:-1]):
            continue
        found.append(read_run(path.parent))
    return found


def group_runs(records: list[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Group records by (dataset, run)."""
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.dataset, record.run)].append(record)
    return dict(groups)


PROCEDURAL_MARK = "†"  # rows trained on procedural textures instead of the paper's DTD


def texture_source(record: RunRecord) -> str | None:
    """``dtd``, ``procedural`` or ``none`` (no synthesis) from metrics.json, else from the run's config; or None.

    Runs written before the field existed have no ``data.textures`` either: no DTD path meant procedural then.
    """
    if "texture_source" in record.metrics:
        return str(record.metrics["texture_source"])
    if "data.textures" in record.config:
        return str(record.config["data.textures"])
    if "data.synthesis" not in record.config:
        return None
    if not record.config["data.synthesis"]:
        return "none"
    return "dtd" if record.config.get("data.dtd_root") else "procedural"
