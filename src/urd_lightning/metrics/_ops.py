"""Array primitives of the metrics: numpy on the CPU, torch on accelerators.

On the CPU numpy's sort (vectorised), partition, boolean indexing and unique are several times faster than torch's,
and single-threaded. ``cpu_single_thread`` keeps the remaining torch ops from fighting over busy cores.
"""

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import torch
from torch import Tensor

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def cpu_single_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops single-threaded inside the block (no effect for accelerator tensors).

    The metric work is memory-bound and mostly numpy; torch's intra-op threads only add synchronisation. On a loaded
    2-core machine two torch threads made the same steps about 10x slower than one (``experiments/bench_metrics.py``).
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def single_threaded(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` under ``cpu_single_thread`` for the device of its first argument (a tensor or a tuple of them)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        first = args[0] if args else next(iter(kwargs.values()))
        device = first.device if isinstance(first, Tensor) else first[0].device  # type: ignore[index,attr-defined]
        with cpu_single_thread(device):
            return fn(*args, **kwargs)

    return wrapper


def cpu_single_threaded(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
    """Run a Metric method under ``cpu_single_thread`` for the Metric's device."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        with cpu_single_thread(self.device):
            return method(self, *args, **kwargs)

    return wrapper


def _on_cpu(x: Tensor) -> bool:
    """Whether to use the numpy implementation (tests switch it off to run the accelerator code on the CPU)."""
    return x.device.type == "cpu"


def sort_values(x: Tensor, dim: int = -1) -> Tensor:
    """Ascending copy of ``x`` along ``dim``: numpy's vectorised sort on the CPU (several times faster there)."""
    if _on_cpu(x):
        return torch.from_numpy(np.sort(x.numpy(), axis=dim))
    return torch.sort(x, dim=dim).values


def count_sorted(sorted_x: Tensor, values: Tensor, right: bool) -> Tensor:
    """Row-wise ``searchsorted``: how many entries of each row of ``sorted_x`` are < (``right``: <=) each value."""
    if not _on_cpu(sorted_x):
        return torch.searchsorted(sorted_x, values, right=right)
    side = "right" if right else "left"
    xs, vs = sorted_x.numpy(), values.numpy()
    if xs.ndim == 1:
        return torch.from_numpy(np.searchsorted(xs, vs, side=side).astype(np.int64))
    out = np.empty(vs.shape, dtype=np.int64)
    for i in range(xs.shape[0]):  # numpy's searchsorted has no batch dimension; rows are few
        out[i] = np.searchsorted(xs[i], vs[i], side=side)
    return torch.from_numpy(out)


def masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x[mask]`` (numpy's boolean indexing on the CPU, about 10x faster than torch's there)."""
    if _on_cpu(x):
        return torch.from_numpy(x.numpy()[mask.numpy()])
    return x[mask]


def unique(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted distinct values and the index of each element among them (numpy on the CPU: ~10x faster there)."""
    if _on_cpu(x):
        values, inverse = np.unique(x.numpy(), return_inverse=True)
        return torch.from_numpy(values), torch.from_numpy(inverse.astype(np.int64).reshape(-1))
    return torch.unique(x, sorted=True, return_inverse=True)


def kth_largest(x: Tensor, k: int) -> Tensor:
    """The k-th largest value of a 1-D tensor (numpy's introselect on the CPU)."""
    if _on_cpu(x):
        n = x.numel()
        return torch.from_numpy(np.partition(x.numpy(), n - k)[n - k : n - k + 1].copy())[0]  # not a view
    return torch.kthvalue(x, x.numel() - k + 1).values
