"""The projection and the markdown of ``bench_gpu.py`` (standard library only, like the script's parent process)."""

from __future__ import annotations

from typing import Any

# MVTec AD test images per category (Bergmann et al., CVPR 2019, Table 1): 1,725 in all.
MVTEC_TEST_IMAGES = {
    "bottle": 83, "cable": 150, "capsule": 132, "carpet": 117, "grid": 78, "hazelnut": 110, "leather": 124,
    "metal_nut": 115, "pill": 167, "screw": 160, "tile": 117, "toothbrush": 42, "transistor": 100, "wood": 79,
    "zipper": 151,
}  # fmt: skip

# What the projection leaves out, printed under it.
ASSUMPTIONS = (
    "training at the measured compute-only rates (device-resident random batches), except the real-loader rows",
    "evaluation at the measured rate of the model plus the metrics on the GPU (random images; the test loader's PNG "
    "decode, picture panels and result files not counted)",
    "per category one process start-up as measured for each section here (imports, CUDA, model build); data "
    "indexing and checks, foreground masks, the first epoch's PNG decode into the pixel cache, checkpoints "
    "(every 1000 iterations) and logging not counted",
    "the compiled row adds its measured compile warm-up once per category (an upper bound: the inductor cache makes "
    "later categories cheaper)",
)


def _rate(section: dict[str, Any] | None) -> float | None:
    if not section:
        return None
    return section.get("train", section).get("iterations_per_s")


def starved(section: dict[str, Any]) -> bool:
    """A loader row measured on too few batches per epoch for its workers (each epoch boundary drains the queue and
    some workers get no batch): not a rate to project."""
    return section["batches_per_epoch"] < 2 * section["workers"]


def training_rates(report: dict[str, Any]) -> dict[str, float]:
    """Training iterations/s per setting found in the report (the loader rows that are not starved, each)."""
    sections = report["sections"]
    rates = {"authors' settings": _rate(sections.get("train_authors")),
             "defaults": _rate(sections.get("train_default")),
             "defaults + compile": _rate(sections.get("train_compile"))}
    for key, section in sections.items():
        if key.startswith("loader_") and not starved(section):
            rates[f"defaults, real loader ({section['workers']} workers)"] = _rate(section)
    return {k: v for k, v in rates.items() if v}


