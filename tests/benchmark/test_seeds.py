"""Seeds aggregated (``benchmark ... seeds=111,1,2``, ``report``): mean ± std and n, never across configs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest

from urd_lightning.benchmark import runner as benchmark
from urd_lightning.benchmark.report import main as report_main
from urd_lightning.benchmark.runner import Job
from urd_lightning.benchmark.seeds import parse_seeds
from urd_lightning.config import to_yaml
from urd_lightning.errors import ConfigError

# (injection, seed) -> the image AUROC each category's fake run reports; the two configs differ by far more than the
# seeds, so an average over both would show.
VALUES = {("gii", 111): 0.90, ("gii", 1): 0.80, ("concat", 111): 0.30, ("concat", 1): 0.40}


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch):
    trained: list[tuple[str, str]] = []

    def fake(job: Job) -> str:
        trained.append((job.category, str(job.cfg.run)))
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "config.yaml").write_text(to_yaml(job.cfg))
        value = VALUES[(job.cfg.model.injection, int(job.cfg.seed))] + (0.05 if job.category == "cable" else 0.0)
        final = {"image_AUROC": value, "pixel_AUROC": value, "pixel_AUPRO": value, "pixel_AUPRO_per_image": value}
        oracle = {k: v + 0.01 for k, v in final.items()}
        payload = {"dataset": job.cfg.dataset, "category": job.category, "run": str(job.cfg.run), "final": final,
                   "oracle": oracle}
        (job.run_dir / "metrics.json").write_text(json.dumps(payload))
        return ""

    monkeypatch.setattr(benchmark, "_run_in_process", fake)
    return trained


def run(tmp_path: Path, injection: str) -> int:
    return benchmark.main(["dataset=mvtec", f"output_dir={tmp_path}", f"model.injection={injection}",
                           "seeds=111,1", "--categories", "bottle,cable", "--in-process", "--no-plots"])


def rows(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with open(path, newline="") as handle:
        return {(r["category"], r["section"], r["metric"]): r for r in csv.DictReader(handle)}


def test_two_configs_two_seeds_each_aggregate_apart(tmp_path: Path, fake_train):
    assert run(tmp_path, "gii") == 0 and run(tmp_path, "concat") == 0
    runs = {r for _, r in fake_train}
    assert len(fake_train) == 8 and len(runs) == 4 and all(r.endswith(("-s111", "-s1")) for r in runs)
    assert run(tmp_path, "gii") == 0 and len(fake_train) == 8  # resumable: every (category, seed) is done
    reports = tmp_path / "mvtec" / "_reports"
    for path in list(reports.glob("*-seeds")):  # the report command writes them again from the results alone
        for file in path.iterdir():
            file.unlink()
    assert report_main([str(tmp_path / "mvtec")]) == 0
    groups = sorted(reports.glob("*-seeds"))
    assert len(groups) == 2  # one per config, never one over all four runs
    by_injection = {}
    for group in groups:
        table = rows(group / "seeds.csv")
        high = float(table[("bottle", "final", "image_AUROC")]["mean"]) > 0.5
        by_injection["gii" if high else "concat"] = (group, table)
    (gii_dir, gii), (_, concat) = by_injection["gii"], by_injection["concat"]
    bottle = gii[("bottle", "final", "image_AUROC")]
    assert float(bottle["mean"]) == pytest.approx(0.85) and int(bottle["n"]) == 2
    assert float(bottle["std"]) == pytest.approx(statistics.stdev([0.90, 0.80]))
    overall = gii[("mean", "final", "image_AUROC")]  # the seeds' category means: 0.925 and 0.825
    assert float(overall["mean"]) == pytest.approx(0.875) and float(overall["std"]) == pytest.approx(
        statistics.stdev([0.925, 0.825]))
    assert float(gii[("cable", "oracle", "pixel_AUROC")]["mean"]) == pytest.approx(0.91)  # (0.96 + 0.86) / 2
    assert float(concat[("bottle", "final", "image_AUROC")]["mean"]) == pytest.approx(0.35)
    markdown = (gii_dir / "seeds.md").read_text()
    assert "| bottle | 85.0 ± 7.1 |" in markdown and "| paper | 99.2 |" in markdown and "## oracle" in markdown
    latex = (gii_dir / "seeds.tex").read_text()
    assert r"\toprule" in latex and r"\midrule" in latex and r"\bottomrule" in latex
    assert r"bottle & $85.0 \pm 7.1$" in latex
    assert (gii_dir / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # No DTD here, so the fake runs trained on procedural textures: both tables say so, the PDF's included.
    assert "not comparable with the paper" in markdown and r"\multicolumn{7}{l}{\footnotesize Trained" in latex


def test_runs_on_the_papers_textures_get_no_procedural_note():
    from urd_lightning.benchmark.records import RunRecord
    from urd_lightning.benchmark.seeds import aggregate, latex, markdown, procedural

    final = {"image_AUROC": 0.9, "pixel_AUROC": 0.9, "pixel_AUPRO": 0.9, "pixel_AUPRO_per_image": 0.9}
    records = [RunRecord("mvtec", "bottle", f"r-s{seed}", "done", None,
                         {"final": final, "texture_source": textures}, {"seed": seed})
               for seed, textures in ((111, "dtd"), (1, "dtd"))]
    stats = aggregate(records)
    assert not procedural(records)
    assert "comparable" not in markdown("mvtec", "r-seeds", records, stats)
    assert "comparable" not in latex("mvtec", "r-seeds", stats, procedural(records))


def test_the_seeds_chart_draws_the_means_with_the_std_as_error_bars(tmp_path: Path, fake_train, monkeypatch):
    from matplotlib.axes import Axes

    assert run(tmp_path, "gii") == 0
    drawn = []
    real_bar = Axes.bar

    def spy(self, x, height, *args, yerr=None, **kwargs):
        drawn.append((kwargs.get("label"), list(height), None if yerr is None else list(yerr)))
        return real_bar(self, x, height, *args, yerr=yerr, **kwargs)

    monkeypatch.setattr(Axes, "bar", spy)
    group = next((tmp_path / "mvtec" / "_reports").glob("*-seeds"))
    assert report_main([str(group.parent.parent), f"out={tmp_path / 'out'}"]) == 0
    seeds_bars = {label: (h, e) for label, h, e in drawn if e is not None}  # the per-run bars carry no yerr
    heights, errors = seeds_bars["image AUROC"]  # bottle, cable, mean (percent)
    assert heights == pytest.approx([85.0, 90.0, 87.5])
    assert errors == pytest.approx([100 * statistics.stdev([0.90, 0.80])] * 3)


def test_seeds_are_checked():
    assert parse_seeds("111,1,2") == [111, 1, 2] and parse_seeds("[3, 4]") == [3, 4] and parse_seeds(None) == []
    for bad in ("1,x", "1,1"):
        with pytest.raises(ConfigError, match="seeds="):
            parse_seeds(bad)
