"""Writing files safely: atomically (temporary file in the same folder, then a rename), with one-line errors.

Every file the tool writes goes through :func:`write_atomic` (bytes or text) or :func:`write_via` (a library that
wants a path: OpenCV, ONNX, TorchScript, matplotlib), so a crash, an interrupt or a full disk never leaves a
half-written file in place of a good one. A full disk (``ENOSPC``) and a folder without permission become
:class:`OutputError` lines naming the path (and, for a full disk, the space needed and free).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from urd_lightning.errors import DiskFullError, OutputError


def _mb(n: float) -> str:
    """A size for a message, in the unit that shows it (a 2 KB JSON file is not "0.0 MB")."""
    if n < 2**10:
        return f"{int(n)} bytes"
    if n < 2**20:
        return f"{n / 2**10:.1f} KB"
    return f"{n / 2**20:.1f} MB"


def free_bytes(path: Path) -> int | None:
    """Free space on the disk holding ``path`` (or its nearest existing parent); ``None`` when unknown."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def disk_error(exc: BaseException, path: Path, needed: int | None = None) -> OutputError | None:
    """The one-line error for an ``OSError`` anywhere in ``exc``'s chain (a full disk, no permission), or ``None``.

    Libraries wrap the OS error (torch: "unexpected pos"; OpenCV: a ``False`` return), so the chain is searched.
    """
    seen: BaseException | None = exc
    while seen is not None:
        # safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)").
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "No space left on device" in str(seen):
            free = free_bytes(path)
            need = f"about {_mb(needed)} needed, " if needed else ""
            have = f"{_mb(free)} free" if free is not None else "free space unknown"
            return DiskFullError(f"no space left on the disk while writing {path} ({need}{have}); free some space or "
                               "choose another output folder")
        if isinstance(seen, OSError) and seen.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return OutputError(f"cannot write {path}: {seen.strerror}; choose a folder you can write to")
        seen = seen.__cause__ or seen.__context__
    return None


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask (0o644 under the usual 022).

    ``mkstemp`` creates its file 0o600 whatever the umask, so a file renamed into place from it would be unreadable
    for everyone else on a shared machine (labmates reading checkpoints, metrics and reports).
    """
    return 0o666 & ~current_umask()


def write_via(path: str | Path, write: Callable[[Path], object], needed: int | None = None,
              suffix: str | None = None) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    Args:
        path: the final file.
        write: writes the file it is given (e.g. ``lambda p: cv2.imwrite(str(p), image)``); a ``False`` return
            (OpenCV's way of failing) counts as a failure.
        needed: the expected size in bytes, for the full-disk message.
        suffix: the temporary file's suffix; default ``path``'s (writers such as OpenCV choose the format by it).

    Raises:
        OutputError: no space left or no permission (the temporary file is removed; ``path`` is untouched).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix or path.suffix or ".tmp",
                                    dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise disk_error(exc, path, needed) or exc from exc
    tmp = Path(name)
    try:
        if write(tmp) is False:
            raise OSError(errno.EIO, f"the writer reported failure for {path}")
        os.chmod(tmp, plain_file_mode())  # after the writer: some writers replace the file they are given
        os.replace(tmp, path)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if _interrupted(exc):
            raise KeyboardInterrupt from None  # a library turned the interrupt into its own error
        mapped = disk_error(exc, path, needed)
        if mapped is not None:
            raise mapped from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`write_via`."""
    payload = data.encode() if isinstance(data, str) else data
    return write_via(path, lambda tmp: tmp.write_bytes(payload), needed=len(payload))


def _interrupted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def probe_writable(folder: str | Path) -> None:
    """The one writability probe: raise the ``OSError`` that making ``folder`` (if missing) or a file in it would.

    It creates no folder and touches nothing that exists: one temporary file is made and removed in ``folder`` or,
    when ``folder`` is missing, in its nearest existing parent, where the folder would be made. (A probe that made
    the folder and removed it again could remove it under a concurrent run, e.g. another DDP rank, that is about
    to write into it.)
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder", str(existing))
    fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=existing)
    os.close(fd)
    os.unlink(probe)


def ensure_writable(folder: str | Path, what: str) -> Path:
    """Prove that ``folder`` can be created (if missing) and can hold a file, before any work starts.

    Nothing is created or changed (:func:`probe_writable`): the work makes the folder when it needs it.

    Raises:
        OutputError: one line naming the key (``what``), the folder and why.
    """
    folder = Path(folder)
    try:
        probe_writable(folder)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = "" if folder.is_absolute() else f" ({Path.cwd() / folder})"  # relative: to the current folder
        raise OutputError(f"{what}={folder}{where} cannot be written ({reason}); choose a folder you can write "
                          "to") from exc
    return folder
