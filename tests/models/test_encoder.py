"""Encoder weights: local files with torchvision or timm names, and fast, clear failures offline."""

import time

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from urd_lightning.errors import ConfigError, WeightsError
from urd_lightning.models import encoder as enc


@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(3)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_checkpoint_with_torchvision_names_loads(tmp_path, tv_state, fmt):
    path = tmp_path / f"r18.{fmt}"
    if fmt == "pth":
        torch.save(tv_state, path)
    else:
        save_file({k: v.contiguous() for k, v in tv_state.items()}, str(path))
    e = enc.build_encoder("resnet18", pretrained=True, checkpoint=str(path))  # checkpoint wins over pretrained
    torch.testing.assert_close(e.conv1.weight, tv_state["conv1.weight"])
    torch.testing.assert_close(e.layer3[1].bn2.running_var, tv_state["layer3.1.bn2.running_var"])


def test_checkpoint_with_timm_names_and_prefix_loads(tmp_path):
    torch.manual_seed(4)
    full = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "timm.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)
    e = enc.build_encoder("resnet18", pretrained=False, checkpoint=str(path))
    torch.testing.assert_close(e.layer2[0].downsample[0].weight, full.layer2[0].downsample[0].weight)


def test_checkpoint_errors_name_the_problem(tmp_path, tv_state):
    with pytest.raises(WeightsError, match="does not exist"):
        enc.build_encoder("resnet18", checkpoint=str(tmp_path / "missing.pth"))
    bad = dict(tv_state)
    bad.pop("layer1.0.conv1.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight.*extra\.weight"):
        enc.build_encoder("resnet18", checkpoint=str(tmp_path / "bad.pth"))
    (tmp_path / "trunc.pth").write_bytes((tmp_path / "bad.pth").read_bytes()[:1000])
    with pytest.raises(WeightsError, match="trunc.pth"):
        enc.build_encoder("resnet18", checkpoint=str(tmp_path / "trunc.pth"))
    wide = torchvision.models.resnet34(weights=None).state_dict()
    torch.save(wide, tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="backbone"):
        enc.build_encoder("resnet18", checkpoint=str(tmp_path / "r34.pth"))


def test_pretrained_offline_fails_fast_with_the_fix(monkeypatch):
    monkeypatch.setattr(enc, "_cached_file", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        enc.build_encoder("wide_resnet50_2.tv_in1k", pretrained=True)
    msg = str(info.value)
    assert "model.checkpoint=/path/to/wide_resnet50_2-95faca4d.pth" in msg
    assert "model.pretrained=false" in msg and "internet" in msg
    assert time.monotonic() - start < 60  # generous: the point is "not a hub retry loop", not a speed target


def test_pretrained_without_network_fails_without_calling_the_hub(monkeypatch):
    monkeypatch.setattr(enc, "_cached_file", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(enc, "_reachable", lambda host, timeout=3.0: False)

    def no_hub(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise AssertionError("the hub must not be tried when it is unreachable")
        return real_create(*args, **kwargs)

    real_create = timm.create_model
    monkeypatch.setattr(enc.timm, "create_model", no_hub)
    with pytest.raises(WeightsError, match="not reachable"):
        enc.build_encoder("resnet18", pretrained=True)


def test_pretrained_uses_a_cached_file(monkeypatch, tmp_path, tv_state):
    torch.save(tv_state, tmp_path / "cached.pth")
    monkeypatch.setattr(enc, "_cached_file", lambda cfg: str(tmp_path / "cached.pth"))
    e = enc.build_encoder("resnet18", pretrained=True)
    torch.testing.assert_close(e.conv1.weight, tv_state["conv1.weight"])


def test_describe_backbone_bottleneck_and_basic():
    wrn = enc.describe_backbone("wide_resnet50_2.tv_in1k")
    assert wrn == enc.BackboneSpec("bottleneck", (256, 512, 1024, 2048), (128, 256, 512, 1024), (3, 4, 6, 3))
    r18 = enc.describe_backbone("resnet18")
    assert r18 == enc.BackboneSpec("basic", (64, 128, 256, 512), (64, 128, 256, 512), (2, 2, 2, 2))
    with pytest.raises(ConfigError, match="ResNet"):
        enc.describe_backbone("vit_tiny_patch16_224")
