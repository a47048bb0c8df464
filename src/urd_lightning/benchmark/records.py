"""What a results folder holds, as records: one ``RunRecord`` per (dataset, category, run).

Reads the ``results/<dataset>/<category>/<run>/metrics.json`` (and ``config.yaml``) files that training writes
(docs/design.md, "results"). The runner builds records for the categories it ran or skipped; the report and the
plots only read them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urd_lightning.errors import URDError

# Keys that say where or how a run is executed or logged, not what is trained: they neither change the run name nor
# make a finished category "a different config" when resuming. Device counts are among them so that a SLURM array
# (trainer.devices=1) and its --report-only job agree on the run name; a DDP run changes the effective batch size,
# so give it its own run= when comparing. data.dtd_root only says where DTD lies; whether DTD or procedural textures
# were used is data.textures, which is not volatile.
VOLATILE_KEYS = (
    "run", "resume", "ckpt", "output_dir", "logger", "wandb", "checkpoint_every_n_steps", "data.root",
    "data.dtd_root", "data.cache_dir", "data.num_workers", "data.eval_batch_size", "eval.num_samples",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.enable_progress_bar",
    "trainer.log_every_n_steps", "trainer.max_time", "runtime",
    "data.pixel_cache_dir",  # where decoded pixels are cached: identical results with or without the cache
    "batched_eval_forwards", "compile",  # how fast, not what is computed
)  # fmt: skip


def is_volatile(key: str) -> bool:
    """Whether ``key`` (dotted) only says where or how a run executes, not what it computes."""
    return any(key == v or key.startswith(v + ".") for v in VOLATILE_KEYS)


REPORTS_DIRNAME = "_reports"  # folders starting with "_" are never read as categories
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
    metrics_path = run_dir / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text())
        dataset, category, run = metrics["dataset"], metrics["category"], metrics["run"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise URDError(
            f"{metrics_path} is not a metrics.json of this project ({exc!r}); it needs the keys dataset, category, "
            "run and final (docs/design.md, 'results'). Delete it, or rerun that category, to fix it."
        ) from exc
    config: dict[str, Any] = {}
    config_path = run_dir / "config.yaml"
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
    for path in sorted(root.rglob("metrics.json")):
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
