"""Fault suite, config and command line (tests/test_faults.py's style): bad values, interpolations and config files
are one line naming the key or the file (and line), exit 2, no traceback, nothing written."""

import pytest
import torch
from tests.test_faults import SMALL, run_cli


@pytest.mark.parametrize(("override", "shown"), [
    ("trainer.precision=17", "null (automatic) or one of 16-true"),
    ("trainer.devices=0", "a number of processes >= 1"),
    ("trainer.devices=[5]", "a list of device indices needs GPUs"),
    ("trainer.max_time=garbage", '"DD:HH:MM:SS"'),
    ("trainer.accelerator=gpu", "needs a GPU and this machine has none"),
])
def test_trainer_values_lightning_rejects_stop_at_load(mvtec_root, tmp_path, capsys, monkeypatch, override, shown):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the machine the user has: no GPU
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                         override)
    assert code == 2 and f"'{override}" in line and shown in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("value", "shown"), [
    ("${foo:bar}", "Unsupported interpolation type foo"), ("${oc.env:URD_SURELY_UNSET}", "URD_SURELY_UNSET"),
    ("${data.nope}", "'data.nope' not found"), ("${output_dir}", "Recursive interpolation"),
])
def test_interpolation_errors_name_the_key(mvtec_root, tmp_path, capsys, monkeypatch, value, shown):
    monkeypatch.delenv("URD_SURELY_UNSET", raising=False)
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", *SMALL, f"output_dir={value}")
    assert code == 2 and f"cannot resolve 'output_dir={value}'" in line and shown in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "line_no", "shown"), [
    ("data:\n  benchmark: mvtec\n  root: [unclosed\n  category: a\n", 4, "not valid YAML"),
    ("data:\n  root: !!python/object/apply:os.system ['touch {marker}']\n", 2, "python/object/apply:os.system"),
])
def test_config_dir_yaml_errors_name_file_and_line(tmp_path, capsys, text, line_no, shown):
    marker = tmp_path / "executed"
    (tmp_path / "mine" / "data").mkdir(parents=True)
    path = tmp_path / "mine" / "data" / "bad.yaml"
    path.write_text(text.format(marker=marker))
    code, line = run_cli(capsys, "print-config", "dataset=bad", f"config_dir={tmp_path / 'mine'}")
    assert code == 2 and f"{path}:{line_no}: " in line and shown in line and not marker.exists()


def test_a_section_given_a_value_says_so(capsys):
    code, line = run_cli(capsys, "print-config", "dataset=demo", "data=5")
    assert code == 2 and "'data=5': data is a section of keys, not a value" in line and "data.benchmark=" in line
