"""The URD network on a tiny resnet18 (docs/method.md): shapes, gradients, frozen expert, options."""

import copy
import functools

import pytest
import torch

from urd_lightning.errors import ConfigError
from urd_lightning.models import URD, URDOutput, student_loss, teacher_loss
from urd_lightning.models.losses import total


@functools.cache
def _built(**kw):
    torch.manual_seed(0)
    return URD(backbone="resnet18", pretrained=False, **kw)


def _tiny(**kw):
    # Building (random-initialising) resnet18 dominates these tests on a loaded CPU: build once, hand out copies.
    return copy.deepcopy(_built(**kw))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    x_aug = torch.randn(2, 3, 32, 32, generator=g)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 4:15] = 1
    return x, x_aug, mask


@pytest.mark.parametrize("injection", ["gii", "concat", "none"])
def test_shapes_per_level_resnet18(injection, batch):
    net = _tiny(injection=injection).eval()
    x = batch[0]
    out = net(x)
    assert isinstance(out, URDOutput)
    expected = [(2, 64, 8, 8), (2, 128, 4, 4), (2, 256, 2, 2)]
    assert [tuple(t.shape) for t in out.teacher] == expected
    assert [tuple(s.shape) for s in out.student] == expected
    assert net.channels == net.teacher.feature_info.channels() == [64, 128, 256]
    assert [tuple(e.shape) for e in net.expert_features(x)] == expected
    smoothed, score = net.predict(x)
    assert smoothed.shape == (2, 1, 32, 32) and score.shape == (2,)
    assert torch.isfinite(smoothed).all()
    torch.testing.assert_close(score, smoothed.flatten(1).max(1).values)
    assert isinstance(net.train()(x), URDOutput)  # same type in train mode


