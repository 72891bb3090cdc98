"""The bright scalp that a brain mask kept (not in Yoo et al., whose images were skull-stripped).

FLAIR shows the scalp's fat brighter than the brain, as bright as a lesion. Where the skull's dark
band is thin or blurred (thick slices, a surface coil's bias field, the vertex cut en face) the
brain extraction of :mod:`.brain` keeps some of it, and the networks then mark it. ``preprocessing.
scalp_fat`` removes it from the brain: :func:`scalp_fat` finds it on the working grid, per slice:

1. bright voxels are those above the upper of the head's three Otsu classes
   (:func:`~.brain.tissue_levels`, whose lower level :func:`~.brain.brain_mask` uses);
2. a bright component is scalp when it reaches the head's outer ``ring_mm`` and at least ``share``
   of its voxels lie within ``shell_mm`` of the head's outline: a lesion under the skull lies
   mostly deeper, even where a blurred bridge joins it to the scalp;
3. from the slice with the largest head towards the vertex and towards the skull base, a bright
   component that reaches the ring and lies for at least ``follow`` of its area on the previous
   slice's scalp (grown by two voxels) is scalp too: towards the vertex the scalp is cut en face
   and covers the slice, so it no longer lies near the outline;
4. the scalp found is grown by one voxel (its blurred edge).

On the 40 TCGA-LGG training patients it removes 0.5 % to 14 % of the brain mask and not one of
their tumours' voxels (docs/experiments.md). It misses the topmost slices, where the scalp cut en
face is blurred with the brain below it and no brighter than the brain's class. Inputs found to be
skull-stripped already are left alone: there the head's outline is the brain's.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .brain import scale01, tissue_levels
from .head import head_mask


def scalp_fat(flair: np.ndarray, spacing: float, ring_mm: float = 6.0, shell_mm: float = 12.0,
              share: float = 0.5, follow: float = 0.5) -> np.ndarray:
    """The bright scalp of a ``(slice, row, column)`` FLAIR with square in-plane voxels of
    ``spacing`` mm (bool, same shape); see the module docstring."""
    g = scale01(flair)
    head = head_mask(g)
    out = np.zeros(g.shape, dtype=bool)
    levels = tissue_levels(g[head]) if head.any() else None
    if levels is None:
        return out
    level = float(levels[1])
    touching: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in np.flatnonzero(head.any(axis=(1, 2))):
        depth = ndi.distance_transform_edt(head[k]) * spacing
        labels, n = ndi.label(head[k] & (g[k] > level))
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        reaches = np.asarray(ndi.maximum(depth <= ring_mm, labels, idx)) > 0
        shallow = np.asarray(ndi.mean(depth <= shell_mm, labels, idx)) >= share
        touching[k] = (labels, idx[reaches])
        out[k] = np.isin(labels, idx[reaches & shallow])
    widest = int(np.argmax(head.sum(axis=(1, 2))))
    for order, step in ((range(widest + 1, len(g)), -1), (range(widest - 1, -1, -1), 1)):
        for k in order:
            if k not in touching or not out[k + step].any() or not len(touching[k][1]):
                continue
            labels, idx = touching[k]
            near = ndi.binary_dilation(out[k + step], iterations=2)
            on = np.asarray(ndi.mean(near, labels, idx)) >= follow
            out[k] |= np.isin(labels, idx[on])
    for k in np.flatnonzero(out.any(axis=(1, 2))):
        out[k] = ndi.binary_dilation(out[k]) & head[k]
    return out
