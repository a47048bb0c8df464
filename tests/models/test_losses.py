"""Losses against hand-computed values on tiny tensors (docs/method.md, "Losses")."""

import math

import pytest
import torch

from urd_lightning.models.losses import resize_masks, student_loss, teacher_loss, total


def _feat(vectors, h=1, w=None):
    """(1, C, 1, W) feature whose pixel j has channel vector vectors[j]."""
    t = torch.tensor(vectors, dtype=torch.float64)  # (W, C)
    return t.T.reshape(1, t.shape[1], 1, t.shape[0])


def test_resize_masks_is_sequential_and_binarised():
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 0:3, 0:3] = 1.0
    feats = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    m4, m2, m1 = resize_masks(mask, feats)
    # 8→4 with align_corners=True samples source rows/cols 0, 7/3, 14/3, 7: (0,0) = 1, (1,1) interpolates
    # between rows 2 (=1) and 3 (=0) with weight 1/3 on row 3 → (2/3)² ≈ 0.44 < 0.5 → 0.
    assert m4.tolist() == [[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]]
    assert m2.tolist() == [[[1, 0], [0, 0]]]
    # 2→1 with align_corners=True samples the top-left pixel only.
    assert m1.tolist() == [[[1]]]
    assert set(torch.cat([m.flatten() for m in (m4, m2, m1)]).tolist()) <= {0.0, 1.0}


def test_resize_masks_uses_previous_level_not_the_original():
    # The 2×2 mask must be the resize of the binarised 4×4 mask, not of the original 8×8 one.
    mask = torch.zeros(1, 1, 8, 8)
    mask[0, 0, 7, 6:8] = 1.0
    feats = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    m4, m2 = resize_masks(mask, feats)
    direct = (torch.nn.functional.interpolate(mask, size=(2, 2), mode="bilinear", align_corners=True) >= 0.5)[:, 0]
    assert m4[0, 3, 3] == 1.0  # the corner sample lies on the blob
    assert m2[0, 1, 1] == 1.0 and direct[0, 1, 1]
    m_direct_from_m4 = torch.nn.functional.interpolate(m4[:, None], size=(2, 2), mode="bilinear", align_corners=True)
    assert torch.equal(m2, (m_direct_from_m4 >= 0.5).float()[:, 0])


def test_teacher_loss_head_hand_computed():
    # One level, two pixels. Teacher normal = expert normal at pixel 0, orthogonal at pixel 1.
    e_n = _feat([[1, 0], [1, 0]])
    t_n = _feat([[1, 0], [0, 1]])
    # Synthetic teacher: pixel 0 equal to E(x), pixel 1 at 45°.
    t_a = _feat([[1, 0], [1, 1]])
    e_a = _feat([[0, 1], [0, 1]])
    mask = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)  # pixel 1 anomalous
    terms = teacher_loss([t_n], [t_a], [e_n], [e_a], mask)
    assert set(terms) == {"t_normal", "t_mask", "t_aug_expert"}
    assert terms["t_normal"].item() == pytest.approx((0 + 1) / 2)
    c45 = 1 / math.sqrt(2)
    # |(1 − 1) − 0| and |(1 − c45) − 1| = c45
    assert terms["t_mask"].item() == pytest.approx((0 + c45) / 2)
    # Flattened: t_a = (1,0 | 1,1) as channels-first vector [1,1, 0,1]; e_a → [0,0, 1,1]; cos = 1/(√3·√2)
    assert terms["t_aug_expert"].item() == pytest.approx(1 - 1 / (math.sqrt(3) * math.sqrt(2)))
    assert total(terms).item() == pytest.approx(sum(v.item() for v in terms.values()))


def test_teacher_loss_sums_over_levels():
    e = _feat([[1, 0]])
    t = _feat([[0, 1]])
    mask = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    one = teacher_loss([t], [t], [e], [e], mask)
    three = teacher_loss([t] * 3, [t] * 3, [e] * 3, [e] * 3, mask)
    for k in one:
        assert three[k].item() == pytest.approx(3 * one[k].item())


