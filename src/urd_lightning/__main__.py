"""Command line: ``urd <command> [key=value ...]`` (``urd`` is ``python -m urd_lightning``).

Every command is a ``main(argv) -> int`` in its own module, imported only when called so that ``--help`` and
``data check`` start fast; every command reads its arguments by the one grammar of ``config/cli.py`` and
``urd <command> --help`` lists its keys. User errors (:class:`urd_lightning.errors.URDError`) print one clear message
and exit 2, never a stack trace.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import sys

from urd_lightning import __version__

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("urd_lightning.training.train", "main", "train and evaluate one (dataset, category): train k=v ..."),
    "test": ("urd_lightning.training.evaluate", "main", "evaluate a checkpoint: test ckpt=PATH [key=value ...]"),
    "print-config": ("urd_lightning.config", "print_config_main", "show the resolved config: print-config key=value"),
    "data": ("urd_lightning.data.cli", "main", "datasets: data download|check|demo <benchmark> root=DIR"),
    "predict": ("urd_lightning.deploy.predict", "main", "score images: predict ckpt=PATH input=FILE|DIR output=DIR"),
    "export": ("urd_lightning.deploy.export", "main", "export a model: export ckpt=PATH format=onnx|torchscript"),
    "benchmark": ("urd_lightning.benchmark.runner", "main", "every category of a benchmark: benchmark dataset=mvtec"),
    "report": ("urd_lightning.benchmark.report", "main", "tables and plots from a results folder: report DIR"),
}


# Where a path given on the command line is read-only, not a folder, or a file stands where a folder must be made.
_PLACE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def _usage() -> str:
    lines = ["usage: urd <command> [key=value ...]    (urd is python -m urd_lightning)", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'urd <command> --help' for a command's keys (type, default, description); "
              "'urd --version' for the version."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"urd-lightning {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]}?" if close else ""
        print(f"error: unknown command {name!r}.{hint} `urd --help` lists the commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    from urd_lightning.errors import URDError

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("urd_lightning"):
            print(f"error: the '{name}' command is not available in this version.", file=sys.stderr)
            return 2
        raise
    try:
        return int(getattr(module, func_name)(rest) or 0)
    except URDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made or written (read-only, a file in the way): one line
        if exc.errno not in _PLACE_ERRNOS or exc.filename is None:
            raise
        print(f"error: cannot write {exc.filename}: {exc.strerror}; choose a folder you can write to (a --root, "
              "output_dir=, data.root= or data.cache_dir= / data.pixel_cache_dir= that is a writable folder)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # 130: the shell's code for SIGINT (training: 143 after SIGTERM); how to continue
        label = getattr(exc, "label", "interrupted")
        print(f"{label}: {exc}" if str(exc) else label, file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    sys.exit(main())
