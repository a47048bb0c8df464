"""Report: results tree -> CSV, markdown table beside the paper's means, plots (urd_lightning.benchmark.report)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import pytest

from urd_lightning.benchmark.paper import PAPER_MEANS
from urd_lightning.benchmark.report import (
    RunRecord,
    find_runs,
    group_runs,
    main,
    markdown_table,
    write_csv,
    write_report,
)
from urd_lightning.config.files import order_categories
from urd_lightning.errors import URDError

# MVTec AD in the community order of results tables (five textures, then ten objects): configs/data/mvtec.yaml's
MVTEC_ORDER = ("carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut", "metal_nut",
               "pill", "screw", "toothbrush", "transistor", "zipper")

matplotlib.use("Agg")
METRICS = (
    "image_AUROC", "image_AP", "image_F1Max", "pixel_AUROC", "pixel_AP", "pixel_F1Max", "pixel_AUPRO",
    "pixel_AUPRO_per_image",
)  # fmt: skip


def make_run(root: Path, dataset: str, category: str, run: str, value: float, oracle: bool = False) -> Path:
    """Write a run folder as training does (design.md 'results'), every metric = value (+ a per-metric offset)."""
    run_dir = root / dataset / category / run
    run_dir.mkdir(parents=True)
    final = {m: round(value - 0.001 * i, 6) for i, m in enumerate(METRICS)}
    payload = {
        "dataset": dataset, "category": category, "run": run, "injection": "gii", "final": final,
        "durations": {"train_s": 12.5, "eval_s": 3.0}, "steps": 5000,
    }  # fmt: skip
    if oracle:
        payload["oracle"] = {m: min(1.0, v + 0.01) for m, v in final.items()}
    (run_dir / "metrics.json").write_text(json.dumps(payload))
    (run_dir / "config.yaml").write_text(f"model:\n  injection: gii\n  lr: 0.005\ndata:\n  category: {category}\n")
    return run_dir


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Path:
    for i, cat in enumerate(reversed(MVTEC_ORDER)):  # written in reverse to test the ordering
        make_run(tmp_path, "mvtec", cat, "paper", 0.95 + 0.003 * i)
    return tmp_path


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| category"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_order_categories_textures_first_and_unknown_last():
    shuffled = ["zipper", "bottle", "mystery", "carpet", "wood", "bottle"]
    assert order_categories("mvtec", shuffled) == ["carpet", "wood", "bottle", "zipper", "mystery"]
    assert order_categories("demo", ["b", "a"]) == ["a", "b"]


def test_find_runs_reads_tree_and_skips_report_folders(mvtec_tree: Path):
    make_run(mvtec_tree, "mvtec", "_reports", "paper", 0.5)  # a "_" folder is never a category
    records = find_runs(mvtec_tree)
    assert len(records) == 15
    assert {r.category for r in records} == set(MVTEC_ORDER)
    assert records[0].config["model.injection"] == "gii"
    assert list(group_runs(records)) == [("mvtec", "paper")]


def test_markdown_table_order_mean_paper_and_difference(mvtec_tree: Path):
    records = find_runs(mvtec_tree)
    text = markdown_table("mvtec", "paper", records)
    rows = table_rows(text)
    cats = [name for name in rows if name in MVTEC_ORDER]
    assert cats == list(MVTEC_ORDER)
    mean = sum(r.metrics["final"]["image_AUROC"] for r in records) / len(records)
    assert rows["**mean** (15/15)"][0] == f"{100 * mean:.1f}"
    assert rows["paper mean"][0] == f"{100 * PAPER_MEANS['mvtec']['image_AUROC']:.1f}"
    assert rows["Δ mean − paper"][0] == f"{100 * (mean - PAPER_MEANS['mvtec']['image_AUROC']):+.1f}"
    assert rows["paper mean"][3] == "—"  # the paper has no pooled-protocol AUPRO
    assert "per-image protocol" in text and "best test-set evaluation" in text


def test_markdown_table_lists_missing_and_failed_and_withholds_difference(mvtec_tree: Path):
    records = [r for r in find_runs(mvtec_tree) if r.category not in {"cable", "grid"}]
    records.append(RunRecord("mvtec", "cable", "paper", status="failed", error="exit code 1, see log"))
    text = markdown_table("mvtec", "paper", records, expected=list(MVTEC_ORDER))
    rows = table_rows(text)
    assert "cable (failed)" in rows and "grid (missing)" in rows
    assert "**mean** (13/15)" in rows
    assert "Δ mean − paper" not in rows
    assert "Missing (2): grid, cable" in text and "exit code 1, see log" in text


def test_oracle_row_only_when_periodic_evaluation_ran(tmp_path: Path):
    make_run(tmp_path, "btad", "01", "r", 0.9, oracle=True)
    make_run(tmp_path, "btad", "02", "r", 0.8, oracle=True)
    rows = table_rows(markdown_table("btad", "r", find_runs(tmp_path)))
    assert "oracle mean (best test evaluation)" in rows
    assert float(rows["oracle mean (best test evaluation)"][0]) > float(rows["**mean** (2/2)"][0])
    make_run(tmp_path, "mpdd", "tubes", "r", 0.9)
    text = markdown_table("mpdd", "r", find_runs(tmp_path / "mpdd"))
    assert "oracle" not in text and "publishes no numbers for mpdd" in text


def test_csv_has_metrics_durations_and_flattened_config(mvtec_tree: Path):
    records = find_runs(mvtec_tree)
    records.append(RunRecord("mvtec", "extra", "paper", status="failed", error="boom"))
    path = write_csv(records, mvtec_tree / "out.csv")
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 16
    first = rows[0]
    for column in (*METRICS, "train_s", "eval_s", "steps", "config.model.lr", "config.data.category", "status"):
        assert column in first
    by_cat = {row["category"]: row for row in rows}
    assert float(by_cat["bottle"]["pixel_AUROC"]) == next(
        r.metrics["final"]["pixel_AUROC"] for r in records if r.category == "bottle"
    )
    assert by_cat["extra"]["status"] == "failed" and by_cat["extra"]["error"] == "boom"


def test_runtime_columns_are_the_same_for_old_runs_with_an_execution_block(tmp_path: Path):
    # A run written before metrics.json had one runtime block: speed settings under "execution", runtime without them.
    old = make_run(tmp_path, "btad", "01", "r", 0.9)
    payload = json.loads((old / "metrics.json").read_text())
    payload["execution"] = {"device": "cuda", "precision": "bf16-mixed", "deterministic": False,
                            "cudnn_benchmark": True, "channels_last": True, "compile": False,
                            "batched_eval_forwards": True}
    payload["runtime"] = {"precision": "bf16-mixed", "channels_last": True, "accelerator": "cuda", "processes": 1}
    (old / "metrics.json").write_text(json.dumps(payload))
    new = make_run(tmp_path, "btad", "02", "r", 0.8)
    payload = json.loads((new / "metrics.json").read_text())
    payload["runtime"] = {"precision": "32-true", "channels_last": False, "accelerator": "cpu", "processes": 1,
                          "deterministic": True, "cudnn_benchmark": False, "compile": True,
                          "batched_eval_forwards": False}
    (new / "metrics.json").write_text(json.dumps(payload))
    assert main([str(tmp_path / "btad"), "--no-plots"]) == 0
    with (tmp_path / "btad" / "_reports" / "r" / "results.csv").open() as handle:
        rows = {row["category"]: row for row in csv.DictReader(handle)}
    facts = ("accelerator", "precision", "deterministic", "cudnn_benchmark", "channels_last", "compile",
             "batched_eval_forwards")
    assert [rows["01"][f"config.runtime.{k}"] for k in facts] == ["cuda", "bf16-mixed", "False", "True", "True",
                                                                  "False", "True"]
    assert [rows["02"][f"config.runtime.{k}"] for k in facts] == ["cpu", "32-true", "True", "False", "False", "True",
                                                                  "False"]
    assert not any(column.startswith(("execution", "config.execution")) for column in rows["01"])


def test_write_report_plots_bars_and_curve_sheets(tmp_path: Path):
    import matplotlib.pyplot as plt

    for i, cat in enumerate(("01", "02", "03")):
        run_dir = make_run(tmp_path, "btad", cat, "r", 0.9 + 0.02 * i)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, 1], [0, 1])
        fig.savefig(run_dir / "roc_curve.png")
        plt.close(fig)
    records = find_runs(tmp_path)
    paths = write_report("btad", "r", records, tmp_path / "rep")
    for key in ("csv", "markdown", "bars", "roc_curves"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0
    assert "pro_curves" not in paths  # no run wrote pro_curve.png or curves.json


def test_the_curves_each_run_writes_are_overlaid(tmp_path: Path):
    import torch

    from urd_lightning.run.folder import RunFolder
    from urd_lightning.training.results import curve_record

    for cat in ("01", "02"):
        run_dir = make_run(tmp_path, "btad", cat, "r", 0.9)
        roc = (torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 0.9, 1.0]))
        record = curve_record({"image_roc": roc, "pixel_roc": roc, "pixel_pro": (torch.tensor([0.0, 0.3]),
                                                                                 torch.tensor([0.0, 0.8]))},
                              {"image_AUROC": 0.9, "pixel_AUPRO": 0.5})
        RunFolder(run_dir).curves_data.write_text(json.dumps(record))  # what training writes (results.py)
    paths = write_report("btad", "r", find_runs(tmp_path), tmp_path / "rep")
    assert paths["roc_curves"].is_file() and paths["pro_curves"].is_file() and paths["pixel_roc_curves"].is_file()


def test_main_writes_report_under_dataset_folder(mvtec_tree: Path):
    assert main([str(mvtec_tree / "mvtec"), "--no-plots"]) == 0
    out = mvtec_tree / "mvtec" / "_reports" / "paper"
    assert (out / "results.csv").is_file()
    assert "## URD on mvtec" in (out / "results.md").read_text()


def test_errors_name_the_file(tmp_path: Path):
    with pytest.raises(URDError, match="does not exist"):
        find_runs(tmp_path / "nope")
    bad = tmp_path / "mvtec" / "bottle" / "r"
    bad.mkdir(parents=True)
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(URDError, match="bottle/r/metrics.json"):
        find_runs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(URDError, match="no metrics.json"):
        main([str(tmp_path / "empty")])


def test_main_lists_the_benchmark_categories_that_have_no_results(tmp_path: Path):
    make_run(tmp_path, "btad", "02", "r", 0.9)
    assert main([str(tmp_path / "btad"), "--no-plots"]) == 0
    table = (tmp_path / "btad" / "_reports" / "r" / "results.md").read_text()
    assert "01 (missing)" in table and "03 (missing)" in table and "**mean** (1/3)" in table
    assert "Δ mean − paper" not in table
