"""What the hardware computes natively, for defaults that depend on it (``trainer.precision: null``).

Torch only: the GPU benchmark script imports it on nodes without the package's other dependencies.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# x86 instructions that oneDNN's bf16 convolutions and matmuls use; without them bf16 is emulated, slower than fp32.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# oneDNN's instruction-set caps (its ONEDNN_MAX_CPU_ISA variable) below the first one with bf16 instructions: under
# such a cap oneDNN emulates bf16 whatever the CPU has, as on a CPU without those instructions.
ONEDNN_ISAS_WITHOUT_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                                      "AVX512_CORE_VNNI"})


def native_bf16(cuda: bool) -> bool:
    """Whether the device does bf16 arithmetic in hardware (then bf16 autocast is the fast default).

    CUDA: compute capability 8.0 or newer (Ampere, Hopper, ...). ``torch.cuda.is_bf16_supported``'s default
    (``including_emulation=True``) also says yes for a V100 or T4, which only emulate bf16 (no gain over fp32).
    CPU: the ``avx512_bf16`` or ``amx_bf16`` flags of Linux's ``/proc/cpuinfo``, unless ``ONEDNN_MAX_CPU_ISA``
    caps oneDNN below them (``AVX2``: how the tests run a CPU without AVX-512). Measured in docs/performance.md: on
    an ``avx512_bf16`` CPU a WideResNet-50 URD iteration (128², batch 4) under bf16 autocast takes about 0.6x its
    fp32 time.
    """
    if cuda:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return capped not in ONEDNN_ISAS_WITHOUT_BF16 and bool(CPU_BF16_FLAGS & cpu_flags())


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist: macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())
