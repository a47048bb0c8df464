"""Download helpers without network: checksum, resume over file://, safe extraction of hostile archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile

import pytest

from urd_lightning.data import download as dl
from urd_lightning.errors import DataError


def _tar(path, members: list[tuple[str, bytes | None, str | None]]):
    """members: (name, data, symlink target)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_good_tar_extracts(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [("cat/train/good/000.png", b"x", None), ("cat/link", None, "train")])
    dl.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "cat" / "train" / "good" / "000.png").read_bytes() == b"x"


@pytest.mark.parametrize("members", [
    [("../evil.txt", b"x", None)],
    [("/tmp/evil_abs.txt", b"x", None)],
    [("cat/ok.txt", b"x", None), ("cat/escape", None, "../../outside")],
    [("cat/abs_link", None, "/etc/passwd")],
], ids=["dotdot", "absolute", "symlink-out", "symlink-absolute"])
def test_hostile_tar_rejected_before_anything_is_written(tmp_path, members):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    with pytest.raises(DataError, match="unsafe member"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*"))
    assert not (tmp_path / "evil.txt").exists()


def test_hostile_zip_rejected(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", "x")
        zf.writestr("../../evil.txt", "x")
    with pytest.raises(DataError, match="evil.txt"):
        dl.safe_extract(archive, tmp_path / "out")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("cat/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="symbolic link"):
        dl.safe_extract(link, tmp_path / "out2")


def test_checksum_mismatch_names_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"hello")
    dl.verify_sha256(path, hashlib.sha256(b"hello").hexdigest())
    with pytest.raises(DataError, match="checksum mismatch for .*a.bin"):
        dl.verify_sha256(path, "0" * 64)


def test_download_benchmark_verifies_archive_already_on_disk(tmp_path, monkeypatch):
    root = tmp_path / "mv"
    root.mkdir()
    archive = _tar(root / "fake.tar.gz", [("bottle/train/good/000.png", b"png", None)])
    good = dl.Archive("file:///nonexistent", dl.sha256_of(archive), "fake.tar.gz")
    monkeypatch.setitem(dl.ARCHIVES, "mvtec", dl.Archive(good.url, "f" * 64, good.filename))
    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download_benchmark("mvtec", root, progress=False)
    monkeypatch.setitem(dl.ARCHIVES, "mvtec", good)
    dl.download_benchmark("mvtec", root, progress=False)
    assert (root / "bottle" / "train" / "good" / "000.png").read_bytes() == b"png"
    dl.download_benchmark("mvtec", root, progress=False)  # second call: marker, no re-extraction


def test_download_resumes_part_file(tmp_path):
    source = tmp_path / "src.bin"
    payload = bytes(range(256)) * 100
    source.write_bytes(payload)
    dest = tmp_path / "dst.bin"
    (tmp_path / "dst.bin.part").write_bytes(payload[:1000])  # an interrupted earlier download
    dl.download(source.as_uri(), dest, progress=False)  # file:// ignores Range: the file is rewritten whole
    assert dest.read_bytes() == payload and not (tmp_path / "dst.bin.part").exists()


def test_download_resume_over_http(tmp_path):
    import http.server
    import threading
    from functools import partial

    payload = bytes(range(256)) * 400
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "data.bin").write_bytes(payload)

    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # minimal Range support, enough to test resuming
            data = (tmp_path / "srv" / "data.bin").read_bytes()
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])

    server = http.server.HTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(tmp_path / "srv")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "got.bin"
        (tmp_path / "got.bin.part").write_bytes(payload[:5000])
        dl.download(f"http://127.0.0.1:{server.server_port}/data.bin", dest, progress=False, timeout=10)
        assert dest.read_bytes() == payload
    finally:
        server.shutdown()
        server.server_close()


def test_mpdd_and_offline_messages(tmp_path):
    with pytest.raises(DataError, match="github.com/stepanje/MPDD"):
        dl.download_benchmark("mpdd", tmp_path)
    with pytest.raises(DataError, match="cannot reach .* put it at"):
        dl.download("http://127.0.0.1:9/none.tar", tmp_path / "none.tar", progress=False, timeout=2)
