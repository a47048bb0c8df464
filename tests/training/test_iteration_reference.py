"""One full URD training iteration against an independent functional statement of the authors'.

The reference below is written from docs/method.md, "Losses" and "The training step" only (no project losses, no
optimizer class): expert features in eval mode without gradient; teacher step in train mode (BatchNorm statistics
updated by T(x) and by T(x̃)); teacher re-forward in eval mode with the updated weights; student step in train mode on
those detached features, reusing the expert features; one Adam step each, written out. The module runs the same batch
through Lightning; the gradients, the parameters after both steps and every BatchNorm buffer must agree, for ``gii`` and
``concat``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from urd_lightning.training.module import URDModule

SIZE = 64
LR_TEACHER, LR_STUDENT, EPS = 1e-4, 5e-3, 1e-8  # the authors' Adam settings; betas cancel out in the first step


def cos_pixel(a, b):
    return F.cosine_similarity(a, b, dim=1)  # (B, h, w)


def cos_flat(a, b):
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)  # (B,)


def level_masks(mask, sizes):
    """Masks: bilinear (align_corners=True) to each level, binarised at 0.5, each level from the previous one."""
    out = []
    for size in sizes:
        mask = (F.interpolate(mask, size=size, mode="bilinear", align_corners=True) >= 0.5).float()
        out.append(mask[:, 0])
    return out


def teacher_loss_ref(t, t_aug, e, e_aug, mask):
    masks = level_masks(mask, [f.shape[-2:] for f in t])
    total = 0.0
    for tl, tal, el, eal, ml in zip(t, t_aug, e, e_aug, masks, strict=True):
        total = total + (1 - cos_pixel(tl, el)).mean()  # normal image, per pixel
        total = total + ((1 - cos_pixel(tal, el)) - ml).abs().mean()  # synthetic vs the CLEAN expert, mask L1
        total = total + (1 - cos_flat(tal, eal)).mean()  # synthetic vs expert(x̃), flattened
    return total


def student_loss_ref(s, s_aug, t, e):
    total = 0.0
    for sl, sal, tl, el in zip(s, s_aug, t, e, strict=True):  # all flattened, all against clean-image targets
        total = total + (1 - cos_flat(sl, tl)).mean() + (1 - cos_flat(sal, tl)).mean()
        total = total + (1 - cos_flat(sl, el)).mean() + (1 - cos_flat(sal, el)).mean()
    return total


def adam_first_step(params, lr):
    """Adam's first step: bias correction makes it p − lr·g / (|g| + eps), whatever the betas."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad / (p.grad.abs() + EPS)


def reference_teacher_step(net, x, x_aug, mask):
    """Steps 2–3 of the iteration stated above, on plain modules; returns the expert features for the student step."""
    expert, teacher = net.expert, net.teacher
    expert.eval()
    with torch.no_grad():  # step 2
        e, e_aug = list(expert(x)), list(expert(x_aug))
    teacher.train()  # step 3: batch statistics; running statistics move once per forward (twice)
    loss_t = teacher_loss_ref(list(teacher(x)), list(teacher(x_aug)), e, e_aug, mask)
    teacher_params = [p for p in teacher.parameters() if p.requires_grad]
    loss_t.backward()
    adam_first_step(teacher_params, LR_TEACHER)
    return e


def reference_student_step(net, x, x_aug, e):
    """Steps 4–6 of the iteration, on plain modules, from whatever weights the teacher holds now."""
    teacher, student = net.teacher, net.student
    teacher.eval()  # step 4: updated weights, running statistics, no gradient
    with torch.no_grad():
        t, t_aug = list(teacher(x)), list(teacher(x_aug))
    student.train()  # step 5 (step 6: the expert features of step 2 are reused)
    loss_s = student_loss_ref(student(t), student(t_aug), t, e)
    loss_s.backward()
    adam_first_step(list(student.parameters()), LR_STUDENT)


