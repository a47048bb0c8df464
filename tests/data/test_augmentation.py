"""Augmented training batches: false/flips as before, pipelines deterministic, geometric ones move the foreground."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers.datasets import CASES
from urd_lightning.config.augment import resolve_augment
from urd_lightning.data.datamodule import AnomalyDataModule

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
FLIP = {"__version__": "2.0.8", "transform": {"__class_fullname__": "Compose", "transforms": [
    {"__class_fullname__": "HorizontalFlip", "p": 1.0}]}}


def _golden_module():
    spec = importlib.util.spec_from_file_location("golden_batches", GOLDEN_DIR / "regenerate_batches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_false_and_flips_give_the_batches_of_the_code_before_pipelines():
    module = _golden_module()
    golden = np.load(module.GOLDEN)
    got = module.build_batches({"false": False, "flips": "flips", "true": True})
    assert set(golden.files) == {k for k in got if not k.startswith("true/")}
    for key in golden.files:
        np.testing.assert_array_equal(got[key], golden[key], err_msg=key)
        if key.startswith("flips/"):  # `true`, the older spelling, is the same flips
            np.testing.assert_array_equal(got["true/" + key.removeprefix("flips/")], golden[key], err_msg=key)
    assert not np.array_equal(golden["false/0/image"], golden["flips/0/image"]), "no image was flipped"


def make_dm(root, tmp_path, **kwargs) -> AnomalyDataModule:
    kwargs = {"foreground": "otsu", "textures": "procedural", "num_workers": 0, "augment": "camera", **kwargs}
    dm = AnomalyDataModule("mvtec", root=str(root), category="bottle", image_size=32, train_batch_size=2,
                           eval_batch_size=3, cache_dir=str(tmp_path / "fg"), **kwargs)
    dm.setup("fit")
    return dm


def epoch_batches(dm: AnomalyDataModule, epoch: int) -> list[dict]:
    dm.set_epoch(epoch)
    return list(dm.train_dataloader())


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_a_pipeline_gives_the_same_batches_with_0_and_2_workers_and_after_a_mid_epoch_resume(mvtec_root, tmp_path):
    pixels = str(tmp_path / "pixels")
    alone = epoch_batches(make_dm(mvtec_root, tmp_path, pixel_cache_dir=pixels), 3)
    plain = epoch_batches(make_dm(mvtec_root, tmp_path, augment=False, pixel_cache_dir=pixels), 3)
    assert not torch.equal(alone[0]["image"], plain[0]["image"]), "the pipeline changed nothing"
    assert_same(alone, epoch_batches(make_dm(mvtec_root, tmp_path, num_workers=2, pixel_cache_dir=pixels), 3))
    resumed = make_dm(mvtec_root, tmp_path, pixel_cache_dir=pixels)
    resumed.setup("fit")
    batches = -(-len(resumed.train_data) // resumed.train_batch_size)
    # A checkpoint after epoch 3's first batch: the loader starts where the module's iteration says, as in a resume.
    resumed.trainer = SimpleNamespace(lightning_module=SimpleNamespace(iteration=3 * batches + 1))
    assert_same(alone[1:], list(resumed.train_dataloader()))
    assert_same(alone, epoch_batches(make_dm(mvtec_root, tmp_path, pixel_cache_dir=None), 3))  # cache or not


def test_a_pipeline_is_a_pure_function_of_seed_epoch_and_index(mvtec_root, tmp_path):
    data = make_dm(mvtec_root, tmp_path).train_data
    first = data[(2, 4)]
    for item in [(0, 1), (2, 3), (5, 4)]:  # other samples in between draw nothing from the sample's stream
        data[item]
    again = data[(2, 4)]
    assert all(torch.equal(torch.as_tensor(first[k]), torch.as_tensor(again[k])) for k in first)
    assert not torch.equal(first["image"], data[(3, 4)]["image"]), "the epoch does not change the augmentation"
    other_seed = make_dm(mvtec_root, tmp_path, seed=5).train_data[(2, 4)]
    assert not torch.equal(first["image"], other_seed["image"])


def test_geometric_transforms_move_the_foreground_and_the_anomaly_stays_inside_it(mvtec_root, tmp_path):
    flipped = make_dm(mvtec_root, tmp_path, augment=FLIP).train_data
    plain = make_dm(mvtec_root, tmp_path, augment=False).train_data
    for index in range(len(flipped)):
        got, before = flipped.train_arrays(1, index), plain.train_arrays(1, index)
        assert before["foreground"] is not None and 0 < before["foreground"].mean() < 1
        assert not np.array_equal(before["foreground"], before["foreground"][:, ::-1]), "a symmetric mask tests nothing"
        np.testing.assert_array_equal(got["foreground"], before["foreground"][:, ::-1])
        np.testing.assert_array_equal(got["image"], before["image"][:, ::-1])
        assert (got["aug_mask"] <= (got["foreground"] > 0)).all(), "anomaly outside the moved foreground"


def test_test_images_are_never_augmented(mvtec_root, tmp_path):
    augmented, plain = make_dm(mvtec_root, tmp_path).test_data, make_dm(mvtec_root, tmp_path, augment=False).test_data
    assert augmented.augment is False and augmented.pipeline is None
    for index in range(len(plain)):
        assert torch.equal(augmented[index]["image"], plain[index]["image"])


def test_data_check_show_augment_writes_the_panel(mvtec_root, tmp_path, capsys):
    from urd_lightning.data.cli import main

    panel = tmp_path / "panel.png"
    assert main(["check", "mvtec", "--root", str(mvtec_root), "--category", "bottle", "--image-size", "64",
                 "--show-augment", "camera", "--panel", str(panel)]) == 0
    assert f"augmented training samples: {panel}" in capsys.readouterr().out
    import matplotlib.image

    height, width = matplotlib.image.imread(panel).shape[:2]
    rows = CASES["mvtec"][3][0]  # 6 training images: all shown
    assert width == 5 * 220 and height == rows * 220  # five columns, one row per sample (2.2 in at 100 dpi)


def test_show_augment_needs_a_category(mvtec_root):
    from urd_lightning.data.cli import main
    from urd_lightning.errors import DataError

    with pytest.raises(DataError, match="show_augment needs category="):
        main(["check", "mvtec", "--root", str(mvtec_root), "--show-augment", "flips"])


def test_the_dataset_takes_what_the_config_takes(mvtec_root, tmp_path):
    # A direct user of AnomalyDataModule may pass a name, a path, True or the resolved dict.
    resolved = resolve_augment("camera")
    assert make_dm(mvtec_root, tmp_path, augment=resolved).train_data.augment == resolved
    assert make_dm(mvtec_root, tmp_path, augment=True).train_data.augment == "flips"
