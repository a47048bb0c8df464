"""One shared test over every benchmark's datamodule, on the fake trees of tests/helpers/datasets.py."""

from __future__ import annotations

import pytest
import torch

from helpers.datasets import CASES, benchmark_of
from urd_lightning.data.datamodule import AnomalyDataModule

IMAGE_SIZE = 32


def make_dm(fake_roots: dict, case: str, tmp_path, **kwargs) -> AnomalyDataModule:
    _, category, options, _ = CASES[case]
    kwargs = {"foreground": "none", **kwargs}
    dm = AnomalyDataModule(benchmark_of(case), root=str(fake_roots[case]), category=category, image_size=IMAGE_SIZE,
                           train_batch_size=4, eval_batch_size=3, num_workers=0, cache_dir=str(tmp_path / "fg"),
                           **options, **kwargs)
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
        for label, defect in zip(batch["gt_label"].tolist(), batch["defect_type"], strict=True):
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


def test_same_seed_same_batches_and_set_epoch_changes_them(fake_roots, tmp_path):
    def first_batch(epoch: int, seed: int = 111):
        dm = make_dm(fake_roots, "mvtec", tmp_path, seed=seed)
        dm.set_epoch(epoch)
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(1), first_batch(1), first_batch(2)
    assert torch.equal(a["aug_image"], b["aug_image"]) and torch.equal(a["index"], b["index"])
    assert not torch.equal(a["aug_image"], c["aug_image"])
    assert not torch.equal(a["aug_image"], first_batch(1, seed=5)["aug_image"])


def test_ddp_shards_eval_without_padding_and_train_with_equal_steps(fake_roots, tmp_path, monkeypatch):
    import urd_lightning.data.datamodule as dm_module

    seen, train_seen, steps = [], [], []
    for rank in range(2):
        monkeypatch.setattr(dm_module, "_dist_rank_world", lambda rank=rank: (rank, 2))
        dm = make_dm(fake_roots, "mvtec", tmp_path)  # 7 test images: ranks get 4 and 3, nothing repeated
        seen += [int(i) for b in dm.test_dataloader() for i in b["index"]]
        loader = dm.train_dataloader()
        train_seen += [int(i) for b in loader for i in b["index"]]
        steps.append(len(loader))
    assert sorted(seen) == list(range(7))
    assert set(train_seen) == set(range(6)) and steps[0] == steps[1]


def test_foreground_restricts_training_masks(fake_roots, tmp_path):
    dm = make_dm(fake_roots, "mvtec", tmp_path, foreground="otsu")
    assert dm.foreground == "otsu" and list((tmp_path / "fg").iterdir())
    for epoch in range(3):
        dm.set_epoch(epoch)
        for batch in dm.train_dataloader():
            for mask, index in zip(batch["aug_mask"], batch["index"].tolist(), strict=True):
                foreground = torch.from_numpy(dm.train_data.foregrounds[index])
                assert not mask[0][foreground == 0].any()


def test_demo_generated_on_first_use(tmp_path):
    dm = AnomalyDataModule("demo", root=str(tmp_path / "demo"), category="disc", image_size=32, num_workers=0,
                           foreground="otsu", cache_dir=str(tmp_path / "fg"))
    dm.setup("fit")
    assert dm.foreground == "otsu" and len(dm.train_data) == 80 and len(dm.test_data) == 48