def batch():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, SIZE, SIZE)
    mask[0, :, 8:40, 12:44] = 1
    mask[1, :, 36:60, 4:24] = 1
    image, aug_image = torch.randn(2, 3, SIZE, SIZE, generator=g), torch.randn(2, 3, SIZE, SIZE, generator=g)
    return {"image": image, "aug_image": aug_image, "aug_mask": mask, "index": torch.arange(2)}


def check_part(prefix, reference, ours, after, before, lr):
    """Gradients, Adam step, weights and BatchNorm buffers of the module's ``prefix`` part against the reference's.

    Gradients: equal up to float rounding, which BatchNorm over a few positions amplifies to ~1e-5 of the largest.
    Parameters: where a gradient is at the rounding level the sign of Adam's first step is arbitrary, so the step is
    checked on the module's own gradient, and the weights against the reference where the gradient stands clear of
    the rounding.
    """
    for name, p in reference.named_parameters():
        if not name.startswith(prefix):
            continue
        mine = ours[name]
        if p.grad is None:
            assert mine.grad is None or not mine.grad.any(), f"{name} got a gradient"
            assert torch.equal(mine.detach(), before[name]), f"{name} moved without a gradient"
            continue
        scale = float(p.grad.abs().max())
        torch.testing.assert_close(mine.grad, p.grad, rtol=1e-3, atol=1e-3 * scale + 1e-12, msg=f"gradient of {name}")
        stepped = before[name] - lr * mine.grad / (mine.grad.abs() + EPS)
        # Tolerances: float32 rounding of the weights (1e-6 relative), far below a step (lr = 1e-4 and 5e-3).
        torch.testing.assert_close(mine.detach(), stepped, rtol=1e-6, atol=1e-8, msg=f"Adam step of {name}")
        clear = p.grad.abs() > 1e-2 * scale
        torch.testing.assert_close(mine.detach()[clear], p.detach()[clear], rtol=1e-6, atol=1e-8,
                                   msg=f"{name} after Adam")
    for name, buffer in reference.state_dict().items():
        if name.startswith(prefix) and name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(after[name], buffer, rtol=1e-5, atol=1e-6, msg=f"BatchNorm buffer {name}")


@pytest.mark.parametrize("injection", ["gii", "concat"])
def test_one_iteration_equals_the_functional_reference(injection):
    torch.manual_seed(0)
    module = URDModule(model={"backbone": "resnet18", "pretrained": False, "injection": injection}, image_size=SIZE)
    reference = copy.deepcopy(module.model)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    data = batch()
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,  # 1 URD iteration
                      enable_progress_bar=False, enable_model_summary=False)
    samples = [{k: v[i] for k, v in data.items()} for i in range(2)]
    trainer.fit(module, train_dataloaders=DataLoader(samples, batch_size=2))
    assert module.iteration == 1
    x, x_aug, mask = data["image"], data["aug_image"], data["aug_mask"]
    ours = dict(module.model.named_parameters())
    after = module.model.state_dict()

    e = reference_teacher_step(reference, x, x_aug, mask)
    check_part("teacher.", reference, ours, after, before, LR_TEACHER)
    # Adam's first step moves each weight by ±lr·g/(|g| + eps): where g is at the rounding level its sign, and so the
    # step, is arbitrary, and another CPU's kernels round differently. The two teachers may therefore differ by up to
    # 2·lr in such weights, and the student would see other inputs. So the student step is compared given the
    # module's own post-step teacher weights (just checked against the reference wherever they are well defined).
    with torch.no_grad():
        for name, p in reference.teacher.named_parameters():
            p.copy_(ours[f"teacher.{name}"])
    reference_student_step(reference, x, x_aug, e)
    check_part("student.", reference, ours, after, before, LR_STUDENT)
    check_part("expert.", reference, ours, after, before, None)

    # The counts the method states: teacher and student BN see two train-mode batches, the expert's none.
    counts = {k: int(v) for k, v in after.items() if k.endswith("num_batches_tracked")}
    assert {v for k, v in counts.items() if k.startswith("teacher.")} == {2}
    assert {v for k, v in counts.items() if k.startswith("student.")} == {2}
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("expert."))
    assert {k.split(".")[0] for k in after} == {"expert", "teacher", "student"}  # every part was checked above
