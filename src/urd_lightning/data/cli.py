"""``python -m urd_lightning data download|check|demo``: get, verify and generate datasets.

    python -m urd_lightning data download mvtec --root datasets/MVTecAD
    python -m urd_lightning data download dtd              # the paper's anomaly textures, into datasets/dtd
    python -m urd_lightning data check dtd --root datasets/dtd
    python -m urd_lightning data check visa --root datasets/VisA --category pcb1 [--json]
    python -m urd_lightning data demo --root datasets/demo

``check`` runs the same checks training runs before it starts (``data/check.py``); it exits 1 when it finds a
problem, so scripts can use it as a gate. User errors raise ``DataError`` (printed without a stack trace).
"""

from __future__ import annotations

import argparse
import logging

from urd_lightning.config.textures import DEFAULT_DTD_ROOT
from urd_lightning.data.benchmarks import BENCHMARKS
from urd_lightning.errors import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m urd_lightning data", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download", help="download, verify (sha256) and extract a benchmark or DTD")
    download.add_argument("benchmark", choices=[*sorted(BENCHMARKS), "dtd"])
    download.add_argument("--root", help=f"dataset folder (the archive is kept there); dtd: {DEFAULT_DTD_ROOT}")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    check = commands.add_parser("check", help="count images and report every problem with the data")
    check.add_argument("benchmark", choices=[*sorted(BENCHMARKS), "dtd"])
    check.add_argument("--root", required=True, help="dataset folder")
    check.add_argument("--category", default=None, help="one category (default: every category found)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--image-size", type=int, default=256, help="model size: warn when a defect mask vanishes")
    check.add_argument("--resize", choices=("pil", "cv2"), default="pil", help="resize method (data.resize)")
    for key in ("normal-dir", "abnormal-dir", "mask-dir", "normal-test-dir"):
        check.add_argument(f"--{key}", default="good" if key == "normal-dir" else None, help="folder benchmark only")
    check.add_argument("--normal-split-ratio", type=float, default=0.2, help="folder benchmark only")
    demo = commands.add_parser("demo", help="generate the embedded demo dataset (no download)")
    demo.add_argument("--root", default="datasets/demo", help="where to write it (default: datasets/demo)")
    demo.add_argument("--force", action="store_true", help="regenerate even if it is up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a data command; returns the exit code (check: 1 when problems were found)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "download":
        from urd_lightning.data.download import download_benchmark

        if args.root is None and args.benchmark != "dtd":
            raise DataError(f"data download {args.benchmark} needs --root DIR (where the dataset goes)")
        root = download_benchmark(args.benchmark, args.root or DEFAULT_DTD_ROOT, progress=not args.no_progress)
        print(f"{args.benchmark} is ready in {root}; check it with: python -m urd_lightning data check "
              f"{args.benchmark} --root {root}")
        return 0
    if args.command == "check":
        if args.benchmark == "dtd":
            from urd_lightning.data.dtd import check_dtd, format_dtd

            report = check_dtd(args.root)
            print(report.to_json() if args.json else format_dtd(report))
            return 0 if report.ok else 1
        from urd_lightning.data.check import check_dataset

        options = {}
        if args.benchmark == "folder":
            options = {"normal_dir": args.normal_dir, "abnormal_dir": args.abnormal_dir, "mask_dir": args.mask_dir,
                       "normal_test_dir": args.normal_test_dir, "normal_split_ratio": args.normal_split_ratio}
        report = check_dataset(args.benchmark, args.root, args.category, image_size=args.image_size,
                               resize=args.resize, **options)
        print(report.to_json() if args.json else report.format())
        return 0 if report.ok else 1
    from urd_lightning.data.demo import ensure_demo, generate_demo

    root = generate_demo(args.root) if args.force else ensure_demo(args.root)
    print(f"demo dataset ready in {root} (categories: weave, disc)")
    return 0
