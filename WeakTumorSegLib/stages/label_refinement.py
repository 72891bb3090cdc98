"""Label refinement for the final segmenter (not in Yoo et al.): more of the tumour slices get a
full label, taken from the fused pipeline's own probability.

The difference-score filter (Yoo et al., section 2.5) trusts a tumour slice's mask only where the
mask passes it; on TCGA-LGG that leaves about half of the tumour slices weakly labelled, mostly
the top and bottom slices of each tumour and the large tumours' slices. :func:`grow_labels` keeps
the fused probability's region above a lower threshold (hysteresis) wherever it is connected in 3D
to a trusted mask, on the slices labelled tumour only: a slice label bounds the tumour's extent
exactly, and the connection to a trusted mask drops bright spots elsewhere. Every slice the grown
region reaches becomes a masked slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .final import MASKED, WEAK


def grow_labels(probability: np.ndarray, mask: np.ndarray, kinds: np.ndarray,
                low: float) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, kinds)`` after growing the trusted masks (see the module docstring).

    ``probability`` and ``mask`` are ``(slice, row, column)`` maps of the fused pipeline (the
    probability and the post-processed mask), ``kinds`` the slices' kinds
    (:func:`~.final.slice_kinds`). Voxels above ``low`` on tumour slices (masked or weak), 3D
    face-connected to a masked slice's mask, join it; a weak slice the result reaches becomes
    masked. The returned mask is empty outside masked slices."""
    probability, kinds = np.asarray(probability), np.asarray(kinds)
    if not probability.shape == np.shape(mask) or probability.shape[0] != len(kinds):
        raise ValueError(f"shapes differ: probability {probability.shape}, mask {np.shape(mask)}, "
                         f"{len(kinds)} slice kinds")
    trusted = np.asarray(mask, bool) & (kinds == MASKED)[:, None, None]
    tumour = (kinds == MASKED) | (kinds == WEAK)
    regions, _ = ndi.label((probability > low) & tumour[:, None, None])
    reached = np.unique(regions[trusted])
    grown = np.isin(regions, reached[reached > 0]) | trusted
    kinds = np.where((kinds == WEAK) & grown.reshape(len(grown), -1).any(1), MASKED, kinds).astype(np.uint8)
    return grown & (kinds == MASKED)[:, None, None], kinds
