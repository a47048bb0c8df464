"""Files labmates can read: everything the tool writes gets the mode a plain ``open()`` gives under the umask.

``mkstemp`` (the atomic writer's temporary file) creates 0600 whatever the umask; renamed into place unchanged, every
checkpoint, metrics file and report would be unreadable for the rest of a shared cluster's group.
"""

import os
import stat

import numpy as np
import pytest
import torch

from urd_lightning.data.cache import PixelCache
from urd_lightning.files import plain_file_mode, write_atomic, write_via
from urd_lightning.training.callbacks import AtomicCheckpointIO


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_writer_gives_the_plain_open_mode(umask, tmp_path):
    with open(tmp_path / "plain.txt", "w") as handle:  # the reference: what open() gives under this umask
        handle.write("x")
    expected = mode(tmp_path / "plain.txt")
    assert plain_file_mode() == expected == 0o666 & ~umask
    write_atomic(tmp_path / "metrics.json", "{}\n")
    write_via(tmp_path / "curve.png", lambda tmp: tmp.write_bytes(b"png"))
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "checkpoints" / "last.ckpt")
    PixelCache(tmp_path / "cache", "fg", "key", count=2, size=4).get(0, lambda: np.zeros((4, 4, 3), np.uint8))
    written = [tmp_path / "metrics.json", tmp_path / "curve.png", tmp_path / "checkpoints" / "last.ckpt",
               *(tmp_path / "cache").iterdir()]
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
