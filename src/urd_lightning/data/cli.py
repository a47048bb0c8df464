"""``urd data download|check|demo``: get, verify and generate datasets.

    urd data download mvtec root=datasets/MVTecAD
    urd data download dtd                                  # the paper's anomaly textures, into datasets/dtd
    urd data check dtd root=datasets/dtd
    urd data check visa root=datasets/VisA category=pcb1 json=true
    urd data check mvtec root=datasets/MVTecAD category=bottle show_augment=camera
    urd data demo root=datasets/demo

The flags of earlier versions still work (``--root DIR``, ``--category c``, ``--json``, ``--no-progress``).
``check`` runs the same checks training runs before it starts (``data/check.py``), on the categories and layout of
the dataset file (``data/<name>.yaml``, a ``config_dir=`` folder's first); it exits 1 when it finds a problem, so
scripts can use it as a gate. User errors raise ``DataError`` (printed without a stack trace).
``show_augment=PIPELINE`` (any ``data.augment`` value) also writes a panel of training samples as the network
will see them: the image, augmented, its foreground mask, the synthetic anomaly and its mask (``data/preview.py``).
"""

from __future__ import annotations

import logging
import sys

from urd_lightning.config import load_config, read_command_line
from urd_lightning.config.augment import resolve_augment
from urd_lightning.config.cli import Command, Option, closest
from urd_lightning.config.files import config_roots, dataset_categories
from urd_lightning.config.textures import DEFAULT_DTD_ROOT
from urd_lightning.data.benchmarks import BENCHMARKS
from urd_lightning.errors import ConfigError, DataError

FOLDER_KEYS = ("normal_dir", "abnormal_dir", "mask_dir", "normal_test_dir", "normal_split_ratio")
COMMANDS = {
    "download": Command("data download", "Download, verify (sha256) and extract a benchmark or DTD.", options=(
        Option("benchmark", str, None, "what to download", positional=True, required=True,
               choices=(*sorted(BENCHMARKS), "dtd")),
        Option("root", str, None, f"dataset folder (the archive is kept there); dtd: {DEFAULT_DTD_ROOT}"),
        Option("progress", bool, True, "show a progress bar", aliases=("--no-progress",)),
    )),
    "check": Command("data check", "Count the images and report every problem with the data (exit 1 if any).", options=(
        Option("dataset", str, None, "a dataset file's name (data/<name>.yaml: its layout and categories), or dtd",
               positional=True, required=True),
        Option("root", str, None, "dataset folder; null = the dataset file's data.root"),
        Option("category", str, None, "one category; null = every category of the dataset file found under root"),
        Option("json", bool, False, "machine-readable output"),
        Option("image_size", int, 256, "model size: warn when a defect mask vanishes"),
        Option("resize", str, "pil", "resize method (data.resize)", choices=("pil", "cv2")),
        *(Option(key, float if key == "normal_split_ratio" else str, None,
                 "folder benchmark only; null = the dataset file's") for key in FOLDER_KEYS),
        Option("config_dir", str, None, "your folder of data/<name>.yaml files (as for train; or URD_CONFIG_DIR)"),
        Option("show_augment", str, None, "also write a panel of augmented training samples; a data.augment value: "
               "flips, a file A.save wrote, or a name in configs/augment/"),
        Option("panel", str, "augment_samples.png", "where show_augment writes its panel"),
    )),
    "demo": Command("data demo", "Generate the embedded demo dataset (no download).", options=(
        Option("root", str, "datasets/demo", "where to write it"),
        Option("force", bool, False, "regenerate even if it is up to date"),
    )),
}


def _usage() -> str:
    lines = ["usage: urd data <action> [key=value ...]", "", "actions:"]
    lines += [f"  {name:<10} {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join([*lines, "", "Run 'urd data <action> --help' for its keys."]) + "\n"


def _show_augment(benchmark: str, root: str, values: dict, options: dict, config_dir: str | None) -> str:
    from urd_lightning.data.datamodule import AnomalyDataModule
    from urd_lightning.data.preview import augment_panel

    augment = resolve_augment(values["show_augment"], config_roots(config_dir))
    data = AnomalyDataModule(benchmark, root=root, category=values["category"], image_size=values["image_size"],
                             num_workers=0, augment=augment, check=False, resize=values["resize"],
                             pixel_cache_dir=None, **options)
    data.setup("fit")
    assert data.train_data is not None
    return str(augment_panel(data.train_data, values["panel"]))


def main(argv: list[str] | None = None) -> int:
    """Run a data command; returns the exit code (check: 1 when problems were found)."""
    argv = list(argv or [])
    if not argv or argv[0] in {"-h", "--help"}:
        sys.stdout.write(_usage())
        return 0
    action = argv[0]
    if action not in COMMANDS:
        raise ConfigError(f"unknown data action {action!r}.{closest(action, COMMANDS)} Use one of: "
                          f"{', '.join(COMMANDS)}")
    args = read_command_line(COMMANDS[action], argv[1:])
    if args is None:  # --help
        return 0
    values = args.values
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if action == "download":
        from urd_lightning.data.download import download_benchmark

        name = values["benchmark"]
        if values["root"] is None and name != "dtd":
            raise DataError(f"data download {name} needs root=DIR (where the dataset goes)")
        root = download_benchmark(name, values["root"] or DEFAULT_DTD_ROOT, progress=values["progress"])
        print(f"{name} is ready in {root}; check it with: urd data check {name} root={root}")
        return 0
    if action == "check":
        return _check(values)
    from urd_lightning.data.demo import ensure_demo, generate_demo

    root = generate_demo(values["root"], "root") if values["force"] else ensure_demo(values["root"], "root")
    print(f"demo dataset ready in {root} (categories: weave, disc)")
    return 0


def _check(values: dict) -> int:
    """``data check``: the dataset file says the layout, the categories and (unless given) root and folder keys."""
    if values["dataset"] == "dtd":
        from urd_lightning.data.dtd import check_dtd, format_dtd

        report = check_dtd(values["root"] or DEFAULT_DTD_ROOT)
        print(report.to_json() if values["json"] else format_dtd(report))
        return 0 if report.ok else 1
    from urd_lightning.data.check import check_dataset

    config_dir = values["config_dir"]
    data = load_config([f"dataset={values['dataset']}", *([f"config_dir={config_dir}"] if config_dir else [])]).data
    options = {}
    if data.benchmark == "folder":
        options = {key: data[key] if values[key] is None else values[key] for key in FOLDER_KEYS}
    if values["show_augment"] is not None and values["category"] is None:
        raise DataError("show_augment needs category= (the category whose training images are shown)")
    report = check_dataset(data.benchmark, values["root"] or data.root, values["category"],
                           image_size=values["image_size"], resize=values["resize"],
                           known=dataset_categories(values["dataset"], config_dir), **options)
    print(report.to_json() if values["json"] else report.format())
    if report.ok and values["show_augment"] is not None:
        panel = _show_augment(data.benchmark, values["root"] or data.root, values, options, config_dir)
        print(f"augmented training samples: {panel}")
    return 0 if report.ok else 1
