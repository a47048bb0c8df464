"""`trainer.precision: null` picks bf16 autocast only where the hardware computes bf16 (GPU, avx512_bf16/AMX CPU)."""

import pytest
import torch

from urd_lightning import hardware
from urd_lightning.config import load_config
from urd_lightning.training import builders
from urd_lightning.training.module import URDModule

CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma avx512f {extra}\nbugs\t\t: none\n"


@pytest.mark.parametrize(("extra", "native"), [("", False), ("avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                               ("avx512_vnni", False)])  # fmt: skip
def test_cpu_bf16_needs_the_bf16_instructions(tmp_path, monkeypatch, extra, native):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # the tests' AVX2 kernel path sets it (Makefile)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    read = hardware.cpu_flags
    assert read(cpuinfo) >= {"avx2", "avx512f"} and "bugs" not in read(cpuinfo)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: read(cpuinfo))
    assert hardware.native_bf16(cuda=False) is native


@pytest.mark.parametrize(("variable", "cap", "native"), [
    ("ONEDNN_MAX_CPU_ISA", "AVX2", False), ("ONEDNN_MAX_CPU_ISA", "avx512_core", False),
    ("DNNL_MAX_CPU_ISA", "AVX2", False), ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
    ("ONEDNN_MAX_CPU_ISA", "DEFAULT", True), ("ONEDNN_MAX_CPU_ISA", "", True)])  # fmt: skip
def test_a_onednn_cap_below_bf16_means_fp32_on_a_bf16_cpu(monkeypatch, variable, cap, native):
    # Under such a cap oneDNN emulates bf16 as on a CPU without the instructions (checked below, where torch says so).
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, cap)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert hardware.native_bf16(cuda=False) is native


def test_the_bf16_decision_agrees_with_onednn_on_this_cpu():
    # oneDNN reads its cap at start-up: this is the process's own kernel path (make test-kernels runs it capped).
    # oneDNN also says yes under AVX512_CORE (emulated there), so only a "no" from oneDNN must be a "no" here.
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert not hardware.native_bf16(cuda=False)
    else:
        assert hardware.native_bf16(cuda=False) is bool(hardware.CPU_BF16_FLAGS & hardware.cpu_flags())


@pytest.mark.parametrize(("capability", "native"), [(7, False), (8, True), (9, True)])
def test_gpu_bf16_needs_ampere_not_emulation(monkeypatch, capability, native):
    # torch's default including_emulation=True says yes on a V100/T4 too, which would run bf16 slower than fp32.
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return capability >= 8 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert hardware.native_bf16(cuda=True) is native


def test_no_cpuinfo_means_fp32(tmp_path):
    assert hardware.cpu_flags(tmp_path / "missing") == set()


@pytest.mark.parametrize("native", [False, True])
def test_null_precision_resolves_by_the_hardware_and_an_explicit_one_is_kept(monkeypatch, native):
    monkeypatch.setattr(builders, "native_bf16", lambda cuda: native)
    resolved = builders.trainer_kwargs(load_config(["dataset=demo", "trainer.accelerator=cpu"]))["precision"]
    assert resolved == ("bf16-mixed" if native else "32-true")
    kept = builders.trainer_kwargs(load_config(["dataset=demo", "trainer.precision=32-true"]))["precision"]
    assert kept == "32-true"


@pytest.mark.parametrize("fused", [True, False])
def test_adam_is_fused_on_cpu_unless_a_benchmark_times_the_authors_loop(fused):
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=32)
    module.fused_adam = fused
    for optimizer in module.configure_optimizers():
        assert optimizer.defaults["fused"] is fused


def test_fused_and_loop_adam_make_the_same_update():
    torch.manual_seed(0)
    start = [torch.randn(1000), torch.randn(30, 7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    out = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = torch.optim.Adam(params, lr=5e-3, betas=(0.5, 0.999), fused=fused)  # the authors' student settings
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        out.append(params)
    for a, b in zip(*out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
