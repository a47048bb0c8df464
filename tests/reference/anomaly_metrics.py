"""Slow, obviously-correct numpy references for the metrics, written from the definitions (not from any codebase).

- Pooled AUPRO (MVTec AD official definition): every distinct score is a threshold, positive when score >= t, FPR
  pooled over all normal pixels, PRO = mean over all 8-connected regions of all images of the covered fraction,
  curve from (0, 0), trapezoid to the FPR limit with linear interpolation there, divided by the limit.
- Per-image AUPRO (RD4AD/URD ``compute_pro`` protocol): see ``per_image_aupro_ref``.
- Pixel/image AUROC and AP: scikit-learn. F1-max: brute force over every distinct score.
"""

import numpy as np
from skimage.measure import label
from sklearn.metrics import auc, average_precision_score, roc_auc_score


def pooled_pro_curve_ref(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct threshold, descending, starting with (0, 0)."""
    maps, masks = maps.astype(np.float64), masks.astype(bool)
    regions = []
    for i, m in enumerate(masks):
        lab = label(m, connectivity=2)
        regions.extend((i, lab == r) for r in range(1, lab.max() + 1))
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([pred[i][r].sum() / r.sum() for i, r in regions]))
    return np.array(fprs), np.array(pros)


def pooled_aupro_ref(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3) -> float:
    return integrate_to_limit_ref(*pooled_pro_curve_ref(maps, masks), fpr_limit)


def integrate_to_limit_ref(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid from (0, 0) to the limit, the last point linearly interpolated, divided by the limit."""
    keep = fpr <= fpr_limit
    x, y = list(fpr[keep]), list(pro[keep])
    if x[-1] < fpr_limit:
        x.append(fpr_limit)
        y.append(float(np.interp(fpr_limit, fpr, pro)))
    return float(np.trapezoid(y, x) / fpr_limit)


def per_image_aupro_ref(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3,
                        positive=np.greater) -> list[float]:
    """RD4AD/URD protocol, one value per anomalous image, with the project's documented degenerate-case values.

    ``positive`` is the protocol's ``score > t``; tests pass ``np.greater_equal`` to show that their data tell the two
    apart.
    """
    out = []
    for amap, mask in zip(maps.astype(np.float64), masks.astype(bool), strict=True):
        if not mask.any():
            continue
        lo, hi = amap.min(), amap.max()
        if hi == lo:  # constant map: np.arange would divide by zero; defined as 0
            out.append(0.0)
            continue
        lab = label(mask, connectivity=2)
        fprs, pros = [], []
        for t in np.arange(lo, hi, (hi - lo) / 200):
            pred = positive(amap, t)
            n_neg = (~mask).sum()
            fprs.append((pred & ~mask).sum() / n_neg if n_neg else 0.0)
            pros.append(np.mean([pred[lab == r].sum() / (lab == r).sum() for r in range(1, lab.max() + 1)]))
        fprs, pros = np.array(fprs), np.array(pros)
        keep = fprs < fpr_limit
        if not keep.any():
            out.append(0.0)
        elif fprs[keep].max() == 0:
            out.append(float(pros[keep].max()))
        elif keep.sum() == 1:
            out.append(0.0)
        else:
            out.append(float(auc(fprs[keep] / fprs[keep].max(), pros[keep])))
    return out


def f1_max_ref(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    best, best_t = -1.0, np.nan
    for t in np.unique(scores):
        pred = scores >= t
        tp = (pred & labels).sum()
        f1 = 2 * tp / (2 * tp + (pred & ~labels).sum() + (~pred & labels).sum())
        if f1 > best:
            best, best_t = f1, t
    return float(best), float(best_t)


def pixel_metrics_ref(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    s, y = maps.ravel().astype(np.float64), masks.ravel().astype(bool)
    return {
        "pixel_AUROC": roc_auc_score(y, s),
        "pixel_AP": average_precision_score(y, s),
        "pixel_F1Max": f1_max_ref(s, y)[0],
    }


def image_metrics_ref(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    labels = labels.astype(bool)
    return {
        "image_AUROC": roc_auc_score(labels, scores),
        "image_AP": average_precision_score(labels, scores),
        "image_F1Max": f1_max_ref(scores, labels)[0],
    }
