"""One shared test over every benchmark's datamodule, on the fake trees of tests/helpers/datasets.py."""

from __future__ import annotations

import pytest
import torch
from helpers.datasets import CASES, benchmark_of

from urd_lightning.data.datamodule import AnomalyDataModule

IMAGE_SIZE = 32


def make_dm(fake_roots: dict, case: str, tmp_path, **kwargs) -> AnomalyDataModule:
    _, category, options, _ = CASES[case]
    dm = AnomalyDataModule(benchmark_of(case), root=str(fake_roots[case]), category=category, image_size=IMAGE_SIZE,
                           train_batch_size=4, eval_batch_size=3, num_workers=0, foreground="none",
                           cache_dir=str(tmp_path / "fg"), **options, **kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("case", list(CASES))
def test_datamodule_contract(fake_roots, case, tmp_path):
    dm = make_dm(fake_roots, case, tmp_path)
    n_train, n_test_normal, n_test_anomalous = CASES[case][3]
    assert len(dm.train_data) == n_train
    assert len(dm.test_data) == n_test_normal + n_test_anomalous

    train_batches = list(dm.train_dataloader())
    assert sum(len(b["index"]) for b in train_batches) == n_train
    batch = train_batches[0]
    assert set(batch) == {"image", "aug_image", "aug_mask", "index"}
    assert batch["image"].shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE) and batch["image"].dtype == torch.float32
    assert batch["aug_image"].shape == batch["image"].shape
    assert batch["aug_mask"].shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE) and batch["aug_mask"].dtype == torch.float32
    assert set(batch["aug_mask"].unique().tolist()) <= {0.0, 1.0}
    assert batch["index"].dtype == torch.long
    assert all(s.label == 0 for s in dm.train_data.samples), "anomalies in train"

    labels, seen = [], []
    for batch in dm.test_dataloader():
        assert set(batch) == {"image", "gt_mask", "gt_label", "image_path", "defect_type", "index"}
        assert batch["image"].shape[1:] == (3, IMAGE_SIZE, IMAGE_SIZE)  # RGB even for grayscale/bmp/JPG sources
        assert batch["gt_mask"].shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE) and batch["gt_mask"].dtype == torch.float32
        assert set(batch["gt_mask"].unique().tolist()) <= {0.0, 1.0}
        assert batch["gt_label"].dtype == torch.long
        has_defect = batch["gt_mask"].flatten(1).amax(1).long()
        assert torch.equal(has_defect, batch["gt_label"]), "label disagrees with mask"
        for label, defect in zip(batch["gt_label"].tolist(), batch["defect_type"]):
            assert (defect == "good") == (label == 0)
        labels += batch["gt_label"].tolist()
        seen += batch["image_path"]
    assert labels.count(0) == n_test_normal and labels.count(1) == n_test_anomalous
    train_paths = {s.image_path for s in dm.train_data.samples}
    assert not train_paths & set(seen), "train/test overlap"
    assert len(set(seen)) == len(seen)


def test_val_is_test_set(fake_roots, tmp_path):
    dm = make_dm(fake_roots, "mvtec", tmp_path)
    val = [p for b in dm.val_dataloader() for p in b["image_path"]]
    test = [p for b in dm.test_dataloader() for p in b["image_path"]]
    assert val == test


def test_no_synthesis_gives_identical_aug_image(fake_roots, tmp_path):
    dm = make_dm(fake_roots, "mvtec", tmp_path, synthesis=False)
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["image"], batch["aug_image"]) and batch["aug_mask"].sum() == 0
