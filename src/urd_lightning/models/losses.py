"""URD's teacher and student losses, and RD4AD's, as pure functions of per-level features.

Follows docs/method.md, "Losses" (the authors' current losses) and "First-commit losses" (their first-commit terms,
``variant="first_commit"``). Every function returns a dict of named scalar terms, each summed over the levels; the
loss to back-propagate is the sum of the values. Feature lists are ordered shallow→deep ``[f1, f2, f3]``.

Two cosine granularities are used, exactly as in the authors' code (docs/faithfulness.md, row 4):
- per-pixel: cosine over channels at every position, ``(B,C,h,w)`` → ``(B,h,w)``;
- flattened: cosine between the ``C·h·w`` vectors of each sample, ``(B,C,h,w)`` → ``(B,)``.

Both run in fp32 whatever the features' dtype: under bf16 autocast the networks' features are bf16, and CUDA's
autocast would lift ``cosine_similarity`` to fp32 but CPU's would not (a bf16 flattened cosine over the C·h·w
values of a level, 262,144 to 1,048,576 for WideResNet-50 at 256², and a loss rounded to bf16's 8 bits). fp32
and fp64 features are used as they are.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Variant = Literal["head", "first_commit"]
# Weight of the extra first-commit terms: 0.1 in the authors' first commit.
FIRST_COMMIT_WEIGHT = 0.1


def at_least_fp32(t: Tensor) -> Tensor:
    """``t`` in fp32 if it is a half type (bf16/fp16 under autocast); fp32 and fp64 unchanged (no copy)."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def pixel_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel cosine over channels: ``(B,C,h,w)`` → ``(B,h,w)`` (eps 1e-8, torch's default), in fp32."""
    return F.cosine_similarity(at_least_fp32(a), at_least_fp32(b), dim=1)


