"""The projection and the markdown table of ``bench_gpu.py`` (kept apart so that each file stays readable)."""

from __future__ import annotations

from typing import Any

# MVTec AD test images per category (Bergmann et al., CVPR 2019, Table 1): 1,725 in all. Each category is evaluated
# once at the end of its training (the default eval.every_n_steps=0).
MVTEC_TEST_IMAGES = {
    "bottle": 83, "cable": 150, "capsule": 132, "carpet": 117, "grid": 78, "hazelnut": 110, "leather": 124,
    "metal_nut": 115, "pill": 167, "screw": 160, "tile": 117, "toothbrush": 42, "transistor": 100, "wood": 79,
    "zipper": 151,
}  # fmt: skip


def _rate(section: dict[str, Any] | None) -> float | None:
    if not section:
        return None
    section = section.get("train", section)
    return section.get("iterations_per_s")


def training_rates(report: dict[str, Any]) -> dict[str, float]:
    """Training iterations/s per setting found in the report (the loader row: its best worker count)."""
    sections = report["sections"]
    rates = {"authors' settings": _rate(sections.get("train_authors")),
             "defaults": _rate(sections.get("train_default")),
             "defaults + compile": _rate(sections.get("train_compile"))}
    loaders = [_rate(v) for k, v in sections.items() if k.startswith("loader_")]
    loaders = [r for r in loaders if r]
    if loaders:
        rates["defaults, real loader (best N)"] = max(loaders)
    return {k: v for k, v in rates.items() if v}


def projection(report: dict[str, Any], budgets: dict[str, int]) -> dict[str, Any]:
    """Wall time of the MVTec AD protocol (15 categories, one process each) at the measured rates.

    Per category: its iteration budget / training rate + its test images / evaluation rate + the model build time
    measured here (process start, data set-up and a compile's first iterations are extra for the compiled row,
    whose measured warm-up is added per category as an upper bound: the inductor cache makes later ones cheaper).
    """
    iterations = sum(budgets.values())
    test_images = sum(MVTEC_TEST_IMAGES.get(c, 0) for c in budgets)
    evaluation = report["sections"].get("eval", {}).get("images_per_s")
    eval_s = test_images / evaluation if evaluation else 0.0
    startup_s = len(budgets) * float(report.get("model_build_s", 0.0))
    rows = {}
    for name, rate in training_rates(report).items():
        extra = 0.0
        compiled = report["sections"].get("train_compile")
        if name == "defaults + compile" and compiled:
            timed_s = compiled["timed_iterations"] / compiled["iterations_per_s"]
            extra = len(budgets) * max(0.0, compiled["wall_s"] - timed_s)
        rows[name] = {"hours": (iterations / rate + eval_s + startup_s + extra) / 3600, "train_s": iterations / rate}
    return {"categories": len(budgets), "iterations": iterations, "test_images": test_images, "eval_s": eval_s,
            "startup_s": startup_s, "evaluation_counted": bool(evaluation), "rows": rows}


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "—"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table (what docs/performance.md quotes)."""
    env, args, sections = report["environment"], report["args"], report["sections"]
    lines = [f"### {env.get('gpu', env['device'])}: {args['backbone']} {args['size']}² batch {args['batch']}, "
             f"injection {args['injection']}, random weights",
             "", f"torch {env['torch']}, CUDA {env.get('cuda')}, lightning {env['lightning']}, {env['cpus']} CPUs, "
             f"commit {env.get('commit')}; {args['warmup']} warm-up + up to {args['iters']} timed iterations each",
             "", "| measurement | iterations/s | images/s | median ms/iteration | peak GiB | note |",
             "|---|---|---|---|---|---|"]
    rows = [("train_authors", "train, authors' settings (fp32, deterministic, separate forwards)"),
            ("train_default", "train, defaults (bf16-mixed, channels-last, batched eval forwards, cudnn.benchmark)"),
            ("train_compile", "train, defaults + torch.compile")]
    rows += [(k, f"train, defaults, real loader ({sections[k]['workers']} workers)") for k in sections
             if k.startswith("loader_")]
    for key, label in rows:
        section = sections.get(key)
        if section is None:
            lines.append(f"| {label} | — | — | — | — | {report['errors'].get(key, 'not run')} |")
            continue
        train, note = section.get("train", section), ""
        if key == "train_compile":
            untimed = train["wall_s"] - train["timed_iterations"] / train["iterations_per_s"]
            note = f"set-up + {args['warmup']} warm-up iterations incl. compile: {_f(untimed)} s"
        if key.startswith("loader_"):
            only = section["loader_only"].get("samples_per_s")
            note = (f"loader alone: {_f(only)} samples/s ({_f(only / args['batch'] if only else None)} batches/s); "
                    f"{section['batches_per_epoch']} batches per epoch")
        lines.append(f"| {label} | {_f(train['iterations_per_s'])} | {_f(train['images_per_s'])} | "
                     f"{_f(train['median_ms'])} | {_f(train.get('peak_memory_gib'))} | {note} |")
    ev = sections.get("eval")
    if ev:
        lines.append(f"| evaluation (maps + blur + all metrics, {ev['images']} images) | — | {_f(ev['images_per_s'])} "
                     f"| — | {_f(ev.get('peak_memory_gib'))} | device vs CPU metrics: max abs diff "
                     f"{ev['max_abs_diff']:.2g}, equal to 1e-6: {'yes' if ev['equal_1e-6'] else 'NO'} |")
    else:
        lines.append(f"| evaluation | — | — | — | — | {report['errors'].get('eval', 'not run')} |")
    rates = training_rates(report)
    base = rates.get("authors' settings")
    if base:
        ratios = ", ".join(f"{k} {v / base:.2f}x" for k, v in rates.items() if k != "authors' settings")
        lines += ["", f"Throughput relative to the authors' settings: {ratios or '—'}."]
    proj = report.get("projection")
    if proj:
        lines += ["", f"Projected MVTec AD protocol ({proj['categories']} categories, {proj['iterations']:,} "
                      f"iterations, {proj['test_images']:,} test images; evaluation "
                      f"{'included' if proj['evaluation_counted'] else 'NOT measured, not included'}, model build "
                      f"{proj['startup_s']:.0f} s in all):", "", "| settings | training h | total h |", "|---|---|---|"]
        lines += [f"| {k} | {v['train_s'] / 3600:.2f} | {v['hours']:.2f} |" for k, v in proj["rows"].items()]
    if report["errors"]:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in report["errors"].items())]
    lines += ["", f"Whole script: {report.get('total_s', 0):.0f} s."]
    return "\n".join(lines)
