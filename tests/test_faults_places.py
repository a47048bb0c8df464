"""Fault suite, read-only and odd places (tests/test_faults.py's style): a folder the tool must write that is
read-only or a file is one line naming the key, the path and the fix, exit 2, no traceback, nothing created or
changed, and found before any work starts; default caches in a read-only current folder go to the user's cache
folder with one line saying where.

The tests run as root, for whom a read-only mode bit does not stop a write. So the in-process tests make the one
writability probe (``files.probe_writable``) answer as a read-only disk does (EROFS) for the folders they choose:
those folders stay writable, so a command that wrote into one anyway, or started work first, fails them. The
subprocess tests at the end use a folder that is really read-only (mode 0o555, entered by a process without the
capability that lets root ignore the mode) and skip where no such process can be started.
"""

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.test_faults import SMALL, run_cli, run_cli_output, snapshot

from urd_lightning import files
from urd_lightning.config import load_config, places
from urd_lightning.errors import ConfigError

EROFS = os.strerror(errno.EROFS)


def read_only(monkeypatch, *folders: Path) -> None:
    """Make ``folders`` (and everything under them) read-only to the tool's writability probe (EROFS)."""
    real = files.probe_writable
    roots = [folder.resolve() for folder in folders]

    def probe(folder):
        where = Path(folder).resolve()  # a relative folder is the current folder's
        if any(where == root or root in where.parents for root in roots):
            raise OSError(errno.EROFS, EROFS, str(folder))
        real(folder)

    monkeypatch.setattr(files, "probe_writable", probe)


def refuse_work(monkeypatch, module, *names: str) -> list[str]:
    """Replace ``module``'s work functions by ones that record the call and stop (a refusal must precede them)."""
    started: list[str] = []

    def work(name):
        def begin(*args, **kwargs):
            started.append(name)
            raise ConfigError(f"{name} started")
        return begin

    for name in names:
        monkeypatch.setattr(module, name, work(name))
    return started


@pytest.fixture
def ro(tmp_path, monkeypatch):
    """A folder on a 'read-only disk', holding one file that must survive."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    read_only(monkeypatch, folder)
    return folder


@pytest.fixture
def xdg(tmp_path, monkeypatch):
    """``$XDG_CACHE_HOME`` in the test's folder, and a fresh memory of the lines already said."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(places, "_said", set())
    return tmp_path / "xdg"


# --- data demo / train dataset=demo: the demo's folder ------------------------------------------------------------

def test_demo_into_a_read_only_folder_is_one_line_before_drawing(ro, capsys):
    before = snapshot(ro)
    code, line, out = run_cli_output(capsys, "data", "demo", "--root", str(ro / "x"))
    assert code == 2 and line == f"error: root={ro / 'x'} cannot be written ({EROFS}); choose a folder you can write to"
    assert snapshot(ro) == before and sorted(p.name for p in ro.iterdir()) == ["keep.txt"] and out == ""


def test_demo_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("mine\n")
    before = snapshot(tmp_path)
    for root in (tmp_path / "a_file", tmp_path / "a_file" / "demo"):
        code, line = run_cli(capsys, "data", "demo", "--root", str(root))
        assert code == 2 and f"root={root} cannot be written ({tmp_path / 'a_file'} is a file, not a folder)" in line
    assert snapshot(tmp_path) == before


def test_a_demo_already_written_reads_from_a_read_only_folder(tmp_path, monkeypatch, capsys):
    from urd_lightning.training import train

    assert run_cli(capsys, "data", "demo", "--root", str(tmp_path / "demo"))[0] == 0
    before = snapshot(tmp_path / "demo")
    read_only(monkeypatch, tmp_path / "demo")  # nothing to write: the read-only copy serves
    assert run_cli(capsys, "data", "demo", "--root", str(tmp_path / "demo")) == (0, "")
    started = refuse_work(monkeypatch, train, "build_datamodule")
    code, line = run_cli(capsys, "train", "dataset=demo", f"data.root={tmp_path / 'demo'}",
                         f"output_dir={tmp_path / 'out'}", *SMALL)
    assert (code, line, started) == (2, "error: build_datamodule started", ["build_datamodule"])  # past the checks
    assert snapshot(tmp_path / "demo") == before


def test_train_on_demo_in_a_read_only_folder_stops_before_anything_is_built(ro, tmp_path, capsys, monkeypatch):
    from urd_lightning.training import train

    started = refuse_work(monkeypatch, train, "build_datamodule", "build_module")
    before = snapshot(ro)
    code, line = run_cli(capsys, "train", "dataset=demo", f"data.root={ro}", f"output_dir={tmp_path / 'out'}", *SMALL)
    assert code == 2 and line == f"error: data.root={ro} cannot be written ({EROFS}); choose a folder you can write to"
    assert started == [] and snapshot(ro) == before and not (tmp_path / "out").exists()


