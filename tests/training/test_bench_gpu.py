"""experiments/bench_gpu.py in its --smoke mode: every section runs on the CPU and the report is written, so the one
GPU run of `make bench-gpu` cannot fail on something a CPU would have shown."""

import importlib.util
import json
from pathlib import Path

import torch

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SECTIONS = {"train_authors", "train_default", "eval", "loader_0", "train_compile"}


def load_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # bench_gpu imports its sibling bench_gpu_report
    spec = importlib.util.spec_from_file_location("bench_gpu", EXPERIMENTS / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_every_section_records_a_failure_and_writes_the_report(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    real_loader_section = bench.loader_section

    def loader_section(template, args, device, workers, demo_root):
        if workers == 99:
            raise RuntimeError("injected failure")
        return real_loader_section(template, args, device, workers, demo_root)

    monkeypatch.setattr(bench, "loader_section", loader_section)
    report = bench.main(["--smoke", "--out", str(tmp_path), "--workers", "0,99"])
    assert report["errors"] == {"loader_99": "RuntimeError: injected failure"}  # and every other section ran
    assert set(report["sections"]) == SECTIONS
    for key in ("train_authors", "train_default", "train_compile"):
        assert report["sections"][key]["iterations_per_s"] > 0
    assert report["sections"]["train_authors"]["settings"]["batched_eval_forwards"] is False
    assert report["sections"]["train_compile"]["compile"] == "eager"  # ran in the child process
    loader = report["sections"]["loader_0"]
    assert loader["loader_only"]["samples_per_s"] > 0 and loader["train"]["iterations_per_s"] > 0
    assert report["sections"]["eval"]["equal_1e-6"] is True and report["sections"]["eval"]["images_per_s"] > 0
    rows = report["projection"]["rows"]
    assert report["projection"]["iterations"] == 85000  # 13 x 5000 + cable and transistor x 10000 (mvtec.yaml)
    assert set(rows) == {"authors' settings", "defaults", "defaults + compile", "defaults, real loader (best N)"}
    assert json.loads((tmp_path / "gpu-cpu-smoke.json").read_text())["sections"].keys() == SECTIONS
    table = (tmp_path / "gpu-cpu-smoke.md").read_text()
    assert "Projected MVTec AD protocol" in table and "loader_99: RuntimeError: injected failure" in table
    assert not torch.are_deterministic_algorithms_enabled()  # the authors' section does not leak its settings


def test_time_budget_skips_sections_and_still_writes_the_report(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    report = bench.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"])
    assert report["sections"] == {}
    assert set(report["errors"]) >= {"train_authors", "train_default", "eval", "train_compile"}
    assert all(v.startswith("skipped") for k, v in report["errors"].items() if k != "projection")
    assert (tmp_path / "gpu-cpu-smoke.md").is_file()
