"""Difference score and flagging of low-confidence slices (000 section 2.5).

The difference score of a mask m2 (Eq. 19) is the mean |x_FLAIR - x_hat_FLAIR| over the mask's
pixels, where x_hat is the converter's healthy variant; it is 1 for an empty mask, so the filter
only ever flags non-empty masks (DIGEST ambiguity 15). A low score means the converter barely
changed the segmented region: the mask probably does not cover tumour. Intensities are the
preprocessed [0, 1] ones.

Besides the paper's rule (non-empty mask and d < T), a slice is flagged when the classifier is
undecided (|p - 0.5| below a margin), since gating and fusion both hinge on p.

Not in 000, off unless a bundle sets ``inference.flair_trim``: :func:`flair_trim` clears the
mask's voxels that are much darker on FLAIR than the mask's typical voxel. The segmenters learn
from RISE's seeds, which are about a mask cell wide, and their masks spread over the tissue
around a small tumour; for a target that is FLAIR-hyperintense by definition (glioma, oedema)
that tissue is the mask's dim part.

Not in 000, off unless a bundle sets ``inference.keep_components``: :func:`keep_components`
keeps the mask's large 3D connected components and fills their holes slice by slice. A glioma is
one lesion, while the segmenters also mark small bright spots elsewhere; and the FLAIR trim
leaves holes where the tumour is less bright than its median.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

REASON_LOW_DIFFERENCE = "low_difference_score"
REASON_UNDECIDED = "classifier_undecided"


def mean_in_mask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice of ``(slice, row, column)`` arrays, the mean of ``values`` inside ``mask``;
    1 where the slice's mask is empty (Eq. 19's convention)."""
    m = mask.astype(bool)
    n = m.sum(axis=(1, 2))
    total = np.where(m, values.astype(np.float64), 0.0).sum(axis=(1, 2))
    return np.where(n > 0, total / np.maximum(n, 1), 1.0)


def flair_trim(probability: np.ndarray, flair: np.ndarray, fraction: float, threshold: float = 0.5) -> np.ndarray:
    """``probability`` with the mask's dim voxels cleared (set to 0).

    The mask is ``probability > threshold`` over the whole volume; a voxel of it is cleared when
    its ``flair`` is below ``fraction`` times the median FLAIR of the mask. ``fraction`` 0 (or an
    empty mask) returns the input unchanged; otherwise a new array is returned. ``flair`` is the
    preprocessed [0, 1] FLAIR on the same grid.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"FLAIR trim fraction must lie in [0, 1], got {fraction}")
    mask = probability > threshold
    if fraction == 0.0 or not mask.any():
        return probability
    level = fraction * float(np.median(flair[mask]))
    out = probability.copy()
    out[mask & (flair < level)] = 0.0
    return out


def keep_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """The binary ``(slice, row, column)`` ``mask`` reduced to its 3D connected components (26-connected)
    with at least ``fraction`` times the largest component's voxels, the holes of each axial slice
    then filled. ``fraction`` 0 returns the input unchanged; otherwise a new boolean array.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"component fraction must lie in [0, 1], got {fraction}")
    if fraction == 0.0:
        return mask
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    # labelling and hole filling within the mask's bounding box give the same result, faster
    box = tuple(slice(ix.min(), ix.max() + 1) for ix in (np.flatnonzero(mask.any(axis=other))
                                                         for other in ((1, 2), (0, 2), (0, 1))))
    labels, _ = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.concatenate([[False], sizes >= fraction * sizes.max()])[labels]
    for k in np.flatnonzero(kept.any(axis=(1, 2))):
        kept[k] = ndimage.binary_fill_holes(kept[k])
    out[box] = kept
    return out


def difference_scores(flair: np.ndarray, healthy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Eq. 19 per slice: mean |flair - healthy| inside the mask, 1 where the mask is empty."""
    return mean_in_mask(np.abs(flair.astype(np.float64) - healthy.astype(np.float64)), mask)


def flag_slices(tumor_pixels: np.ndarray, scores: np.ndarray, p_tumor: np.ndarray, threshold: float,
                undecided_margin: float, gate: float = 0.5) -> tuple[np.ndarray, list[str]]:
    """Flag slices for review.

    Returns a boolean array and, per slice, the reasons joined by ``;`` ("" when not flagged):
    ``low_difference_score`` when the mask is non-empty and its score is below ``threshold``,
    ``classifier_undecided`` when ``|p - gate| < undecided_margin``.
    """
    low = (tumor_pixels > 0) & (scores < threshold)
    undecided = np.abs(p_tumor - gate) < undecided_margin
    reasons = [";".join(r for r, on in ((REASON_LOW_DIFFERENCE, a), (REASON_UNDECIDED, b)) if on)
               for a, b in zip(low, undecided)]
    return low | undecided, reasons
