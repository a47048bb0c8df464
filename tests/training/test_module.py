"""URDModule's training iteration (docs/method.md, "The training step") on random tensors: what moves, what stays
frozen, in which mode each part runs, and what the checkpoint carries."""

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from urd_lightning.models import losses
from urd_lightning.training.module import URDModule

SIZE = 32


def batches(n=4):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(3, SIZE, SIZE, generator=g), "aug_image": torch.randn(3, SIZE, SIZE, generator=g),
             "aug_mask": (torch.rand(1, SIZE, SIZE, generator=g) > 0.7).float(), "index": torch.tensor(i)}
            for i in range(n)]


def fit(module, iterations=1):
    trainer = Trainer(accelerator="cpu", max_steps=iterations, logger=False,  # iterations: URDModule scales it
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=DataLoader(batches(), batch_size=2))
    return trainer


def make(**model):
    torch.manual_seed(0)
    return URDModule(model={"backbone": "resnet18", "pretrained": False, **model}, image_size=SIZE)


def state(part):
    return {k: v.detach().clone() for k, v in part.state_dict().items()}


def changed(before, part):
    return {k for k, v in part.state_dict().items() if not torch.equal(before[k], v)}


@pytest.fixture(scope="module")
def trained():
    """One module before and after one iteration (shared: fitting is the slow part)."""
    module = make()
    before = {name: state(getattr(module.model, name)) for name in ("expert", "teacher", "student")}
    trainer = fit(module)
    return module, trainer, before


def test_one_iteration_moves_teacher_and_student_never_the_expert(trained):
    module, _, before = trained
    expert, teacher, student = before["expert"], before["teacher"], before["student"]
    assert not changed(expert, module.model.expert), "the expert (weights or BN statistics) changed"
    assert not module.model.expert.training
    assert any(k.endswith("weight") for k in changed(teacher, module.model.teacher))
    assert any(k.endswith("running_mean") for k in changed(teacher, module.model.teacher))  # BN in train mode
    assert any(k.endswith("weight") for k in changed(student, module.model.student))


def test_modes_follow_the_authors_order(monkeypatch):
    module = make()
    seen = []
    real_teacher_loss, real_student = losses.teacher_loss, module.model.student_features

    def teacher_loss(*args, **kwargs):
        seen.append(("teacher_loss", module.model.teacher.training, module.model.expert.training))
        return real_teacher_loss(*args, **kwargs)

    def student_features(feats):
        seen.append(("student", module.model.teacher.training, any(f.requires_grad for f in feats)))
        return real_student(feats)

    monkeypatch.setattr(losses, "teacher_loss", teacher_loss)
    monkeypatch.setattr(module.model, "student_features", student_features)
    fit(module)
    # Teacher loss with the teacher in train mode (expert eval); the student then runs on detached features of
    # the teacher in eval mode (re-forwarded with the updated weights), once for x and once for x~.
    assert seen == [("teacher_loss", True, False), ("student", False, False), ("student", False, False)]


def test_two_adams_with_the_authors_settings(trained):
    module = trained[0]
    teacher_opt, student_opt = module.trainer.optimizers
    assert teacher_opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert student_opt.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert tuple(student_opt.param_groups[0]["betas"]) == (0.5, 0.999)
    assert module.iteration == 1 and module.trainer.global_step == 2


def test_frozen_teacher_has_one_optimizer_and_does_not_move():
    module = make(train_teacher=False)
    teacher = state(module.model.teacher)
    trainer = fit(module)
    assert len(trainer.optimizers) == 1 and module.steps_per_iteration == 1
    assert not changed(teacher, module.model.teacher)


def test_synthesis_off_drops_synthetic_terms(monkeypatch):
    module = URDModule(model={"backbone": "resnet18", "pretrained": False, "train_teacher": False,
                              "expert": False, "injection": "none", "xavier_init": False}, synthesis=False)
    names = []
    real = losses.student_loss

    def spy(*args, **kwargs):
        terms = real(*args, **kwargs)
        names.append(sorted(terms))
        return terms

    monkeypatch.setattr(losses, "student_loss", spy)
    fit(module)
    assert names == [["s_normal_teacher"]]  # RD4AD's single term


def test_checkpoint_extras_are_plain_and_weights_only_loadable(trained, tmp_path):
    module, trainer, _ = trained
    module.thresholds = {"image": 0.5, "pixel": 0.25, "source": "test"}
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    ckpt = torch.load(tmp_path / "x.ckpt", weights_only=True)
    extras = ckpt["urd_lightning"]
    assert extras["model"]["backbone"] == "resnet18" and extras["image_size"] == SIZE
    assert extras["thresholds"]["source"] == "test"
    restored = make()
    restored.load_state_dict(ckpt["state_dict"])
    for k, v in module.state_dict().items():
        assert torch.equal(v, restored.state_dict()[k]), k


def test_train_mode_of_the_module_keeps_expert_in_eval():
    module = make()
    module.train()
    assert not module.model.expert.training and module.model.teacher.training
    copy.deepcopy(module).train()
