"""Results folder -> CSV, markdown table beside the paper's means, and plots: ``urd report DIR``.

Reads the ``results/<dataset>/<category>/<run>/metrics.json`` files that training writes (docs/design.md,
"results") and, for every (dataset, run) found, writes under ``<dataset folder>/_reports/<run>/``:
``results.csv`` (one row per category: metrics, durations, the run's flattened ``config.yaml``), ``results.md``
(categories in the community order, a mean row, the paper's published means and the difference) and the plots of
:mod:`urd_lightning.benchmark.plots`. The benchmark runner (:mod:`urd_lightning.benchmark.runner`) calls the same
functions.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from urd_lightning.benchmark.paper import PAPER_CAVEATS, PAPER_MEANS, PAPER_SOURCE
from urd_lightning.benchmark.plots import write_plots
from urd_lightning.benchmark.records import PROCEDURAL_MARK, RunRecord, find_runs, group_runs, texture_source
from urd_lightning.benchmark.seeds import group_by_config, group_name, write_seed_report
from urd_lightning.config import read_command_line
from urd_lightning.config.cli import Command, Option
from urd_lightning.config.files import dataset_categories, order_categories
from urd_lightning.errors import URDError
from urd_lightning.files import write_atomic
from urd_lightning.run.folder import RunFolder

log = logging.getLogger(__name__)

# Table columns: metric key in metrics.json -> header. Both AUPRO protocols are shown (design: "metrics").
TABLE_COLUMNS: dict[str, str] = {
    "image_AUROC": "image AUROC",
    "pixel_AUROC": "pixel AUROC",
    "pixel_AUPRO_per_image": "AUPRO per-image (paper protocol)",
    "pixel_AUPRO": "AUPRO pooled (MVTec official)",
    "pixel_AP": "pixel AP",
}
def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _row(name: str, cells: list[str]) -> str:
    return f"| {name} | " + " | ".join(cells) + " |"


def _mean(records: list[RunRecord], key: str, section: str) -> float | None:
    values = [r.metrics[section][key] for r in records if key in r.metrics.get(section, {})]
    return sum(values) / len(values) if values and len(values) == len(records) else None


def markdown_table(dataset: str, run: str, records: list[RunRecord], expected: list[str] | None = None) -> str:
    """The results table: one row per category (community order), mean, paper means and the difference.

    Args:
        dataset: Benchmark name (selects the category order and the paper's means).
        run: Run name, for the title.
        records: Records of this (dataset, run); any status.
        expected: Categories that should be there; those without a finished record are listed as missing.

    Returns:
        Markdown text, values in percent with one decimal as the paper prints them.
    """
    done = {r.category: r for r in records if r.status == "done"}
    others = {r.category: r for r in records if r.status != "done"}
    categories = _order(dataset, expected, records)
    title = f"## URD on {dataset} — run `{run}` (final iteration)"
    lines = [title, "", _row("category", list(TABLE_COLUMNS.values())), "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    for cat in categories:
        if cat in done:
            final = done[cat].metrics.get("final", {})
            mark = f" {PROCEDURAL_MARK}" if texture_source(done[cat]) == "procedural" else ""
            lines.append(_row(cat + mark, [_fmt(final.get(key)) for key in TABLE_COLUMNS]))
        else:
            status = others[cat].status if cat in others else "missing"
            lines.append(_row(f"{cat} ({status})", ["—"] * len(TABLE_COLUMNS)))
    finished = [done[c] for c in categories if c in done]
    complete = len(finished) == len(categories) and bool(finished)
    means = {key: _mean(finished, key, "final") for key in TABLE_COLUMNS}
    lines.append(_row(f"**mean** ({len(finished)}/{len(categories)})", [_fmt(v) for v in means.values()]))
    if any("oracle" in r.metrics for r in finished):
        oracle = [_fmt(_mean(finished, key, "oracle")) for key in TABLE_COLUMNS]
        lines.append(_row("oracle mean (best test evaluation)", oracle))
    paper = PAPER_MEANS.get(dataset)
    if paper:
        lines.append(_row("paper mean", [_fmt(paper.get(key)) for key in TABLE_COLUMNS]))
        if complete:
            diffs = [
                "—" if means[k] is None or k not in paper else f"{100 * (means[k] - paper[k]):+.1f}"
                for k in TABLE_COLUMNS
            ]
            lines.append(_row("Δ mean − paper", diffs))
    lines.append("")
    procedural = [c for c in categories if c in done and texture_source(done[c]) == "procedural"]
    if procedural:
        lines.append(f"{PROCEDURAL_MARK} Trained with built-in procedural textures, not the paper's DTD "
                     f"({len(procedural)}/{len(finished)} finished categories): not comparable with the paper. Get DTD "
                     "with `python -m urd_lightning data download dtd` and rerun.")
        lines.append("")
    missing = [c for c in categories if c not in done]
    if missing:
        lines.append(f"Missing ({len(missing)}): " + ", ".join(missing) + ". The mean covers finished categories only;")
        lines.append("no difference to the paper is shown until every category has finished.")
        for cat in missing:
            if cat in others and others[cat].error:
                lines.append(f"- {cat}: {others[cat].status}: {others[cat].error}")
        lines.append("")
    if paper:
        lines.append(f"Paper row: {PAPER_SOURCE}.")
        lines += [f"- {caveat}" for caveat in PAPER_CAVEATS]
    else:
        lines.append(f"The paper publishes no numbers for {dataset}.")
    return "\n".join(lines) + "\n"


def write_csv(records: list[RunRecord], path: str | Path) -> Path:
    """One row per record: identity, final metrics, ``oracle_*`` metrics, durations, steps, then ``config.*``."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"dataset": r.dataset, "category": r.category, "run": r.run, "status": r.status}
        row.update(r.metrics.get("final", {}))
        row.update({f"oracle_{k}": v for k, v in r.metrics.get("oracle", {}).items()})
        row.update({k: v for k, v in r.metrics.get("durations", {}).items()})
        row.update({k: r.metrics[k] for k in ("steps", "injection") if k in r.metrics})
        row["texture_source"] = texture_source(r) or ""
        row.update({f"config.{k}": v for k, v in r.config.items()})
        row["error"] = r.error
        rows.append(row)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    columns = [c for c in columns if not c.startswith("config.") and c != "error"]
    columns += sorted({c for row in rows for c in row if c.startswith("config.")}) + ["error"]
    path = Path(path)
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, handle.getvalue())
    return path