# --- benchmark: its output folder and the demo's, before any category starts ------------------------------------

@pytest.mark.parametrize("place", ["output_dir", "data.root"])
def test_benchmark_into_a_read_only_folder_stops_before_any_category(ro, tmp_path, capsys, monkeypatch, place):
    from urd_lightning.benchmark import runner

    started = refuse_work(monkeypatch, runner, "run_benchmark")
    where = {"output_dir": f"output_dir={ro / 'out'}", "data.root": f"data.root={ro / 'demo'}"}
    rest = [where[key] if key == place else f"{key}={tmp_path / key}" for key in where]
    before = snapshot(ro)
    code, line = run_cli(capsys, "benchmark", "dataset=demo", *rest, *SMALL, "in_process=true")
    assert code == 2 and line == f"error: {where[place]} cannot be written ({EROFS}); choose a folder you can write to"
    assert started == [] and snapshot(ro) == before and sorted(p.name for p in ro.iterdir()) == ["keep.txt"]


# --- caches: the defaults follow a read-only current folder to the user's cache folder; a given one never moves ---

def test_caches_stay_in_a_writable_current_folder(tmp_path, monkeypatch, xdg, caplog):
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="urd_lightning"):
        cfg = load_config([])
    assert (cfg.data.cache_dir, cfg.data.pixel_cache_dir) == (".cache/urd/foreground", ".cache/urd/pixels")
    assert "cannot hold the caches" not in caplog.text and list(tmp_path.iterdir()) == []  # the probe left nothing


@pytest.mark.parametrize("xdg_set", [True, False])
def test_default_caches_in_a_read_only_current_folder_go_to_the_user_cache(ro, tmp_path, monkeypatch, xdg, xdg_set):
    argv = ["data.pixel_cache_dir=null"] if xdg_set else []
    here = load_config(argv)  # in a writable current folder
    monkeypatch.chdir(ro)
    if not xdg_set:  # the XDG default: ~/.cache
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base = xdg if xdg_set else tmp_path / "home" / ".cache"
    cfg = load_config(argv)
    assert cfg.data.cache_dir == str(base / "urd" / "foreground")
    assert cfg.data.pixel_cache_dir == (None if xdg_set else str(base / "urd" / "pixels"))  # off stays off
    assert cfg.run == here.run  # where the caches live is not part of the run
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"] and not base.exists()


def test_train_in_a_read_only_current_folder_caches_in_the_user_cache(ro, tmp_path, mvtec_root, monkeypatch, xdg,
                                                                      capsys, caplog):
    monkeypatch.chdir(ro)
    before = snapshot(ro)
    urd_log = logging.getLogger("urd_lightning")  # console logging does not propagate: listen on the logger itself
    urd_log.addHandler(caplog.handler)
    try:
        code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                             "run=r")
    finally:
        urd_log.removeHandler(caplog.handler)
    assert (code, line) == (0, "")
    said = [r.getMessage() for r in caplog.records if "cannot hold the caches" in r.getMessage()]
    assert said == [f"the current folder {ro} cannot hold the caches ({EROFS}), so they go to "
                    f"data.cache_dir={xdg / 'urd' / 'foreground'}, data.pixel_cache_dir={xdg / 'urd' / 'pixels'}; "
                    "set those keys to choose another place"]
    assert list((xdg / "urd" / "pixels").glob("train-*.u8"))  # the training images were cached there
    assert snapshot(ro) == before and sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
    recorded = (tmp_path / "out" / "mvtec" / "bottle" / "r" / "config.yaml").read_text()
    assert f"pixel_cache_dir: {xdg / 'urd' / 'pixels'}" in recorded


