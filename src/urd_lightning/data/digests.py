"""Content digests of data files: each file read once per run and, with a memo on disk, once per change.

The pixel cache (``cache.py``) is keyed by the bytes of every training image and every DTD image (5,640 files,
~600 MB), the foreground masks (``foreground.py``) by the bytes of each training image. Reading them is most of a
run's start-up, so:

- In a process, a file's sha1 is computed once and shared by every user (the foreground masks and the pixel cache
  hash the same training images).
- ``file-digests.json`` in a cache folder keeps ``path -> (size, mtime_ns, ctime_ns, sha1)``; at the next start-up
  a file whose three numbers are unchanged is not read again. Any write changes mtime and ctime, including a
  rewrite with the same size and a copy that puts the old mtime back (ctime cannot be set back).
- A file's timestamps advance in steps of the kernel's clock tick (a few ms), so a file written in the same tick as
  it was read could change without a new timestamp. A digest is therefore remembered only for a file whose
  timestamps were already ``RACY_NS`` old when it was read (git's "racy" rule); newer files are read every time.
  (On a network file system whose clock is far from this machine's the rule is weaker; delete the memo after
  rewriting files there in place within seconds of a run.)

The memo is an optimisation: an unreadable or damaged one is ignored, and one that cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

from urd_lightning.errors import URDError
from urd_lightning.files import write_atomic

MEMO_NAME = "file-digests.json"
MEMO_VERSION = 1  # bump when the entries change meaning
RACY_NS = 2_000_000_000  # 2 s: hundreds of timestamp ticks, and some margin for a network file system's clock

# (absolute path, size, mtime_ns, ctime_ns) -> sha1 hex, for files that were not racy when read: this process's
# digests, shared by every caller.
_SEEN: dict[tuple[str, int, int, int], str] = {}


def _now_ns() -> int:
    return time.time_ns()


def sha1_file(path: str | Path) -> str:
    """Hex sha1 of a file's bytes (read in blocks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha1").hexdigest()


def _signature(path: str | Path) -> tuple[str, int, int, int]:
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_memo(memo_dir: Path) -> dict[str, list]:
    try:
        memo = json.loads((memo_dir / MEMO_NAME).read_text())
        return dict(memo["files"]) if memo.get("version") == MEMO_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # absent or damaged: every file is read, and a new memo is written


def _write_memo(memo_dir: Path, new: dict[str, list]) -> None:
    """Add ``new`` to the memo (merged with what another process may have written meanwhile), dropping gone files."""
    entries = {path: entry for path, entry in _read_memo(memo_dir).items() if os.path.exists(path)} | new
    try:
        write_atomic(memo_dir / MEMO_NAME, json.dumps({"version": MEMO_VERSION, "files": entries}))
    except (OSError, URDError):
        pass  # a read-only or full cache folder: the next start-up reads the files again, nothing else changes


def file_digests(paths: Sequence[str | Path], memo_dir: str | Path | None = None) -> list[str]:
    """The hex sha1 of every file's bytes, in order; each file read at most once per process and per change.

    Args:
        paths: the files.
        memo_dir: a cache folder holding ``file-digests.json``; None keeps the digests in this process only.
    """
    memo = _read_memo(Path(memo_dir)) if memo_dir is not None else {}
    digests, new = [], {}
    for path in paths:
        read_at = _now_ns()  # before the stat: the bytes read below are at least as new as this
        signature = _signature(path)
        name, stamps = signature[0], list(signature[1:])
        digest = _SEEN.get(signature)
        if digest is None:
            entry = memo.get(name)
            digest = entry[3] if isinstance(entry, list) and entry[:3] == stamps else sha1_file(path)
            if read_at - max(signature[2], signature[3]) <= RACY_NS:
                digests.append(digest)  # written moments ago: it may still change within a tick; remember nothing
                continue
            _SEEN[signature] = digest
        if memo_dir is not None and memo.get(name) != [*stamps, digest]:
            new[name] = [*stamps, digest]
        digests.append(digest)
    if new:
        _write_memo(Path(memo_dir), new)  # type: ignore[arg-type]
    return digests
