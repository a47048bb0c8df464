"""Safe reading of checkpoint files, shared by every command that reads one (train resume, test, predict, export).

``torch.load(weights_only=True)`` never runs pickled code, but its errors are pages of advice (with colour codes)
that tell the user to allow arbitrary code. Here every failure becomes one :class:`CheckpointError` line that says
which of three things is wrong: the file is not a checkpoint at all (random or foreign bytes), it is damaged
(truncated zip), or it names Python objects that safe loading refuses (listed by name, found without running them).

A weights-only file (``export format=weights``) is a safetensors file: the inference weights (teacher
and student, no expert, no optimizer or loop state) under their Lightning ``state_dict`` names, and the
extras (``run/extras.py``) as JSON in its string metadata under ``EXTRAS_KEY``. :func:`load_inference_file` reads
either kind into the same ``{"state_dict", EXTRAS_KEY}`` dict, so ``test`` and ``predict`` need no second code path.
"""

from __future__ import annotations

import json
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from urd_lightning.errors import CheckpointError
from urd_lightning.files import write_via
from urd_lightning.run.extras import EXTRAS_KEY

WEIGHTS_SUFFIX = ".safetensors"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(exc).__name__}: {line[:200]}"


def _pickle_globals(path: Path) -> list[str] | None:
    """``module.name`` of every global a plain (non-zip) pickle names, read without running it.

    ``None`` when the file does not parse as a pickle (random or foreign bytes).
    """
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - anything the parser trips on means "not a pickle"
        return None
    return names


def _refused_globals(path: Path) -> list[str]:
    """Globals that ``weights_only`` loading would refuse; raises CheckpointError for a file that is no checkpoint."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as exc:  # noqa: BLE001 - a damaged archive, whatever the reader trips on
            raise CheckpointError(f"{path} is a damaged checkpoint (truncated or corrupt?): "
                                  f"{_first_line(exc)}") from exc
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":  # a zip archive that lost its end (the directory is written last)
            raise CheckpointError(f"{path} is a damaged checkpoint (truncated: the archive has no end); "
                                  "use an earlier or complete copy")
    names = _pickle_globals(path)  # torch's legacy format starts with a pickle that names no global
    if names is None:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle): "
                              "give the .ckpt that training wrote")
    return [name for name in names if name != "collections.OrderedDict"]


def load_checkpoint_file(path: str | Path, trust_checkpoint: bool = False, trust_hint: str | None = None,
                         mmap: bool = False) -> Any:
    """``torch.load`` a checkpoint on the CPU; every failure is one :class:`CheckpointError` line naming the file.

    Args:
        path: the file.
        trust_checkpoint: load with ``weights_only=False`` (runs pickled code: only for files the user trusts).
        trust_hint: how this command lets a user trust a file (e.g. "pass trust_checkpoint=true"); ``None`` when it
            cannot, then the message says the file was not written by this package's training.
        mmap: map the tensors instead of reading them (a cheap validity check of a large file).

    Raises:
        CheckpointError: missing, not a checkpoint, damaged, or holding objects safe loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: give the .ckpt that training wrote")
    if not trust_checkpoint:
        refused = _refused_globals(path)
        if refused:
            fix = (f"If you trust where this file came from, {trust_hint}" if trust_hint else
                   "urd-lightning's training never writes such objects, so this file is not one of its checkpoints")
            raise CheckpointError(f"{path} holds Python objects that safe loading refuses ({', '.join(refused[:4])})."
                                  f" {fix}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure left here means damaged bytes
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{_first_line(exc)}") from exc


def is_weights_file(path: str | Path) -> bool:
    """Whether ``path`` is meant as a safetensors weights file.

    Told by its suffix or by its first bytes (an 8-byte header length, then the JSON header's ``{``), so a renamed
    file is still recognised.
    """
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def save_weights_file(path: str | Path, state_dict: dict[str, torch.Tensor], extras: dict[str, Any]) -> Path:
    """Write ``state_dict`` and the checkpoint extras (as JSON metadata) to a safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        tensor = value.detach().cpu().contiguous()
        if tensor.untyped_storage().data_ptr() in seen:  # safetensors refuses tensors that share memory
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    metadata = {EXTRAS_KEY: json.dumps(extras), "format": "pt"}
    return write_via(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata),
                     needed=sum(t.numel() * t.element_size() for t in tensors.values()))


def load_weights_file(path: str | Path) -> dict[str, Any]:
    """Read a weights file as ``{"state_dict": tensors, EXTRAS_KEY: extras}``; one CheckpointError line if not."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open has no iter
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors weights file (truncated or corrupt?): "
                              f"{_first_line(exc)}; write it again with export format=weights") from exc
    try:
        extras = json.loads(metadata[EXTRAS_KEY])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is a safetensors file but not one of urd-lightning's (no '{EXTRAS_KEY}' "
                              "metadata): write it with python -m urd_lightning export ckpt=last.ckpt "
                              "format=weights") from exc
    return {"state_dict": state, EXTRAS_KEY: extras}


def load_inference_file(path: str | Path, trust_checkpoint: bool = False, trust_hint: str | None = None) -> Any:
    """A ``.ckpt`` (:func:`load_checkpoint_file`) or a weights-only ``.safetensors`` (:func:`load_weights_file`).

    Both give a dict with ``state_dict`` and ``EXTRAS_KEY``; only the ``.ckpt`` also has optimizer/loop state.
    """
    path = Path(path)
    if path.is_file() and is_weights_file(path):
        return load_weights_file(path)
    return load_checkpoint_file(path, trust_checkpoint, trust_hint)
