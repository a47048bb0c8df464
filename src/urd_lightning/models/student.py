"""URD's student: fusion bottleneck, reverse decoder and the teacher-feature injection (GII or plain skip).

Follows docs/method.md, "Injection" and "Paper and authors' code". ``injection`` picks the skip branch:

- ``"gii"``: the paper's Guided Information Injection (``forward_decoder_gii``): a similarity map computed without
  gradient mixes teacher and student features (convex mix), a 3×3 conv, concatenation, a 3×3 fuse conv.
- ``"concat"``: the unguided skip that the authors' scripts actually run (``forward_decoder_wogii``).
- ``"none"``: plain RD (``skip=False``), no teacher injection.

Module lists are indexed as in the authors' code: index 1 serves the level-3 (16², C3) injection, index 0 the
level-2 (32², C2) one. Only the modules that the chosen injection uses are built (``conv3x3_simattn`` only for
``gii``), so every parameter handed to the optimizer gets a gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from urd_lightning.models.decoder import FusionBottleneck, ReverseDecoder
from urd_lightning.models.encoder import BackboneSpec

Injection = Literal["gii", "concat", "none"]
INJECTIONS = ("gii", "concat", "none")


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _down_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    # Index 0 is the authors' Upsample(scale_factor=0.5, bilinear, align_corners=False), which equals 2×2 average
    # pooling for even sizes; keeping the Upsample keeps their key layout (conv at .1, BN at .2).
    return nn.Sequential(nn.Upsample(scale_factor=0.5, mode="bilinear"),
                         nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _channel_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine over channels, ``(B,C,H,W)`` × 2 → ``(B,1,H,W)``, eps 1e-8 as ``F.cosine_similarity``'s default."""
    return F.cosine_similarity(a, b, dim=1, eps=1e-8).unsqueeze(1)


def init_student_weights(module: nn.Module) -> None:
    """The authors' ``init_weight``: Xavier-normal (gain 1) on every ``nn.Conv2d``, BN weight 1 / bias 0.

    ``nn.ConvTranspose2d`` is not an ``nn.Conv2d`` subclass, so transposed convs keep PyTorch's default init, as in
    the authors' code.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_rd_weights(module: nn.Module) -> None:
    """RD4AD's own init (no Xavier override): Kaiming-normal fan_out on convs, BN weight 1 / bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Student(nn.Module):
    """Bottleneck + reverse decoder + injection modules.

    Args:
        spec: encoder description (channels C1..C4, widths, depths, block type).
        injection: ``"gii"``, ``"concat"`` or ``"none"``.
        xavier_init: URD's Xavier-normal init of every Conv2d (True) or RD4AD's Kaiming init (False).

    Forward maps teacher features ``[(B,C1,4h,4w), (B,C2,2h,2w), (B,C3,h,w)]`` to student features of the same
    shapes, ordered shallow→deep.
    """

    def __init__(self, spec: BackboneSpec, injection: Injection = "gii", xavier_init: bool = True) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, got {injection!r}")
        self.injection = injection
        self.bottleneck = FusionBottleneck(spec)
        self.decoder = ReverseDecoder(spec)
        c1, c2, c3 = spec.channels[:3]
        if injection != "none":
            self.conv1x1_downsample_dim = nn.ModuleList([_down_conv(c1, c2), _down_conv(c2, c3)])
            self.fuse_encoder = nn.ModuleList([_conv_bn_relu(c2, c2, 3), _conv_bn_relu(c3, c3, 3)])
            self.fuse_skip = nn.ModuleList([_conv_bn_relu(2 * c2, c2, 3), _conv_bn_relu(2 * c3, c3, 3)])
        if injection == "gii":
            self.conv3x3_simattn = nn.ModuleList([_conv_bn_relu(c2, c2, 3), _conv_bn_relu(c3, c3, 3)])
        self.apply(init_student_weights if xavier_init else init_rd_weights)

    def forward(self, teacher: list[Tensor]) -> list[Tensor]:
        """Student features ``[S1, S2, S3]`` from teacher features ``[T1, T2, T3]``."""
        b = self.bottleneck(teacher)
        if self.injection == "none":
            return self.decoder(b)
        t1, t2, t3 = teacher
        a = self.decoder.layer1(b)  # level-3 output; receives no skip input
        f16 = self.fuse_encoder[1](t3 + self.conv1x1_downsample_dim[1](t2))
        b_feat = self.decoder.layer2(self.fuse_skip[1](torch.cat([a, self._inject(1, a, t3, f16)], dim=1)))
        f32 = self.fuse_encoder[0](t2 + self.conv1x1_downsample_dim[0](t1))
        c_feat = self.decoder.layer3(self.fuse_skip[0](torch.cat([b_feat, self._inject(0, b_feat, t2, f32)], dim=1)))
        return [c_feat, b_feat, a]

    def _inject(self, index: int, student: Tensor, teacher: Tensor, fused: Tensor) -> Tensor:
        """What is concatenated to the student feature: the fused teacher feature (concat) or GII's guided mix."""
        if self.injection == "concat":
            return fused
        with torch.no_grad():  # the similarity weights are constants; gradients flow only through the mix
            sim = _channel_cosine(student.detach(), teacher)
        # Where the student already agrees with the teacher, inject the teacher's fused feature; where it disagrees
        # (a likely anomaly), keep the student's own feature.
        return self.conv3x3_simattn[index](sim * fused + (1 - sim) * student)
