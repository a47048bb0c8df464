"""Faults around the run folder: a second run into a busy folder, a name reused for another config, unsafe names.

The fault suite's style (tests/test_faults.py): the command line's exit code, one error line, no traceback, and
every file that existed before unchanged.
"""

import subprocess
import sys

import pytest
from tests.test_faults import SMALL, run_cli, snapshot

from helpers.training import tiny
from urd_lightning.config import load_config, to_yaml
from urd_lightning.run.folder import RunFolder


def test_a_second_training_into_a_busy_run_folder_stops_naming_the_first(mvtec_root, tmp_path, capsys):
    folder = RunFolder(tmp_path / "out" / "mvtec" / "bottle" / "busy")
    first = folder.lock("urd train run=busy (the first)")  # another open file: flock refuses it like a process
    try:
        before = snapshot(tmp_path)
        code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", "run=busy",
                             f"data.cache_dir={tmp_path / 'cache'}", *SMALL)
        assert code == 2 and "is in use by another training" in line and "(the first)" in line
        assert snapshot(tmp_path) == before
    finally:
        first.release()


def test_a_dead_process_holds_no_lock(tmp_path):
    folder = RunFolder(tmp_path / "run")
    code = ("import sys; from urd_lightning.run.folder import RunFolder; "
            f"RunFolder({str(folder.path)!r}).lock('killed'); sys.exit(9)")  # exits holding it, never releasing
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 9
    assert (folder.path / RunFolder.LOCK).is_file()
    folder.lock("the next run").release()


def _earlier_run(mvtec_root, out, *argv):
    """A finished run's folder as training leaves it (config.yaml, checkpoint, metrics), without training."""
    cfg = load_config(tiny(mvtec_root, out, *argv))
    folder = RunFolder.of(cfg)
    folder.checkpoints.mkdir(parents=True)
    folder.config.write_text(to_yaml(cfg))
    folder.last_checkpoint.write_bytes(b"the earlier run's weights")
    folder.metrics.write_text('{"final": {}}\n')
    return folder


def test_a_run_name_that_holds_another_config_is_refused(mvtec_root, tmp_path, capsys):
    folder = _earlier_run(mvtec_root, tmp_path, "run=base")
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, "train", *tiny(mvtec_root, tmp_path, "run=base", "seed=5"))
    assert code == 2 and "run=base already holds a run of another config" in line and "seed: 111 here, 5 now" in line
    assert "overwrite=true" in line and snapshot(tmp_path) == before
    assert folder.is_finished()


def test_overwrite_moves_the_other_configs_run_aside_and_loses_nothing(mvtec_root, tmp_path, capsys):
    folder = _earlier_run(mvtec_root, tmp_path, "run=base")
    before = snapshot(folder.path)
    code, line = run_cli(capsys, "train", *tiny(mvtec_root, tmp_path, "run=base", "seed=5", "overwrite=true"))
    assert code == 0 and not line
    aside = folder.path.parent / "_replaced" / "base.1"
    assert snapshot(aside) == before  # every file of the old run, unchanged
    assert load_config(tiny(mvtec_root, tmp_path, "run=base", "seed=5")).seed == 5 and folder.is_finished()
    assert not folder.differences(load_config(tiny(mvtec_root, tmp_path, "run=base", "seed=5")))


@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "x" * 300, "..", ".hidden", "a\\b"])
def test_a_run_name_is_one_safe_folder_name(tmp_path, capsys, name):
    code, line = run_cli(capsys, "train", "dataset=demo", f"data.root={tmp_path / 'demo'}",
                         f"output_dir={tmp_path / 'out'}", f"run={name}", *SMALL)
    assert code == 2 and line.startswith("error: run=") and ("folder name" in line or "at most 120" in line)
    assert list(tmp_path.iterdir()) == []  # checked before any folder is made


def test_a_category_or_dataset_that_becomes_a_folder_is_checked_too(tmp_path, capsys):
    (tmp_path / "mine" / "data").mkdir(parents=True)  # a user's dataset file without a categories table
    (tmp_path / "mine" / "data" / "own.yaml").write_text("data: {benchmark: folder, root: images}\n")
    before = snapshot(tmp_path)
    code, line = run_cli(capsys, "train", f"config_dir={tmp_path / 'mine'}", "dataset=own", "data.category=../../x",
                         f"output_dir={tmp_path / 'out'}", *SMALL)
    assert code == 2 and "data.category='../../x' cannot be a folder name" in line
    code, line = run_cli(capsys, "train", "dataset=../default", f"output_dir={tmp_path / 'out'}", *SMALL)
    assert code == 2 and "dataset='../default' cannot be a folder name" in line  # configs/default.yaml, found
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()
