"""The fault suite (issue 14): bad inputs a careful user tries, each answered by one line and nothing lost.

Every test runs the command line (``urd_lightning.__main__.main``) and asserts the exit code, the one-line
message, that no traceback reached the user, and that every file that existed before is unchanged.
"""

from pathlib import Path

from urd_lightning.__main__ import main
from urd_lightning.data import demo


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what must survive a refused command)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and the error line of one command; asserts the user saw no traceback and a single error line."""
    code = main(list(argv))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) <= 1, captured.err
    return code, errors[0] if errors else ""


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
