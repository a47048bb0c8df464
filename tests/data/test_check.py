"""``data check``: every kind of problem is reported with the file it concerns; the datamodule stops on them."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from helpers.datasets import write_mvtec, write_visa_official
from urd_lightning.config.files import dataset_categories
from urd_lightning.data.check import check_dataset
from urd_lightning.data.cli import main as data_main
from urd_lightning.data.datamodule import AnomalyDataModule
from urd_lightning.errors import DataError


@pytest.fixture
def broken_mvtec(tmp_path):
    root = write_mvtec(tmp_path / "mvtec")
    base = root / "bottle"
    data = (base / "test" / "broken" / "000.png").read_bytes()
    (base / "test" / "broken" / "000.png").write_bytes(data[: len(data) // 2])  # truncated
    (base / "ground_truth" / "scratch" / "001_mask.png").rename(base / "ground_truth" / "scratch" / "009_mask.png")
    cv2.imwrite(str(base / "ground_truth" / "broken" / "001_mask.png"), np.full((20, 20), 255, np.uint8))
    cv2.imwrite(str(base / "ground_truth" / "scratch" / "000_mask.png"), np.zeros((48, 48), np.uint8))
    shutil.rmtree(base / "train" / "good")
    (base / "train" / "good").mkdir()
    return root


def test_every_problem_named(broken_mvtec):
    report = check_dataset("mvtec", broken_mvtec, "bottle")
    text = "\n".join(str(p) for p in report.problems)
    assert "unreadable or truncated image" in text and "broken/000.png" in text
    assert "missing mask for anomalous image" in text and "scratch/001.png" in text
    assert "mismatched mask" in text and "009_mask.png" in text
    assert "size mismatch" in text and "broken/001_mask.png" in text
    assert "empty mask" in text and "scratch/000_mask.png" in text
    assert "empty train split" in text
    assert not report.ok


def test_unknown_category_and_missing_root(tmp_path, mvtec_root):
    known = dataset_categories("mvtec")  # the dataset file's list, as `data check` passes it
    assert "unknown category" in str(check_dataset("mvtec", mvtec_root, "bottel", known=known).problems[0])
    assert "does not exist" in str(check_dataset("mvtec", tmp_path / "nope").problems[0])


def test_clean_trees_have_no_problems(fake_roots):
    for case in ("mvtec", "visa", "visa_converted", "btad", "mpdd"):
        benchmark = case.split("_")[0]
        report = check_dataset(benchmark, fake_roots[case], known=dataset_categories(benchmark))
        assert report.ok, report.format()
        assert report.counts and report.mask_coverage


def test_visa_label_map_masks_count_as_anomalous(visa_root):
    report = check_dataset("visa", visa_root, "candle")
    assert report.ok and report.counts["candle/test/anomalous/bad"] == 4


def test_cli_table_json_and_exit_codes(broken_mvtec, mvtec_root, capsys):
    assert data_main(["check", "mvtec", "--root", str(mvtec_root)]) == 0
    out = capsys.readouterr().out
    assert "bottle/train/normal/good" in out and "grid/test/anomalous/scratch" in out and "0 problem(s)" in out
    assert data_main(["check", "mvtec", "--root", str(broken_mvtec), "--category", "bottle", "--json"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] is False
    assert any(p["path"].endswith("009_mask.png") for p in payload["problems"])


def test_datamodule_stops_with_the_same_messages(broken_mvtec, tmp_path):
    dm = AnomalyDataModule("mvtec", root=str(broken_mvtec), category="bottle", image_size=32, num_workers=0,
                           foreground="none", cache_dir=str(tmp_path / "fg"))
    with pytest.raises(DataError, match="truncated image.*broken/000.png"):
        dm.setup("fit")


def test_visa_missing_split_csv_falls_back_and_reports(tmp_path):
    root = write_visa_official(tmp_path / "visa")
    (root / "split_csv" / "1cls.csv").unlink()
    report = check_dataset("visa", root, "candle")
    assert not report.ok and "empty train split" in report.format()  # read as the converted layout: no train/good
