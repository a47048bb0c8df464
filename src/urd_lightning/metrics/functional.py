"""Exact pixel/image curves (ROC, PR, PRO) from one tie-aware histogram of "levels".

Every threshold metric of industrial anomaly detection (AUROC, step-wise AP, F1-max, the pooled MVTec AUPRO) is a
function of one object: the scores sorted into *levels*, where a level is a group of tied scores that a threshold
cannot split. A pixel is positive when ``score >= threshold``; walking the levels from the highest down traces the
exact curve, with each tie group contributing one straight segment (the official MVTec AD definition: every distinct
score is a threshold, tied scores form one step).

The exact levels need only the normal scores sorted (numpy's vectorised sort on the CPU, torch's on an accelerator):
the curves change only where an anomalous value sits, since normals between two anomalous values all lie on one
horizontal segment, so two binary searches per distinct anomalous value count the normals of every level, ties
included. Scores are compared in their own dtype (float32 maps are never widened pixel by pixel); only counts and
the few per-level values are float64.

Degenerate inputs give NaN (never an exception) so that a validation set without anomalies does not stop training:
no anomalous sample → AUROC, AP, F1-max and AUPRO are NaN; no normal sample → AUROC and AUPRO are NaN, AP and
F1-max are defined (precision is 1). A constant map is one tie group: AUROC 0.5, AP = prevalence, pooled AUPRO
0.15 at the paper's FPR limit 0.3 (the diagonal).
"""

from typing import NamedTuple

import torch
from torch import Tensor

from urd_lightning.errors import URDError
from urd_lightning.metrics._ops import count_sorted, kth_largest, masked, single_threaded, sort_values, unique

_SAMPLE = 1 << 18  # normals sampled to place the FPR-limit cut (_high_normals); a few ms to partition


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


def _normal_level_counts(normal: Tensor, a_vals: Tensor) -> Tensor:
    """Count normals per level: level 2i holds normals in (a[i-1], a[i]), level 2i + 1 normals equal to a[i].

    One sort of the normals, then two binary searches per distinct anomalous value: exact for any ties.
    """
    n = normal.numel()
    dev = normal.device
    if a_vals.numel() == 0:
        return torch.full((1,), float(n), dtype=torch.float64, device=dev)
    if n == 0:
        return torch.zeros(2 * a_vals.numel() + 1, dtype=torch.float64, device=dev)
    ordered = sort_values(normal)
    below = count_sorted(ordered, a_vals, right=False).to(dev)  # normals < a[i]
    # Normals equal to an anomalous value are rare: search the right end only where the left end is a tie.
    tied = ordered[below.clamp(max=n - 1)] == a_vals
    upto = below.clone()
    upto[tied] = count_sorted(ordered, a_vals[tied], right=True).to(dev)  # normals <= a[i]
    counts = torch.empty(2 * a_vals.numel() + 1, dtype=torch.float64, device=dev)
    counts[1::2] = upto - below
    end = torch.full((1,), n, dtype=below.dtype, device=dev)
    counts[0::2] = torch.cat([below, end]) - torch.cat([torch.zeros_like(end), upto])
    return counts


def _high_normals(normal: Tensor, a_vals: Tensor, fpr_limit: float) -> Tensor:
    """The normals at or above a level whose FPR exceeds ``fpr_limit`` (all of them when no level does).

    Any level whose FPR exceeds the limit will do: keeping the normals at or above its threshold keeps every vertex
    from the top down to the first level past the limit exact, which is all an integral up to the limit uses, and
    those vertices (so the integral) do not depend on which such level is chosen. The cheap choice comes from an
    evenly spaced sample of the normals: a value ``lo`` that a few standard deviations more than T = limit * N + 2
    normals reach, then the largest anomalous value ``c <= lo``; one pass keeps the normals >= c. Should the sample
    mislead (fewer than T kept), the exact T-th largest normal decides instead, as before: one more pass.
    """
    n = normal.numel()
    t = int(fpr_limit * n) + 2  # > limit * N with a margin for the rounding of limit * N
    if t >= n or a_vals.numel() == 0:
        return normal
    stride = max(1, n // _SAMPLE)
    sample = normal[::stride]
    expected = t * sample.numel() / n  # sampled normals expected at or above the T-th largest normal
    rank = int(expected + 8 * expected**0.5 + 16)  # binomial spread: missing T is a >8-sigma event
    if rank < sample.numel():
        k = int(torch.searchsorted(a_vals, kth_largest(sample, rank).reshape(1), right=True))
        if k == 0:  # no anomalous value below: every level needs all the normals
            return normal
        kept = masked(normal, normal >= a_vals[k - 1])
        if kept.numel() >= t:
            return kept
    v = kth_largest(normal, t)
    k = int(torch.searchsorted(a_vals, v.reshape(1), right=True))  # anomalous values <= v
    if k == 0:
        return normal
    a = a_vals[k - 1]
    return masked(normal, normal >= a if bool(a == v) else normal > a)


@single_threaded
def exact_levels(
    normal: Tensor,
    anomalous: Tensor,
    weight: Tensor | None = None,
    num_regions: float = 0.0,
    fpr_limit: float | None = None,
) -> Levels:
    """Exact tie groups of pooled scores.

    Args:
        normal: (N,) scores of normal samples.
        anomalous: (M,) scores of anomalous samples, same dtype as ``normal``.
        weight: (M,) PRO weight of each anomalous sample (1 / size of its region); ones when ``None``.
        num_regions: number of ground-truth regions the weights refer to.
        fpr_limit: ``None`` for complete levels. Otherwise the normal counts are exact only from the top down to the
            first level whose FPR exceeds this limit and the other normals are put in the lowest level: enough for
            ``pooled_aupro`` with the same limit, and it sorts only the highest ~``fpr_limit`` of the normals. The
            other curves (AUROC, AP, F1) are wrong on such levels.

    Returns:
        The levels; 2U + 1 of them for U distinct anomalous scores.
    """
    dev = normal.device
    a_vals, inverse = unique(anomalous)
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
    a_vals = a_vals.to(normal.dtype)
    counted = normal if fpr_limit is None else _high_normals(normal, a_vals, fpr_limit)
    neg = _normal_level_counts(counted, a_vals)
    neg[0] += normal.numel() - counted.numel()
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
    if not bool(torch.isfinite(x[-1])):  # no normal sample: the FPR is undefined
        return torch.full((), torch.nan, dtype=x.dtype, device=x.device)
    # Only the vertices up to the first one past the limit matter (for truncated levels nothing after it is exact).
    m = int(torch.searchsorted(x, torch.full((1,), limit, dtype=x.dtype, device=x.device), right=True))
    area = ((x[1:m] - x[: m - 1]) * (y[1:m] + y[: m - 1])).sum() / 2
    if m < x.numel():  # the segment (m-1, m) crosses the limit
        x0, x1, y0, y1 = x[m - 1], x[m], y[m - 1], y[m]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area = area + (limit - x0) * (y0 + y_lim) / 2
    return area


@single_threaded
def roc_curve(levels: Levels) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ROC vertices (ties as diagonal segments).

    Returns:
        ``(fpr, tpr, thresholds)``, from (0, 0) at threshold +inf down to (1, 1); positive means score >= threshold.
    """
    neg_ge, pos_ge, _, thr = _descending_curve(levels)
    return neg_ge / neg_ge[-1], pos_ge / pos_ge[-1], thr


@single_threaded
def pro_curve(levels: Levels) -> tuple[Tensor, Tensor, Tensor]:
    """Exact pooled PRO curve vertices: ``(fpr, pro, thresholds)`` from (0, 0) to (1, 1)."""
    neg_ge, _, w_ge, thr = _descending_curve(levels)
    return neg_ge / neg_ge[-1], w_ge / levels.num_regions, thr


@single_threaded
def auroc(levels: Levels) -> Tensor:
    """Area under the exact ROC curve (equals the Mann-Whitney statistic with ties counted half)."""
    fpr, tpr, _ = roc_curve(levels)
    return torch.trapezoid(tpr, fpr)


@single_threaded
def average_precision(levels: Levels) -> Tensor:
    """Step-wise average precision, sum over thresholds of (R_n - R_(n-1)) * P_n (scikit-learn's definition).

    Not the trapezoid under the PR curve, which rewards constant detectors (as anomalib's did).
    """
    neg_ge, pos_ge, _, _ = _descending_curve(levels)
    has_pos = levels.pos.flip(0) > 0
    precision = pos_ge[1:] / (pos_ge[1:] + neg_ge[1:])
    return (levels.pos.flip(0) * torch.where(has_pos, precision, 0.0)).sum() / pos_ge[-1]


@single_threaded
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


@single_threaded
def pooled_aupro(levels: Levels, fpr_limit: float = 0.3) -> Tensor:
    """Pooled (MVTec AD official) AUPRO: area under PRO(FPR) from (0, 0) to ``fpr_limit``, divided by the limit."""
    fpr, pro, _ = pro_curve(levels)
    return _trapezoid_to(fpr, pro, fpr_limit) / fpr_limit
