"""The residual baseline of Baur et al. (Yoo et al., section 4.4, Table 5): the positive part of
FLAIR minus the converter's healthy FLAIR, median-filtered 5 x 5 in-plane on each slice (the
paper writes 5 x 5 x 5 for its 2D images), thresholded.

Its threshold is chosen on the training patients (:func:`choose_residual_threshold`, called by
``train``) and recorded in the bundle; ``evaluate`` never chooses it on the patients it evaluates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Thresholds tried by :func:`choose_residual_threshold`.
RESIDUAL_GRID = tuple(round(0.02 * i, 2) for i in range(1, 26))
def residual_map(flair01: np.ndarray, healthy01: np.ndarray, median: int = 5) -> np.ndarray:
    """Positive part of ``flair01 - healthy01`` median-filtered ``median x median`` in-plane,
    slice by slice (the last two axes are the image plane)."""
    flair01, healthy01 = np.asarray(flair01), np.asarray(healthy01)
    if flair01.shape != healthy01.shape:
        raise ValueError(f"flair {flair01.shape} and healthy {healthy01.shape} differ in shape")
    if flair01.ndim < 2:
        raise ValueError("need at least 2D images")
    r = np.clip(flair01.astype(np.float32) - healthy01.astype(np.float32), 0.0, None)
    if median > 1:
        r = ndimage.median_filter(r, size=(1,) * (r.ndim - 2) + (int(median), int(median)), mode="nearest")
    return r


def residual_baseline(flair01: np.ndarray, healthy01: np.ndarray, threshold: float, median: int = 5) -> np.ndarray:
    """Baur et al.'s residual segmentation: :func:`residual_map` ``> threshold``, as uint8.

    ``flair01`` and ``healthy01`` are FLAIR and its healthy variant on the normalised [0, 1]
    scale, ``(..., row, column)``; tumour is hyperintense in FLAIR, hence the positive part.
    """
    return (residual_map(flair01, healthy01, median) > float(threshold)).astype(np.uint8)


def residual_threshold_curve(flair_list: Sequence[np.ndarray], healthy_list: Sequence[np.ndarray],
                             mask_list: Sequence[np.ndarray], grid: Sequence[float] = RESIDUAL_GRID,
                             median: int = 5) -> list[tuple[float, float]]:
    """``[(threshold, mean per-volume Dice)]`` of :func:`residual_baseline` over ``grid``; the
    mean is over the tumour-bearing volumes (3D Dice of each volume, the project's convention, docs/evaluation.md)."""
    if not (len(flair_list) == len(healthy_list) == len(mask_list)):
        raise ValueError("flair_list, healthy_list and mask_list must have the same length")
    grid = [float(t) for t in grid]
    if not grid:
        raise ValueError("empty threshold grid")
    totals = np.zeros(len(grid))
    n = 0
    for flair, healthy, mask in zip(flair_list, healthy_list, mask_list):
        truth = np.asarray(mask) > 0
        if truth.shape != np.shape(flair):
            raise ValueError(f"mask {truth.shape} and flair {np.shape(flair)} differ in shape")
        t_sum = int(truth.sum())
        if t_sum == 0:
            continue
        r = residual_map(flair, healthy, median)
        inside, outside = np.sort(r[truth]), np.sort(r[~truth])
        for i, thr in enumerate(grid):  # counts of values > thr from the sorted values
            tp = inside.size - np.searchsorted(inside, thr, side="right")
            fp = outside.size - np.searchsorted(outside, thr, side="right")
            totals[i] += 2.0 * tp / (tp + fp + t_sum)
        n += 1
    if n == 0:
        raise ValueError("no tumour-bearing volume: the residual threshold cannot be chosen")
    return [(t, float(s / n)) for t, s in zip(grid, totals)]


def choose_residual_threshold(flair_list: Sequence[np.ndarray], healthy_list: Sequence[np.ndarray],
                              mask_list: Sequence[np.ndarray], grid: Sequence[float] = RESIDUAL_GRID,
                              median: int = 5) -> float:
    """The residual-baseline threshold maximising the mean per-volume Dice on the given (training)
    volumes, over ``grid`` (0.02, 0.04, ..., 0.5). Ties: the middle of the best thresholds.

    Call it on the training split only and record the result in the bundle as
    ``bundle.json["baselines"]["residual"] = {"threshold": t, "median": 5, ...}``; choosing it on
    the evaluated patients would make the baseline an oracle.
    """
    curve = residual_threshold_curve(flair_list, healthy_list, mask_list, grid, median)
    scores = np.array([s for _, s in curve])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(curve[int(best[len(best) // 2])][0])
