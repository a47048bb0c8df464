"""File digests (``data/digests.py``): each file read once per run, not again at a later start-up while unchanged,
and read again as soon as it changes, even with the same size and the old mtime put back.

The memo trusts only files whose timestamps were older than ``RACY_NS`` when read; the tests move the clock the
memo sees forward instead of waiting (``later``), except where the racy rule itself is tested.
"""

import hashlib
import json
import os
import time
from collections import Counter

import cv2
import numpy as np
import pytest

from urd_lightning.data import digests
from urd_lightning.data.cache import content_digest
from urd_lightning.data.datamodule import AnomalyDataModule


@pytest.fixture
def reads(monkeypatch):
    """Counts every file the digests read (by path) and starts with an empty in-process memo (a new process)."""
    counter = Counter()
    real = digests.sha1_file

    def counting(path):
        counter[os.path.abspath(path)] += 1
        return real(path)

    monkeypatch.setattr(digests, "sha1_file", counting)
    monkeypatch.setattr(digests, "_SEEN", {})
    return counter


@pytest.fixture
def later(monkeypatch):
    """The files were written long before the run (as real data is): the clock reads 1 h ahead."""
    monkeypatch.setattr(digests, "_now_ns", lambda: time.time_ns() + 3600 * 10**9)


@pytest.fixture
def dtd_root(tmp_path):
    folder = tmp_path / "dtd" / "images" / "banded"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.jpg"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    return tmp_path / "dtd"


def new_process(monkeypatch):
    monkeypatch.setattr(digests, "_SEEN", {})


def files(folder, count, size=1000):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"{i:03d}.jpg" for i in range(count)]
    for path in paths:
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return paths


def next_tick(path):
    """Wait (no time limit: a handful of ms) until a file written now gets a newer timestamp than ``path`` has."""
    probe = path.with_name("tick.probe")
    for _ in range(10_000):
        probe.write_bytes(b"x")
        if os.stat(probe).st_ctime_ns > max(os.stat(path).st_mtime_ns, os.stat(path).st_ctime_ns):
            probe.unlink()
            return
        time.sleep(0.001)
    raise AssertionError("the file system clock did not advance")


def test_digests_are_the_sha1_of_the_bytes_and_the_combined_key_is_unchanged(tmp_path, reads):
    paths = files(tmp_path / "d", 3)
    assert digests.file_digests(paths) == [hashlib.sha1(p.read_bytes()).hexdigest() for p in paths]
    combined = hashlib.sha1()  # the pixel cache's key as earlier versions computed it: existing caches stay valid
    for path in paths:
        combined.update(hashlib.sha1(path.read_bytes()).digest())
    assert content_digest(paths) == combined.hexdigest()


def test_a_later_start_up_reads_no_unchanged_file(tmp_path, reads, later, monkeypatch):
    paths = files(tmp_path / "d", 5)
    first = digests.file_digests(paths, tmp_path / "cache")
    assert all(reads[os.path.abspath(p)] == 1 for p in paths)
    assert digests.file_digests(paths, tmp_path / "cache") == first and sum(reads.values()) == 5  # same process
    new_process(monkeypatch)
    assert digests.file_digests(paths, tmp_path / "cache") == first and sum(reads.values()) == 5  # from the memo
    memo = json.loads((tmp_path / "cache" / digests.MEMO_NAME).read_text())
    assert set(memo["files"]) == {os.path.abspath(p) for p in paths}


@pytest.mark.parametrize("restore_mtime", [False, True])
def test_a_rewritten_file_of_the_same_size_is_read_again(tmp_path, reads, later, monkeypatch, restore_mtime):
    paths = files(tmp_path / "d", 2)
    first = digests.file_digests(paths, tmp_path / "cache")
    stat = os.stat(paths[0])
    next_tick(paths[0])
    paths[0].write_bytes(bytes(255 - b for b in paths[0].read_bytes()))  # same size, other bytes
    if restore_mtime:  # as `cp -p` or rsync would leave it: only ctime says the file changed
        os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(paths[0]).st_size == stat.st_size
    for _ in range(2):  # in this process, and in the next one (through the memo)
        again = digests.file_digests(paths, tmp_path / "cache")
        assert again[0] == hashlib.sha1(paths[0].read_bytes()).hexdigest() != first[0] and again[1] == first[1]
        new_process(monkeypatch)
    assert reads[os.path.abspath(paths[0])] == 2 and reads[os.path.abspath(paths[1])] == 1


def test_files_written_moments_ago_are_not_remembered(tmp_path, reads):
    paths = files(tmp_path / "d", 2)  # the real clock: these are racy (a rewrite could keep their timestamps)
    digests.file_digests(paths, tmp_path / "cache")
    digests.file_digests(paths, tmp_path / "cache")
    assert sum(reads.values()) == 4 and not (tmp_path / "cache" / digests.MEMO_NAME).exists()


def test_a_damaged_memo_is_ignored(tmp_path, reads, later):
    paths = files(tmp_path / "d", 2)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / digests.MEMO_NAME).write_text("{not json")
    assert digests.file_digests(paths, tmp_path / "cache") == [hashlib.sha1(p.read_bytes()).hexdigest() for p in paths]
    assert json.loads((tmp_path / "cache" / digests.MEMO_NAME).read_text())["version"] == digests.MEMO_VERSION


def test_a_run_reads_each_training_image_and_texture_once(mvtec_root, dtd_root, tmp_path, reads, later, monkeypatch):
    def set_up():
        datamodule = AnomalyDataModule("mvtec", str(mvtec_root), "bottle", image_size=32, num_workers=0,
                                       textures="dtd", dtd_root=str(dtd_root), foreground="otsu",
                                       cache_dir=str(tmp_path / "fg"), pixel_cache_dir=str(tmp_path / "px"))
        datamodule.setup("fit")
        return datamodule

    datamodule = set_up()  # foreground masks and pixel cache hash the same training images: once
    train = [os.path.abspath(s.image_path) for s in datamodule.train_data.samples]
    textures = [os.path.abspath(p) for p in datamodule.train_data.source.paths]
    assert train and textures and all(reads[p] == 1 for p in train + textures)
    assert set(reads) == set(train + textures)
    new_process(monkeypatch)
    key = datamodule.train_data.cache.path
    again = set_up()  # the next start-up: nothing is read, and the caches are the same files
    assert all(reads[p] == 1 for p in train + textures) and again.train_data.cache.path == key
