"""The training step does no avoidable work and its speed settings are honest.

- the expert's forwards of x and x~ and the teacher's eval-mode re-forwards run as one forward of the 2B batch, which
  equals the separate forwards (eval mode: no batch statistics); the train-mode forwards stay separate;
- cudnn.benchmark is on for CUDA unless trainer.deterministic=true;
- compile=true gives the eager step's losses and gradients (slow: minutes of C++ compilation on a CPU).
"""

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from urd_lightning.config import load_config
from urd_lightning.models import URD
from urd_lightning.training import builders as train_module
from urd_lightning.training.module import URDModule

SIZE = 64


def batches(n=4, size=SIZE):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(3, size, size, generator=g), "aug_image": torch.randn(3, size, size, generator=g),
             "aug_mask": (torch.rand(1, size, size, generator=g) > 0.7).float(), "index": torch.tensor(i)}
            for i in range(n)]


def one_iteration(dtype=torch.float32, size=SIZE, **options):
    """A module after one training iteration on a batch of 4, and the losses it logged."""
    torch.manual_seed(0)
    module = URDModule(model={"backbone": "resnet18", "pretrained": False}, image_size=size, **options)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,  # 1 URD iteration
                      enable_progress_bar=False, enable_model_summary=False,
                      precision="64-true" if dtype == torch.float64 else "32-true")
    trainer.fit(module, train_dataloaders=DataLoader(batches(size=size), batch_size=4))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return module, losses


def assert_same_step(a, b, rtol, atol):
    assert a[1].keys() == b[1].keys() and len(a[1]) > 4
    for key in a[1]:
        assert a[1][key] == pytest.approx(b[1][key], rel=rtol, abs=atol), key
    pa, pb = dict(a[0].named_parameters()), dict(b[0].named_parameters())
    graded = [n for n, p in pa.items() if p.grad is not None]
    assert len(graded) > 100  # every teacher and student parameter
    for name in graded:
        torch.testing.assert_close(pa[name].grad, pb[name].grad, rtol=rtol, atol=atol, msg=name)
    for (name, va), vb in zip(a[0].state_dict().items(), b[0].state_dict().values(), strict=True):
        if va.is_floating_point():
            torch.testing.assert_close(va, vb, rtol=rtol, atol=atol, msg=name)


def test_batched_eval_forwards_equal_the_separate_forwards():
    torch.manual_seed(0)
    model = URD(backbone="resnet18", pretrained=False).eval()
    x, x_aug = torch.randn(3, 3, SIZE, SIZE), torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        for features in (model.expert_features, model.teacher_features):
            joint = model.eval_features_pair(features, x, x_aug, batched=True)
            apart = model.eval_features_pair(features, x, x_aug, batched=False)
            for half_joint, half_apart in zip(joint, apart, strict=True):
                for fj, fa in zip(half_joint, half_apart, strict=True):
                    torch.testing.assert_close(fj, fa, rtol=1e-5, atol=1e-6)


def test_training_step_with_batched_forwards_equals_the_authors_separate_forwards():
    # The whole iteration: every loss term, every gradient and every updated weight and BN statistic.
    joint = one_iteration(size=32, batched_eval_forwards=True)
    apart = one_iteration(size=32, batched_eval_forwards=False)
    assert_same_step(joint, apart, rtol=1e-4, atol=1e-6)


def test_cudnn_benchmark_is_on_for_cuda_unless_deterministic(monkeypatch):
    assert train_module.trainer_kwargs(load_config(["dataset=demo"]))["benchmark"] is False  # CPU: not applicable
    monkeypatch.setattr(train_module, "_on_cuda", lambda cfg: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert train_module.trainer_kwargs(load_config(["dataset=demo"]))["benchmark"] is True
    for argv in (["trainer.deterministic=true"], ["experiment=authors"]):
        kwargs = train_module.trainer_kwargs(load_config(["dataset=demo", *argv]))
        assert kwargs["benchmark"] is False and kwargs["deterministic"] is True


@pytest.mark.slow
def test_compiled_step_gives_the_eager_losses_and_gradients():
    # float64: a float32 step's gradients differ by a few percent between any two summation orders in the deep, tiny
    # BatchNorm levels, which would hide a real difference; in float64 compiled and eager agree to ~1e-12.
    compiled = one_iteration(torch.float64, compile=True)
    parts = (compiled[0].model.expert, compiled[0].model.teacher, compiled[0].model.student)
    assert all(part._compiled_call_impl is not None for part in parts)  # the step really ran compiled
    assert_same_step(compiled, one_iteration(torch.float64), rtol=1e-7, atol=1e-9)
