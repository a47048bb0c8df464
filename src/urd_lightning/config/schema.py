"""The typed schema of the configuration: every key, its type and its default (``configs/default.yaml`` mirrors it).

``load.py`` loads and merges the YAML layers and the command line onto this schema; unknown keys and wrong types
stop there with the key's name. Ranges of numeric keys are checked by ``ranges.py``.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass
class ModelConfig:
    """``URD(**model)`` arguments."""

    backbone: str = "wide_resnet50_2.tv_in1k"
    pretrained: bool = True
    checkpoint: str | None = None
    injection: str = "gii"
    expert: bool = True
    train_teacher: bool = True
    xavier_init: bool = True


@dataclass
class DataConfig:
    """``AnomalyDataModule(**data)`` arguments."""

    benchmark: str = "mvtec"
    root: str = "datasets/mvtec"
    category: str = "bottle"
    image_size: int = 256
    train_batch_size: int = 16
    eval_batch_size: int = 16
    num_workers: int = 4
    synthesis: bool = True
    textures: str = "auto"
    dtd_root: str | None = None
    foreground: str = "auto"
    seed: int | None = None
    # Relative to the current folder; a default that cannot be written there moves to the user's cache folder
    # (config/places.py), a folder the user gives never does.
    cache_dir: str = ".cache/urd/foreground"
    pixel_cache_dir: str | None = ".cache/urd/pixels"
    augment: Any = False  # false | flips | an albumentations pipeline (config/augment.py), stored resolved
    check: bool = True
    resize: str = "pil"
    normal_dir: str = "good"
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    normal_test_dir: str | None = None
    normal_split_ratio: float = 0.2


@dataclass
class TrainerConfig:
    """The ``Trainer`` arguments a run may set."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str | None = None
    max_steps: int = 5000
    max_time: str | None = None
    sync_batchnorm: bool = False
    deterministic: Any = False
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    limit_test_batches: Any = 1.0


@dataclass
class OptimConfig:
    """The two Adam optimizers (docs/method.md, "Optimizers and budgets")."""

    lr_teacher: float = 1e-4
    lr_student: float = 5e-3
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])


@dataclass
class EvalConfig:
    """Periodic test-set evaluation and picture samples."""

    every_n_steps: int = 0
    num_samples: int = 8


@dataclass
class WandbConfig:
    """Weights & Biases settings."""

    project: str = "urd-lightning"
    entity: str | None = None
    mode: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 20.0
    log_model: bool = False


@dataclass
class Config:
    """The whole run configuration; ``configs/default.yaml`` documents every key."""

    dataset: str = "mvtec"
    experiment: str | None = None
    config_dir: str | None = None
    run: str | None = None
    output_dir: str = "results"
    seed: int = 111
    loss_variant: str = "head"
    channels_last: bool | None = None
    batched_eval_forwards: bool = True
    compile: bool = False
    checkpoint_every_n_steps: int = 1000
    resume: str | None = None
    overwrite: bool = False
    ckpt: str | None = None
    logger: str = "wandb"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def key_types(schema: type = Config, prefix: str = "") -> dict[str, str]:
    """Every leaf key of the schema (dotted) with its type as written here (``int``, ``str | None``; ``Any``: any)."""
    out: dict[str, str] = {}
    for item in fields(schema):
        section = item.default_factory if item.default_factory is not MISSING else None
        if section is not None and is_dataclass(section):
            out.update(key_types(section, f"{prefix}{item.name}."))  # type: ignore[arg-type]
        else:
            out[f"{prefix}{item.name}"] = "any" if str(item.type) == "Any" else str(item.type)
    return out
