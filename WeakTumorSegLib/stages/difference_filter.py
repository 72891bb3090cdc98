"""Stage 9, the difference-score filter (Yoo et al., section 2.5): scores each slice's mask and
flags the low-confidence ones for review.

The difference score of a mask m2 (Eq. 19) is the mean |x_FLAIR - x_hat_FLAIR| over the mask's
pixels, where x_hat is the converter's healthy variant; it is 1 for an empty mask, so the filter
only ever flags non-empty masks. A low score means the converter barely changed the segmented
region: the mask probably does not cover tumour. Intensities are the preprocessed [0, 1] ones.

Besides the paper's rule (non-empty mask and d < T), a slice is flagged when the classifier is
undecided (|p - 0.5| below a margin), since gating and fusion both hinge on p.
"""

from __future__ import annotations

import numpy as np

from ..io.names import REASON_LOW_DIFFERENCE, REASON_UNDECIDED


def mean_in_mask(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice of ``(slice, row, column)`` arrays, the mean of ``values`` inside ``mask``;
    1 where the slice's mask is empty (Eq. 19's convention)."""
    m = mask.astype(bool)
    n = m.sum(axis=(1, 2))
    total = np.where(m, values.astype(np.float64), 0.0).sum(axis=(1, 2))
    return np.where(n > 0, total / np.maximum(n, 1), 1.0)


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
