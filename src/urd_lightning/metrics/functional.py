"""Exact pixel/image curves (ROC, PR, PRO) from one tie-aware histogram of "levels".

Every threshold metric of industrial anomaly detection (AUROC, step-wise AP, F1-max, the pooled MVTec AUPRO) is a
function of one object: the scores sorted into *levels*, where a level is a group of tied scores that a threshold
cannot split. A pixel is positive when ``score >= threshold``; walking the levels from the highest down traces the
exact curve, with each tie group contributing one straight segment (the official MVTec AD definition: every distinct
score is a threshold, tied scores form one step).

The exact levels need no global sort. Only the anomalous scores are sorted (they are a few percent of the pixels);
each normal score is placed between two consecutive anomalous values, because the curves only change where an
anomalous value sits: normals between two anomalous values all lie on one horizontal segment. Placement uses a
monotone coarse bucketing (one multiply per pixel) and a binary search only for normals whose bucket also holds an
anomalous value, so it stays exact while touching each pixel a handful of times.

Degenerate inputs give NaN (never an exception) so that a validation set without anomalies does not stop training:
no anomalous sample → AUROC, AP, F1-max and AUPRO are NaN; no normal sample → AUROC and AUPRO are NaN, AP and
F1-max are defined (precision is 1). A constant map is one tie group: AUROC 0.5, AP = prevalence, pooled AUPRO
0.15 at the paper's FPR limit 0.3 (the diagonal).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from urd_lightning.errors import URDError

_LOCAL = 4  # anomalous values compared directly per coarse bucket before falling back to a binary search
_CHUNK = 1 << 22  # pixels handled per pass when placing normals: bounds the int64 temporaries to ~32 MiB


class MetricInputError(URDError, ValueError):
    """Inputs to a metric that cannot be scored (wrong shapes, non-finite scores)."""


class Levels(NamedTuple):
    """Tie groups of the scores in ascending order; a sample is positive at level j when its score >= values[j].

    Attributes:
        values: (K,) float64 threshold of each level.
        neg: (K,) float64 number of normal samples in each level.
        pos: (K,) float64 number of anomalous samples in each level.
        weight: (K,) float64 PRO weight (sum of 1/region size) of the anomalous samples in each level.
        num_regions: () float64 number of ground-truth regions (PRO averages over them).
    """

    values: Tensor
    neg: Tensor
    pos: Tensor
    weight: Tensor
    num_regions: Tensor


def _coarse(x: Tensor, lo: Tensor, scale: Tensor, k: int) -> Tensor:
    """Monotone bucket in [0, k + 1]: x <= y gives bucket(x) <= bucket(y), as rounding is monotone."""
    return ((x - lo) * scale).floor_().clamp_(-1, k).long() + 1


def _normal_level_counts(normal: Tensor, a_vals: Tensor) -> Tensor:
    """Count normals per level: level 2i holds normals in (a[i-1], a[i]), level 2i + 1 normals equal to a[i]."""
    u = a_vals.numel()
    counts = torch.zeros(2 * u + 1, dtype=torch.float64, device=normal.device)
    if normal.numel() == 0:
        return counts
    if u == 0:
        counts[0] = normal.numel()
        return counts
    lo, hi = a_vals[0], a_vals[-1]
    k = int(min(max(8 * u, 1024), 1 << 21))
    scale = k / (hi - lo) if u > 64 else torch.zeros((), dtype=a_vals.dtype, device=a_vals.device)
    fast = bool(torch.isfinite(scale)) and bool(scale > 0)
    if fast:
        a_bucket = _coarse(a_vals, lo, scale, k)
        per_bucket = torch.bincount(a_bucket, minlength=k + 2)
        first = per_bucket.cumsum(0) - per_bucket  # anomalous values in lower buckets
        occupancy = int(per_bucket.max())
    for start in range(0, normal.numel(), _CHUNK):
        x = normal[start : start + _CHUNK]
        if not fast:
            idx = torch.searchsorted(a_vals, x)
            level = 2 * idx + (a_vals[idx.clamp(max=u - 1)] == x)
        else:
            # Normals of a bucket lie above every anomalous value of lower buckets and below those of higher ones;
            # only the (few, sorted) anomalous values of their own bucket need comparing.
            bucket = _coarse(x, lo, scale, k)
            f, c = first[bucket], per_bucket[bucket]
            level = 2 * f
            for j in range(min(occupancy, _LOCAL)):
                v = a_vals[(f + j).clamp_(max=u - 1)]
                inside = c > j
                level += 2 * (inside & (v < x)) + (inside & (v == x))
            if occupancy > _LOCAL:  # crowded buckets (near-identical anomalous scores): binary search there
                crowded = c > _LOCAL
                idx = torch.searchsorted(a_vals, x[crowded])
                level[crowded] = 2 * idx + (a_vals[idx.clamp(max=u - 1)] == x[crowded])
        counts += torch.bincount(level, minlength=2 * u + 1).double()
    return counts


def exact_levels(normal: Tensor, anomalous: Tensor, weight: Tensor | None = None, num_regions: float = 0.0) -> Levels:
    """Exact tie groups of pooled scores.

    Args:
        normal: (N,) scores of normal samples.
        anomalous: (M,) scores of anomalous samples, same dtype as ``normal``.
        weight: (M,) PRO weight of each anomalous sample (1 / size of its region); ones when ``None``.
        num_regions: number of ground-truth regions the weights refer to.

    Returns:
        The levels; 2U + 1 of them for U distinct anomalous scores.
    """
    dev = normal.device
    a_vals, inverse = torch.unique(anomalous, sorted=True, return_inverse=True)
    u = a_vals.numel()
    if weight is None:
        weight = torch.ones(anomalous.numel(), dtype=torch.float64, device=dev)
    pos = torch.zeros(2 * u + 1, dtype=torch.float64, device=dev)
    wsum = torch.zeros(2 * u + 1, dtype=torch.float64, device=dev)
    pos[1::2] = torch.bincount(inverse, minlength=u).double()
    wsum[1::2] = torch.zeros(u, dtype=torch.float64, device=dev).index_add_(0, inverse, weight.double())
    a64 = a_vals.double()
    values = torch.empty(2 * u + 1, dtype=torch.float64, device=dev)
    values[0] = -torch.inf
    values[1::2] = a64
    # A gap level's threshold is "just above" the anomalous value below it: score >= next float <=> score > a[i-1].
    values[2::2] = torch.nextafter(a64, torch.full_like(a64, torch.inf))
    neg = _normal_level_counts(normal, a_vals.to(normal.dtype))
    return Levels(values, neg, pos, wsum, torch.tensor(float(num_regions), dtype=torch.float64, device=dev))


def _descending_curve(levels: Levels) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cumulative counts from the highest threshold down, starting at the (0, 0) point."""
    zero = torch.zeros(1, dtype=torch.float64, device=levels.neg.device)
    neg_ge = torch.cat([zero, levels.neg.flip(0).cumsum(0)])
    pos_ge = torch.cat([zero, levels.pos.flip(0).cumsum(0)])
    w_ge = torch.cat([zero, levels.weight.flip(0).cumsum(0)])
    thr = torch.cat([torch.full_like(zero, torch.inf), levels.values.flip(0)])
    return neg_ge, pos_ge, w_ge, thr


