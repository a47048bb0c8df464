"""Checkpoint reading refuses pickled objects by two defences, each tested here with the other one disabled.

The scan (``_refused_globals``) lists the globals a file names without running anything and refuses the file with a
clear line; ``torch.load(weights_only=True)`` refuses them again while loading. Either alone must keep pickled code
from running.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from urd_lightning import checkpoint_io
from urd_lightning.checkpoint_io import load_checkpoint_file
from urd_lightning.errors import CheckpointError


def leave_mark(path: str) -> str:
    """What a hostile pickle would do instead: run code at load time (here, write a file)."""
    Path(path).write_text("ran")
    return path


class RunsCodeWhenLoaded:
    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return leave_mark, (str(self.mark),)


def checkpoint_holding(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """A Lightning-like checkpoint with one object safe loading refuses; the file a load that ran it would write."""
    mark = tmp_path / "code-ran"
    held = Path("x") if kind == "path" else RunsCodeWhenLoaded(mark)
    path = tmp_path / f"{kind}.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(2)}, "hyper_parameters": {"held": held}}, path)
    return path, mark


@pytest.mark.parametrize("kind", ["path", "code"])
def test_weights_only_loading_refuses_without_the_scan(kind, tmp_path, monkeypatch):
    path, mark = checkpoint_holding(kind, tmp_path)
    assert checkpoint_io._refused_globals(path)  # what the scan would have caught, switched off below
    monkeypatch.setattr(checkpoint_io, "_refused_globals", lambda path: [])
    with pytest.raises(CheckpointError, match=path.name):
        load_checkpoint_file(path)
    assert not mark.exists()


@pytest.mark.parametrize("kind", ["path", "code"])
def test_the_scan_refuses_without_weights_only_loading(kind, tmp_path, monkeypatch):
    path, mark = checkpoint_holding(kind, tmp_path)
    real_load = torch.load

    def unsafe_load(*args, **kwargs):
        return real_load(*args, **{**kwargs, "weights_only": False})

    monkeypatch.setattr(torch, "load", unsafe_load)
    name = "pathlib" if kind == "path" else "leave_mark"
    with pytest.raises(CheckpointError, match=f"holds Python objects that safe loading refuses.*{name}"):
        load_checkpoint_file(path)
    assert not mark.exists()
    load_checkpoint_file(path, trust_checkpoint=True)  # the stand-in really loads unsafely: the scan stopped it
    assert mark.exists() == (kind == "code")
