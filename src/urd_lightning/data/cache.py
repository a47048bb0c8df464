"""Decoded, resized pixels shared by every loader worker and DDP rank through one memory-mapped file.

A training sample used to decode its PNG and resize it at every epoch (≈ 20-30 ms of a 900² PNG, most of a sample's
time), and the same for its DTD texture. A :class:`PixelCache` holds ``count`` slots of ``(size, size, 3)`` uint8
in one file under ``data.pixel_cache_dir``; a slot is filled by the first process that needs it and read by all the
others from the shared page cache. 1,000 training images at 256² take 197 MB, all of DTD (5,640 images) 1.1 GB.

- The file name is a hash of what the pixels depend on: the bytes of every source file (or, for generated textures,
  the generator's version), the model size and the resize method. A changed image gives a new file; stale files are
  never read (delete ``.cache/urd/pixels`` to reclaim the space). The files' digests are remembered in the cache
  folder (``digests.py``), so an unchanged DTD is not read again at every start-up.
- The file is created sparse and complete under a temporary name, then linked to its final name, which fails if
  another process got there first: everyone then opens the same file. Each slot has a flag byte, set after the
  slot's pixels are written; a slot whose flag is 0 is (re)computed, so a process killed mid-write leaves no half
  slot behind. Two processes may fill the same slot at once: they write the same bytes.
- Pickling (to a forkserver worker) carries the path, not the mapping: each worker maps the file itself, so the
  pixels are never copied per worker.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from urd_lightning.data.digests import file_digests
from urd_lightning.files import plain_file_mode

CACHE_VERSION = 1  # bump when the slot layout or what a slot holds changes


def content_digest(paths: Sequence[str | Path], memo_dir: str | Path | None = None) -> str:
    """One sha1 over the sha1 of every file's bytes, in order.

    The files' digests come from :func:`digests.file_digests`: read once per run, and with ``memo_dir`` not read
    again at the next start-up while unchanged (DTD is 5,640 files, ~600 MB).
    """
    digest = hashlib.sha1()
    for file_digest in file_digests(paths, memo_dir):
        digest.update(bytes.fromhex(file_digest))
    return digest.hexdigest()


class PixelCache:
    """``count`` lazily filled ``(size, size, 3)`` uint8 slots in one memory-mapped file.

    Args:
        cache_dir: folder of the cache files.
        name: readable prefix of the file name (``train``, ``dtd``, ``procedural``).
        key: what the pixels depend on besides ``count``/``size`` (a content digest, the resize method...).
        count: number of slots.
        size: square side of a slot.
    """

    def __init__(self, cache_dir: str | Path, name: str, key: str, count: int, size: int) -> None:
        tag = hashlib.sha1(f"{CACHE_VERSION}|{key}|{count}|{size}".encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"{name}-{count}x{size}-{tag}.u8"
        self.count, self.size = count, size
        self._slot = size * size * 3
        self._map: np.memmap | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_map"] = None  # a worker maps the file itself (pickling a memmap would copy its whole content)
        return state

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(suffix=".tmp", dir=self.path.parent)
        try:
            os.chmod(tmp, plain_file_mode())  # mkstemp's 0600 would lock out other users
            os.ftruncate(handle, self.count * (self._slot + 1))  # sparse: disk is used as slots are filled
            os.close(handle)
            try:
                os.link(tmp, self.path)  # atomic and never replaces a file another process already uses
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _mapping(self) -> np.memmap:
        if self._map is None:
            if not self.path.is_file():
                self._create()
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r+", shape=(self.count * (self._slot + 1),))
        return self._map

    def __len__(self) -> int:
        return self.count

    def get(self, index: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Slot ``index`` as a read-only ``(size, size, 3)`` uint8 array; ``compute()`` makes it on first use."""
        mapping = self._mapping()
        flags = mapping[self.count * self._slot:]
        data = mapping[index * self._slot:(index + 1) * self._slot]
        if flags[index]:
            view = np.asarray(data).reshape(self.size, self.size, 3)  # a plain array: no memmap subclass downstream
            view.flags.writeable = False
            return view
        pixels = compute()
        if pixels.shape != (self.size, self.size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"cache slot must be ({self.size}, {self.size}, 3) uint8, got {pixels.shape} "
                             f"{pixels.dtype}")
        data[:] = pixels.reshape(-1)
        flags[index] = 1  # after the pixels: a reader that sees the flag sees the whole slot
        return pixels
