"""The authors' resize (``data.resize=pil``) is torchvision's ``Resize`` on PIL images, bit for bit; ``cv2`` is the
older OpenCV path; checkpoints say which one predict must use; ``data check`` warns when a defect vanishes."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from helpers.datasets import write_mvtec
from urd_lightning.data.check import check_dataset
from urd_lightning.data.cli import main as data_main
from urd_lightning.data.transforms import Resizer, resize_image
from urd_lightning.deploy.checkpoint import EXTRAS_KEY, read_checkpoint, save_checkpoint
from urd_lightning.errors import DataError

SHAPES = [(1024, 1024), (900, 900), (300, 500), (64, 64), (37, 53), (256, 256)]  # down, non-square, up, identity


def _image(shape: tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (*shape, channels), dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2).reshape(*shape, channels)
    image = np.clip(smooth.astype(np.int16) + rng.integers(-30, 30, smooth.shape), 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [256, 96])
def test_pil_resize_is_torchvision_resize_bit_for_bit(shape, size):
    tv = transforms.Resize((size, size))  # what the authors call on their PIL images
    for channels in (3, 1):
        image = _image(shape, channels)
        expected = np.asarray(tv(Image.fromarray(image)))
        got, _ = Resizer(size, "pil")(image)
        assert got.dtype == np.uint8 and np.array_equal(got, expected)
        assert np.array_equal(resize_image(image, size, "pil"), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_pil_mask_is_torchvision_resize_to_tensor_above_half(shape):
    rng = np.random.default_rng(1)
    mask = np.zeros(shape, np.uint8)
    for _ in range(6):  # blobs and 1-3 px lines: the cases where the binarisation rule matters
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        cv2.circle(mask, (int(x), int(y)), int(rng.integers(1, max(2, shape[0] // 8))), 255, -1)
        cv2.line(mask, (int(x), 0), (int(rng.integers(0, shape[1])), shape[0] - 1), 255, int(rng.integers(1, 4)))
    size = 256
    pipeline = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor()])
    expected = (pipeline(Image.fromarray(mask)) > 0.5).float()[0].numpy()  # the authors' test(): gt > 0.5
    _, got = Resizer(size, "pil")(np.zeros((*shape, 3), np.uint8), mask // 255)  # our masks are {0, 1}
    assert got is not None and got.dtype == np.float32
    assert np.array_equal(got, expected) and 0 < got.sum() < got.size
    assert np.array_equal(Resizer(size, "pil").resize_mask(mask), expected)


def test_cv2_option_is_the_previous_opencv_path():
    image = _image((512, 512), 3)
    mask = np.zeros((512, 512), np.uint8)
    mask[100:300, 200:210] = 1
    got, small = Resizer(128, "cv2")(image, mask)
    assert np.array_equal(got, cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA))
    area = cv2.resize(mask.astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA) > 0.5
    assert small is not None and np.array_equal(small, area.astype(np.float32))
    assert np.array_equal(Resizer(128, "cv2").resize_mask(mask), small)
    up, _ = Resizer(128, "cv2")(image[:64, :64])
    assert np.array_equal(up, cv2.resize(image[:64, :64], (128, 128), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(got, Resizer(128, "pil")(image)[0])  # the two methods do differ
    with pytest.raises(DataError, match="data.resize='area'"):
        Resizer(128, "area")


def test_checkpoints_record_the_resize_and_old_ones_read_as_cv2(tmp_path):
    from urd_lightning.deploy.inference import URDInferencer
    from urd_lightning.models import URD

    model = URD(backbone="resnet18", pretrained=False).eval()
    thresholds = {"image": 0.5, "pixel": 0.5, "source": "test"}
    new = save_checkpoint(model, tmp_path / "new.ckpt", image_size=32, thresholds=thresholds)
    cv = save_checkpoint(model, tmp_path / "cv.ckpt", image_size=32, thresholds=thresholds, resize="cv2")
    old = tmp_path / "old.ckpt"
    checkpoint = torch.load(new, weights_only=True)
    del checkpoint[EXTRAS_KEY]["resize"]  # written before data.resize existed: trained with cv2
    torch.save(checkpoint, old)
    assert [read_checkpoint(p)[1].resize for p in (new, cv, old)] == ["pil", "cv2", "cv2"]
    for path, method in ((new, "pil"), (old, "cv2")):
        inferencer = URDInferencer.from_checkpoint(path)
        image = _image((100, 80), 3)
        expected = Resizer(32, method)(image)[0].astype(np.float32) / 255.0
        batch = inferencer.preprocess([image])
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        restored = (batch[0] * std[:, None, None] + mean[:, None, None]).permute(1, 2, 0).numpy()
        assert np.abs(restored - expected).max() < 1e-5


@pytest.fixture
def tiny_defect_mvtec(tmp_path):
    root = write_mvtec(tmp_path / "mvtec")
    shutil.rmtree(root / "grid")
    mask = np.zeros((48, 48), np.uint8)
    mask[20, 30] = 255  # a 1-pixel defect: non-empty at full size, gone at 16²
    cv2.imwrite(str(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png"), mask)
    return root


def test_check_warns_when_a_defect_mask_vanishes_at_model_size(tiny_defect_mvtec, capsys):
    report = check_dataset("mvtec", tiny_defect_mvtec, "bottle", image_size=16)
    assert report.ok, report.format()  # not an error: the folder label still says anomalous, training goes on
    assert [w.path.endswith("scratch/000_mask.png") for w in report.warnings] == [True]
    assert "mask empty at model size 16" in str(report.warnings[0])
    assert not check_dataset("mvtec", tiny_defect_mvtec, "bottle", image_size=48).warnings  # kept at 48²
    assert not check_dataset("mvtec", tiny_defect_mvtec, "bottle", image_size=None).warnings
    assert data_main(["check", "mvtec", "--root", str(tiny_defect_mvtec), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "1 warning(s)" in out and "000_mask.png" in out


def test_datamodule_setup_logs_each_check_warning_once(tiny_defect_mvtec, tmp_path, caplog):
    from urd_lightning.data.datamodule import AnomalyDataModule

    dm = AnomalyDataModule("mvtec", root=str(tiny_defect_mvtec), category="bottle", image_size=16, num_workers=0,
                           foreground="none", cache_dir=str(tmp_path / "fg"))
    with caplog.at_level("WARNING"):
        dm.setup("test")
    assert len([r for r in caplog.records if "000_mask.png" in r.getMessage()]) == 1  # the vanishing defect


def test_config_module_and_datamodule_pass_the_method_through(mvtec_root, tmp_path):
    from urd_lightning.config import load_config
    from urd_lightning.data.datamodule import AnomalyDataModule
    from urd_lightning.data.transforms import normalize, read_mask, read_rgb
    from urd_lightning.errors import ConfigError
    from urd_lightning.training.builders import build_module

    assert load_config([]).data.resize == "pil"
    with pytest.raises(ConfigError, match="data.resize"):
        load_config(["data.resize=area"])
    cfg = load_config(["data.resize=cv2", "model.backbone=resnet18", "model.pretrained=false", "logger=none"])
    checkpoint: dict = {}
    build_module(cfg).on_save_checkpoint(checkpoint)
    assert checkpoint[EXTRAS_KEY]["resize"] == "cv2"
    for method in ("pil", "cv2"):
        dm = AnomalyDataModule("mvtec", root=str(mvtec_root), category="bottle", image_size=20, num_workers=0,
                               foreground="none", resize=method, cache_dir=str(tmp_path / "fg"))
        dm.setup("test")
        assert dm.test_data is not None
        item = dm.test_data[len(dm.test_data) - 1]
        sample = dm.test_data.samples[-1]
        image, mask = Resizer(20, method)(read_rgb(sample.image_path), read_mask(sample.mask_path))
        assert np.array_equal(item["gt_mask"][0].numpy(), mask)
        assert torch.equal(item["image"], normalize(image.astype(np.float32) / 255.0))