def flat_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine between flattened samples: ``(B,C,h,w)`` → ``(B,)``, in fp32."""
    return F.cosine_similarity(at_least_fp32(a).flatten(1), at_least_fp32(b).flatten(1), dim=1)


def resize_masks(mask: Tensor, feats: list[Tensor]) -> list[Tensor]:
    """The mask at each level's size, ``(B,h_l,w_l)`` in {0, 1}, resized *sequentially* as the authors do.

    Each level is resized (bilinear, ``align_corners=True``) from the previous level's already-binarised mask, then
    binarised at 0.5 (< 0.5 → 0, else 1); a tiny anomaly can therefore vanish at the deeper levels.

    Args:
        mask: ``(B,1,H,W)`` binary mask at image size.
        feats: per-level features (only their sizes are used).
    """
    out = []
    m = mask.float()
    for f in feats:
        m = F.interpolate(m, size=f.shape[-2:], mode="bilinear", align_corners=True)
        m = (m >= 0.5).to(m.dtype)
        out.append(m[:, 0])
    return out


def teacher_loss(t_normal: list[Tensor], t_aug: list[Tensor], e_normal: list[Tensor], e_aug: list[Tensor],
                 mask: Tensor, variant: Variant = "head") -> dict[str, Tensor]:
    """Teacher loss L_T (docs/method.md, "Teacher loss"; ``first_commit``: "First-commit losses").

    HEAD terms, each Σ over levels l:
        ``t_normal``: mean[1 − cos_pixel(T_l(x), E_l(x))];
        ``t_mask``: mean|(1 − cos_pixel(T_l(x̃), E_l(x))) − M_l|, so anomalous pixels are pushed to be
        *orthogonal* (1 − cos = 1) to the clean expert feature and normal ones towards it;
        ``t_aug_expert``: mean_B[1 − cos_flat(T_l(x̃), E_l(x̃))].
    First-commit terms: ``t_normal`` is flattened instead of per-pixel, and ``t_aug_opposite`` =
    0.1 · mean_B[1 + cos_flat(T_l(x̃), E_l(x))] pushes the whole corrupted feature *opposite* the clean one.

    Args:
        t_normal: teacher features of the normal images (with gradient).
        t_aug: teacher features of the synthetic images (with gradient).
        e_normal: expert features of the normal images (no gradient).
        e_aug: expert features of the synthetic images (no gradient).
        mask: ``(B,1,H,W)`` synthetic-anomaly mask at image size.
        variant: ``"head"`` (reference) or ``"first_commit"``.
    """
    _check_variant(variant)
    masks = resize_masks(mask, t_aug)
    terms: dict[str, Tensor] = {}
    for t_n, t_a, e_n, e_a, m in zip(t_normal, t_aug, e_normal, e_aug, masks, strict=True):
        if variant == "head":
            _add(terms, "t_normal", (1 - pixel_cosine(t_n, e_n)).mean())
        else:
            _add(terms, "t_normal", (1 - flat_cosine(t_n, e_n)).mean())
        _add(terms, "t_mask", ((1 - pixel_cosine(t_a, e_n)) - m).abs().mean())
        _add(terms, "t_aug_expert", (1 - flat_cosine(t_a, e_a)).mean())
        if variant == "first_commit":
            _add(terms, "t_aug_opposite", FIRST_COMMIT_WEIGHT * (1 + flat_cosine(t_a, e_n)).mean())
    return terms


def student_loss(s_normal: list[Tensor], s_aug: list[Tensor] | None, t_normal: list[Tensor],
                 e_normal: list[Tensor] | None, variant: Variant = "head", *, mask: Tensor | None = None,
                 t_aug: list[Tensor] | None = None, e_aug: list[Tensor] | None = None) -> dict[str, Tensor]:
    """Student loss L_S (docs/method.md, "Student loss"). All HEAD terms use the flattened cosine.

    Terms, each Σ over levels l, targets are *clean-image* features (the "denoising" objective):
        ``s_normal_teacher``: mean_B[1 − cos_flat(S_l(x), T_l(x))];
        ``s_aug_teacher``: mean_B[1 − cos_flat(S_l(x̃), T_l(x))] (omitted when ``s_aug`` is None);
        ``s_normal_expert``, ``s_aug_expert``: the same against E_l(x) (omitted when ``e_normal`` is None).
    With ``s_aug=None`` and ``e_normal=None`` only ``s_normal_teacher`` remains: RD4AD's single loss.

    ``variant="first_commit"`` adds, for each synthetic term, 0.1 · the mean over *normal* pixels (mask 0) of the
    per-pixel cosine between S_l(x̃) and T_l(x̃) (``s_aug_teacher_normalpix``) or E_l(x̃)
    (``s_aug_expert_normalpix``). This reproduces the first commit's sign bug faithfully: its helper computed
    1 − (1 − cos) = cos, so minimising it *rewards dissimilarity* in normal pixels. HEAD removed the term.
    (How the first commit averaged over normal pixels is not recorded; here: sum over normal pixels divided by
    their count, 0 when a level has none.)

    Args:
        s_normal: student features from T(x) (with gradient).
        s_aug: student features from T(x̃), or None without a synthetic batch.
        t_normal: teacher features of the normal image (detached targets).
        e_normal: expert features of the normal image, or None without an expert.
        variant: ``"head"`` or ``"first_commit"``.
        mask: ``(B,1,H,W)`` synthetic mask; needed by ``first_commit`` when ``s_aug`` is given.
        t_aug: teacher features of x̃; needed by ``first_commit``.
        e_aug: expert features of x̃; needed by ``first_commit`` with an expert.
    """
    _check_variant(variant)
    targets = {"teacher": t_normal} if e_normal is None else {"teacher": t_normal, "expert": e_normal}
    terms: dict[str, Tensor] = {}
    for name, target in targets.items():
        for s_n, tgt in zip(s_normal, target, strict=True):
            _add(terms, f"s_normal_{name}", (1 - flat_cosine(s_n, tgt)).mean())
        if s_aug is not None:
            for s_a, tgt in zip(s_aug, target, strict=True):
                _add(terms, f"s_aug_{name}", (1 - flat_cosine(s_a, tgt)).mean())
    if variant == "first_commit" and s_aug is not None:
        if mask is None or t_aug is None or (e_normal is not None and e_aug is None):
            raise ValueError("student_loss(variant='first_commit') needs mask, t_aug (and e_aug with an expert)")
        masks = resize_masks(mask, s_aug)
        aug_targets = {"teacher": t_aug} if e_normal is None else {"teacher": t_aug, "expert": e_aug}
        for name, target in aug_targets.items():
            for s_a, tgt, m in zip(s_aug, target, masks, strict=True):
                normal = 1 - m
                cos = pixel_cosine(s_a, tgt)  # = 1 − (1 − cos): the first commit's sign bug, kept on purpose
                value = (cos * normal).sum() / normal.sum().clamp_min(1)
                _add(terms, f"s_aug_{name}_normalpix", FIRST_COMMIT_WEIGHT * value)
    return terms


def total(terms: dict[str, Tensor]) -> Tensor:
    """The loss to back-propagate: the sum of the named terms."""
    return torch.stack(list(terms.values())).sum()


def _add(terms: dict[str, Tensor], key: str, value: Tensor) -> None:
    terms[key] = terms[key] + value if key in terms else value


def _check_variant(variant: str) -> None:
    if variant not in ("head", "first_commit"):
        raise ValueError(f"loss variant must be 'head' or 'first_commit', got {variant!r}")
