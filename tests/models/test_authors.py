"""Import of checkpoints in the authors' key layout (tests/golden/authors-checkpoint-keys.json), docs/method.md."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from urd_lightning.errors import CheckpointError
from urd_lightning.models import URD, load_authors_checkpoint, save_authors_checkpoint
from urd_lightning.models.authors import authors_state_dicts

# Keys and shapes measured from the authors' modules, kept in the repo so the test runs from any clone.
KEYS_JSON = Path(__file__).resolve().parents[1] / "golden" / "authors-checkpoint-keys.json"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(5)
    net = URD(backbone="resnet18", pretrained=False, injection="concat", expert=False, train_teacher=False)
    # Non-trivial BN statistics everywhere, so a key mapped to the wrong module changes the maps.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    net.eval()
    path = tmp_path_factory.mktemp("authors") / "urd_resnet18.pth"
    save_authors_checkpoint(net, path)
    return net, path


def test_round_trip_gives_the_same_maps(saved):
    net, path = saved
    loaded = load_authors_checkpoint(path, backbone="resnet18")
    assert not loaded.training and loaded.injection == "concat" and loaded.expert is None
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_map(x), net.anomaly_map(x), rtol=0, atol=1e-4)
        (m1, s1), (m2, s2) = loaded.predict(x), net.predict(x)
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-4)
    torch.testing.assert_close(s1, s2, rtol=0, atol=1e-4)


def test_saved_file_has_the_authors_dead_entries(saved):
    _, path = saved
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"teacher", "student"}
    assert "encoder.fc.weight" in ckpt["teacher"] and "encoder.layer4.1.bn2.running_var" in ckpt["teacher"]
    assert "bn.conv4.weight" in ckpt["student"] and "conv3x3_simattn.1.0.weight" in ckpt["student"]


def test_wide_resnet50_concat_matches_the_authors_key_and_shape_set():
    expected = json.loads(KEYS_JSON.read_text())
    with torch.device("meta"):  # shapes only: no memory, no forward
        net = URD(backbone="wide_resnet50_2.tv_in1k", pretrained=False, injection="concat", expert=False,
                  train_teacher=False)
    ours = authors_state_dicts(net)
    for group in ("teacher", "student"):
        assert {k: list(v.shape) for k, v in ours[group].items()} == dict(expected[group]), group


def test_gii_import_loads_simattn(saved):
    net, path = saved
    loaded = load_authors_checkpoint(path, backbone="resnet18", injection="gii")
    ckpt = torch.load(path, weights_only=True)
    expected = ckpt["student"]["conv3x3_simattn.0.0.weight"]
    torch.testing.assert_close(loaded.student.conv3x3_simattn[0][0].weight, expected)


def _load_reference():
    spec = importlib.util.spec_from_file_location("reference_authors", Path(__file__).with_name("reference_authors.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, obj):
    torch.save(obj, path)
    return path


def test_bad_files_get_clear_errors(saved, tmp_path):
    _, path = saved
    good = torch.load(path, weights_only=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_authors_checkpoint(tmp_path / "nope.pth", backbone="resnet18")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(path.read_bytes()[: 4096])
    with pytest.raises(CheckpointError, match="truncated"):
        load_authors_checkpoint(trunc, backbone="resnet18")
    with pytest.raises(CheckpointError, match="'teacher' and 'student'"):
        load_authors_checkpoint(_write(tmp_path / "sd.pth", good["student"]), backbone="resnet18")
    missing = {"teacher": good["teacher"], "student": {k: v for k, v in good["student"].items()
                                                       if k != "decoder.layer2.0.bn1.weight"}}
    with pytest.raises(CheckpointError, match=r"decoder\.layer2\.0\.bn1\.weight"):
        load_authors_checkpoint(_write(tmp_path / "missing.pth", missing), backbone="resnet18")
    extra = {"teacher": {**good["teacher"], "encoder.attn.weight": torch.zeros(1)}, "student": good["student"]}
    with pytest.raises(CheckpointError, match=r"teacher\.attn\.weight"):
        load_authors_checkpoint(_write(tmp_path / "extra.pth", extra), backbone="resnet18")
    with pytest.raises(CheckpointError, match="backbone"):
        load_authors_checkpoint(path, backbone="resnet34")


def test_imported_maps_match_an_independent_functional_reference(saved):
    from scipy.ndimage import gaussian_filter

    raw_anomaly_map = _load_reference().raw_anomaly_map

    _, path = saved
    ckpt = torch.load(path, weights_only=True)
    loaded = load_authors_checkpoint(path, backbone="resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    ref = raw_anomaly_map(ckpt, x)
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_map(x), ref, rtol=0, atol=1e-4)
        smoothed, score = loaded.predict(x)
    ref_smoothed = torch.from_numpy(gaussian_filter(ref.numpy(), sigma=(0, 0, 4, 4))).float()
    torch.testing.assert_close(smoothed, ref_smoothed, rtol=0, atol=1e-4)
    torch.testing.assert_close(score, ref_smoothed.flatten(1).amax(1), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_wide_resnet50_import_matches_the_functional_reference(tmp_path):
    torch.manual_seed(8)
    net = URD(backbone="wide_resnet50_2.tv_in1k", pretrained=False, injection="concat", expert=False,
              train_teacher=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "urd_wrn50.pth"
    save_authors_checkpoint(net, path)
    del net
    loaded = load_authors_checkpoint(path)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(9))
    ref = _load_reference().raw_anomaly_map(torch.load(path, weights_only=True), x)
    with torch.no_grad():
        torch.testing.assert_close(loaded.anomaly_map(x), ref, rtol=0, atol=1e-4)
