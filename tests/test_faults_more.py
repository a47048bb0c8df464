"""The fault suite, continued: more bad inputs and interruptions a careful user meets, each one line and nothing lost.

Same style as ``tests/test_faults.py`` (whose helpers it uses): the command line's exit code, its one line, no
traceback, and every file that existed before unchanged. Tests that train longer are marked ``slow``.
"""

import csv
import json
import logging
import math
import os
import re
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image
from tests.test_faults import (
    SMALL,
    _point_lightning_at_this_stderr,
    _tiny_checkpoint,
    run_cli,
    run_cli_output,
    snapshot,
)

from urd_lightning.__main__ import main

# --- silent wrong results: a resume with loader workers continues exactly where the checkpoint stopped ---------------


def _weights_and_final(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    return {k: v for k, v in state.items() if k.startswith("model.")}, final


def test_resume_with_a_loader_worker_mid_epoch_equals_the_uninterrupted_run(mvtec_root, tmp_path):
    # 6 training images in batches of 2: 3 iterations an epoch. The resume starts inside epoch 0 (after iteration 1)
    # and runs into epoch 1, with one loader worker (which takes its first indices before training starts).
    argv = ["train", f"data.root={mvtec_root}", *SMALL, "data.num_workers=1", "checkpoint_every_n_steps=1", "run=r"]
    assert main([*argv, f"output_dir={tmp_path / 'straight'}", "trainer.max_steps=4"]) == 0
    assert main([*argv, f"output_dir={tmp_path / 'resumed'}", "trainer.max_steps=1"]) == 0
    assert main([*argv, f"output_dir={tmp_path / 'resumed'}", "trainer.max_steps=4", "resume=last"]) == 0
    straight, straight_final = _weights_and_final(next((tmp_path / "straight").rglob("r")))
    resumed, resumed_final = _weights_and_final(next((tmp_path / "resumed").rglob("r")))
    assert straight.keys() == resumed.keys()
    differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not differing, f"{len(differing)} tensors differ, first {differing[:3]}"
    assert json.dumps(straight_final, sort_keys=True) == json.dumps(resumed_final, sort_keys=True)  # NaN-safe


# --- SIGTERM (kill, a container stop, SLURM without --signal): a checkpoint, one line, exit 143 -----------------------

class _SigtermDuring(Callback):
    """Sends SIGTERM to this process while iteration ``at`` runs, as ``kill`` or a scheduler would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.iteration == self.at - 1:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("under_slurm", [False, True])
def test_sigterm_saves_at_the_iteration_and_exits_143_with_the_continue_command(mvtec_root, tmp_path, capsys,
                                                                                monkeypatch, under_slurm):
    from urd_lightning.training import train as train_command

    if under_slurm:  # srun's variables for a one-task job, and an scontrol that records any call
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{bin_dir}/scontrol.log"\n')
        (bin_dir / "scontrol").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        for key, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0",
                           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": "1",
                           "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "urd"}.items():
            monkeypatch.setenv(key, value)
    whole = train_command.train
    monkeypatch.setattr(train_command, "train", lambda cfg: whole(cfg, callbacks=[_SigtermDuring(1)]))
    before = snapshot(mvtec_root)
    out = tmp_path / "out"
    _point_lightning_at_this_stderr()
    code = main(["train", f"data.root={mvtec_root}", f"output_dir={out}", *SMALL, "trainer.max_steps=5",
                 "checkpoint_every_n_steps=100", "run=r"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    lines = [line for line in captured.err.splitlines() if line.startswith("terminated:")]
    assert code == 143 and len(lines) == 1, captured.err[-3000:]
    run_dir = out / "mvtec" / "bottle" / "r"
    saved = run_dir / "hpc_ckpt_1.ckpt" if under_slurm else run_dir / "checkpoints" / "last.ckpt"
    assert lines[0].startswith("terminated: training stopped after iteration 1 (SIGTERM): the last checkpoint is "
                               f"{saved} (iteration 1); continue with: python -m urd_lightning train data.root=")
    assert lines[0].endswith(" resume=auto" if under_slurm else " resume=last")
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == 2  # iteration 1, whole
    assert not (run_dir / "metrics.json").exists() and snapshot(mvtec_root) == before
    assert not (tmp_path / "bin" / "scontrol.log").exists()  # SIGTERM is not the requeue signal: nothing requeued


# --- predict: its own output folder is never an input; an earlier prediction is kept or replaced as a whole ----------

def _images(folder: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / name)


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_skips_its_output_folder_and_keeps_an_earlier_prediction_whole(tmp_path, capsys):
    inputs, ckpt = tmp_path / "in", _tiny_checkpoint(tmp_path)
    _images(inputs, ["a.png", "b.png"])
    out = inputs / "out"  # the output inside the input folder
    common = ("predict", f"ckpt={ckpt}", f"output={out}", "threshold=0.5", "progress=false")
    assert run_cli(capsys, *common, f"input={inputs}") == (0, "")
    assert run_cli(capsys, *common, f"input={inputs}", "overwrite=true") == (0, "")  # its own overlays not scored
    assert len(_rows(out)) == 2 and not (out / "overlays" / "out").exists()
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, *common, f"input={inputs / 'a.png'}")  # fewer inputs, same output
    assert code == 2 and f"output {out} already holds a prediction" in line and "overwrite=true" in line
    assert snapshot(tmp_path) == before
    assert run_cli(capsys, *common, f"input={inputs / 'a.png'}", "overwrite=true") == (0, "")
    rows = _rows(out)
    assert len(rows) == 1 and sorted(p.name for p in (out / "overlays").rglob("*.png")) == ["a.png"]
    assert len(json.loads((out / "results.json").read_text())["images"]) == 1


# --- NaN: a NaN threshold is refused; metrics.json is strict JSON (null, and why) ------------------------------------

@pytest.mark.parametrize("key", ["threshold", "pixel_threshold"])
def test_predict_refuses_a_nan_threshold(tmp_path, capsys, key):
    _images(tmp_path / "in", ["a.png"])
    extra = () if key == "threshold" else ("threshold=0.5",)
    code, line = run_cli(capsys, "predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={tmp_path / 'in'}",
                         f"output={tmp_path / 'out'}", f"{key}=nan", *extra, "progress=false")
    assert code == 2 and f"{key}=nan is not a finite number" in line and not (tmp_path / "out").exists()


def test_metrics_json_writes_null_for_an_undefined_metric_and_says_why(tmp_path):
    from urd_lightning.benchmark.records import read_run
    from urd_lightning.run.folder import RunFolder
    from urd_lightning.training.results import write_metrics

    payload = {"dataset": "mvtec", "category": "bottle", "run": "r", "injection": "gii",
               "final": {"image_AUROC": float("nan"), "pixel_AUROC": 0.75}, "durations": {}, "steps": 1}
    path = write_metrics(RunFolder(tmp_path), payload)

    def refuse(token):
        raise ValueError(f"bare {token} in {path}")

    strict = json.loads(path.read_text(), parse_constant=refuse)  # what a strict reader (JS, jq, Go) accepts
    assert strict["final"] == {"image_AUROC": None, "pixel_AUROC": 0.75} and "undefined" in strict["null"]
    final = read_run(tmp_path).metrics["final"]  # the report reads NaN back
    assert math.isnan(final["image_AUROC"]) and final["pixel_AUROC"] == 0.75


# --- folder benchmark: normal_split_ratio holds out that share of the normal images ---------------------------------

@pytest.mark.parametrize(("ratio", "held"), [(0.2, 1), (0.4, 2), (0.6, 3), (0.8, 4)])
def test_folder_split_ratio_holds_out_that_share(tmp_path, ratio, held):
    from urd_lightning.data.benchmarks import index_folder

    _images(tmp_path / "good", [f"{i}.png" for i in range(5)])
    train = index_folder(tmp_path, "c", "train", normal_split_ratio=ratio)
    test = index_folder(tmp_path, "c", "test", normal_split_ratio=ratio)
    assert (len(train), len(test)) == (5 - held, held)
    assert not {s.image_path for s in train} & {s.image_path for s in test}


def test_folder_split_ratio_one_leaves_nothing_to_train_on_and_says_so(tmp_path):
    from urd_lightning.data.benchmarks import index_folder
    from urd_lightning.errors import DataError

    _images(tmp_path / "good", [f"{i}.png" for i in range(5)])
    assert len(index_folder(tmp_path, "custom", "test", normal_split_ratio=1.0)) == 5
    with pytest.raises(DataError, match=r"data.normal_split_ratio=1.0 holds out all 5 normal images .* none is left"):
        index_folder(tmp_path, "custom", "train", normal_split_ratio=1.0)


# --- decompression bombs: an image declaring more pixels than the limit is refused before it is decoded -------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` grey pixels (signature, IHDR, IEND): what a bomb's header says."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_predict_refuses_a_decompression_bomb_with_one_line_and_the_limit_is_configurable(tmp_path, capsys,
                                                                                          monkeypatch, caplog):
    inputs = tmp_path / "in"
    _images(inputs, ["small.png"])
    (inputs / "bomb.png").write_bytes(_png_header(20000, 20000))  # 400 million pixels, 57 bytes
    common = ("predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={inputs}", "threshold=0.5", "progress=false")
    with caplog.at_level(logging.WARNING):
        assert run_cli(capsys, *common, f"output={tmp_path / 'a'}") == (0, "")
    rows = {Path(r["image_path"]).name: r for r in _rows(tmp_path / "a")}
    assert rows["small.png"]["status"] == "ok" and rows["bomb.png"]["status"] == "unreadable"
    error = rows["bomb.png"]["error"]
    assert "decompression bomb guard" in error and "URD_MAX_IMAGE_PIXELS" in error
    monkeypatch.setenv("URD_MAX_IMAGE_PIXELS", "1000")  # below the small image's 40 x 48
    assert run_cli(capsys, *common, f"output={tmp_path / 'b'}") == (1, "")  # every image refused: exit 1
    assert "1,920 pixels, above the limit of 1,000" in _rows(tmp_path / "b")[1]["error"]


# --- resume= a checkpoint of another network: one line before anything is built, no run folder left ---------------

def test_resume_from_a_checkpoint_of_another_network_is_one_line_before_anything_is_built(mvtec_root, tmp_path, capsys):
    ckpt = tmp_path / "other.ckpt"
    extras = {"model": {"backbone": "resnet18", "injection": "concat", "expert": True, "train_teacher": True},
              "image_size": 32, "dataset": "mvtec", "category": "bottle"}
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "urd_lightning": extras, "loops": {}, "global_step": 2},
               ckpt)
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                         f"resume={ckpt}", "model.injection=gii")
    assert code == 2 and "was trained with another network (model.injection=concat in the checkpoint, gii here)" in line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


# --- a 0-byte DTD image stops at set-up with one line, not in a loader worker ---------------------------------------

def test_an_empty_dtd_image_is_one_line_at_set_up(tmp_path):
    from urd_lightning.data.synthesis import DTDTextures
    from urd_lightning.errors import DataError

    _images(tmp_path / "dtd" / "images" / "banded", ["ok.jpg"])
    (tmp_path / "dtd" / "images" / "banded" / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 empty \(0-byte\) DTD image\(s\) .*empty.jpg: delete them"):
        DTDTextures(tmp_path / "dtd")


def test_an_empty_dtd_image_stops_training_with_one_line_that_data_check_agrees_with(mvtec_root, tmp_path, capsys):
    dtd = tmp_path / "dtd"
    _images(dtd / "images" / "banded", ["ok.jpg", "more.jpg"])
    (dtd / "images" / "banded" / "empty.jpg").write_bytes(b"")  # an interrupted copy
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                         "data.num_workers=1", "data.textures=dtd", f"data.dtd_root={dtd}", "run=r")  # in a worker
    assert code == 2 and "1 empty (0-byte) DTD image(s)" in line and "data check dtd" in line
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before and not list((tmp_path / "out").rglob("*.ckpt"))
    code, _, out = run_cli_output(capsys, "data", "check", "dtd", f"root={dtd}")  # the check the line points to
    assert code == 1 and "empty.jpg" in out


# --- export: a folder as output stops before the work; a full disk is one line whatever the writer ------------------

def test_export_to_a_folder_is_refused_before_the_work(tmp_path, capsys, monkeypatch):
    from urd_lightning.deploy import export
    from urd_lightning.errors import ConfigError

    (tmp_path / "models").mkdir()
    ckpt = _tiny_checkpoint(tmp_path)
    before = snapshot(tmp_path)
    started = []  # the work: reading the checkpoint into a model (graph formats) or into a weights file

    def work(name):
        def begin(*args, **kwargs):
            started.append(name)
            raise ConfigError(f"{name} started")  # stands in for the seconds of work a refusal must precede
        return begin

    monkeypatch.setattr(export, "load_model", work("load_model"))
    monkeypatch.setattr(export, "save_weights", work("save_weights"))
    for fmt in ("onnx", "torchscript", "weights"):
        code, line = run_cli(capsys, "export", f"ckpt={ckpt}", f"format={fmt}", f"output={tmp_path / 'models'}")
        assert code == 2 and f"output={tmp_path / 'models'} is a folder; give a file name" in line
    assert started == [] and snapshot(tmp_path) == before and not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("fmt", ["weights", "torchscript"])
def test_full_disk_during_weights_or_torchscript_export_is_one_line(tmp_path, capsys, monkeypatch, fmt):
    import errno

    ckpt = _tiny_checkpoint(tmp_path)
    before = snapshot(tmp_path)
    if fmt == "weights":  # safetensors wraps the OS error in its own SafetensorError
        from safetensors import SafetensorError

        from urd_lightning import checkpoint_io

        def full_safetensors(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"x" * 100)
            raise SafetensorError("Error while serializing: No space left on device (os error 28)")

        monkeypatch.setattr(checkpoint_io, "save_file", full_safetensors)
    else:  # the serialised model goes to disk through a Python write, which fails with ENOSPC
        real = Path.write_bytes

        def full(self, data):
            if len(data) > 10_000:
                real(self, data[:1000])
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", full)
    code, line = run_cli(capsys, "export", f"ckpt={ckpt}", f"format={fmt}", f"output={tmp_path / 'model.out'}")
    # No size rounded to nothing ("about 0.0 MB needed"); a free space such as 35670.0 MB is fine.
    assert code == 2 and "no space left on the disk while writing" in line and not re.search(r"(?<![\d.])0\.0 MB", line)
    assert snapshot(tmp_path) == before  # no half-written model, no hidden temporary file


# --- wordings ---------------------------------------------------------------------------------------------------------

def test_disk_full_line_gives_a_small_size_in_kb_not_zero_mb(tmp_path):
    import errno

    from urd_lightning.files import disk_error

    line = str(disk_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "m.json", needed=2300))
    assert "about 2.2 KB needed" in line


def test_resume_given_a_folder_says_it_is_a_folder(tmp_path):
    from urd_lightning.errors import CheckpointError
    from urd_lightning.run.folder import RunFolder
    from urd_lightning.training.preemption import resume_path

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"is a folder, not a checkpoint file: .* it holds .*last.ckpt"):
        resume_path(str(tmp_path / "run"), RunFolder(tmp_path))


def test_data_download_folder_says_there_is_nothing_to_download(tmp_path, capsys):
    code, line = run_cli(capsys, "data", "download", "folder", "--root", str(tmp_path / "mine"))
    assert code == 2 and "your own images: there is nothing to download" in line and "Get it from" not in line


def test_nan_advice_suggests_full_precision_only_to_a_reduced_precision_run():
    from types import SimpleNamespace

    from urd_lightning.training.module import URDModule

    advice = {p: URDModule._nan_advice(SimpleNamespace(_trainer=SimpleNamespace(precision=p)))
              for p in ("32-true", "bf16-mixed")}
    assert "32-true" not in advice["32-true"] and "full precision already" in advice["32-true"]
    assert "trainer.precision=32-true (this run used bf16-mixed)" in advice["bf16-mixed"]


def test_no_threshold_advice_does_not_suggest_a_probability(tmp_path, capsys):
    _images(tmp_path / "in", ["a.png"])
    code, line = run_cli(capsys, "predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={tmp_path / 'in'}",
                         f"output={tmp_path / 'out'}", "progress=false")
    assert code == 2 and "stores no thresholds" in line and "threshold=0.5" not in line and "raw_score" in line


def test_predict_lists_a_dangling_symlink_instead_of_skipping_it_silently(tmp_path, capsys):
    _images(tmp_path / "in", ["a.png"])
    (tmp_path / "in" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    assert run_cli(capsys, "predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={tmp_path / 'in'}",
                   f"output={tmp_path / 'out'}", "threshold=0.5", "progress=false") == (0, "")
    rows = {Path(r["image_path"]).name: r for r in _rows(tmp_path / "out")}
    assert rows["a.png"]["status"] == "ok" and rows["gone.png"]["status"] == "unreadable"
    assert "broken symbolic link" in rows["gone.png"]["error"]
