"""One command-line grammar for every command (config/cli.py): key=value, the former flags as aliases, --help from
the schema and default.yaml, --version, and the closest command or key for a typo."""

import ast
from pathlib import Path

import pytest

from urd_lightning import __version__
from urd_lightning.__main__ import COMMANDS, main
from urd_lightning.benchmark.report import REPORT
from urd_lightning.benchmark.runner import BENCHMARK
from urd_lightning.config.cli import parse_command_line
from urd_lightning.config.files import key_descriptions
from urd_lightning.config.schema import key_types
from urd_lightning.data.cli import COMMANDS as DATA_COMMANDS

SRC = Path(__file__).resolve().parents[1] / "src" / "urd_lightning"


def test_top_level_help_version_and_the_closest_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"urd-lightning {__version__}"
    assert main(["tain"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'tain'. Did you mean train?" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [[name, "--help"] for name in COMMANDS if name != "data"]
                         + [["data", "--help"]] + [["data", action, "--help"] for action in DATA_COMMANDS])
def test_every_command_has_a_help_that_exits_0(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: urd ") and "Traceback" not in out


def test_train_help_lists_every_config_key_with_type_default_and_its_yaml_comment(capsys):
    assert main(["train", "--help"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    descriptions, types = key_descriptions(), key_types()
    for key, kind in types.items():
        assert key in rows and kind in rows[key] and descriptions[key] in rows[key], key
    assert "  data.image_size" in "\n".join(rows.values()) and " 256 " in rows["data.image_size"]


def test_default_yaml_describes_exactly_the_schema_keys():
    # One text per key: the comment in configs/default.yaml is what --help shows (sections may carry one too).
    described, leaves = key_descriptions(), key_types()
    assert not [key for key in leaves if not described.get(key)], "keys without a comment in default.yaml"
    sections = {key.rsplit(".", 1)[0] for key in leaves if "." in key}
    assert not [key for key in described if key not in leaves and key not in sections]


def test_flags_users_already_type_are_aliases_of_the_keys():
    parsed = parse_command_line(BENCHMARK, [
        "dataset=mvtec", "--slurm", "--jobs", "8", "--slurm-partition", "gpu", "--slurm-param", "account=abc",
        "--slurm-param=qos=high", "--no-plots", "--categories", "01,03", "trainer.devices=1"], key_types())
    values = parsed.values
    assert (values["slurm"], values["jobs"], values["slurm_partition"], values["plots"]) == (True, 8, "gpu", False)
    assert values["slurm_param"] == ["account=abc", "qos=high"] and values["categories"] == "01,03"
    assert parsed.overrides == ["dataset=mvtec", "trainer.devices=1"]
    same = parse_command_line(BENCHMARK, ["slurm=true", "jobs=8", "slurm_partition=gpu", "plots=false"], key_types())
    assert {k: same.values[k] for k in ("slurm", "jobs", "slurm_partition", "plots")} == \
        {k: values[k] for k in ("slurm", "jobs", "slurm_partition", "plots")}
    download = parse_command_line(DATA_COMMANDS["download"], ["mvtec", "--root", "X", "--no-progress"]).values
    assert (download["benchmark"], download["root"], download["progress"]) == ("mvtec", "X", False)
    report = parse_command_line(REPORT, ["results/", "--out", "o", "--no-plots"]).values
    assert (report["results"], report["out"], report["plots"]) == ("results/", "o", False)


@pytest.mark.parametrize(("argv", "shown"), [
    (["predict", "ckpt=a", "input=b", "thresold=1"], "unknown key 'thresold' for predict. Did you mean threshold"),
    (["train", "data.categry=x"], "unknown key 'data.categry' for train. Did you mean data.category"),
    (["benchmark", "--jbos", "2"], "unknown option '--jbos'. Did you mean --jobs"),
    (["report", "results/", "out=x", "extra"], "argument 'extra' is not of the form key=value"),
    (["export", "ckpt=a", "opset=seventeen"], "opset='seventeen' is not a valid int"),
    (["data", "chek", "mvtec"], "unknown data action 'chek'. Did you mean check?"),
])
def test_typos_get_one_line_with_the_closest_key(argv, shown, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert shown in err and len(err.strip().splitlines()) == 1


def test_no_command_parses_its_arguments_another_way():
    # One grammar: no argparse, no hand-split key=value, anywhere in the package.
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                offenders.append(str(path.relative_to(SRC)))
    assert not offenders
