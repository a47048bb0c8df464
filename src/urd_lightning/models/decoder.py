"""The student's bottleneck (multi-scale fusion + one-class embedding) and reverse ResNet decoder.

Follows docs/method.md, "Bottleneck and decoder" (RD4AD's ``BN_layer`` and de-ResNet, which URD reuses). All sizes come
from the encoder's :class:`~urd_lightning.models.encoder.BackboneSpec`, so Bottleneck (WideResNet-50-2, ResNet-50) and
BasicBlock (ResNet-18/34) backbones both work. Module and attribute names follow the authors' key layout (``bn_layer``,
``conv1..3``, ``upsample``) so that their checkpoints map 1:1 (see ``authors.py``).

Shapes for WideResNet-50-2 at 256² (channels C1..C4 = 256, 512, 1024, 2048):
    bottleneck: [(B,256,64,64), (B,512,32,32), (B,1024,16,16)] -> (B,2048,8,8)
    decoder.layer1: (B,2048,8,8) -> (B,1024,16,16); layer2 -> (B,512,32,32); layer3 -> (B,256,64,64)
"""

from __future__ import annotations

import torch
from timm.models.resnet import BasicBlock, Bottleneck
from torch import Tensor, nn

from urd_lightning.models.encoder import BackboneSpec


class DeBottleneck(nn.Module):
    """Reverse Bottleneck: 1×1 → (2×2 transposed conv stride 2 | 3×3 conv) → 1×1, plus shortcut.

    The first block of a stage upsamples ×2 on both paths (transposed 2×2 convs); the others keep the size.
    """

    def __init__(self, in_ch: int, width: int, out_ch: int, upsample: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        if upsample:
            self.conv2: nn.Module = nn.ConvTranspose2d(width, width, 2, stride=2, bias=False)
        else:
            self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = (nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False),
                                       nn.BatchNorm2d(out_ch)) if upsample else None)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, h, w)`` → ``(B, out, 2h, 2w)`` for the upsampling block, same size otherwise."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.upsample is None else self.upsample(x)
        return self.relu(out + identity)


class DeBasicBlock(nn.Module):
    """Reverse BasicBlock (RD4AD's ResNet-18/34 decoder): (2×2 transposed conv stride 2 | 3×3) → 3×3, plus shortcut."""

    def __init__(self, in_ch: int, out_ch: int, upsample: bool) -> None:
        super().__init__()
        if upsample:
            self.conv1: nn.Module = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = (nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2, bias=False),
                                       nn.BatchNorm2d(out_ch)) if upsample else None)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, h, w)`` → ``(B, out, 2h, 2w)`` for the upsampling block, same size otherwise."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.upsample is None else self.upsample(x)
        return self.relu(out + identity)


class FusionBottleneck(nn.Module):
    """RD's OCBE: multi-scale fusion of [f1, f2, f3] to f3's size, then ResNet blocks shaped like layer4.

    ``conv1``/``conv2`` take f1 down twice (3×3 stride 2), ``conv3`` takes f2 down once; the concatenation
    ``(B, 3·C3, h3, w3)`` goes through ``depths[3]`` blocks of the encoder's layer4 type (the first with stride 2),
    giving ``(B, C4, h3/2, w3/2)``. The authors' unused ``conv4``/``bn4`` is left out (``authors.py`` drops its keys).
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        c1, c2, c3, c4 = spec.channels
        self.conv1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu = nn.ReLU(inplace=True)
        in_ch = 3 * c3
        blocks: list[nn.Module] = []
        for i in range(spec.depths[3]):
            stride = 2 if i == 0 else 1
            down = (nn.Sequential(nn.Conv2d(in_ch, c4, 1, stride=2, bias=False), nn.BatchNorm2d(c4))
                    if i == 0 else None)
            if spec.block == "bottleneck":
                planes = c4 // Bottleneck.expansion
                # timm's Bottleneck width = planes · base_width / 64; choose base_width to reproduce layer4's width
                blocks.append(Bottleneck(in_ch, planes, stride=stride, downsample=down,
                                         base_width=spec.widths[3] * 64 // planes))
            else:
                blocks.append(BasicBlock(in_ch, c4, stride=stride, downsample=down))
            in_ch = c4
        self.bn_layer = nn.Sequential(*blocks)

    def forward(self, feats: list[Tensor]) -> Tensor:
        """``[(B,C1,4h,4w), (B,C2,2h,2w), (B,C3,h,w)]`` → ``(B,C4,h/2,w/2)``."""
        l1 = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(feats[0]))))))
        l2 = self.relu(self.bn3(self.conv3(feats[1])))
        return self.bn_layer(torch.cat([l1, l2, feats[2]], dim=1))


class ReverseDecoder(nn.Module):
    """De-ResNet: ``layer1`` (C4→C3), ``layer2`` (C3→C2), ``layer3`` (C2→C1), each first block upsampling ×2.

    Stage k has as many blocks as the encoder's layer k (the authors' de-ResNet reuses the encoder's layer list
    unreversed: 3, 4, 6 for WideResNet-50-2) and the inner width of encoder layer (4 − k).
    """

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        c = spec.channels
        for stage, (src, dst) in enumerate([(3, 2), (2, 1), (1, 0)], start=1):
            blocks: list[nn.Module] = []
            in_ch = c[src]
            for i in range(spec.depths[stage - 1]):
                if spec.block == "bottleneck":
                    blocks.append(DeBottleneck(in_ch, spec.widths[dst], c[dst], upsample=i == 0))
                else:
                    blocks.append(DeBasicBlock(in_ch, c[dst], upsample=i == 0))
                in_ch = c[dst]
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

    def forward(self, x: Tensor) -> list[Tensor]:
        """Plain RD decoding: ``(B,C4,h,w)`` → ``[(B,C1,8h,8w), (B,C2,4h,4w), (B,C3,2h,2w)]``, shallow→deep."""
        a = self.layer1(x)
        b = self.layer2(a)
        return [self.layer3(b), b, a]