def _trapezoid_to(x: Tensor, y: Tensor, limit: float) -> Tensor:
    """Area under the polyline (x non-decreasing) from x[0] to ``limit``, linearly interpolated at the limit."""
    inside = x[1:] <= limit
    dx, ys = x[1:] - x[:-1], y[1:] + y[:-1]
    area = (dx * ys * inside).sum() / 2
    beyond = torch.nonzero(~inside)
    if beyond.numel():
        m = int(beyond[0, 0]) + 1  # first vertex past the limit; the segment (m-1, m) crosses it
        x0, x1, y0, y1 = x[m - 1], x[m], y[m - 1], y[m]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area = area + (limit - x0) * (y0 + y_lim) / 2
    return area


def roc_curve(levels: Levels) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ROC vertices (ties as diagonal segments).

    Returns:
        ``(fpr, tpr, thresholds)``, from (0, 0) at threshold +inf down to (1, 1); positive means score >= threshold.
    """
    neg_ge, pos_ge, _, thr = _descending_curve(levels)
    return neg_ge / neg_ge[-1], pos_ge / pos_ge[-1], thr


def pro_curve(levels: Levels) -> tuple[Tensor, Tensor, Tensor]:
    """Exact pooled PRO curve vertices: ``(fpr, pro, thresholds)`` from (0, 0) to (1, 1)."""
    neg_ge, _, w_ge, thr = _descending_curve(levels)
    return neg_ge / neg_ge[-1], w_ge / levels.num_regions, thr


def auroc(levels: Levels) -> Tensor:
    """Area under the exact ROC curve (equals the Mann-Whitney statistic with ties counted half)."""
    fpr, tpr, _ = roc_curve(levels)
    return torch.trapezoid(tpr, fpr)


def average_precision(levels: Levels) -> Tensor:
    """Step-wise average precision, sum over thresholds of (R_n - R_(n-1)) * P_n (scikit-learn's definition).

    Not the trapezoid under the PR curve, which rewards constant detectors (anomalib issue #3781).
    """
    neg_ge, pos_ge, _, _ = _descending_curve(levels)
    has_pos = levels.pos.flip(0) > 0
    precision = pos_ge[1:] / (pos_ge[1:] + neg_ge[1:])
    return (levels.pos.flip(0) * torch.where(has_pos, precision, 0.0)).sum() / pos_ge[-1]


def f1_max(levels: Levels) -> tuple[Tensor, Tensor]:
    """Best F1 over all thresholds and the threshold reaching it (positive means score >= threshold).

    The optimum always lies at an anomalous score: between two of them only false positives change.
    """
    neg_ge, pos_ge, _, thr = _descending_curve(levels)
    f1 = 2 * pos_ge / (pos_ge + pos_ge[-1] + neg_ge)
    candidate = torch.cat([torch.zeros(1, dtype=torch.bool, device=f1.device), levels.pos.flip(0) > 0])
    f1 = torch.where(candidate, f1, -1.0)
    best = int(torch.argmax(f1))
    if f1[best] < 0:
        nan = torch.tensor(torch.nan, dtype=torch.float64, device=f1.device)
        return nan, nan
    return f1[best], thr[best]


def pooled_aupro(levels: Levels, fpr_limit: float = 0.3) -> Tensor:
    """Pooled (MVTec AD official) AUPRO: area under PRO(FPR) from (0, 0) to ``fpr_limit``, divided by the limit."""
    fpr, pro, _ = pro_curve(levels)
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit
