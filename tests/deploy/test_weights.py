"""export format=weights: a weights-only .safetensors that predict, the Python API and test read.

The file must give exactly what the .ckpt gives (same maps, scores, metrics, bit for bit) while holding only the
teacher's and student's weights and the extras: no expert, no optimizer or loop state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from helpers.training import train_tiny
from urd_lightning.__main__ import main as cli_main
from urd_lightning.checkpoint_io import EXTRAS_KEY, load_checkpoint_file
from urd_lightning.deploy.checkpoint import load_model, save_checkpoint
from urd_lightning.deploy.export import export
from urd_lightning.deploy.inference import URDInferencer
from urd_lightning.deploy.predict import predict
from urd_lightning.errors import CheckpointError
from urd_lightning.models import URD

SIZE = 32
STATS = {"image_min": 0.1, "image_max": 2.1, "pixel_min": 0.0, "pixel_max": 2.5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(2)
    model = URD(backbone="resnet18", pretrained=False).eval()
    root = tmp_path_factory.mktemp("weights")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    thresholds = {"image": 1 / 3, "pixel": 0.7, "source": "test"}  # 1/3: a float JSON must carry exactly
    ckpt = save_checkpoint(model, root / "checkpoints" / "last.ckpt", SIZE, "demo", "toy", thresholds, STATS)
    return {"ckpt": ckpt, "images": images, "root": root}


def test_cli_writes_weights_only_file_with_extras(tiny: dict, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["export", f"ckpt={tiny['ckpt']}", "format=weights"]) == 0
    assert "weights only" in capsys.readouterr().out
    path = tiny["ckpt"].with_name("last.safetensors")
    stored = load_checkpoint_file(tiny["ckpt"])
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        extras = json.loads(handle.metadata()[EXTRAS_KEY])
        same = all(torch.equal(handle.get_tensor(k), stored["state_dict"][k]) for k in keys)
    assert keys == {k for k in stored["state_dict"] if not k.startswith("model.expert.")}
    assert any(k.startswith("model.teacher.") for k in keys) and any(k.startswith("model.student.") for k in keys)
    assert same and extras == stored[EXTRAS_KEY]
    assert path.stat().st_size < tiny["ckpt"].stat().st_size
    assert not Path(str(path) + ".json").exists()  # the extras live inside the file


def test_api_and_predict_give_identical_maps_from_weights(tiny: dict, tmp_path: Path) -> None:
    weights = Path(export(tiny["ckpt"], format="weights", output=tmp_path / "w.safetensors")["path"])
    a, b = URDInferencer.from_checkpoint(tiny["ckpt"]), URDInferencer.from_checkpoint(weights)
    assert a.info.thresholds == b.info.thresholds and a.info.score_stats == b.info.score_stats
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (map_a, score_a), (map_b, score_b) = a.model.predict(x), b.model.predict(x)
    assert torch.equal(map_a, map_b) and torch.equal(score_a, score_b)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    rows_a = predict(tiny["ckpt"], tiny["images"], out_a, device="cpu", progress=False)["images"]
    rows_b = predict(weights, tiny["images"], out_b, device="cpu", progress=False)["images"]
    assert [r["raw_score"] for r in rows_a] == [r["raw_score"] for r in rows_b]
    assert [r["decision"] for r in rows_a] == [r["decision"] for r in rows_b]
    for name in ("0.npy", "1.npy", "2.npy"):
        assert np.array_equal(np.load(out_a / "maps" / name), np.load(out_b / "maps" / name))
    model, _ = load_model(weights)
    assert model.expert is None


def _bad_weights(kind: str, folder: Path, good: Path) -> Path:
    path = folder / f"{kind}.safetensors"
    if kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:  # a valid safetensors file written by someone else: no urd_lightning metadata
        save_file({"weight": torch.zeros(3)}, str(path))
    return path


@pytest.mark.parametrize("kind", ["truncated", "random", "foreign"])
def test_bad_weights_files_raise_checkpoint_error(tiny: dict, tmp_path: Path, kind: str) -> None:
    good = Path(export(tiny["ckpt"], format="weights", output=tmp_path / "good.safetensors")["path"])
    path = _bad_weights(kind, tmp_path, good)
    message = "not one of urd-lightning's" if kind == "foreign" else "not a readable safetensors"
    with pytest.raises(CheckpointError, match=message):
        load_model(path)
    with pytest.raises(CheckpointError, match=path.name):
        predict(path, tiny["images"], tmp_path / "out", device="cpu", progress=False)
    assert not (tmp_path / "out").exists()


def test_renamed_weights_file_is_recognised_by_its_bytes(tiny: dict, tmp_path: Path) -> None:
    weights = Path(export(tiny["ckpt"], format="weights", output=tmp_path / "w.safetensors")["path"])
    renamed = weights.rename(tmp_path / "model.bin")
    _, info = load_model(renamed)
    assert info.category == "toy" and info.thresholds["image"] == 1 / 3


@pytest.mark.slow  # trains one iteration, then evaluates twice
def test_test_command_gives_identical_metrics_from_weights(mvtec_root: Path, tmp_path: Path) -> None:
    from urd_lightning.run.folder import RunFolder

    cfg, ckpt = train_tiny(mvtec_root, tmp_path, "eval.num_samples=0")
    assert "optimizer_states" in load_checkpoint_file(ckpt)  # a real training checkpoint
    weights = Path(export(ckpt, format="weights", output=tmp_path / "w" / "last.safetensors")["path"])
    assert weights.stat().st_size < ckpt.stat().st_size
    results = {}
    for path in (ckpt, weights):
        assert cli_main(["test", f"ckpt={path}", f"data.root={mvtec_root}", "data.num_workers=0",
                         "trainer.accelerator=cpu", f"data.cache_dir={tmp_path / 'cache'}"]) == 0
        out = RunFolder.of(cfg).path / "test_metrics.json" if path == ckpt else path.with_suffix(".metrics.json")
        results[path] = json.loads(out.read_text())["final"]
    assert results[ckpt] == results[weights] and results[ckpt]
    rows = [predict(p, Path(mvtec_root) / "bottle" / "test", tmp_path / p.name, device="cpu", progress=False)
            for p in (ckpt, weights)]
    assert [r["raw_score"] for r in rows[0]["images"]] == [r["raw_score"] for r in rows[1]["images"]]
