"""Connected ground-truth regions and the per-image AUPRO protocol of RD4AD and URD (urd-method.md section 6).

Per-image protocol (``compute_pro`` in RD4AD's ``test.py``, repeated by URD's ``train.py``), for each anomalous image
on its own: thresholds ``np.arange(min, max, (max - min) / 200)`` over that image's map (200 is the paper code's
``max_step``), a pixel is positive when ``score > t``, FPR over the image's normal pixels, PRO = mean over its
8-connected regions of the covered fraction; the points with FPR < 0.3 are kept, their FPR divided by the largest
kept FPR (not by 0.3), and the curve integrated with the trapezoid rule. The reported number is the mean over
anomalous images. It differs from the pooled MVTec protocol (``functional.pooled_aupro``) and is usually higher.

The thresholds replicate numpy's ``arange`` in float64 exactly: length ``ceil((max - min) / step)`` (200 or 201
depending on rounding) and values ``min + i * ((min + step) - min)`` as numpy's fill computes them. The authors'
code runs this arithmetic on float32 maps; a float64 map equals it except where float32 rounding changes the count.

Defined values where the authors' code gives NaN or raises: a constant map (step 0, numpy raises) scores 0; an
image with no threshold below the FPR limit scores 0; when every kept FPR is 0 (perfect separation, or no normal
pixel, whose FPR is taken as 0) the image scores its PRO at the lowest kept threshold.

Vectorised: each pixel is placed once among its image's thresholds (arithmetic estimate plus an exact float64
correction), then histograms per image and per region give FP and TP at all thresholds at once.
"""

import cv2
import numpy as np
import torch
from torch import Tensor

_NUM_THRESHOLDS = 200  # RD4AD/URD compute_pro: max_step=200
_IMAGES_PER_PASS = 32  # bounds the float64 working copy to 32 maps at a time