def projection(report: dict[str, Any], budgets: dict[str, int], periodic_every: int = 250) -> dict[str, Any]:
    """Wall time of the MVTec AD protocol (15 categories, one process each) at the measured rates, under the two
    evaluation protocols: final evaluation only (the default ``eval.every_n_steps=0``) and ``experiment=paper``
    (a test-set evaluation every ``periodic_every`` iterations, then the final one)."""
    iterations = sum(budgets.values())
    final_images = sum(MVTEC_TEST_IMAGES.get(c, 0) for c in budgets)
    paper_images = sum(MVTEC_TEST_IMAGES.get(c, 0) * (steps // periodic_every + 1) for c, steps in budgets.items())
    ev = report["sections"].get("eval")
    per_image = (ev["model_s"] + ev["metrics_device_s"]) / ev["images"] if ev else None
    env = report.get("environment", {})
    startup_s = len(budgets) * float(env.get("child_s", 0.0))
    compiled = report["sections"].get("train_compile")
    rows = {}
    for name, rate in training_rates(report).items():
        extra = 0.0
        if name == "defaults + compile" and compiled:
            extra = len(budgets) * max(0.0, compiled["wall_s"] - compiled["timed_iterations"] / rate)
        train_s = iterations / rate
        base = train_s + startup_s + extra
        rows[name] = {"train_s": train_s,
                      "final_only_h": (base + final_images * (per_image or 0.0)) / 3600,
                      "paper_h": (base + paper_images * (per_image or 0.0)) / 3600}
    return {"categories": len(budgets), "iterations": iterations, "test_images_final_only": final_images,
            "test_images_paper": paper_images, "periodic_every": periodic_every, "eval_s_per_image": per_image,
            "startup_s": startup_s, "evaluation_counted": per_image is not None, "rows": rows,
            "assumptions": list(ASSUMPTIONS)}


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def mode_label(section: dict[str, Any]) -> str:
    """What a training section ran with, from its recorded settings and what was observed in the step."""
    s, seen = section.get("settings", {}), section.get("observed", {})
    parts = [s.get("precision", "?")]
    if seen.get("first_conv_output_dtype"):
        parts[0] += f" (convs ran {seen['first_conv_output_dtype']})"
    parts.append("channels-last" if seen.get("first_conv_input_channels_last", s.get("channels_last"))
                 else "contiguous")
    parts.append("batched eval forwards" if s.get("batched_eval_forwards") else "separate forwards")
    fused = seen.get("adam_fused", [s.get("fused_adam")])
    parts.append("fused Adam" if all(fused) else "default Adam")
    if s.get("cudnn_deterministic"):
        parts.append("cudnn deterministic")
    if s.get("benchmark"):
        parts.append("cudnn.benchmark")
    if section.get("compile"):
        parts.append(f"torch.compile ({section['compile']})")
    return ", ".join(parts)


def _environment_lines(report: dict[str, Any]) -> list[str]:
    env, source = report.get("environment", {}), report.get("source", {})
    what = f"{env['gpu']}, driver {env.get('driver', '?')}" if env.get("gpu") else "no GPU used"
    head = (f"{env.get('date_utc', '?')}: {what}; torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN "
            f"{env.get('cudnn')}), lightning {env.get('lightning')}, timm "
            f"{env.get('timm')}, torchmetrics {env.get('torchmetrics')}, Python {env.get('python')}; CPU "
            f"{env.get('cpu')} ({env.get('cpus')} cores); commit {source.get('commit')}"
            f"{' (with uncommitted changes)' if source.get('dirty') else ''} ({source.get('from', '?')}).")
    lines = [head]
    if env.get("max_sm_clock_mhz"):
        lines.append(f"NVML: max SM clock {env['max_sm_clock_mhz']} MHz, memory {env.get('max_memory_clock_mhz')} "
                     f"MHz, power limit {_f(env.get('power_limit_w'))} W, persistence mode "
                     f"{env.get('persistence_mode')}.")
    if env.get("gpu"):
        lines.append(f"TF32: cuDNN convolutions {'allowed' if env.get('cudnn_allow_tf32') else 'not allowed'}, fp32 "
                     f"matmuls {'allowed' if env.get('matmul_allow_tf32') else 'not allowed'} (torch's defaults, left "
                     "as they are in every row: the authors' \"fp32\" row too runs its convolutions in TF32 where "
                     "allowed, as under the authors' torch 2.0, whose defaults were the same).")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown (what docs/performance.md quotes)."""
    args, sections = report["args"], report["sections"]
    lines = [f"### {report.get('environment', {}).get('gpu') or report['name']}: {args['backbone']} {args['size']}² "
             f"batch {args['batch']}, injection {args['injection']}, random weights", "",
             *_environment_lines(report), "",
             f"Each training row: {args['warmup']} warm-up + up to {args['iters']} timed iterations (at most "
             f"{_f(args['cap_s'])} s), synchronised after each; each section in its own process.", "",
             "| measurement | ran with | iterations/s | images/s | median ms/iteration | peak GiB | SM MHz (max) "
             "| note |", "|---|---|---|---|---|---|---|---|"]
    rows = [("train_authors", "train, authors' settings"), ("train_default", "train, defaults"),
            ("train_compile", "train, defaults + torch.compile")]
    rows += [(k, f"train, defaults, real loader ({sections[k]['workers']} workers)") for k in sections
             if k.startswith("loader_")]
    for key, label in rows:
        section = sections.get(key)
        if section is None:
            why = report["errors"].get(key) or report.get("skipped", {}).get(key) or "not run"
            lines.append(f"| {label} | — | — | — | — | — | — | {why.splitlines()[0]} |")
            continue
        train, note = section.get("train", section), ""
        if key == "train_compile":
            untimed = train["wall_s"] - train["timed_iterations"] / train["iterations_per_s"]
            note = f"set-up + {args['warmup']} warm-up iterations incl. compile: {_f(untimed)} s"
        if key.startswith("loader_"):
            only = section["loader_only"]
            rate = only.get("samples_per_s")
            note = (f"loader alone, warm image cache (the 2,048 procedural textures are still being generated on "
                    f"first draw, which a long run does once: pessimistic): {_f(rate)} samples/s "
                    f"({only['warm_epochs']} epochs); first epoch "
                    f"(PNG decode into the pixel cache) {_f(only['first_epoch_s'])} s; {section['train_images']} "
                    f"PNGs of {section['image_side']}², {section['batches_per_epoch']} batches per epoch")
            if starved(section):
                note += "; too few batches per epoch for the workers: not projected"
        clocks = section.get("gpu_clocks", {}).get("sm_clock_mhz", {}).get("max")
        lines.append(f"| {label} | {mode_label(train)} | {_f(train['iterations_per_s'])} | "
                     f"{_f(train['images_per_s'])} | {_f(train['median_ms'])} | {_f(train.get('peak_memory_gib'))} | "
                     f"{_f(clocks, 4)} | {note} |")
    ev = sections.get("eval")
    if ev:
        lines.append(f"| evaluation: the model (maps + blur + score, fp32), {ev['images']} images | "
                     f"{'channels-last' if ev['settings']['channels_last'] else 'contiguous'} | — | "
                     f"{_f(ev['images_per_s'])} | — | {_f(ev.get('peak_memory_gib'))} | "
                     f"{_f(ev.get('gpu_clocks', {}).get('sm_clock_mhz', {}).get('max'), 4)} | metrics on the device: "
                     f"{_f(ev['metrics_images_per_s'])} images/s; device-to-host copy of maps and scores (not in the "
                     f"rates): {_f(ev['device_to_host_s'])} s for {_f(ev['device_to_host_mb'])} MB; device vs CPU "
                     f"metrics: max abs diff {ev['max_abs_diff']:.2g}, equal to 1e-6: "
                     f"{'yes' if ev['equal_1e-6'] else 'NO'} |")
    else:
        why = report["errors"].get("eval") or report.get("skipped", {}).get("eval") or "not run"
        lines.append(f"| evaluation | — | — | — | — | — | — | {why.splitlines()[0]} |")
    rates = training_rates(report)
    base = rates.get("authors' settings")
    if base:
        ratios = ", ".join(f"{k} {v / base:.2f}x" for k, v in rates.items() if k != "authors' settings")
        lines += ["", f"Throughput relative to the authors' settings: {ratios or '—'}."]
    proj = report.get("projection")
    if proj and proj["rows"]:
        lines += ["", f"Projected MVTec AD protocol: {proj['categories']} categories, {proj['iterations']:,} "
                      f"iterations; evaluation of {proj['test_images_final_only']:,} test images (final only, the "
                      f"default) or {proj['test_images_paper']:,} (`experiment=paper`: every "
                      f"{proj['periodic_every']} iterations and at the end)"
                      f"{'' if proj['evaluation_counted'] else ' — evaluation NOT measured, not included'}; "
                      f"start-up {proj['startup_s']:.0f} s in all.", "",
                  "| training settings | training h | total h, final evaluation only | total h, `experiment=paper` |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['train_s'] / 3600:.2f} | {v['final_only_h']:.2f} | {v['paper_h']:.2f} |"
                  for k, v in proj["rows"].items()]
        lines += ["", "Assumptions: " + "; ".join(proj["assumptions"]) + "."]
    problems = {**report.get("skipped", {}), **report["errors"]}
    if problems:
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v.splitlines()[0]}" for k, v in problems.items())]
    if report.get("stopped"):
        lines += ["", f"Stopped early: {report['stopped']}."]
    lines += ["", f"Whole script: {report.get('total_s', 0):.0f} s of a {_f(args['budget_s'])} s budget."]
    return "\n".join(lines)
