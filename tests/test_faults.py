"""The fault suite: bad inputs a careful user tries, each answered by one line and nothing lost.

Every test runs the command line (``urd_lightning.__main__.main``) and asserts the exit code, the one-line
message, that no traceback reached the user, and that every file that existed before is unchanged. Tests that train
are marked ``slow``; the rest run in the default suite.
"""

import csv
import io
import json
import logging
import os
import pickle
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from urd_lightning.__main__ import main
from urd_lightning.data import demo


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what must survive a refused command)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _point_lightning_at_this_stderr() -> None:
    # Lightning gives its loggers a handler bound to sys.stderr when first imported: in-process, that is an earlier
    # test's captured (now closed) stream. A user's process has one stderr; here each test has its own.
    for name in ("", "lightning", "lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:  # not pytest's own capture handlers
                handler.stream = sys.stderr  # (setStream would flush the closed one)


def run_cli_output(capsys, *argv: str) -> tuple[int, str, str]:
    """Exit code, error line and stdout of one command; asserts no traceback reached the user, one error line."""
    _point_lightning_at_this_stderr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, captured.err
    return code, errors[0] if errors else "", captured.out


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and the error line of one command (see :func:`run_cli_output`)."""
    return run_cli_output(capsys, *argv)[:2]


SMALL = ("logger=none", "model.pretrained=false", "model.backbone=resnet18", "data.image_size=32",
         "trainer.max_steps=1", "data.num_workers=0", "data.train_batch_size=2", "trainer.accelerator=cpu",
         "trainer.enable_progress_bar=false")  # a run that starts by mistake stays short


# --- data loss: the demo generator only ever replaces what it wrote ---------------------------------------------------

def _user_tree(root: Path) -> dict[str, bytes]:
    (root / "weave").mkdir(parents=True)
    (root / "weave" / "thesis.txt").write_text("three years of work\n")
    (root / "disc" / "train" / "good").mkdir(parents=True)
    (root / "disc" / "train" / "good" / "000.png").write_bytes(b"my own image")
    return snapshot(root)


def test_demo_refuses_a_users_folders_and_touches_nothing(tmp_path, capsys):
    before = _user_tree(tmp_path)
    code, line = run_cli(capsys, "data", "demo", "--root", str(tmp_path))
    assert code == 2 and "refusing to write the demo dataset" in line and "weave" in line
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["disc", "weave"]


def test_train_on_demo_refuses_a_users_folders(tmp_path, capsys):
    data = tmp_path / "data"
    before = _user_tree(data)
    code, line = run_cli(capsys, "train", "dataset=demo", f"data.root={data}", f"output_dir={tmp_path / 'out'}",
                         *SMALL)
    assert code == 2 and "refusing to write the demo dataset" in line
    assert snapshot(data) == before and not (tmp_path / "out").exists()


def test_demo_with_a_stamp_still_refuses_foreign_files(tmp_path, capsys):
    root = tmp_path / "demo"
    assert run_cli(capsys, "data", "demo", "--root", str(root))[0] == 0
    (root / demo.STAMP).write_text("an older generator\n")  # outdated: the generator wants to rewrite it
    (root / "weave" / "test" / "good" / "notes.txt").write_text("mine")
    before = snapshot(root)
    code, line = run_cli(capsys, "data", "demo", "--root", str(root))
    assert code == 2 and "notes.txt" in line and snapshot(root) == before


def test_demo_replaces_its_own_outdated_tree_and_keeps_other_folders(tmp_path, capsys):
    root = tmp_path / "demo"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "keep.txt").write_text("mine")
    assert run_cli(capsys, "data", "demo", "--root", str(root))[0] == 0
    (root / demo.STAMP).write_text("an older generator\n")
    (root / "weave" / "train" / "good" / "000.png").unlink()
    assert run_cli(capsys, "data", "demo", "--root", str(root))[0] == 0
    assert (root / "weave" / "train" / "good" / "000.png").is_file() and (root / "mine" / "keep.txt").is_file()
    assert sorted(p.name for p in root.iterdir()) == [demo.STAMP, "disc", "mine", "weave"]  # no temporary left


# --- raw tracebacks: invalid values stop at config load, naming key, value and range; no run folder is left ---------

@pytest.mark.parametrize(("override", "shown"), [
    ("optim.lr_student=-1", "> 0"), ("data.image_size=100", "multiple of 32"), ("data.image_size=0", "multiple of 32"),
    ("trainer.max_steps=-5", "URD iterations"), ("data.train_batch_size=0", ">= 1"), ("optim.betas=[2,3]", "[0, 1)"),
])
def test_invalid_values_are_one_line_before_anything_is_written(mvtec_root, tmp_path, capsys, override, shown):
    key, value = override.split("=")
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL, override)
    assert code == 2 and key in line and shown in line and not (tmp_path / "out").exists()
    assert value.strip("[]").split(",")[0] in line  # the value as given (-5, not Lightning's -10)


# --- raw tracebacks: bad checkpoint files, for every command that reads one ------------------------------------------

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.ckpt"
    if kind == "truncated":
        buffer = io.BytesIO()
        torch.save({"state_dict": {"model.w": torch.zeros(1000)}, "urd_lightning": {}}, buffer)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "pickle":  # a bare pickle whose GLOBAL is os.system
        path.write_bytes(pickle.dumps(_Evil(folder / "PWNED")))
    else:  # the same inside a torch.save archive
        torch.save({"state_dict": {}, "x": _Evil(folder / "PWNED")}, path)
    return path


EXPECTED = {"truncated": "damaged checkpoint", "random": "not a PyTorch checkpoint",
            "pickle": "holds Python objects", "zip": "holds Python objects"}


@pytest.mark.parametrize("command", ["resume", "test", "predict", "export"])
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bad_checkpoints_are_one_line_for_every_command(mvtec_root, tmp_path, capsys, command, kind):
    ckpt = _bad_checkpoint(kind, tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    argv = {"resume": ["train", f"data.root={mvtec_root}", f"output_dir={out}", *SMALL, f"resume={ckpt}"],
            "test": ["test", f"ckpt={ckpt}", f"data.root={mvtec_root}"],
            "predict": ["predict", f"ckpt={ckpt}", f"input={mvtec_root}", f"output={out}"],
            "export": ["export", f"ckpt={ckpt}", "format=onnx", f"output={out / 'm.onnx'}"]}[command]
    code, line = run_cli(capsys, *argv)
    assert code == 2 and str(ckpt) in line and EXPECTED[kind] in line
    assert "trust_checkpoint" not in line or command in ("predict", "export")
    assert "\x1b[" not in line and "weights_only" not in line  # none of torch's advice text
    assert snapshot(tmp_path) == before and not out.exists()  # nothing ran, nothing written (no PWNED marker)


def _bad_weights(kind: str, folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / f"{kind}.safetensors"
    if kind == "foreign":  # a valid safetensors file without urd-lightning's metadata
        save_file({"weight": torch.zeros(1000)}, str(path))
    elif kind == "truncated":
        save_file({"model.w": torch.zeros(1000)}, str(folder / "whole"), metadata={"urd_lightning": "{}"})
        data = (folder / "whole").read_bytes()
        (folder / "whole").unlink()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


WEIGHTS_EXPECTED = {"truncated": "not a readable safetensors", "random": "not a readable safetensors",
                    "foreign": "not one of urd-lightning's"}


@pytest.mark.parametrize("command", ["test", "predict", "export"])
@pytest.mark.parametrize("kind", sorted(WEIGHTS_EXPECTED))
def test_bad_weights_files_are_one_line_for_every_command(mvtec_root, tmp_path, capsys, command, kind):
    weights = _bad_weights(kind, tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    argv = {"test": ["test", f"ckpt={weights}", f"data.root={mvtec_root}"],
            "predict": ["predict", f"ckpt={weights}", f"input={mvtec_root}", f"output={out}"],
            "export": ["export", f"ckpt={weights}", "format=weights", f"output={out / 'w.safetensors'}"]}[command]
    code, line = run_cli(capsys, *argv)
    assert code == 2 and str(weights) in line and WEIGHTS_EXPECTED[kind] in line
    assert snapshot(tmp_path) == before and not out.exists()


GOOD_EXTRAS = {"model": {"backbone": "resnet18"}, "image_size": 32, "dataset": "mvtec", "category": "bottle"}
BAD_EXTRAS = {  # kind -> (extras, words of the expected line); one checker (checkpoint_io.validate_extras) for all
    "no_extras": (None, "not one of urd-lightning's"),
    "no_image_size": ({k: v for k, v in GOOD_EXTRAS.items() if k != "image_size"}, "lacks image_size"),
    "size_as_text": ({**GOOD_EXTRAS, "image_size": "32"}, "malformed image_size (str, expected int)"),
    "model_as_list": ({**GOOD_EXTRAS, "model": ["resnet18"]}, "malformed model (list, expected dict)"),
    "no_category": ({k: v for k, v in GOOD_EXTRAS.items() if k != "category"}, "lacks category"),
}


# predict needs no category (only test reads it, to find the test set), so that case is test's alone.
@pytest.mark.parametrize(("command", "kind"), [(c, k) for k in sorted(BAD_EXTRAS) for c in ("test", "predict")
                                               if (c, k) != ("predict", "no_category")])
def test_missing_or_wrong_extras_are_one_line_for_test_and_predict(mvtec_root, tmp_path, capsys, command, kind):
    extras, expected = BAD_EXTRAS[kind]
    ckpt = tmp_path / f"{kind}.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, **({"urd_lightning": extras} if extras else {})}, ckpt)
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    argv = {"test": ["test", f"ckpt={ckpt}", f"data.root={mvtec_root}"],
            "predict": ["predict", f"ckpt={ckpt}", f"input={mvtec_root}", f"output={out}"]}[command]
    code, line = run_cli(capsys, *argv)
    assert code == 2 and str(ckpt) in line and expected in line
    fix = "Retrain with this package" if kind == "no_extras" else "write it again with urd-lightning's training"
    assert fix in line and snapshot(tmp_path) == before and not out.exists()
    if kind == "no_category":  # the test command also says how to do without it
        assert line.endswith("or give data.category=...")


def test_test_command_takes_the_category_from_the_command_line_when_the_extras_lack_it(mvtec_root, tmp_path, capsys):
    extras = {k: v for k, v in GOOD_EXTRAS.items() if k != "category"}
    ckpt = tmp_path / "no_category.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "urd_lightning": extras}, ckpt)
    code, line = run_cli(capsys, "test", f"ckpt={ckpt}", f"data.root={mvtec_root}", "data.category=bottle",
                         "model.pretrained=false", "data.num_workers=0")
    assert code == 2 and "does not match the network" in line  # got past the extras: the weights are what is wrong


# --- raw tracebacks: a NaN before the first checkpoint, an interrupt mid-write, an unwritable output folder ----------

@pytest.mark.slow  # trains
def test_nan_at_iteration_one_says_no_checkpoint_exists(mvtec_root, tmp_path, capsys, monkeypatch):
    from urd_lightning.models import losses

    real = losses.student_loss

    def poisoned(*args, **kwargs):
        return {**real(*args, **kwargs), "s_normal_teacher": torch.tensor(float("nan"))}

    monkeypatch.setattr(losses, "student_loss", poisoned)
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path}", *SMALL)
    assert code == 2 and "nan at iteration 1" in line and "No checkpoint was written" in line
    assert "is kept" not in line and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow  # trains
def test_interrupt_during_a_checkpoint_write_keeps_the_previous_one(mvtec_root, tmp_path, capsys, monkeypatch):
    from urd_lightning.training import callbacks

    argv = ["train", f"data.root={mvtec_root}", f"output_dir={tmp_path}", *SMALL, "checkpoint_every_n_steps=1",
            "run=r1"]
    assert run_cli(capsys, *argv)[0] == 0
    last = next(tmp_path.rglob("last.ckpt"))
    before = snapshot(tmp_path)
    real_save = torch.save

    class Interrupting:  # the file torch.save writes to; Ctrl+C arrives at its fourth write call
        def __init__(self, handle):
            self.handle, self.calls = handle, 0

        def write(self, data):
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    def interrupted(obj, handle, *args, **kwargs):
        real_save(obj, Interrupting(handle), *args, **kwargs)

    monkeypatch.setattr(callbacks.torch, "save", interrupted)
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT while it shuts down
    try:
        code = main([*argv, "trainer.max_steps=2", "resume=last"])
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err and "unexpected pos" not in err
    assert f"the last checkpoint is {last} (iteration 1); continue with: python -m urd_lightning train" in err
    assert last.read_bytes() == before[str(last.relative_to(tmp_path))]
    assert not [p for p in last.parent.iterdir() if p.name != "last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("command", ["train", "predict", "export"])
def test_unwritable_output_is_one_line(mvtec_root, tmp_path, capsys, command):
    argv = {"train": ["train", f"data.root={mvtec_root}", "output_dir=/proc/x", *SMALL],
            "predict": ["predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={mvtec_root}", "output=/proc/x",
                        "threshold=0.5"],
            "export": ["export", f"ckpt={_tiny_checkpoint(tmp_path)}", "format=onnx", "output=/proc/x/m.onnx"]}
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, *argv[command])
    assert code == 2 and "/proc/x cannot be written" in line and snapshot(tmp_path) == before


def _tiny_checkpoint(folder: Path) -> Path:
    from urd_lightning.deploy.checkpoint import save_checkpoint
    from urd_lightning.models import URD

    path = folder / "tiny.ckpt"
    if not path.is_file():
        save_checkpoint(URD(backbone="resnet18", pretrained=False), path, 32)
    return path


# --- silent wrong results: predict's output names are unique for any set of inputs -----------------------------------

def test_predict_output_names_never_collide(tmp_path, capsys):
    import cv2

    inputs = tmp_path / "in"
    names = ["x.png", "x.PNG", "x_png.png", "y.jpg", "y_jpg.png", "sub/x.png", "sub/deeper/x.png"]
    for i, name in enumerate(names):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(Path(name).suffix.lower(), np.full((40, 40, 3), 20 * i, np.uint8))
        (inputs / name).write_bytes(data.tobytes())
    before = snapshot(inputs)
    out = tmp_path / "out"
    code, _ = run_cli(capsys, "predict", f"ckpt={_tiny_checkpoint(tmp_path)}", f"input={inputs}", f"output={out}",
                      "threshold=0.5", "progress=false")
    assert code == 0 and snapshot(inputs) == before
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(r["image_path"]).relative_to(inputs).as_posix() for r in rows) == sorted(names)
    overlays = [r["overlay_path"] for r in rows]
    assert len({p.casefold() for p in overlays}) == len(names)  # one overlay per input, even on a case-blind disk
    assert len(list((out / "overlays").rglob("*.png"))) == len(names) and (out / "overlays/sub/deeper/x.png").is_file()


# --- silent wrong results: a resumed run keeps its periodic evaluations and its CSV history --------------------------

@pytest.fixture(scope="module")
def resumed_run(mvtec_root, tmp_path_factory):
    """2 iterations, then 2 more with resume=last (periodic evaluation every iteration, CSV log)."""
    out = tmp_path_factory.mktemp("resumed")
    argv = ["train", f"data.root={mvtec_root}", f"output_dir={out}", *SMALL, "eval.every_n_steps=1", "logger=csv",
            "checkpoint_every_n_steps=1", "run=r", "trainer.log_every_n_steps=1"]
    assert main([*argv, "trainer.max_steps=2"]) == 0
    first = (next(out.rglob("metrics.csv"))).read_text().splitlines()
    assert main([*argv, "trainer.max_steps=4", "resume=last"]) == 0
    return next(out.rglob("r")), first


@pytest.mark.slow
def test_periodic_evaluations_survive_a_resume(resumed_run):
    run_dir, _ = resumed_run
    payload = json.loads((run_dir / "metrics.json").read_text())
    assert [row["step"] for row in payload["periodic"]] == [1, 2, 3, 4]  # as 4 uninterrupted iterations give


@pytest.mark.slow
def test_csv_log_keeps_the_history_before_a_resume(resumed_run):
    run_dir, first = resumed_run
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").read_text().splitlines()))
    assert len(first) > 1 and len(rows) > len(first) - 1
    steps = {row["step"] for row in rows if row.get("periodic_test/image_AUROC")}
    assert len(steps) == 4  # the periodic rows of both parts


# --- silent wrong results: a test split with only normal images is explained, not just NaN ---------------------------

@pytest.mark.slow  # trains
def test_test_split_with_only_normal_images_is_explained(mvtec_root, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(mvtec_root / "bottle", data / "bottle")
    for folder in (data / "bottle" / "test").iterdir():
        if folder.name != "good":
            shutil.rmtree(folder)
    shutil.rmtree(data / "bottle" / "ground_truth", ignore_errors=True)
    before = snapshot(data)
    assert main(["data", "check", "mvtec", "--root", str(data), "--category", "bottle"]) == 0
    assert "warning: [bottle] no anomalous test images" in capsys.readouterr().out
    code, _, out = run_cli_output(capsys, "train", f"data.root={data}", f"output_dir={tmp_path / 'out'}", *SMALL)
    assert code == 0 and snapshot(data) == before
    assert "nan = undefined: the test split lacks anomalous" in out


# --- full disk: the results are written first, then one line names the checkpoint and the space it needs -----------

@pytest.mark.slow  # trains
def test_full_disk_at_the_checkpoint_keeps_the_results(mvtec_root, tmp_path, capsys, monkeypatch):
    import errno

    from urd_lightning.training import callbacks

    def full(obj, handle, *args, **kwargs):  # the disk fills up in the middle of the checkpoint
        handle.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks.torch, "save", full)
    code, line, out = run_cli_output(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path}", *SMALL)
    assert code == 2 and "no space left on the disk while writing" in line and "last.ckpt" in line
    assert "MB needed" in line and "unexpected pos" not in line
    run_dir = next(tmp_path.rglob("metrics.json")).parent
    assert json.loads((run_dir / "metrics.json").read_text())["final"] and "results:" in out
    assert not [p for p in (run_dir / "checkpoints").iterdir()]  # no half-written file left behind


def test_full_disk_during_export_leaves_no_truncated_model(tmp_path, capsys, monkeypatch):
    import errno

    import onnx

    ckpt = _tiny_checkpoint(tmp_path)
    before = snapshot(tmp_path)

    def full(model, path, *args, **kwargs):
        Path(path).write_bytes(b"\x08" * 100)  # part of the model, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    code, line = run_cli(capsys, "export", f"ckpt={ckpt}", "format=onnx", f"output={tmp_path / 'm.onnx'}")
    assert code == 2 and "no space left on the disk while writing" in line and "m.onnx" in line
    assert snapshot(tmp_path) == before  # neither a truncated m.onnx nor a temporary file