def label_regions(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Label the 8-connected regions of each binary mask (MVTec AD and skimage's default full connectivity).

    Args:
        mask: (B, H, W) bool, any device.

    Returns:
        ``(labels, sizes)``: labels (B, H, W) int64 on ``mask``'s device, 0 for normal pixels and 1..R_b within each
        image; sizes (B, R_max + 1) int64 pixel count of each region (column 0 unused, zeros past R_b).
    """
    masks = mask.detach().to("cpu", torch.uint8).numpy()
    labels = np.zeros(masks.shape, dtype=np.int32)
    counts: list[np.ndarray] = []
    for b, m in enumerate(masks):
        # Labelling on the CPU is exact and cheap for masks (about 0.2 ms at 256^2); GPU masks are copied once.
        n, labels[b], stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8, ltype=cv2.CV_32S)
        counts.append(stats[:, cv2.CC_STAT_AREA].astype(np.int64))
    width = max(len(c) for c in counts) if counts else 1
    sizes = np.zeros((len(counts), width), dtype=np.int64)
    for b, c in enumerate(counts):
        sizes[b, 1 : len(c)] = c[1:]
    return torch.from_numpy(labels).to(mask.device).long(), torch.from_numpy(sizes).to(mask.device)


def anomalous_region_sizes(mask: Tensor) -> tuple[Tensor, int]:
    """Size of the 8-connected region of every anomalous pixel, in ``mask[mask]`` order, and the region count.

    Args:
        mask: (B, H, W) bool, any device.

    Returns:
        ``(sizes (M,) int32 on mask's device, number of regions)``; only images with a defect are labelled.
    """
    masks = mask.detach().cpu().numpy()
    out, regions = [], 0
    for m in masks:
        if m.any():
            n, lab, stats, _ = cv2.connectedComponentsWithStats(m.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            out.append(stats[:, cv2.CC_STAT_AREA].astype(np.int32)[lab[m]])
            regions += n - 1
    sizes = np.concatenate(out) if out else np.zeros(0, np.int32)
    return torch.from_numpy(sizes).to(mask.device), regions


def arange_thresholds(lo: Tensor, hi: Tensor, num: int = _NUM_THRESHOLDS) -> tuple[Tensor, Tensor]:
    """Per-image ``np.arange(lo, hi, (hi - lo) / num)`` in float64, padded with +inf.

    Args:
        lo: (I,) float64 minimum of each map.
        hi: (I,) float64 maximum of each map.
        num: the divisor of the range (200 in the papers' code).

    Returns:
        ``(thresholds (I, L), count (I,))``: L = the longest count; a constant map (step 0) has count 0.
    """
    step = (hi - lo) / num
    ok = step > 0
    count = torch.where(ok, torch.ceil((hi - lo) / torch.where(ok, step, 1.0)), 0.0).long()
    width = int(count.max()) if count.numel() else 0
    k = torch.arange(width, dtype=torch.float64, device=lo.device)
    delta = (lo + step) - lo  # numpy's fill derives the increment from the first two values
    thr = lo[:, None] + k[None, :] * delta[:, None]
    if width > 1:
        thr[:, 1] = lo + step
    return thr.masked_fill_(k[None, :] >= count[:, None], torch.inf), count


def _place(scores: Tensor, thr: Tensor, lo: Tensor, step: Tensor, count: Tensor) -> Tensor:
    """Number of thresholds strictly below each score, exactly: the pixel is positive at thresholds 0..b-1."""
    est = torch.where(step[:, None] > 0, (scores - lo[:, None]) / step[:, None], 0.0)
    b = torch.minimum(est.ceil_().clamp_(min=0).long(), count[:, None])
    padded = torch.cat([torch.full_like(thr[:, :1], -torch.inf), thr, torch.full_like(thr[:, :1], torch.inf)], 1)
    for _ in range(4):  # the float64 estimate is off by at most one step; each pass corrects by one
        down = padded.gather(1, b) >= scores  # threshold b-1 is not below the score
        up = padded.gather(1, b + 1) < scores  # threshold b is below the score
        if not (down.any() or up.any()):
            return b
        b = b - down.long() + up.long()
    return torch.searchsorted(thr, scores)  # repeated thresholds (tiny step next to a large offset): exact fallback


def _per_image_chunk(scores: Tensor, labels: Tensor, sizes: Tensor, fpr_limit: float) -> Tensor:
    n_img = scores.shape[0]
    s = scores.reshape(n_img, -1).double()
    lab = labels.reshape(n_img, -1)
    lo, hi = s.min(1).values, s.max(1).values
    thr, count = arange_thresholds(lo, hi)
    width = thr.shape[1]
    if width == 0:
        return torch.zeros(n_img, dtype=torch.float64, device=s.device)
    b = _place(s, thr, lo, (hi - lo) / _NUM_THRESHOLDS, count)
    nb = width + 1
    # One histogram over (group, b): groups 0..I-1 are each image's normal pixels, I.. its regions (compact ids,
    # image-major as labels are 1..R_i). Pixels positive at threshold k are those with b > k: a reversed cumsum.
    present = sizes[:, 1:] > 0
    n_reg = present.sum(1)
    offset = n_reg.cumsum(0) - n_reg + n_img - 1
    img = torch.arange(n_img, device=s.device)[:, None]
    group = torch.where(lab == 0, img, offset[:, None] + lab)
    hist = torch.bincount((group * nb + b).flatten(), minlength=(n_img + int(n_reg.sum())) * nb).view(-1, nb)
    hist = hist.double()
    positive = hist.flip(1).cumsum(1).flip(1)[:, 1:]
    n_neg = hist[:n_img].sum(1, keepdim=True)
    fpr = torch.where(n_neg > 0, positive[:n_img] / n_neg.clamp(min=1), 0.0)
    region_size = sizes[:, 1:][present].double()
    region_img = torch.repeat_interleave(torch.arange(n_img, device=s.device), n_reg)
    tp = positive[n_img:]
    pro = torch.zeros(n_img, width, dtype=torch.float64, device=s.device)
    pro.index_add_(0, region_img, tp / region_size[:, None])
    pro = pro / n_reg.clamp(min=1)[:, None].double()
    valid = torch.arange(width, device=s.device)[None, :] < count[:, None]
    kept = valid & (fpr < fpr_limit)
    has = kept.any(1)
    k0 = kept.long().argmax(1, keepdim=True)
    x0 = fpr.gather(1, k0)
    x = fpr / torch.where(x0 > 0, x0, 1.0)
    seg = kept[:, :-1] & kept[:, 1:]
    area = ((x[:, :-1] - x[:, 1:]) * (pro[:, :-1] + pro[:, 1:]) / 2 * seg).sum(1)
    area = torch.where(x0[:, 0] > 0, area, pro.gather(1, k0)[:, 0])
    return torch.where(has, area, 0.0)


def per_image_aupro(scores: Tensor, mask: Tensor, fpr_limit: float = 0.3) -> Tensor:
    """Per-image AUPRO (RD4AD/URD protocol) of every image that has an anomalous pixel.

    Args:
        scores: (B, H, W) float anomaly maps, any device.
        mask: (B, H, W) bool ground truth.
        fpr_limit: FPR below which thresholds are kept (0.3 in the papers).

    Returns:
        (A,) float64 AUPRO of each of the A anomalous images, in input order; average them for the reported number.
    """
    anomalous = mask.flatten(1).any(1)
    scores, mask = scores[anomalous], mask[anomalous]
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=scores.device)
    labels, sizes = label_regions(mask)
    out = [
        _per_image_chunk(
            scores[i : i + _IMAGES_PER_PASS],
            labels[i : i + _IMAGES_PER_PASS],
            sizes[i : i + _IMAGES_PER_PASS],
            fpr_limit,
        )
        for i in range(0, scores.shape[0], _IMAGES_PER_PASS)
    ]
    return torch.cat(out)
