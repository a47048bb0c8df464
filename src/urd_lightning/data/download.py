"""Benchmark and DTD downloads: resumable, sha256-verified (also for an archive already on disk), safely extracted.

URLs and sha256 sums are the public ones also used by anomalib's datamodules (MVTec AD, VisA, BTAD) and its DRAEM
model (DTD, the anomaly textures). MPDD has no archive with a published checksum: the command prints where to get
it and the tree to put it in. Extraction refuses any member that would land outside the root: absolute paths,
``..`` components, links pointing out, device files. Nothing is downloaded implicitly: training only checks the
data (work offline first).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from urd_lightning.errors import DataError
from urd_lightning.files import write_atomic

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """Where a benchmark's archive lives and what it must hash to."""

    url: str
    sha256: str
    filename: str
    subdir: str | None = None  # a top-level folder inside the archive whose content is the dataset root


ARCHIVES: dict[str, Archive] = {
    "mvtec": Archive("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
                     "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
                     "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
                     "mvtec_anomaly_detection.tar.xz"),
    "visa": Archive("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                    "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362", "VisA_20220922.tar"),
    "btad": Archive("https://avires.dimi.uniud.it/papers/btad/btad.zip",
                    "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a", "btad.zip",
                    subdir="BTech_Dataset_transformed"),
    # Describable Textures Dataset (Cimpoi et al., CVPR 2014), the paper's anomaly source: the official archive
    # (torchvision's DTD dataset downloads the same file); it extracts to dtd/{images,labels,imdb}.
    "dtd": Archive("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
                   "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205", "dtd-r1.0.1.tar.gz",
                   subdir="dtd"),
}
MANUAL = {
    "mpdd": ("https://github.com/stepanje/MPDD",
             "<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>/<stem>_mask.png}"),
    "folder": ("(your own images)", "<root>/<normal_dir>, optional <abnormal_dir>, <mask_dir>, <normal_test_dir>"),
    "demo": ("(generated, no download)", "run: python -m urd_lightning data demo --root DIR"),
}
EXPECTED_TREES = {
    "mvtec": "<root>/<category>/{train/good, test/<defect>|good, ground_truth/<defect>/<stem>_mask.png}",
    "visa": "<root>/<category>/Data/{Images/Normal,Images/Anomaly,Masks/Anomaly}, <root>/split_csv/1cls.csv",
    "btad": "<root>/{01,02,03}/{train/ok, test/ok, test/ko, ground_truth/ko}",
    "dtd": "<root>/images/<class>/*.jpg (47 classes, 5640 images)",
}


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Raise a DataError naming the file when its sha256 is not ``expected``."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise DataError(f"checksum mismatch for {path}: sha256 {actual}, expected {expected}. The file is corrupt "
                        "or not the official archive: delete it and download again.")


def download(url: str, dest: str | Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https/file URLs we list)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the range starts at the end: the .part file is complete
            part.replace(dest)
            return dest
        raise DataError(f"download of {url} failed: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot reach {url} ({exc}). Download it on a connected machine and put it at {dest}; "
                        "it is verified before extraction.") from exc
    with response:
        resumed = offset and getattr(response, "status", 200) == 206
        mode = "ab" if resumed else "wb"  # a server that ignores Range sends the whole file again
        total = response.headers.get("Content-Length")
        total = int(total) + (offset if resumed else 0) if total else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=offset if resumed else 0, unit="B", unit_scale=True, desc=dest.name,
                       disable=None)  # None: no bar without a terminal (a log file would fill with \r updates)
        with open(part, mode) as handle:
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                if bar is not None:
                    bar.update(len(block))
        if bar is not None:
            bar.close()
    part.replace(dest)
    return dest


def _is_outside(root: Path, name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        return True
    return not (root / pure).resolve().is_relative_to(root.resolve())


def _unsafe_tar_member(root: Path, member: tarfile.TarInfo) -> str | None:
    if _is_outside(root, member.name):
        return "path outside the extraction root"
    if member.issym() or member.islnk():
        target = member.linkname if member.islnk() else str(PurePosixPath(member.name).parent / member.linkname)
        if PurePosixPath(member.linkname).is_absolute() or _is_outside(root, target):
            return f"link pointing outside the extraction root ({member.linkname})"
    if member.isdev() or member.isfifo():
        return "device or fifo"
    return None


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a tar(.gz/.xz) or zip archive into ``dest``.

    Every member is checked first: nothing is written when one is unsafe.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                if _is_outside(dest, info.filename) or is_link:
                    why = "symbolic link" if is_link else "path outside the extraction root"
                    raise DataError(f"unsafe member {info.filename!r} in {archive} ({why}): not extracted")
            zf.extractall(dest)
        return
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as exc:
        raise DataError(f"{archive} is not a tar or zip archive ({exc}): delete it and download again") from exc
    with tar:
        members = tar.getmembers()
        for member in members:
            reason = _unsafe_tar_member(dest, member)
            if reason:
                raise DataError(f"unsafe member {member.name!r} in {archive} ({reason}): not extracted")
        # The "data" filter is a second line of defence where tarfile has it (3.11.4+; Debian 12's 3.11.2 does not).
        safety = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **safety)


def download_benchmark(benchmark: str, root: str | Path, progress: bool = True) -> Path:
    """Get a benchmark into ``root``: reuse or download the archive, verify its sha256, extract it safely."""
    root = Path(root)
    if benchmark in MANUAL:
        url, tree = MANUAL[benchmark]
        where = tree.replace("<root>", str(root))
        check = f"then run: python -m urd_lightning data check {benchmark} --root {root}"
        if benchmark == "folder":  # the user's own images: nothing to download
            raise DataError(f"the folder benchmark is your own images: there is nothing to download. Arrange them as "
                            f"{where}; {check}")
        raise DataError(f"{benchmark} has no archive with a published checksum. Get it from {url} and arrange it as "
                        f"{where}; {check}")
    if benchmark not in ARCHIVES:
        raise DataError(f"unknown benchmark {benchmark!r}; downloadable: {', '.join(ARCHIVES)}")
    info = ARCHIVES[benchmark]
    marker = root / f".extracted-{info.sha256[:12]}"
    if marker.is_file():
        log.info("%s already extracted in %s", benchmark, root)
        return root
    archive = root / info.filename
    if not archive.is_file():
        log.info("downloading %s to %s (resumable; expected tree: %s)", info.url, archive, EXPECTED_TREES[benchmark])
        download(info.url, archive, progress=progress)
    verify_sha256(archive, info.sha256)  # also for an archive that was already on disk
    staging = root / ".extracting"
    shutil.rmtree(staging, ignore_errors=True)
    safe_extract(archive, staging)
    content = staging / info.subdir if info.subdir else staging
    for item in content.iterdir():
        target = root / item.name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        os.replace(item, target)
    shutil.rmtree(staging, ignore_errors=True)
    write_atomic(marker, info.sha256 + "\n")
    return root
