"""An independent functional re-statement of the authors' inference path, written from docs/method.md.

It runs directly on a checkpoint in the authors' key layout (``{'teacher': ..., 'student': ...}``) with plain
``torch.nn.functional`` calls and knows nothing about this project's modules, so a wrong key mapping or a wrong
layer order in ``urd_lightning.models`` shows up as a different map. Eval-mode BN, ``wogii`` (concat) branch.
"""

import torch
import torch.nn.functional as F


def _bn(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def _conv(x, sd, p, stride=1):
    w = sd[f"{p}.weight"]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def _encoder_block(x, sd, p, stride):
    """torchvision Bottleneck (stride on the 3×3) or BasicBlock (stride on the first 3×3)."""
    if f"{p}.conv3.weight" in sd:
        out = F.relu(_bn(_conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
        out = F.relu(_bn(_conv(out, sd, f"{p}.conv2", stride), sd, f"{p}.bn2"))
        out = _bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
    else:
        out = F.relu(_bn(_conv(x, sd, f"{p}.conv1", stride), sd, f"{p}.bn1"))
        out = _bn(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
    if f"{p}.downsample.0.weight" in sd:
        x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + x)


def _blocks(sd, prefix):
    return sorted({int(k[len(prefix) + 1:].split(".")[0]) for k in sd if k.startswith(prefix + ".")})


def _layer(x, sd, prefix, first_stride):
    for i in _blocks(sd, prefix):
        x = _encoder_block(x, sd, f"{prefix}.{i}", first_stride if i == 0 else 1)
    return x


def teacher_forward(sd, x):
    x = F.relu(_bn(F.conv2d(x, sd["encoder.conv1.weight"], stride=2, padding=3), sd, "encoder.bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    f1 = _layer(x, sd, "encoder.layer1", 1)
    f2 = _layer(f1, sd, "encoder.layer2", 2)
    f3 = _layer(f2, sd, "encoder.layer3", 2)
    return [f1, f2, f3]


def _de_block(x, sd, p):
    up = f"{p}.upsample.0.weight" in sd
    if f"{p}.conv3.weight" in sd:  # de-Bottleneck
        out = F.relu(_bn(_conv(x, sd, f"{p}.conv1"), sd, f"{p}.bn1"))
        mid = (F.conv_transpose2d(out, sd[f"{p}.conv2.weight"], stride=2) if up else _conv(out, sd, f"{p}.conv2"))
        out = F.relu(_bn(mid, sd, f"{p}.bn2"))
        out = _bn(_conv(out, sd, f"{p}.conv3"), sd, f"{p}.bn3")
    else:  # de-BasicBlock
        first = F.conv_transpose2d(x, sd[f"{p}.conv1.weight"], stride=2) if up else _conv(x, sd, f"{p}.conv1")
        out = F.relu(_bn(first, sd, f"{p}.bn1"))
        out = _bn(_conv(out, sd, f"{p}.conv2"), sd, f"{p}.bn2")
    if up:
        x = _bn(F.conv_transpose2d(x, sd[f"{p}.upsample.0.weight"], stride=2), sd, f"{p}.upsample.1")
    return F.relu(out + x)


def _de_layer(x, sd, prefix):
    for i in _blocks(sd, prefix):
        x = _de_block(x, sd, f"{prefix}.{i}")
    return x


def _cbr(x, sd, p, conv_idx=0, bn_idx=1):
    return F.relu(_bn(_conv(x, sd, f"{p}.{conv_idx}"), sd, f"{p}.{bn_idx}"))


def student_forward_wogii(sd, t):
    t1, t2, t3 = t
    l1 = F.relu(_bn(_conv(F.relu(_bn(_conv(t1, sd, "bn.conv1", 2), sd, "bn.bn1")), sd, "bn.conv2", 2), sd, "bn.bn2"))
    l2 = F.relu(_bn(_conv(t2, sd, "bn.conv3", 2), sd, "bn.bn3"))
    b = _layer(torch.cat([l1, l2, t3], 1), sd, "bn.bn_layer", 2)
    a = _de_layer(b, sd, "decoder.layer1")

    def down(x, i):  # bilinear ×0.5 (align_corners=False), 1×1 conv, BN, ReLU
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return _cbr(x, sd, f"conv1x1_downsample_dim.{i}", 1, 2)

    f16 = _cbr(t3 + down(t2, 1), sd, "fuse_encoder.1")
    bfeat = _de_layer(_cbr(torch.cat([a, f16], 1), sd, "fuse_skip.1"), sd, "decoder.layer2")
    f32 = _cbr(t2 + down(t1, 0), sd, "fuse_encoder.0")
    cfeat = _de_layer(_cbr(torch.cat([bfeat, f32], 1), sd, "fuse_skip.0"), sd, "decoder.layer3")
    return [cfeat, bfeat, a]


def raw_anomaly_map(ckpt, x):
    """Σ_l (1 − cos_c(T_l, S_l)) upsampled (bilinear, align_corners=True) to the input size: ``(B,1,H,W)``."""
    with torch.no_grad():
        t = teacher_forward(ckpt["teacher"], x)
        s = student_forward_wogii(ckpt["student"], t)
        maps = [F.interpolate(1 - F.cosine_similarity(a, b, dim=1).unsqueeze(1), size=x.shape[-2:],
                              mode="bilinear", align_corners=True) for a, b in zip(t, s, strict=True)]
    return sum(maps)
