"""experiments/slurm/*.sbatch: they start from a fresh clone and are preemption-safe.

SLURM opens the ``--output`` file before the script runs, so its folder must already exist in a fresh clone; the
training scripts ask for the warning signal the ``Requeue`` callback handles, may be requeued, and resume.
"""

import re
import shlex
from pathlib import Path

import pytest

from urd_lightning.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "experiments" / "slurm").glob("*.sbatch"))
TRAINING = [p for p in SCRIPTS if " train " in p.read_text()]


def directives(path):
    return dict(re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?", line).groups() for line in path.read_text().splitlines()
                if line.startswith("#SBATCH --"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_log_folder_exists_in_a_fresh_clone(path):
    output = directives(path)["output"]
    folder = Path(output).parent
    assert str(folder) == "." or (ROOT / folder).is_dir() and folder.parts[0] in {"experiments"}, output


@pytest.mark.parametrize("path", TRAINING, ids=lambda p: p.name)
def test_training_scripts_are_requeueable_and_resume(path):
    found = directives(path)
    assert found["signal"] == "SIGUSR1@90" and "requeue" in found and found.get("open-mode") == "append"
    command = path.read_text().split("\nsrun ", 1)[1].split("\n\n")[0].replace("\\\n", " ")
    args = [a for a in shlex.split(command) if "=" in a and not a.startswith(("$", "${"))]
    assert "resume=auto" in args and not any(a.startswith("trainer.strategy=") for a in args)
    # The script's own keys (variables replaced by their defaults) make a valid config for a GPU node (here=False:
    # this machine's GPUs are not the node's).
    fixed = [re.sub(r"\$\{[^}]*\}|\$\w+", "1", a).replace('"', "") for a in args]
    fixed = [a for a in fixed if not a.startswith(("dataset=", "data.category="))]
    assert load_config(fixed, here=False).resume == "auto"
    assert "URD_RUN" not in path.read_text(), "a job-id run name would give a resubmitted job a new run folder"
