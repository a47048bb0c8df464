"""predict: checkpoint loading, images of any mode, outputs, thresholds, normalisation.

Tiny model (resnet18, random weights, 32 px). Reference scores come from the in-memory network that wrote the
checkpoint (expert included), fed through the evaluation transforms — so they check the save/load round trip,
the expert-less rebuild, batching and preprocessing together.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers.training import train_tiny
from urd_lightning.__main__ import main as cli_main
from urd_lightning.data.transforms import Resizer, normalize, read_rgb
from urd_lightning.deploy.checkpoint import load_model, save_checkpoint
from urd_lightning.deploy.inference import URDInferencer, normalize_scores
from urd_lightning.deploy.outputs import output_names
from urd_lightning.deploy.predict import list_images, predict
from urd_lightning.errors import CheckpointError, ConfigError, DataError
from urd_lightning.models import URD

SIZE = 32
STATS = {"image_min": 0.1, "image_max": 2.1, "pixel_min": 0.0, "pixel_max": 2.5}


def _reference(model: URD, path: Path) -> tuple[float, torch.Tensor]:
    image = read_rgb(path)
    x = normalize(Resizer(SIZE)(image)[0].astype(np.float32) / 255.0)[None]
    with torch.no_grad():
        amap, score = model.predict(x)
    return float(score[0]), amap[0, 0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(0)
    model = URD(backbone="resnet18", pretrained=False).eval()
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8), "L").save(images / "gray.png")
    Image.fromarray(rng.integers(0, 255, (81, 64, 4), dtype=np.uint8), "RGBA").save(images / "rgba.png")
    cv2.imwrite(str(images / "deep16.png"), rng.integers(0, 65535, (45, 45), dtype=np.uint16))
    cv2.imwrite(str(images / "color16.png"), rng.integers(0, 65535, (40, 90, 3), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 255, (100, 60, 3), dtype=np.uint8)).save(images / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (33, 129, 3), dtype=np.uint8)).convert("P").save(images / "sub" / "pal.png")
    good = (images / "gray.png").read_bytes()
    (images / "corrupt.png").write_bytes(good[: len(good) // 3])  # truncated PNG: listed and skipped
    (images / "notes.txt").write_text("not an image, not listed")
    ok_files = sorted(p for p in images.rglob("*") if p.suffix in {".png", ".jpg"} and p.name != "corrupt.png")
    reference = {p.name: _reference(model, p) for p in ok_files}
    scores = sorted(score for score, _ in reference.values())
    threshold = (scores[2] + scores[3]) / 2  # between two fixture scores: both decisions occur
    thresholds = {"image": threshold, "pixel": threshold, "source": "test"}
    ckpt = save_checkpoint(model, root / "last.ckpt", SIZE, "demo", "toy", thresholds, STATS)
    bare = save_checkpoint(model, root / "bare.ckpt", SIZE)
    return {"model": model, "images": images, "ckpt": ckpt, "bare": bare, "ref": reference, "threshold": threshold}


def _rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_predict_folder_writes_every_output_and_matches_model(tiny: dict, tmp_path: Path) -> None:
    summary = predict(tiny["ckpt"], tiny["images"], tmp_path, batch_size=4, device="cpu", progress=False)
    rows = {Path(r["image_path"]).name: r for r in _rows(tmp_path)}
    assert set(rows) == set(tiny["ref"]) | {"corrupt.png"}
    assert rows["corrupt.png"]["status"] == "unreadable" and rows["corrupt.png"]["error"]
    assert [s["image_path"] for s in summary["skipped"]] == [str(tiny["images"] / "corrupt.png")]
    assert summary["counts"] == {"images": 7, "anomalous": 3, "normal": 3, "unreadable": 1}
    assert summary["thresholds"]["source"] == "test"
    for name, (score, amap) in tiny["ref"].items():
        row = rows[name]
        assert row["status"] == "ok"
        assert float(row["raw_score"]) == pytest.approx(score, abs=1e-5)
        assert int(row["pred_label"]) == int(score >= tiny["threshold"])
        original = read_rgb(tiny["images"] / ("sub/pal.png" if name == "pal.png" else name))
        mask = cv2.imread(str(tmp_path / row["mask_path"]), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(tmp_path / row["overlay_path"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == original.shape[:2] and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == original.shape
        saved = np.load(tmp_path / row["map_path"])
        assert saved.shape == (SIZE, SIZE)
        np.testing.assert_allclose(saved, amap.numpy(), atol=1e-5)
    assert (tmp_path / "masks" / "sub" / "pal.png").is_file()  # sub-folders kept
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["counts"] == summary["counts"] and on_disk["normalization"]


def test_threshold_override_and_normalised_scores(tiny: dict, tmp_path: Path) -> None:
    top = max(score for score, _ in tiny["ref"].values())
    summary = predict(tiny["ckpt"], tiny["images"], tmp_path / "high", threshold=top + 1, score="normalized",
                      device="cpu", progress=False)
    assert summary["counts"]["anomalous"] == 0 and summary["thresholds"]["source"] == "override"
    for row in summary["images"]:
        if row["status"] == "ok":
            expected = normalize_scores(torch.tensor(row["raw_score"]), top + 1, 0.1, 2.1)
            assert row["pred_score"] == pytest.approx(float(expected), abs=1e-6)
            assert row["pred_score"] < 0.5
    low = predict(tiny["ckpt"], tiny["images"], tmp_path / "low", threshold=-1.0, device="cpu", progress=False)
    assert low["counts"]["anomalous"] == 6


def test_normalize_scores_formula() -> None:
    raw = torch.tensor([0.0, 1.0, 2.0, 100.0, -100.0])
    got = normalize_scores(raw, threshold=1.0, min_value=0.0, max_value=4.0)
    torch.testing.assert_close(got, torch.tensor([0.25, 0.5, 0.75, 1.0, 0.0]))


def test_checkpoint_without_thresholds_needs_threshold(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="threshold="):
        predict(tiny["bare"], tiny["images"], tmp_path / "a", device="cpu", progress=False)
    with pytest.raises(ConfigError, match="score statistics"):
        predict(tiny["bare"], tiny["images"], tmp_path / "b", threshold=1.0, score="normalized", device="cpu")
    summary = predict(tiny["bare"], tiny["images"] / "gray.png", tmp_path / "c", threshold=1.0, device="cpu",
                      progress=False)
    assert summary["counts"]["images"] == 1 and summary["images"][0]["normalized_score"] is None
    assert not (tmp_path / "a").exists()


def test_python_api_predicts_arrays_and_paths(tiny: dict) -> None:
    inferencer = URDInferencer.from_checkpoint(tiny["ckpt"], device="cpu")
    paths = [tiny["images"] / "gray.png", tiny["images"] / "photo.jpg"]
    result = inferencer.predict_images([paths[0], read_rgb(paths[1])])
    assert result.anomaly_map.shape == (2, 1, SIZE, SIZE) and result.pred_mask.dtype == torch.bool
    for i, path in enumerate(paths):
        assert float(result.pred_score[i]) == pytest.approx(tiny["ref"][path.name][0], abs=1e-5)
    assert result.normalized_score is not None and float(result.normalized_score.min()) >= 0.0


def test_loaded_model_has_no_expert(tiny: dict) -> None:
    model, info = load_model(tiny["ckpt"])
    assert model.expert is None and not model.training
    assert info.image_size == SIZE and info.thresholds["source"] == "test" and info.category == "toy"


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "no_extras", "missing"])
def test_bad_checkpoints_raise_checkpoint_error(tiny: dict, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.ckpt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif kind == "truncated":
        data = tiny["ckpt"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "no_extras":
        torch.save({"state_dict": {"model.w": torch.zeros(1)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=str(path.name)):
        predict(path, tiny["images"], tmp_path / "out", threshold=1.0, device="cpu", progress=False)
    assert not (tmp_path / "out").exists()  # nothing else ran


def test_checkpoint_with_unsafe_objects_is_refused(tiny: dict, tmp_path: Path) -> None:
    payload = torch.load(tiny["ckpt"], weights_only=True)
    payload["hyper_parameters"] = {"path": Path("x")}  # a pickled class that weights_only refuses
    torch.save(payload, tmp_path / "unsafe.ckpt")
    with pytest.raises(CheckpointError, match="trust_checkpoint=true"):
        load_model(tmp_path / "unsafe.ckpt")
    model, _ = load_model(tmp_path / "unsafe.ckpt", trust_checkpoint=True)
    assert model.expert is None


def test_cli_predict_and_clean_errors(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    code = cli_main(["predict", f"ckpt={tiny['ckpt']}", f"input={tiny['images'] / 'sub'}", f"output={out}",
                     "device=cpu", "progress=false"])
    assert code == 0 and "1 images: " in capsys.readouterr().out
    assert len(_rows(out)) == 1
    (tmp_path / "junk.ckpt").write_bytes(b"\x00" * 100)
    assert cli_main(["predict", f"ckpt={tmp_path / 'junk.ckpt'}", f"input={tiny['images']}"]) == 2
    assert "junk.ckpt" in capsys.readouterr().err
    assert cli_main(["predict", f"ckpt={tiny['ckpt']}", f"input={tiny['images']}", "treshold=1"]) == 2
    assert "unknown key 'treshold'" in capsys.readouterr().err
    assert cli_main(["predict", f"ckpt={tiny['ckpt']}", f"input={tmp_path / 'nowhere'}", "device=cpu"]) == 2


def test_all_unreadable_returns_error_code(tiny: dict, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    code = cli_main(["predict", f"ckpt={tiny['ckpt']}", f"input={folder}", f"output={tmp_path / 'o'}",
                     "device=cpu", "progress=false"])
    assert code == 1 and _rows(tmp_path / "o")[0]["status"] == "unreadable"


def test_output_names_keep_folders_and_never_collide(tmp_path: Path) -> None:
    files = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "d" / "b.bmp"]
    names = output_names(files, tmp_path)
    assert names == [Path("a.png"), Path("a.jpg.png"), Path("d/b.bmp.png")]
    assert output_names([tmp_path / "x.tif"], None) == [Path("x.tif.png")]
    clash = [tmp_path / n for n in ("x.PNG.png", "x.PNG", "X.png", "x.png")]  # same name, or same but for case
    assert output_names(clash, tmp_path) == [Path("x.PNG~2.png"), Path("x.PNG.png"), Path("X.png"), Path("x~2.png")]


def test_empty_folder_is_a_data_error(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no image files"):
        predict(tiny["ckpt"], tmp_path, tmp_path / "o", device="cpu", progress=False)


def test_hidden_files_and_folders_are_not_listed(tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / ".from_a_mac" / "input"  # a hidden folder above the input is the user's choice: listed
    (folder / ".cache").mkdir(parents=True)
    (folder / "sub").mkdir()
    good = (tiny["images"] / "gray.png").read_bytes()
    for name in ("a.png", "sub/b.png", ".cache/c.png", "sub/.d.png"):
        (folder / name).write_bytes(good)
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # what unzipping a Mac archive leaves
    assert list_images(folder) == [folder / "a.png", folder / "sub" / "b.png"]
    assert list_images(folder, recursive=False) == [folder / "a.png"]
    assert list_images(folder / "._a.png") == [folder / "._a.png"]  # a file named on purpose is read
    summary = predict(tiny["ckpt"], folder, tmp_path / "o", device="cpu", progress=False)
    assert summary["counts"]["unreadable"] == 0 and len(_rows(tmp_path / "o")) == 2
    assert cli_main(["predict", "--help"]) == 0
    assert "hidden files and folders" in capsys.readouterr().out


@pytest.mark.slow
def test_trained_checkpoint_predict_reproduces_evaluation(mvtec_root: Path, tmp_path: Path) -> None:
    """A real Lightning checkpoint loads with weights_only and predict sees the evaluation's exact inputs:
    the extreme scores over the test set equal the score statistics the test stage stored."""
    _, ckpt = train_tiny(mvtec_root, tmp_path)
    summary = predict(ckpt, Path(mvtec_root) / "bottle" / "test", tmp_path / "pred", device="cpu", progress=False)
    stats = summary["score_stats"]
    scores = [row["raw_score"] for row in summary["images"]]
    assert summary["counts"]["unreadable"] == 0 and summary["thresholds"]["source"] == "test"
    assert min(scores) == pytest.approx(stats["image_min"], abs=1e-5)
    assert max(scores) == pytest.approx(stats["image_max"], abs=1e-5)
