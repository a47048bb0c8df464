"""Feed metrics batch by batch, in any split, and on two gloo processes (torchmetrics' MetricTester, cut down)."""

import os
import socket
import traceback
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.reference.anomaly_metrics import (
    image_metrics_ref,
    per_image_aupro_ref,
    pixel_metrics_ref,
    pooled_aupro_ref,
)

SPLITS = {"1xN": lambda n: [n], "Nx1": lambda n: [1] * n, "uneven": lambda n: [3, 1, n - 4] if n > 4 else [n]}


def reference(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    out = pixel_metrics_ref(maps, masks)
    out.update(image_metrics_ref(maps.reshape(len(maps), -1).max(1), masks.reshape(len(masks), -1).max(1)))
    out["pixel_AUPRO"] = pooled_aupro_ref(maps, masks)
    out["pixel_AUPRO_per_image"] = float(np.mean(per_image_aupro_ref(maps, masks)))
    return out


def feed(metric, maps: np.ndarray, masks: np.ndarray, sizes: list[int], channel: bool = False):
    start = 0
    for n in sizes:
        m, k = torch.from_numpy(maps[start : start + n]), torch.from_numpy(masks[start : start + n])
        if channel:
            m, k = m[:, None], k[:, None].float()
        metric.update(m, k)
        start += n
    return metric


def values(metric) -> dict[str, float] | float:
    """compute() as floats; for AnomalyMetrics also the F1-optimal thresholds read after the (synced) compute."""
    out = metric.compute()
    if not isinstance(out, dict):
        return float(out)
    result = {k: float(v) for k, v in out.items()}
    if hasattr(metric, "thresholds"):
        result.update({f"threshold_{k}": float(v) for k, v in metric.thresholds().items()})
    return result


def _worker(rank: int, port: int, makers: list[Callable], maps, masks, shards, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        idx = shards[rank]
        results = []
        for make in makers:
            metric = feed(make(), maps[idx], masks[idx], [2] * (len(idx) // 2) + [len(idx) % 2] * (len(idx) % 2))
            results.append(values(metric))
        queue.put((rank, results))
    except Exception:  # report instead of dying silently, so the parent fails at once rather than waiting
        queue.put((rank, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


def run_ddp(makers: list[Callable], maps: np.ndarray, masks: np.ndarray, shards: list[np.ndarray]) -> list:
    """Compute each metric on two gloo processes fed their own (uneven) shards; returns [rank0 list, rank1 list]."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, makers, maps, masks, shards, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=600) for _ in procs)
    failures = [f"rank {r}:\n{out}" for r, out in sorted(results.items()) if isinstance(out, str)]
    assert not failures, "\n".join(failures)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return [results[0], results[1]]
