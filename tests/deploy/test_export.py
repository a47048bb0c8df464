"""export: ONNX and TorchScript graphs normalised image → (smoothed map, score), parity ≤ 1e-4.

Tiny model (resnet18, random weights, 32 px). Besides the parity check export runs itself, each test re-runs the
exported file on fresh inputs at batch 1 and 3 against the in-memory network that wrote the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from urd_lightning.__main__ import main as cli_main
from urd_lightning.deploy.checkpoint import save_checkpoint
from urd_lightning.deploy.export import PARITY_TOLERANCE, ExportParityError, InferenceGraph, check_parity, export
from urd_lightning.errors import CheckpointError, ConfigError
from urd_lightning.models import URD

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.manual_seed(1)
    model = URD(backbone="resnet18", pretrained=False, injection="gii").eval()
    root = tmp_path_factory.mktemp("export")
    thresholds = {"image": 1.0, "pixel": 0.9, "source": "test"}
    ckpt = save_checkpoint(model, root / "last.ckpt", SIZE, "demo", "toy", thresholds, None)
    return {"model": model, "ckpt": ckpt, "root": root}


def _fresh_inputs() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    return [torch.randn(b, 3, SIZE, SIZE, generator=generator) * 1.5 for b in (1, 3)]


def _assert_close_to_model(model: URD, run) -> None:
    for x in _fresh_inputs():
        with torch.no_grad():
            ref_map, ref_score = model.predict(x)
        got_map, got_score = run(x)
        assert tuple(got_map.shape) == (x.shape[0], 1, SIZE, SIZE) and tuple(got_score.shape) == (x.shape[0],)
        assert float((torch.as_tensor(got_map) - ref_map).abs().max()) <= PARITY_TOLERANCE
        assert float((torch.as_tensor(got_score) - ref_score).abs().max()) <= PARITY_TOLERANCE


def test_onnx_export_via_cli_parity_dynamic_batch_and_metadata(tiny: dict, capsys: pytest.CaptureFixture) -> None:
    path = tiny["root"] / "model.onnx"
    assert cli_main(["export", f"ckpt={tiny['ckpt']}", "format=onnx", f"output={path}"]) == 0
    assert "max abs difference" in capsys.readouterr().out
    meta = json.loads(Path(str(path) + ".json").read_text())
    path = Path(meta["path"])
    assert [r["batch_size"] for r in meta["parity"]] == [1, 3]
    assert all(r["anomaly_map"] <= PARITY_TOLERANCE and r["pred_score"] <= PARITY_TOLERANCE for r in meta["parity"])
    graph = onnx.load(str(path))
    assert max(op.version for op in graph.opset_import if op.domain in {"", "ai.onnx"}) >= 17
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    stored = json.loads({p.key: p.value for p in graph.metadata_props}["urd_lightning"])
    assert stored["image_size"] == SIZE and stored["thresholds"]["pixel"] == 0.9
    assert meta["format"] == "onnx" and meta["path"] == str(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.from_numpy(o) for o in session.run(None, {"image": x.numpy()})]

    _assert_close_to_model(tiny["model"], run)


def test_torchscript_export_parity_dynamic_batch(tiny: dict) -> None:
    meta = export(tiny["ckpt"], format="torchscript")
    path = Path(meta["path"])
    assert path == tiny["ckpt"].with_name("last.torchscript.pt")
    extra = {"urd_lightning.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["urd_lightning.json"])["category"] == "toy"

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return loaded(x)

    _assert_close_to_model(tiny["model"], run)


def test_parity_failure_removes_file_and_raises(tiny: dict, tmp_path: Path) -> None:
    graph = InferenceGraph(tiny["model"])
    target = tmp_path / "bad.onnx"
    target.write_bytes(b"x")

    def off_by_a_bit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            amap, score = graph(x)
        return amap + 3 * PARITY_TOLERANCE, score

    with pytest.raises(ExportParityError, match="batch 1"):
        check_parity(graph, off_by_a_bit, SIZE, target)
    assert not target.exists()


def test_exact_runner_passes_parity(tiny: dict, tmp_path: Path) -> None:
    graph = InferenceGraph(tiny["model"])
    records = check_parity(graph, graph, SIZE, tmp_path / "same")
    assert [r["anomaly_map"] for r in records] == [0.0, 0.0]


def test_export_errors(tiny: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="format"):
        export(tiny["ckpt"], format="openvino")
    with pytest.raises(ConfigError, match="opset"):
        export(tiny["ckpt"], format="onnx", opset=13)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.arange(300, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        export(junk, format="onnx", output=tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def test_cli_export_errors(tiny: dict, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["export", "format=onnx"]) == 2
    assert "missing ckpt=... (checkpoint written by training)" in capsys.readouterr().err
    assert cli_main(["export", f"ckpt={tiny['ckpt']}", "format=tflite"]) == 2
    assert "format='tflite'; choose one of: onnx, torchscript, weights" in capsys.readouterr().err
