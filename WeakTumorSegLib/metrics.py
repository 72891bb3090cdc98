"""Evaluation metrics: AUC, sensitivity/specificity, Dice (both conventions), seed overlap.

Report per-volume 3D Dice over tumour-bearing volumes and per-slice mean Dice over
all evaluated slices with empty-vs-empty = 1 (the paper's convention), and always say which.
The seed overlap metric (Yoo et al., section 4.1) is the fraction of positive-seed voxels inside the
ground truth and the fraction of negative-seed voxels outside it. :func:`voxels_away` tells a
detection error (a lesion marked where there is none) from an outline error.
:func:`mean_interval` says how far a mean over a few patients can be trusted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half); NaN if one class is absent."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    uniq, start = np.unique(sorted_s, return_index=True)
    ends = np.append(start[1:], len(s))
    for a, b in zip(start, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def sensitivity_specificity(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    y = np.asarray(labels).astype(bool).ravel()
    pred = np.asarray(scores).ravel() > threshold
    sens = float((pred & y).sum() / max(y.sum(), 1))
    spec = float((~pred & ~y).sum() / max((~y).sum(), 1))
    return sens, spec


def dice(a: np.ndarray, b: np.ndarray, empty: float = 1.0) -> float:
    """Dice of two binary arrays; ``empty`` when both are empty."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    total = int(a.sum()) + int(b.sum())
    return empty if total == 0 else 2.0 * int((a & b).sum()) / total


def dice_from_counts(pred_pixels: np.ndarray, overlap: np.ndarray, truth_pixels: np.ndarray) -> np.ndarray:
    """Dice from per-item counts (predicted, overlapping and true pixels), empty-vs-empty = 1."""
    total = np.asarray(pred_pixels, dtype=np.float64) + np.asarray(truth_pixels, dtype=np.float64)
    return np.where(total == 0, 1.0, 2.0 * np.asarray(overlap, dtype=np.float64) / np.maximum(total, 1))


def voxels_away(mask: np.ndarray, truth: np.ndarray) -> int:
    """Voxels of ``mask`` in its 3D connected components (face-connected) that share no voxel with
    ``truth``: what a mask marks away from every tumour, as against around one."""
    m = np.asarray(mask).astype(bool)
    labels, n = ndi.label(m)
    if n == 0:
        return 0
    touching = np.unique(labels[m & np.asarray(truth).astype(bool)])
    return int((m & ~np.isin(labels, touching[touching > 0])).sum())


#: Resamples of :func:`mean_interval` (the evaluation reports say how many).
RESAMPLES = 10000


def mean_interval(values, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one per patient): the patients are
    resampled with replacement ``resamples`` times (seeded, so the interval is reproducible). NaN
    when there are fewer than two values. On 10 patients whose Dice spread from 0 to 0.9 it is
    about 0.3 wide: two means closer than that are not told apart by those patients."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if len(v) < 2:
        return float("nan"), float("nan")
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def per_slice_dice(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dice of every slice of ``(N, H, W)`` arrays, empty-vs-empty = 1 (the paper's convention)."""
    p, t = pred.astype(bool).reshape(len(pred), -1), truth.astype(bool).reshape(len(truth), -1)
    return dice_from_counts(p.sum(1), (p & t).sum(1), t.sum(1))


def seed_overlap(pos: np.ndarray, neg: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(fraction of positive-seed voxels inside ``truth``, fraction of negative-seed voxels outside it)."""
    pos, neg, t = pos.astype(bool), neg.astype(bool), truth.astype(bool)
    p = float((pos & t).sum() / pos.sum()) if pos.any() else float("nan")
    n = float((neg & ~t).sum() / neg.sum()) if neg.any() else float("nan")
    return p, n
