"""The URD network: frozen expert, trainable teacher, student with injection; RD4AD as a configuration of it.

Follows docs/method.md: "Network" (expert/teacher/student), "The training step" (the expert never leaves eval mode),
"Anomaly map and score" (the map compares the *teacher* with the student) and "RD4AD and the ablations" (RD4AD = no
expert, frozen encoder, no injection, no Xavier override). Plain torch + timm: no Lightning here; the training step
lives in ``urd_lightning.training.module``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from urd_lightning.errors import ConfigError
from urd_lightning.models.anomaly_map import PAPER_SIGMA, GaussianBlur2d, anomaly_map, score_maps
from urd_lightning.models.encoder import DEFAULT_BACKBONE, build_encoder, describe_backbone
from urd_lightning.models.student import INJECTIONS, Injection, Student


class URDOutput(NamedTuple):
    """Per-level features, shallow→deep; the same type in train and eval mode.

    Attributes:
        teacher: ``[(B,C1,H/4,W/4), (B,C2,H/8,W/8), (B,C3,H/16,W/16)]``.
        student: the student's reconstruction of ``teacher``, same shapes.
    """

    teacher: list[Tensor]
    student: list[Tensor]


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


class URD(nn.Module):
    """Expert–Teacher–Student reverse distillation network.

    Args:
        backbone: timm ResNet-family name with weight tag; ``wide_resnet50_2.tv_in1k`` is the torchvision file the
            authors load. Decoder and bottleneck are sized from it.
        pretrained: ImageNet weights for expert and teacher (ignored when ``checkpoint`` is given).
        checkpoint: local backbone weight file (``.pth``/``.safetensors``, torchvision or timm key names).
        injection: ``"gii"`` (the paper's guided injection), ``"concat"`` (what the authors' scripts run) or
            ``"none"`` (plain RD).
        expert: build the frozen expert. ``False`` requires ``train_teacher=False`` (nothing to train it against).
        train_teacher: the teacher is trainable (URD) or a frozen encoder (RD4AD).
        xavier_init: URD's Xavier-normal init of the student's Conv2d; ``False`` keeps RD4AD's Kaiming init.

    Raises:
        ConfigError: inconsistent options or unknown injection/backbone.
        WeightsError: weights were asked for and cannot be obtained.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, pretrained: bool = True, checkpoint: str | None = None,
                 injection: Injection = "gii", expert: bool = True, train_teacher: bool = True,
                 xavier_init: bool = True) -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ConfigError(f"model.injection={injection!r} is not one of {list(INJECTIONS)}")
        if not expert and train_teacher:
            raise ConfigError("model.expert=false requires model.train_teacher=false: without an expert there is "
                              "nothing to train the teacher against (RD4AD freezes its encoder)")
        # Recorded so that checkpoints and results say exactly which network (and which injection) a run used.
        self.config = {"backbone": backbone, "pretrained": pretrained, "checkpoint": checkpoint,
                       "injection": injection, "expert": expert, "train_teacher": train_teacher,
                       "xavier_init": xavier_init}
        self.injection = injection
        self.train_teacher = train_teacher
        self.spec = describe_backbone(backbone)
        self.teacher = build_encoder(backbone, pretrained=pretrained, checkpoint=checkpoint)
        # The expert is an independent copy of the same initial weights, frozen for good (docs/method.md).
        self.expert: nn.Module | None = copy.deepcopy(self.teacher) if expert else None
        if self.expert is not None:
            _freeze(self.expert)
        if not train_teacher:
            _freeze(self.teacher)
        self.student = Student(self.spec, injection=injection, xavier_init=xavier_init)
        self.blur = GaussianBlur2d(PAPER_SIGMA)

    @property
    def channels(self) -> list[int]:
        """Channels of the three feature levels (from the encoder's ``feature_info``)."""
        return list(self.teacher.feature_info.channels())

    def train(self, mode: bool = True) -> URD:
        """Set train/eval mode; the expert (and a frozen teacher) stay in eval so BN statistics never change."""
        super().train(mode)
        if self.expert is not None:
            self.expert.eval()
        if not self.train_teacher:
            self.teacher.eval()
        return self

    def expert_features(self, x: Tensor) -> list[Tensor]:
        """Expert features of ``x`` ``(B,3,H,W)``, computed in eval mode without gradient."""
        if self.expert is None:
            raise ConfigError("this URD was built with model.expert=false; it has no expert features")
        self.expert.eval()
        with torch.no_grad():
            return list(self.expert(x))

    def teacher_features(self, x: Tensor) -> list[Tensor]:
        """Teacher features of ``x`` ``(B,3,H,W)``; without gradient when the teacher is frozen."""
        if not self.train_teacher:
            with torch.no_grad():
                return list(self.teacher(x))
        return list(self.teacher(x))

    def eval_features_pair(self, features: Callable[[Tensor], list[Tensor]], x: Tensor, x_aug: Tensor | None,
                           batched: bool = True) -> tuple[list[Tensor], list[Tensor] | None]:
        """``features(x)`` and ``features(x_aug)`` for an EVAL-mode part (expert, or the teacher re-forward).

        With ``batched`` the two halves go through one forward of ``[x; x_aug]`` (2B samples): in eval mode every
        sample is processed on its own (BatchNorm uses running statistics), so the result equals the two separate
        forwards up to float rounding, at one kernel launch sequence instead of two. Train-mode forwards must stay
        separate: there BatchNorm normalises with the statistics of the batch it sees (docs/method.md).
        ``batched=False`` is the authors' two forwards.
        """
        if x_aug is None:
            return features(x), None
        if not batched:
            return features(x), features(x_aug)
        both = features(torch.cat([x, x_aug]))
        n = x.shape[0]
        return [f[:n] for f in both], [f[n:] for f in both]

    def compile_parts(self, **options: object) -> None:
        """Run expert, teacher and student through ``torch.compile`` (in place: state-dict keys are unchanged)."""
        for part in (self.expert, self.teacher, self.student):
            if part is not None:
                part.compile(**options)

    def student_features(self, teacher_feats: list[Tensor]) -> list[Tensor]:
        """Student features from teacher features (its input and, for GII/concat, its injected skips)."""
        return self.student(teacher_feats)

    def forward(self, x: Tensor) -> URDOutput:
        """Teacher and student features of ``x`` ``(B,3,H,W)`` (ImageNet-normalised; H, W multiples of 32)."""
        # The bottleneck halves layer3 once more (stride 32 in all) and the decoder doubles back up, so other sizes
        # would not line up with the teacher's levels.
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ConfigError(f"input size {tuple(x.shape[-2:])} is not a multiple of 32; set data.image_size to a "
                              "multiple of 32 (the paper uses 256)")
        teacher = self.teacher_features(x)
        return URDOutput(teacher=teacher, student=self.student_features(teacher))

    def anomaly_map(self, x: Tensor) -> Tensor:
        """Raw (unsmoothed) fp32 map ``(B,1,H,W)``: Σ_l (1 − cos(T_l, S_l)) upsampled to the input size."""
        out = self.forward(x)
        return anomaly_map(out.teacher, out.student, tuple(x.shape[-2:]))

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Smoothed map ``(B,1,H,W)`` (Gaussian σ = 4, as the authors) and image score ``(B,)`` = its maximum.

        The network runs in whatever precision autocast gives it; map, blur and score are fp32.
        """
        return score_maps(self.anomaly_map(x), self.blur)

    def teacher_parameters(self) -> list[nn.Parameter]:
        """Parameters of the teacher's optimizer (empty when the teacher is frozen)."""
        return [p for p in self.teacher.parameters() if p.requires_grad]

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters of the student's optimizer: bottleneck, decoder and the injection modules in use."""
        return list(self.student.parameters())
