"""experiments/bench_gpu.py, the script a borrowed GPU runs once: every section in its --smoke mode on the CPU, with
the defaults' GPU code path as far as a CPU runs it; a run killed mid-way keeps every finished section; the time
budget and a missing dependency end it with what it has."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
SCRIPT = EXPERIMENTS / "bench_gpu.py"
SECTIONS = {"train_authors", "train_default", "eval", "loader_0", "train_compile"}


def load_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # bench_gpu imports its sibling bench_gpu_report
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **extra}


@pytest.mark.slow  # six child processes, each importing torch and Lightning: minutes on a 2-core machine
def test_smoke_runs_every_section_with_the_defaults_gpu_code_path(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    # loader_-1: a section that fails (a negative worker count) is recorded and the next one still runs.
    report = bench.main(["--smoke", "--out", str(tmp_path), "--workers", "0,-1"])
    assert set(report["errors"]) == {"loader_-1"} and "ValueError" in report["errors"]["loader_-1"]
    assert set(report["sections"]) == SECTIONS and report["complete"] is True
    sections = report["sections"]
    for key in ("train_authors", "train_default", "train_compile"):
        assert sections[key]["iterations_per_s"] > 0
    # What the step really ran with, read off the module during the fit: the defaults as on a GPU (bf16 autocast,
    # channels-last, fused Adam) and the authors' (fp32, contiguous, PyTorch's default Adam).
    default, authors = sections["train_default"]["observed"], sections["train_authors"]["observed"]
    assert default["first_conv_output_dtype"] == "bfloat16" and default["first_conv_input_channels_last"] is True
    assert default["adam_fused"] == [True, True] and default["trainer_precision"] == "bf16-mixed"
    assert authors["first_conv_output_dtype"] == "float32" and authors["first_conv_input_channels_last"] is False
    assert authors["adam_fused"] == [False, False] and authors["cudnn_deterministic"] is True
    assert sections["train_authors"]["settings"]["batched_eval_forwards"] is False
    assert sections["train_compile"]["compile"] == "eager"
    loader = sections["loader_0"]
    assert loader["loader_only"]["samples_per_s"] > 0 and loader["train"]["iterations_per_s"] > 0
    assert loader["batches_per_epoch"] == 12  # the generated category: 24 training images, batch 2
    ev = sections["eval"]
    assert ev["equal_1e-6"] is True and ev["images_per_s"] > 0 and ev["settings"]["channels_last"] is True
    assert ev["device_to_host_mb"] > 0  # the copy is timed on its own, outside the model's rate
    proj = report["projection"]
    assert proj["iterations"] == 85000  # 13 x 5000 + cable and transistor x 10000 (mvtec.yaml)
    assert proj["test_images_final_only"] == 1725 and proj["test_images_paper"] > 20 * 1725
    assert set(proj["rows"]) == {"authors' settings", "defaults", "defaults + compile",
                                 "defaults, real loader (0 workers)"}
    assert all(row["paper_h"] > row["final_only_h"] for row in proj["rows"].values())
    written = json.loads((tmp_path / "gpu-cpu-smoke.json").read_text())
    assert set(written["sections"]) == SECTIONS and written["complete"] is True
    table = (tmp_path / "gpu-cpu-smoke.md").read_text()
    assert "bf16-mixed (convs ran bfloat16), channels-last" in table and "32-true (convs ran float32)" in table
    assert "loader_-1: ValueError" in table and "Assumptions:" in table
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_run_killed_after_its_first_section_keeps_it_in_the_json(tmp_path):
    out = tmp_path / "out"
    parent = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--out", str(out),
                               "--sections", "train_authors,eval"], env=script_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report_file = out / "gpu-cpu-smoke.json"
    running = None
    while parent.poll() is None:  # until the first section is in the JSON (the file is replaced atomically)
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        if "train_authors" in report.get("sections", {}) and report.get("running", {}).get("section") == "eval":
            running = report["running"]
            parent.send_signal(signal.SIGKILL)  # as `timeout -s KILL` would
            break
        time.sleep(0.2)
    parent.wait()
    assert parent.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    report = json.loads(report_file.read_text())
    assert report["sections"]["train_authors"]["iterations_per_s"] > 0 and report["complete"] is False
    # The section running at the kill (eval, in its child) died with the parent: it never wrote its result.
    while alive(running["pid"]):
        time.sleep(0.2)
    assert not Path(running["result"]).exists()


def test_a_child_past_its_limit_is_killed_with_its_process_group(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    survived = tmp_path / "survived"
    grandchild = f"import time; time.sleep(120); open({str(survived)!r}, 'w').close()"
    child = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(120)"
    code, _ = bench.run_child([sys.executable, "-c", child], limit_s=2.0)
    assert code is None  # killed, not finished
    while any(alive(pid, grandchild) for pid in os.listdir("/proc") if pid.isdigit()):
        time.sleep(0.2)
    assert not survived.exists()  # the grandchild (a loader worker, a compile worker) went with it


def alive(pid: int | str, command: str = "") -> bool:
    """Whether process ``pid`` runs (not a zombie), with ``command`` in its command line."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state != "Z" and command.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def test_no_budget_left_skips_every_section_and_still_writes_the_report(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    report = bench.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"])
    assert report["sections"] == {} and set(report["skipped"]) == SECTIONS - {"loader_0"} | {"loader_1"}
    assert (tmp_path / "gpu-unknown.json").is_file() and (tmp_path / "gpu-unknown.md").is_file()


def test_a_missing_dependency_is_one_line_that_names_the_fix(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(  # omegaconf absent, as on the GPU machine's Python
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'omegaconf':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n")
    run = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "out")],
                         env=script_env(PYTHONPATH=f"{hide}{os.pathsep}{ROOT / 'src'}"), capture_output=True, text=True)
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("bench-gpu: ModuleNotFoundError: No module named 'omegaconf'") and "bench-gpu-prep" in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machines without CUDA")
def test_no_cuda_outside_smoke_is_one_line_and_an_exit(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--backbone", "resnet18"],
                         env=script_env(), capture_output=True, text=True)
    assert run.returncode == 2 and "no CUDA device" in run.stderr.strip().splitlines()[-1]
    report = json.loads((tmp_path / "gpu-cpu.json").read_text())
    assert report["sections"] == {} and report["environment"]["torch"] == torch.__version__