@pytest.mark.parametrize("given", ["data.cache_dir=.cache/urd/foreground", "data.pixel_cache_dir={ro}/pixels"])
def test_a_given_cache_folder_that_cannot_be_written_is_one_line_not_a_move(ro, mvtec_root, tmp_path, capsys, xdg,
                                                                           monkeypatch, given):
    from urd_lightning.training import train

    monkeypatch.chdir(ro)
    started = refuse_work(monkeypatch, train, "build_datamodule", "build_module")
    given = given.format(ro=ro)
    key, value = given.split("=")
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL, given)
    shown = value if Path(value).is_absolute() else f"{value} ({ro / value})"
    assert code == 2 and line == f"error: {key}={shown} cannot be written ({EROFS}); choose a folder you can write to"
    assert started == [] and not xdg.exists() and sorted(p.name for p in ro.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("key", ["data.cache_dir", "data.pixel_cache_dir"])
def test_a_file_as_cache_folder_is_one_line(mvtec_root, tmp_path, capsys, monkeypatch, key):
    from urd_lightning.training import train

    (tmp_path / "a_file").write_text("mine\n")
    before = snapshot(tmp_path)
    started = refuse_work(monkeypatch, train, "build_datamodule", "build_module")
    code, line = run_cli(capsys, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                         f"{key}={tmp_path / 'a_file'}")
    assert code == 2 and line == (f"error: {key}={tmp_path / 'a_file'} cannot be written ({tmp_path / 'a_file'} is a "
                                  "file, not a folder); choose a folder you can write to")
    assert started == [] and snapshot(tmp_path) == before


def test_no_writable_place_for_the_default_caches_is_one_line(ro, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ro)
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro / "xdg"))  # the user's cache folder is read-only too
    code, line = run_cli(capsys, "print-config", "dataset=demo")
    assert code == 2 and line == (f"error: data.cache_dir: neither {ro / '.cache/urd/foreground'} ({EROFS}) nor "
                                  f"{ro / 'xdg/urd/foreground'} can be written; give data.cache_dir=<a folder you "
                                  "can write to>")
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]


# --- any other place that cannot be written, wherever it is met: one line, not a traceback ------------------------

def test_an_unwritable_place_met_later_is_still_one_line(monkeypatch, capsys):
    from urd_lightning.data import cli

    def deep(argv):  # a write deep inside a command that no check foresaw
        raise PermissionError(errno.EACCES, "Permission denied", "/srv/data/x.png")

    monkeypatch.setattr(cli, "main", deep)
    code, line = run_cli(capsys, "data", "demo")
    assert code == 2 and line.startswith("error: cannot write /srv/data/x.png: Permission denied; choose a folder")


# --- the same on a really read-only folder: a process that the mode bits bind ----------------------------------

def _bound_by_modes() -> list[list[str]]:
    """Command prefixes whose process may be stopped by a 0o555 folder (tried in turn; none for root without
    setpriv)."""
    prefixes = [[]] if os.geteuid() != 0 else []
    if shutil.which("setpriv"):  # root without capabilities: the mode bits bind it like anyone else
        prefixes.append(["setpriv", "--inh-caps=-all", "--bounding-set=-all"])
    return prefixes


def _really_read_only(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine\n")
    folder.chmod(0o555)
    for prefix in _bound_by_modes():
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(folder / 'w')!r}, 'w')"],
                               capture_output=True)
        if probe.returncode != 0 and not (folder / "w").exists():
            return folder, prefix
    folder.chmod(0o755)
    pytest.skip("no process here is stopped by a read-only mode (root without setpriv)")


@pytest.fixture
def really_ro(tmp_path):
    folder, prefix = _really_read_only(tmp_path)
    yield folder, prefix
    folder.chmod(0o755)


def _urd(prefix: list[str], cwd: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, list[str], str]:
    done = subprocess.run([*prefix, sys.executable, "-m", "urd_lightning", *argv], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "MPLCONFIGDIR": str(cwd.parent / "mpl"), **(env or {})})
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, [ln for ln in done.stderr.splitlines() if ln.startswith("error:")], done.stderr


@pytest.mark.parametrize("case", ["data demo", "train dataset=demo", "benchmark"])
def test_a_really_read_only_folder_is_one_line(really_ro, tmp_path, case):
    ro, prefix = really_ro
    denied = os.strerror(errno.EACCES)
    argv, key = {
        "data demo": (["data", "demo", f"root={ro / 'x'}"], f"root={ro / 'x'}"),
        "train dataset=demo": (["train", "dataset=demo", f"data.root={ro}", f"output_dir={tmp_path / 'out'}", *SMALL],
                               f"data.root={ro}"),
        "benchmark": (["benchmark", "dataset=demo", f"data.root={tmp_path / 'demo'}", f"output_dir={ro / 'out'}",
                       *SMALL], f"output_dir={ro / 'out'}"),
    }[case]
    code, errors, _ = _urd(prefix, tmp_path, *argv)
    assert code == 2 and errors == [f"error: {key} cannot be written ({denied}); choose a folder you can write to"]
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"] and not (tmp_path / "out").exists()


@pytest.mark.slow  # trains
def test_train_in_a_really_read_only_current_folder(really_ro, tmp_path, mvtec_root):
    ro, prefix = really_ro
    code, errors, err = _urd(prefix, ro, "train", f"data.root={mvtec_root}", f"output_dir={tmp_path / 'out'}", *SMALL,
                             env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert code == 0 and errors == [] and f"so they go to data.cache_dir={tmp_path / 'xdg/urd/foreground'}" in err
    assert list((tmp_path / "xdg" / "urd" / "pixels").glob("train-*.u8"))
    assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