def write_report(
    dataset: str,
    run: str,
    records: list[RunRecord],
    out_dir: str | Path,
    expected: list[str] | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write results.csv, results.md and (optionally) the plots for one (dataset, run); returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    order = _order(dataset, expected, records)
    records = sorted(records, key=lambda r: order.index(r.category))
    paths = {"csv": write_csv(records, out / "results.csv"), "markdown": out / "results.md"}
    write_atomic(paths["markdown"], markdown_table(dataset, run, records, expected))
    if plots:
        paths.update(write_plots(dataset, run, [r for r in records if r.status == "done"], out))
    return paths


def _order(dataset: str, expected: list[str] | None, records: list[RunRecord]) -> list[str]:
    """``expected`` as given (the dataset file's order), then the others of ``records`` (shipped file's order)."""
    listed = list(dict.fromkeys(expected or []))
    return listed + order_categories(dataset, [r.category for r in records if r.category not in listed])


def _known_categories(dataset: str, config_dir: str | None) -> list[str] | None:
    """The benchmark's full category list, so a partial results folder shows what is missing (None if unknown)."""
    try:
        return dataset_categories(dataset, config_dir)
    except URDError:
        return None


REPORT = Command("report", "Tables and plots for every (dataset, run) under a results folder.", options=(
    Option("results", str, None, "a results folder: results/, results/<dataset> or one run folder", positional=True,
           required=True),
    Option("out", str, None, "where to write (default: <dataset folder>/_reports/<run>)"),
    Option("plots", bool, True, "write the plots beside the CSV and markdown table", aliases=("--no-plots",)),
    Option("config_dir", str, None, "your folder of data/<name>.yaml files (the category lists of your own "
           "datasets); null = the folder each run recorded"),
), examples=("urd report results/", "urd report results/mvtec out=/tmp/tables plots=false"))


def main(argv: list[str] | None = None) -> int:
    """``report DIR [out=DIR] [plots=false]``: tables and plots for every (dataset, run) under DIR."""
    args = read_command_line(REPORT, list(argv or []))
    if args is None:  # --help
        return 0
    values = args.values
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    groups = group_runs(find_runs(values["results"]))
    if not groups:
        raise URDError(f"no metrics.json under {values['results']}; train first (urd train ...).")
    for (dataset, run), records in sorted(groups.items()):
        if values["out"]:
            out = Path(values["out"]) / (f"{dataset}-{run}" if len(groups) > 1 else "")
        else:
            out = RunFolder(records[0].path).reports  # results/<dataset>/_reports/<run>
        config_dir = values["config_dir"] or records[0].config.get("config_dir")  # where its dataset file was
        paths = write_report(dataset, run, records, out, _known_categories(dataset, config_dir), plots=values["plots"])
        log.info("%s", paths["markdown"].read_text())
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    # Runs that differ only in the seed (a benchmark's seeds=, a seed sweep): mean ± std over the seeds.
    for group in group_by_config([r for records in groups.values() for r in records]):
        dataset = group[0].dataset
        where = Path(values["out"]) if values["out"] else RunFolder(group[0].path).reports.parent
        paths = write_seed_report(dataset, group, where / (f"{dataset}-{group_name(group)}" if values["out"]
                                                           else group_name(group)), values["plots"])
        log.info("%s", paths["seeds_markdown"].read_text())
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0
