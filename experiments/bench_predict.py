"""Predict throughput (images/s) of the exported graph, PyTorch vs ONNX Runtime, at 256².

    python experiments/bench_predict.py                                   # resnet18, batch 8, CPU
    python experiments/bench_predict.py --backbones resnet18 wide_resnet50_2.tv_in1k --batch-size 8 --iters 5

Measures the inference graph that ``export`` writes (teacher + student + σ=4 blur, normalised image → map, score)
with random weights (throughput does not depend on the weights): a tiny checkpoint is written to a temporary
folder and exported through the real ``export`` path, parity check included. Preprocessing and file output are
not timed. Timings are wall-clock medians over ``--iters`` batches after one warm-up batch; on a shared machine
they swing, so report the machine and thread count with the numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from urd_lightning.deploy.checkpoint import save_checkpoint  # noqa: E402
from urd_lightning.deploy.export import InferenceGraph, export  # noqa: E402
from urd_lightning.models import URD  # noqa: E402


def _median_rate(run, batch: torch.Tensor, iters: int) -> float:
    run(batch)  # warm-up: allocator, ORT graph optimisation, oneDNN kernels
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


def bench(backbone: str, size: int, batch_size: int, iters: int, injection: str, workdir: Path) -> dict[str, float]:
    torch.manual_seed(0)
    model = URD(backbone=backbone, pretrained=False, injection=injection, expert=False, train_teacher=False).eval()
    ckpt = save_checkpoint(model, workdir / f"{backbone}.ckpt", size)
    start = time.perf_counter()
    meta = export(ckpt, format="onnx", output=workdir / f"{backbone}.onnx")
    export_s = time.perf_counter() - start
    graph = InferenceGraph(model)
    batch = torch.randn(batch_size, 3, size, size)

    def run_torch(x: torch.Tensor) -> None:
        with torch.inference_mode():
            graph(x)

    session = ort.InferenceSession(meta["path"], providers=["CPUExecutionProvider"])

    def run_onnx(x: torch.Tensor) -> None:
        session.run(None, {"image": x.numpy()})

    worst = max(max(r["anomaly_map"], r["pred_score"]) for r in meta["parity"])
    return {
        "torch": _median_rate(run_torch, batch, iters),
        "onnxruntime": _median_rate(run_onnx, batch, iters),
        "export_s": export_s,
        "parity": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18"])
    parser.add_argument("--size", type=int, default=256, help="square input side (the paper's 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--injection", default="gii", choices=["gii", "concat", "none"])
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{args.size}², batch {args.batch_size}, injection {args.injection}, median of {args.iters}")
    print(f"{'backbone':<28} {'torch img/s':>12} {'ORT img/s':>10} {'export s':>9} {'parity':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            r = bench(backbone, args.size, args.batch_size, args.iters, args.injection, Path(tmp))
            print(f"{backbone:<28} {r['torch']:>12.2f} {r['onnxruntime']:>10.2f} {r['export_s']:>9.1f} "
                  f"{r['parity']:>9.1e}", flush=True)


if __name__ == "__main__":
    main()