@pytest.mark.slow
def test_shapes_per_level_wide_resnet50_256():
    net = URD(backbone="wide_resnet50_2.tv_in1k", pretrained=False, injection="gii").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 256, 256))
    expected = [(1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]
    assert [tuple(t.shape) for t in out.teacher] == expected
    assert [tuple(s.shape) for s in out.student] == expected
    assert net.student.bottleneck(out.teacher).shape == (1, 2048, 8, 8)


def _used_student_params(net):
    # conv3x3_simattn exists only for gii; none has no injection modules at all
    names = [n for n, _ in net.student.named_parameters()]
    if net.injection == "none":
        assert not any(n.startswith(("fuse_", "conv1x1", "conv3x3")) for n in names)
    if net.injection == "concat":
        assert not any(n.startswith("conv3x3_simattn") for n in names)
    return list(net.student.named_parameters())


@pytest.mark.parametrize("injection", ["gii", "concat", "none"])
def test_training_step_gradients_and_frozen_expert(injection, batch):
    x, x_aug, mask = batch
    net = _tiny(injection=injection).train()
    # timm zero-initialises each block's last BN weight (zero_init_last) when pretrained=False, which blocks the
    # gradient to the convs before it; ImageNet weights have no such zeros, so give both copies unit BN weights.
    with torch.no_grad():
        for m in [*net.teacher.modules(), *net.expert.modules()]:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    expert_buffers = {k: v.clone() for k, v in net.expert.state_dict().items()}
    e_n, e_a = net.expert_features(x), net.expert_features(x_aug)
    # teacher step: train-mode teacher, gradients reach every teacher parameter
    loss_t = total(teacher_loss(net.teacher_features(x), net.teacher_features(x_aug), e_n, e_a, mask))
    loss_t.backward()
    for name, p in net.teacher.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"teacher {name} got no gradient"
    # student step on detached, eval-mode teacher features
    net.teacher.eval()
    with torch.no_grad():
        t_n, t_a = net.teacher_features(x), net.teacher_features(x_aug)
    net.teacher.train()
    terms = student_loss(net.student_features(t_n), net.student_features(t_a), t_n, e_n)
    total(terms).backward()
    for name, p in _used_student_params(net):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"student {name} got no gradient"
    for p in net.expert.parameters():
        assert p.grad is None and not p.requires_grad
    assert not net.expert.training
    for k, v in net.expert.state_dict().items():
        assert torch.equal(v, expert_buffers[k]), f"expert {k} changed"


def test_expert_stays_eval_after_train_and_bn_stats_do_not_move(batch):
    net = _tiny()
    net.train()
    assert net.teacher.training and net.student.training and not net.expert.training
    before = net.expert.state_dict()["bn1.running_mean"].clone()
    net.expert(batch[0])  # even a direct call in a train()-ed URD must not touch the expert's statistics
    assert torch.equal(net.expert.state_dict()["bn1.running_mean"], before)
    teacher_before = net.teacher.state_dict()["bn1.running_mean"].clone()
    net.teacher_features(batch[0])
    assert not torch.equal(net.teacher.state_dict()["bn1.running_mean"], teacher_before)


def test_expert_and_teacher_start_from_the_same_weights():
    net = _tiny()
    for (k, a), b in zip(net.teacher.state_dict().items(), net.expert.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert net.teacher.conv1.weight.data_ptr() != net.expert.conv1.weight.data_ptr()


def test_rd4ad_configuration_freezes_the_encoder(batch):
    net = _tiny(expert=False, train_teacher=False, injection="none", xavier_init=False).train()
    assert net.expert is None and net.teacher_parameters() == [] and not net.teacher.training
    feats = net.teacher_features(batch[0])
    assert not any(f.requires_grad for f in feats)
    terms = student_loss(net.student_features(feats), None, feats, None)
    assert set(terms) == {"s_normal_teacher"}
    total(terms).backward()
    assert all(p.grad is not None for p in net.student_parameters())
    with pytest.raises(ConfigError, match="expert"):
        net.expert_features(batch[0])


def test_inconsistent_options_raise_config_error():
    with pytest.raises(ConfigError, match="train_teacher"):
        URD(backbone="resnet18", pretrained=False, expert=False, train_teacher=True)
    with pytest.raises(ConfigError, match="injection"):
        URD(backbone="resnet18", pretrained=False, injection="attn")
    with pytest.raises(ConfigError, match="backbone"):
        URD(backbone="no_such_net", pretrained=False)


def test_xavier_init_on_conv2d_only():
    net = _tiny(injection="concat")
    conv = net.student.fuse_skip[0][0]
    fan_in, fan_out = conv.weight.shape[1] * 9, conv.weight.shape[0] * 9
    xavier_std = (2.0 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(xavier_std, rel=0.05)
    deconv = net.student.decoder.layer1[0].upsample[0]
    # PyTorch default (kaiming_uniform a=√5) on ConvTranspose2d: uniform bound 1/√fan_in, fan_in = size(1)·k·k
    bound = 1 / (deconv.weight.shape[1] * 4) ** 0.5
    assert deconv.weight.abs().max().item() <= bound + 1e-6


def test_input_size_must_be_a_multiple_of_32():
    with pytest.raises(ConfigError, match="image_size"):
        _tiny()(torch.randn(1, 3, 48, 48))


def test_config_records_the_injection():
    assert _tiny(injection="concat").config["injection"] == "concat"


def test_gii_similarity_carries_no_gradient(batch):
    """GII: s = cos(A, T3) is a constant of the backward pass (no_grad on the detached student feature).

    The gradients of the mix s·F + (1 − s)·A are then exactly (1 − s)·g into A and s·g into F, and into T3 only
    through F and A. Computing s with gradient adds ∂s/∂A and ∂s/∂T3 terms, which these equalities catch.
    """
    net = _tiny(injection="gii").eval()
    feats = [f.detach().requires_grad_(True) for f in net.teacher_features(batch[0])]
    captured = {}
    hooks = [
        net.student.decoder.layer1.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out)),
        net.student.fuse_encoder[1].register_forward_hook(lambda _m, _i, out: captured.setdefault("f", out)),
        net.student.conv3x3_simattn[1].register_forward_pre_hook(lambda _m, args: captured.setdefault("mix", args[0])),
    ]
    net.student_features(feats)
    for hook in hooks:
        hook.remove()
    a, f, mix, t3 = captured["a"], captured["f"], captured["mix"], feats[2]
    assert mix.requires_grad  # gradient still flows through the convex mix into F and A
    s = torch.nn.functional.cosine_similarity(a.detach(), t3.detach(), dim=1, eps=1e-8).unsqueeze(1)
    torch.testing.assert_close(mix, s * f + (1 - s) * a)
    g = torch.randn(mix.shape, generator=torch.Generator().manual_seed(2))
    grad_a, grad_f, grad_t3 = torch.autograd.grad(mix, [a, f, t3], g, retain_graph=True)
    torch.testing.assert_close(grad_a, (1 - s) * g)
    torch.testing.assert_close(grad_f, s * g)
    expected_t3 = torch.autograd.grad([f, a], t3, [s * g, (1 - s) * g])[0]
    torch.testing.assert_close(grad_t3, expected_t3)
