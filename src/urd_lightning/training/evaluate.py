"""``python -m urd_lightning test ckpt=PATH [key=value ...]``: evaluate a training checkpoint on its test set.

The checkpoint's extras (docs/design.md, "checkpoints") say which dataset, category, image size and network it
holds; the command line may override data keys (e.g. ``data.root``). The network is rebuilt with
``pretrained=False`` (its weights come from the file) and the numbers are written to ``test_metrics.json`` beside the
checkpoint's run folder, with the same metric names as ``metrics.json``. ``ckpt=`` may also be the weights-only
``.safetensors`` that ``export format=weights`` writes (same extras, same weights, so the same numbers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from omegaconf import OmegaConf

from urd_lightning.checkpoint_io import load_inference_file
from urd_lightning.config import load_config, read_command_line
from urd_lightning.config.cli import Command
from urd_lightning.errors import CheckpointError, ConfigError
from urd_lightning.files import ensure_writable, write_atomic
from urd_lightning.run.extras import EXTRAS_KEY, REWRITE, CheckpointExtras
from urd_lightning.run.folder import RunFolder
from urd_lightning.training.builders import build_datamodule, build_module, trainer_kwargs
from urd_lightning.training.loggers import setup_console_logging
from urd_lightning.training.results import METRIC_ORDER, strict_json


def _read_checkpoint(path: Path, given: set[str]) -> tuple[dict[str, Any], CheckpointExtras]:
    """The checkpoint and its checked extras; dataset and category are needed unless the command line gives them."""
    if not path.is_file():
        raise CheckpointError(f"ckpt={path} does not exist; give results/<dataset>/<category>/<run>/checkpoints/"
                              "last.ckpt")
    checkpoint = load_inference_file(path)  # a .ckpt or export's weights-only .safetensors; no code runs; one line
    needed = {key: arg for key, arg in (("dataset", "dataset"), ("category", "data.category")) if arg not in given}
    stored = checkpoint.get(EXTRAS_KEY) if isinstance(checkpoint, dict) else None
    lacking = [arg for key, arg in needed.items() if not isinstance(stored, dict) or key not in stored]
    fix = REWRITE + (", or give " + " and ".join(f"{arg}=..." for arg in lacking) if lacking else "")
    return checkpoint, CheckpointExtras.read(path, checkpoint, also=tuple(needed), fix=fix)


TEST = Command(
    "test", "Evaluate a checkpoint (or export's .safetensors) on the test set of the dataset and category it records; "
    "config keys override (e.g. data.root). Writes test_metrics.json beside the run's checkpoints/.", config=True,
    examples=("urd test ckpt=results/mvtec/bottle/<run>/checkpoints/last.ckpt",
              "urd test ckpt=last.safetensors data.root=/data/MVTecAD"))


def evaluate_checkpoint(argv: list[str]) -> int:
    """Evaluate ``ckpt=`` on the test set of its dataset/category; prints and writes the metrics."""
    args = read_command_line(TEST, argv)
    if args is None:  # --help
        return 0
    argv = args.overrides
    setup_console_logging()
    ckpt = next((a.split("=", 1)[1] for a in argv if a.startswith("ckpt=")), None)
    if not ckpt:
        raise ConfigError("the test command needs ckpt=PATH (e.g. results/mvtec/bottle/<run>/checkpoints/last.ckpt)")
    path = Path(ckpt)
    given = args.given
    checkpoint, extras = _read_checkpoint(path, given)
    folder = RunFolder.holding(path)  # beside the run's metrics.json, or beside a checkpoint outside a run folder
    out = folder.test_metrics if folder is not None else path.with_suffix(".metrics.json")
    ensure_writable(out.parent, "ckpt folder")
    implied = [f"dataset={extras.dataset}"] if "dataset" not in given else []
    if "data.category" not in given:
        implied.append(f"data.category={extras.category}")
    if "data.image_size" not in given:
        implied.append(f"data.image_size={extras.image_size}")
    if "data.resize" not in given:  # evaluate as trained (older checkpoints: the record's legacy default)
        implied.append(f"data.resize={extras.resize}")
    model_keys = [f"model.{k}={'null' if v is None else v}" for k, v in extras.model.items()
                  if f"model.{k}" not in given and k != "pretrained"]
    cfg = load_config(implied + model_keys + ["model.pretrained=false", "logger=none"] + argv)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    # The expert is used only for training; a checkpoint may omit it. Anything else missing is an error.
    missing = [k for k in missing if not k.startswith("model.expert.")]
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the network {extras.model}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    kwargs = trainer_kwargs(cfg)
    kwargs.pop("max_steps", None)
    trainer = Trainer(**kwargs, logger=False, use_distributed_sampler=False, enable_model_summary=False)
    trainer.test(module, datamodule=datamodule, verbose=False)
    if trainer.global_rank == 0:
        payload = {"checkpoint": str(path), "dataset": cfg.dataset, "category": cfg.data.category,
                   "final": module.final, "config": OmegaConf.to_container(cfg.data, resolve=True)}
        write_atomic(out, strict_json(payload))  # null for an undefined metric, and why (as metrics.json)
        width = max(len(k) for k in METRIC_ORDER) + 2
        rows = [f"{k:<{width}}{module.final[k]:.4f}" for k in METRIC_ORDER if k in module.final]
        print("\n".join([f"{cfg.dataset}/{cfg.data.category}: {path}", *rows, f"written: {out}"]), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``urd test ckpt=PATH [key=value ...]``: evaluate a checkpoint on its test set."""
    return evaluate_checkpoint(list(argv or []))
