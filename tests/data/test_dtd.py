"""DTD, the paper's anomaly source (issue 13 §2): download from a local fake archive, found by default, checked,
and the texture source recorded wherever results are read and in a run's identity. No network."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from urd_lightning.benchmark.records import VOLATILE_KEYS, RunRecord
from urd_lightning.benchmark.report import markdown_table, texture_source
from urd_lightning.benchmark.runner import Job, config_diff, plan
from urd_lightning.config import load_config, to_yaml
from urd_lightning.data import download as dl
from urd_lightning.data.cli import main as data_main
from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.data.dtd import check_dtd
from urd_lightning.data.synthesis import DTDTextures, ProceduralTextures
from urd_lightning.errors import ConfigError, DataError
from urd_lightning.textures import resolve_textures
from urd_lightning.training.results import summary_table


def _jpg(value: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", np.full((40, 48, 3), value, np.uint8))
    assert ok
    return encoded.tobytes()


def write_dtd(images: Path, classes=("banded", "dotted"), per_class=2) -> Path:
    """A tiny DTD ``images/<class>/*.jpg`` tree."""
    for c, name in enumerate(classes):
        (images / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (images / name / f"{name}_{i:04d}.jpg").write_bytes(_jpg(40 * c + 10 * i + 20))
    return images


def fake_archive(path: Path) -> Path:
    """A tar.gz laid out as the official one: dtd/{images/<class>/*.jpg, labels/...}."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("dtd/images/banded/banded_0001.jpg", _jpg(30)), ("dtd/images/dotted/dotted_0001.jpg",
                                                                               _jpg(90)),
                           ("dtd/labels/train1.txt", b"banded/banded_0001.jpg\n")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_official_archive_pinned():
    archive = dl.ARCHIVES["dtd"]
    assert archive.url == "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz"
    assert archive.sha256 == "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205"
    assert archive.subdir == "dtd"  # the archive's top folder: images land in <root>/images


def test_download_dtd_into_datasets_dtd_and_found_by_default(tmp_path, monkeypatch, capsys):
    archive = fake_archive(tmp_path / "served.tar.gz")
    monkeypatch.setitem(dl.ARCHIVES, "dtd", dl.Archive(archive.as_uri(), dl.sha256_of(archive), "dtd-r1.0.1.tar.gz",
                                                       subdir="dtd"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert resolve_textures("auto", None, True) == ("procedural", None)  # nothing there yet
    assert data_main(["download", "dtd", "--no-progress"]) == 0  # default --root: datasets/dtd
    assert (work / "datasets" / "dtd" / "images" / "banded" / "banded_0001.jpg").is_file()
    assert "dtd is ready in datasets/dtd" in capsys.readouterr().out
    cfg = load_config(["dataset=mvtec"])
    assert (cfg.data.textures, cfg.data.dtd_root) == ("dtd", "datasets/dtd")
    # A corrupted archive on disk is refused (sha256), as for the benchmarks.
    (work / "datasets" / "dtd" / ".extracted-" f"{dl.ARCHIVES['dtd'].sha256[:12]}").unlink()
    (work / "datasets" / "dtd" / "dtd-r1.0.1.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="checksum mismatch"):
        data_main(["download", "dtd", "--no-progress"])


def test_nested_archive_layout_is_found(tmp_path, monkeypatch):
    write_dtd(tmp_path / "datasets" / "dtd" / "dtd" / "images")  # extracted by hand: datasets/dtd/dtd/images
    monkeypatch.chdir(tmp_path)
    assert resolve_textures("auto", None, True) == ("dtd", "datasets/dtd")
    assert len(DTDTextures("datasets/dtd").paths) == 4


def test_texture_choices_resolve():
    assert resolve_textures("procedural", "/some/dtd", True) == ("procedural", None)
    assert resolve_textures("auto", "/some/dtd", True) == ("dtd", "/some/dtd")  # an explicit path means DTD
    assert resolve_textures("dtd", None, False) == ("none", None)
    assert resolve_textures("dtd", "/x", True) == resolve_textures(*resolve_textures("dtd", "/x", True), True)
    with pytest.raises(ConfigError, match="data.synthesis=false"):
        resolve_textures("none", None, True)


def test_dtd_required_but_missing_says_how_to_get_it(tmp_path, mvtec_root):
    module = AnomalyDataModule("mvtec", str(mvtec_root), "bottle", image_size=32, num_workers=0, textures="dtd",
                               dtd_root=str(tmp_path / "nowhere"), foreground="none")
    with pytest.raises(DataError, match="data download dtd"):
        module.setup("fit")


def test_datamodule_uses_the_texture_source_it_resolves(tmp_path, mvtec_root):
    dtd = write_dtd(tmp_path / "dtd" / "images").parent
    chosen = {}
    for textures in ("auto", "procedural"):
        module = AnomalyDataModule("mvtec", str(mvtec_root), "bottle", image_size=32, num_workers=0,
                                   textures=textures, dtd_root=str(dtd), foreground="none")
        module.setup("fit")
        chosen[textures] = type(module.train_data.source)
    assert chosen == {"auto": DTDTextures, "procedural": ProceduralTextures}


def test_check_dtd_counts_and_lists_unreadable(tmp_path, capsys):
    root = tmp_path / "dtd"
    write_dtd(root / "images", per_class=3)
    (root / "images" / "dotted" / "dotted_9999.jpg").write_bytes(b"\xff\xd8 truncated")
    report = check_dtd(root)
    assert report.counts == {"banded": 3, "dotted": 4}
    assert [Path(p.path).name for p in report.problems] == ["dotted_9999.jpg"]
    assert data_main(["check", "dtd", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "7 textures in 2 classes (DTD has 47" in out and "dotted_9999.jpg" in out
    (root / "images" / "dotted" / "dotted_9999.jpg").unlink()
    assert data_main(["check", "dtd", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"banded": 3, "dotted": 3}
    missing = check_dtd(tmp_path / "none")
    assert not missing.ok and "data download dtd" in missing.problems[0].message


def test_summary_and_table_say_procedural():
    payload = {"dataset": "mvtec", "category": "bottle", "run": "r", "steps": 1, "injection": "gii",
               "texture_source": "procedural", "final": {"image_AUROC": 0.9}}
    assert "PROCEDURAL, not the paper's DTD" in summary_table(payload, Path("r"))
    assert "PROCEDURAL" not in summary_table({**payload, "texture_source": "dtd"}, Path("r"))
    final = {"final": {"image_AUROC": 0.9}}
    records = [RunRecord("mvtec", "bottle", "r", metrics={**final, "texture_source": "procedural"}),
               RunRecord("mvtec", "wood", "r", metrics={**final, "texture_source": "dtd"}),
               # written before the field existed: its config had no DTD path
               RunRecord("mvtec", "cable", "r", metrics=final, config={"data.synthesis": True, "data.dtd_root": None})]
    table = markdown_table("mvtec", "r", records)
    assert "| bottle † |" in table and "| wood |" in table and "| cable † |" in table
    assert "† Trained with built-in procedural textures, not the paper's DTD (2/3" in table
    assert texture_source(RunRecord("mvtec", "x", "r")) is None


def test_texture_source_is_part_of_a_runs_identity_but_its_path_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [f"output_dir={tmp_path / 'results'}"]
    procedural = plan("mvtec", overrides, categories=["bottle"])[0]
    assert str(procedural.cfg.run) == "default-procedural" and procedural.cfg.data.textures == "procedural"
    procedural.run_dir.mkdir(parents=True)
    (procedural.run_dir / "config.yaml").write_text(to_yaml(procedural.cfg))
    write_dtd(tmp_path / "datasets" / "dtd" / "images")  # DTD arrives: the same command is another run
    with_dtd = plan("mvtec", overrides, categories=["bottle"])[0]
    assert str(with_dtd.cfg.run) == "default" and with_dtd.cfg.data.textures == "dtd"
    # Under one explicit run name, the recorded procedural run conflicts with a DTD one ...
    same_name = Job("bottle", [], OmegaConf.merge(with_dtd.cfg, {"run": str(procedural.cfg.run)}))
    assert config_diff(same_name) == ["data.textures"]
    # ... while moving the same DTD elsewhere changes nothing.
    assert "data.dtd_root" in VOLATILE_KEYS and "data.textures" not in VOLATILE_KEYS
    dtd_run = Job("bottle", [], OmegaConf.merge(with_dtd.cfg, {"run": "d"}))
    dtd_run.run_dir.mkdir(parents=True)
    (dtd_run.run_dir / "config.yaml").write_text(to_yaml(dtd_run.cfg))
    moved = Job("bottle", [], OmegaConf.merge(dtd_run.cfg, {"data": {"dtd_root": "/elsewhere/dtd"}}))
    assert config_diff(moved) == []


@pytest.mark.slow  # a full (tiny) training; the default suite checks the field in test_train's smoke test
def test_training_records_the_texture_source(mvtec_root, tmp_path, capsys):
    from urd_lightning.training.builders import run_dir_of
    from urd_lightning.training.train import train

    dtd = write_dtd(tmp_path / "dtd" / "images").parent
    cfg = load_config([f"data.root={mvtec_root}", "model.backbone=resnet18", "model.pretrained=false",
                       "data.image_size=32", "data.train_batch_size=2", "data.num_workers=0", "trainer.accelerator=cpu",
                       "trainer.max_steps=1", "trainer.enable_progress_bar=false", "logger=none",
                       f"output_dir={tmp_path}", "eval.num_samples=0", f"data.cache_dir={tmp_path / 'cache'}",
                       f"data.dtd_root={dtd}", "data.foreground=none"])
    train(cfg)
    run = run_dir_of(cfg)
    assert json.loads((run / "metrics.json").read_text())["texture_source"] == "dtd"
    assert OmegaConf.load(run / "config.yaml").data.textures == "dtd"
    assert "textures dtd" in capsys.readouterr().out