def test_teacher_loss_first_commit_terms():
    e_n = _feat([[1, 0], [1, 0]])
    t_n = _feat([[1, 0], [0, 1]])
    t_a = _feat([[-1, 0], [-1, 0]])  # exactly opposite the clean expert feature
    mask = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    terms = teacher_loss([t_n], [t_a], [e_n], [e_n], mask, variant="first_commit")
    assert set(terms) == {"t_normal", "t_mask", "t_aug_expert", "t_aug_opposite"}
    # flattened normal term: [1,0,0,1]·[1,1,0,0] / (√2·√2) = 1/2
    assert terms["t_normal"].item() == pytest.approx(0.5)
    assert terms["t_aug_opposite"].item() == pytest.approx(0.0)  # 0.1·(1 + cos) with cos = −1


def test_student_loss_head_hand_computed_and_targets_are_clean():
    t_n = _feat([[1, 0], [0, 1]])
    e_n = _feat([[1, 0], [1, 0]])
    s_n = _feat([[1, 0], [0, 1]])  # = T(x): teacher terms 0
    s_a = _feat([[1, 0], [1, 0]])  # = E(x): expert terms 0
    terms = student_loss([s_n], [s_a], [t_n], [e_n])
    assert set(terms) == {"s_normal_teacher", "s_aug_teacher", "s_normal_expert", "s_aug_expert"}
    assert terms["s_normal_teacher"].item() == pytest.approx(0.0)
    assert terms["s_aug_expert"].item() == pytest.approx(0.0)
    # flattened [1,1,0,0] vs [1,0,0,1]: cos = 1/2
    assert terms["s_aug_teacher"].item() == pytest.approx(0.5)
    assert terms["s_normal_expert"].item() == pytest.approx(0.5)


def test_student_loss_without_expert_or_synthetic_batch_is_rd4ad():
    t_n = _feat([[1, 0], [0, 1]])
    s_n = _feat([[0, 1], [0, 1]])
    terms = student_loss([s_n, s_n], None, [t_n, t_n], None)
    assert set(terms) == {"s_normal_teacher"}
    assert terms["s_normal_teacher"].item() == pytest.approx(2 * 0.5)
    no_expert = student_loss([s_n], [s_n], [t_n], None)
    assert set(no_expert) == {"s_normal_teacher", "s_aug_teacher"}


def test_student_loss_first_commit_keeps_the_sign_bug():
    t_n = _feat([[1, 0], [0, 1]])
    e_n = _feat([[1, 0], [1, 0]])
    s_a = _feat([[1, 0], [1, 0]])
    t_a = _feat([[1, 0], [0, 1]])  # pixel 0 identical to s_a, pixel 1 orthogonal
    mask = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)  # only pixel 0 is normal
    terms = student_loss([s_a], [s_a], [t_n], [e_n], "first_commit", mask=mask, t_aug=[t_a], e_aug=[e_n])
    # The buggy helper returns cos (not 1 − cos) over normal pixels: identical features cost the most.
    assert terms["s_aug_teacher_normalpix"].item() == pytest.approx(0.1 * 1.0)
    assert terms["s_aug_expert_normalpix"].item() == pytest.approx(0.1 * 1.0)
    with pytest.raises(ValueError, match="first_commit"):
        student_loss([s_a], [s_a], [t_n], [e_n], "first_commit")


def test_unknown_variant_is_rejected():
    f = _feat([[1, 0]])
    with pytest.raises(ValueError, match="variant"):
        student_loss([f], None, [f], None, variant="paper")


@pytest.mark.parametrize("loss", ["teacher", "student"])
def test_losses_are_fp32_under_cpu_bf16_autocast(loss):
    # CPU autocast, unlike CUDA's, leaves cosine_similarity in bf16: the losses must lift the features themselves.
    torch.manual_seed(0)
    feats = [[torch.randn(2, 8 * 2**i, 16 // 2**i, 16 // 2**i, dtype=torch.bfloat16) for i in range(3)]
             for _ in range(4)]
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float()
    def run(fs):
        if loss == "teacher":
            return total(teacher_loss(fs[0], fs[1], fs[2], fs[3], mask))
        return total(student_loss(fs[0], fs[1], fs[2], fs[3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = run(feats)
    reference = run([[f.float() for f in level] for level in feats])  # the same bf16 values, computed in fp32
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=1e-6, atol=1e-6)
