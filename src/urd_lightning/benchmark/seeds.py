"""Runs that differ only in the seed, aggregated: mean ± std and n per category and overall, final and oracle.

Two runs belong together when their saved configs agree on every result-changing key except ``seed`` (and
``data.seed``, which follows it): the keys outside ``run/identity.py``'s ``EXECUTION_KEYS``, which the benchmark
runner compares when it resumes, so different configs are never averaged. Per category a metric's mean and sample
standard deviation (n - 1) are over the seeds; the overall row first averages the categories of each seed (a seed
counts only when every category of the group finished it) and then takes mean ± std over those seed means, the
spread a paper's benchmark mean has.

Written beside the per-run reports, to ``<dataset folder>/_reports/<group>/``: ``seeds.md`` (beside the paper's
means), ``seeds.csv`` (one row per category, section and metric), ``seeds.tex`` (a LaTeX booktabs table) and
``seeds.png`` (bars with the std as error bars).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from urd_lightning.benchmark.paper import PAPER_MEANS, PAPER_SOURCE
from urd_lightning.benchmark.plots import BAR_METRICS, bar_chart
from urd_lightning.benchmark.records import RunRecord, texture_source
from urd_lightning.config.files import order_categories
from urd_lightning.errors import ConfigError
from urd_lightning.files import write_atomic
from urd_lightning.run.identity import is_execution_key

log = logging.getLogger(__name__)
SEED_KEYS = ("seed", "data.seed")
PER_CATEGORY_KEYS = ("trainer.max_steps", "data.foreground")  # the authors' budgets and foreground, per category
METRICS = ("image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
           "pixel_AUPRO_per_image")
TABLE = {"image_AUROC": "image AUROC", "pixel_AUROC": "pixel AUROC", "pixel_AUPRO_per_image": "AUPRO per-image",
         "pixel_AUPRO": "AUPRO pooled", "pixel_AP": "pixel AP"}  # the Markdown/LaTeX columns (the CSV has all)
Stat = tuple[float, float, int]  # mean, sample std (NaN for n = 1), n


def parse_seeds(value: str | None) -> list[int]:
    """``seeds=111,1,2`` (or ``[111,1,2]``) -> [111, 1, 2]; empty -> [] (the config's one seed)."""
    if not value:
        return []
    items = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    try:
        seeds = [int(v) for v in items]
    except ValueError:
        raise ConfigError(f"seeds={value}: give whole numbers separated by commas, e.g. seeds=111,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={value} repeats a seed; give each seed once")
    return seeds


def identity(record: RunRecord, per_category: bool = False) -> tuple:
    """What a run's results depend on apart from the seed: its non-volatile config keys.

    Without ``per_category`` also apart from the category and the settings the dataset file sets per category
    (:data:`PER_CATEGORY_KEYS`), so the categories of one benchmark configuration share it; those settings are
    compared per category by :func:`group_by_config`.
    """
    skip = (*SEED_KEYS, "data.category") if per_category else (*SEED_KEYS, "data.category", *PER_CATEGORY_KEYS)
    keep = {k: v for k, v in record.config.items()
            if not is_execution_key(k) and k not in skip and not k.startswith("runtime.")}
    return (record.dataset, tuple(sorted((k, repr(v)) for k, v in keep.items())))


def seed_of(record: RunRecord) -> int | None:
    """The run's ``seed`` from its saved config (None for a run without one)."""
    value = record.config.get("seed")
    return int(value) if value is not None else None


def group_by_config(records: list[RunRecord]) -> list[list[RunRecord]]:
    """Finished runs grouped by :func:`identity`; only groups holding two or more seeds.

    A category whose runs in a group still differ (in a per-category setting, or one seed twice) is left out of
    that group with a warning: its runs are of different configurations.
    """
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.status == "done" and record.config:
            groups[identity(record)].append(record)
    out = []
    for group in groups.values():
        kept = []
        for category in sorted({r.category for r in group}):
            runs = [r for r in group if r.category == category]
            seeds = [seed_of(r) for r in runs]
            if len({identity(r, per_category=True) for r in runs}) > 1 or len(set(seeds)) < len(seeds):
                log.warning("%s/%s: not averaged over seeds: its runs %s are of different configurations",
                            runs[0].dataset, category, ", ".join(sorted(r.run for r in runs)))
                continue
            kept += runs
        if len({seed_of(r) for r in kept}) > 1:
            out.append(kept)
    return out


def group_name(records: list[RunRecord]) -> str:
    """The runs' shared name without the ``-s<seed>`` the benchmark adds, plus ``-seeds`` (else the first run's)."""
    bases = {re.sub(r"-s\d+$", "", r.run) for r in records}
    return f"{bases.pop() if len(bases) == 1 else sorted(r.run for r in records)[0]}-seeds"


def _stat(values: list[float]) -> Stat:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def aggregate(records: list[RunRecord]) -> dict[str, dict[str, dict[str, Stat]]]:
    """``{section: {category or "mean": {metric: (mean, std, n)}}}`` for ``final`` and (when present) ``oracle``."""
    out: dict[str, dict[str, dict[str, Stat]]] = {}
    categories = sorted({r.category for r in records})
    for section in ("final", "oracle"):
        by: dict[str, dict[int | None, dict[str, float]]] = defaultdict(dict)
        for r in records:
            if r.metrics.get(section):
                by[r.category][seed_of(r)] = r.metrics[section]
        if not by:
            continue
        table = {c: {m: _stat([v.get(m) for v in by[c].values()]) for m in METRICS} for c in categories if c in by}
        complete = [s for s in {seed_of(r) for r in records} if all(s in by[c] for c in categories)]
        table["mean"] = {m: _stat([statistics.fmean(by[c][s].get(m, math.nan) for c in categories) for s in complete])
                         for m in METRICS}
        out[section] = table
    return out


def _pm(stat: Stat, latex: bool = False) -> str:
    mean, std, n = stat
    if n == 0:
        return "—" if not latex else "--"
    sign = r" \pm " if latex else " ± "
    text = f"{100 * mean:.1f}" + (f"{sign}{100 * std:.1f}" if not math.isnan(std) else "")
    return f"${text}$" if latex else text


PROCEDURAL_NOTE = "Trained with built-in procedural textures, not the paper's DTD: not comparable with the paper"


def procedural(records: list[RunRecord]) -> bool:
    """Whether the runs used procedural textures (one group shares its texture source: it is part of the identity)."""
    return any(texture_source(r) == "procedural" for r in records)


def markdown(dataset: str, name: str, records: list[RunRecord], stats: dict) -> str:
    """The mean ± std tables (percent), one per section, with n and the paper's means."""
    seeds = sorted({s for s in (seed_of(r) for r in records) if s is not None})
    runs = sorted({r.run for r in records})
    lines = [f"# {dataset}: {name}", "", f"Seeds {', '.join(map(str, seeds))} (runs {', '.join(runs)}); mean ± "
             "sample std over the seeds, in percent; n = seeds that finished. Overall: mean ± std over the seeds of "
             "the category mean (seeds that finished every category).", ""]
    if procedural(records):
        lines += [f"{PROCEDURAL_NOTE} (every run of this group). Get DTD with `python -m urd_lightning data "
                  "download dtd` and rerun.", ""]
    paper = PAPER_MEANS.get(dataset, {})
    for section, title in (("final", "final iteration"), ("oracle", "oracle: best periodic TEST-set evaluation")):
        if section not in stats:
            continue
        table = stats[section]
        order = [c for c in order_categories(dataset, [c for c in table if c != "mean"])]
        lines += [f"## {title}", "", "| category | " + " | ".join(TABLE.values()) + " | n |",
                  "|---|" + "---:|" * (len(TABLE) + 1)]
        for c in [*order, "mean"]:
            n = max(s[2] for s in table[c].values())
            lines.append(f"| {'**mean**' if c == 'mean' else c} | " + " | ".join(_pm(table[c][m]) for m in TABLE)
                         + f" | {n} |")
        if paper and section == "final":
            lines.append("| paper | " + " | ".join(f"{100 * paper[m]:.1f}" if m in paper else "—" for m in TABLE)
                         + " | |")
        lines.append("")
    if paper:
        lines.append(f"Paper row: {PAPER_SOURCE}; its AUPRO is the per-image protocol.")
    return "\n".join(lines) + "\n"


def latex(dataset: str, name: str, stats: dict, textures_note: bool = False) -> str:
    r"""A booktabs table of the final-iteration mean ± std (needs ``\usepackage{booktabs}``).

    ``textures_note``: the runs used procedural textures; a note under the table says they are not comparable with
    the paper (a comment alone would not reach the PDF).
    """
    table = stats["final"]
    order = order_categories(dataset, [c for c in table if c != "mean"])
    paper = PAPER_MEANS.get(dataset, {})
    escape = lambda text: text.replace("_", r"\_")  # noqa: E731 - category names such as pipe_fryum
    lines = [r"\begin{tabular}{l" + "c" * len(TABLE) + "c}", r"\toprule",
             "Category & " + " & ".join(TABLE.values()) + r" & $n$ \\", r"\midrule"]
    for c in order:
        n = max(s[2] for s in table[c].values())
        lines.append(f"{escape(c)} & " + " & ".join(_pm(table[c][m], True) for m in TABLE) + rf" & {n} \\")
    lines.append(r"\midrule")
    n = max(s[2] for s in table["mean"].values())
    lines.append("Mean & " + " & ".join(_pm(table["mean"][m], True) for m in TABLE) + rf" & {n} \\")
    if paper:
        lines.append("Paper & " + " & ".join(f"{100 * paper[m]:.1f}" if m in paper else "--" for m in TABLE)
                     + r" & \\")
    lines.append(r"\bottomrule")
    if textures_note:
        lines.append(rf"\multicolumn{{{len(TABLE) + 2}}}{{l}}{{\footnotesize {PROCEDURAL_NOTE}.}} \\")
    lines.append(r"\end{tabular}")
    caption = f"% {dataset}, {escape(name)}: mean $\\pm$ sample std over seeds (percent), final iteration"
    return caption + "\n" + "\n".join(lines) + "\n"


def write_seed_report(dataset: str, records: list[RunRecord], out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """``seeds.md``, ``seeds.csv``, ``seeds.tex`` and (``plots``) ``seeds.png`` for runs that differ only in the seed.

    ``seeds.png``: the final-iteration means per category and overall as bars, the sample std as error bars.
    """
    name = group_name(records)
    stats = aggregate(records)
    out = Path(out_dir)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["dataset", "group", "category", "section", "metric", "mean", "std", "n"])
    for section, table in stats.items():
        for category, values in table.items():
            for metric, (mean, std, n) in values.items():
                writer.writerow([dataset, name, category, section, metric, mean, std, n])
    paths = {"seeds_markdown": out / "seeds.md", "seeds_csv": out / "seeds.csv", "seeds_latex": out / "seeds.tex"}
    write_atomic(paths["seeds_markdown"], markdown(dataset, name, records, stats))
    write_atomic(paths["seeds_csv"], handle.getvalue())
    if "final" in stats:
        write_atomic(paths["seeds_latex"], latex(dataset, name, stats, procedural(records)))
    else:
        paths.pop("seeds_latex")
    if plots and "final" in stats:
        table = stats["final"]
        rows = [*order_categories(dataset, [c for c in table if c != "mean"]), "mean"]
        seeds = sorted({s for s in (seed_of(r) for r in records) if s is not None})
        paths["seeds_plot"] = bar_chart(
            dataset, f"URD on {dataset}, {name}: mean ± std over seeds {', '.join(map(str, seeds))} (final iteration)",
            rows, {m: [table[c][m][0] for c in rows] for m in BAR_METRICS},
            {m: [table[c][m][1] for c in rows] for m in BAR_METRICS}, out / "seeds.png")
    return paths
