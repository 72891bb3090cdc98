"""How deep each voxel lies below the head's outer surface (not in Yoo et al.).

Inference uses :func:`head_depth` to keep masks off the scalp and skull of images that are not
skull-stripped (``inference.scalp_margin_mm``, :mod:`WeakTumorSegLib.inference.postprocess`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.filters import threshold_otsu


def _large_components(mask: np.ndarray, fraction: float) -> np.ndarray:
    """The connected components of ``mask`` at least ``fraction`` the size of the largest."""
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.asarray(ndi.sum(mask, labels, range(1, n + 1)))
    keep = np.flatnonzero(sizes >= fraction * sizes.max()) + 1
    return np.isin(labels, keep)


def head_level(flair: np.ndarray) -> float | None:
    """Half the Otsu threshold of the non-zero FLAIR: above it is tissue, below it air and
    scanner noise (None for a volume without two distinct non-zero values)."""
    nz = np.asarray(flair, dtype=np.float32)
    nz = nz[nz > 0]
    if nz.size == 0 or nz.min() == nz.max():
        return None
    return 0.5 * float(threshold_otsu(nz))


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a 2D mask: the pixels whose centres lie within half a pixel of
    the hull of its boundary pixels' centres (as if the hull were drawn around whole pixels)."""
    edge = np.argwhere(mask & ~ndi.binary_erosion(mask))
    try:
        hull = ConvexHull(edge)
    except QhullError:  # collinear or too few points: the mask is its own hull
        return mask.copy()
    (r0, c0), (r1, c1) = edge.min(axis=0), edge.max(axis=0) + 1
    rows, cols = np.arange(r0, r1, dtype=np.float32), np.arange(c0, c1, dtype=np.float32)
    eq = hull.equations.astype(np.float32)  # unit normal (row, column) and offset per facet
    inside = np.ones((len(rows), len(cols)), dtype=bool)
    for a, b, off in eq:
        inside &= (a * rows + off)[:, None] + (b * cols)[None, :] <= 0.5
    out = mask.copy()
    out[r0:r1, c0:c1] |= inside
    return out


def head_mask(flair: np.ndarray, level: float | None = None) -> np.ndarray:
    """Per axial slice, the head: the convex hull of the voxels above ``level`` (default
    :func:`head_level` of ``flair``), after a one-voxel opening and without components under 2 %
    of the largest (specks of noise; the thin scalp survives). The hull bridges the dark skull,
    sinuses and dark lesions that open the bright outline. ``(slice, row, column)`` in, bool out."""
    v = np.asarray(flair, dtype=np.float32)
    level = head_level(v) if level is None else level
    if level is None:
        return v > 0
    out = np.zeros(v.shape, dtype=bool)
    for k, sl in enumerate(v):
        m = ndi.binary_opening(sl > level)
        if m.any():
            out[k] = convex_hull(_large_components(m, 0.02))
    return out


def head_depth(flair: np.ndarray, spacing: Sequence[float] = (1.0, 1.0), level: float | None = None) -> np.ndarray:
    """In-plane distance in mm from each voxel to the outside of :func:`head_mask` (0 outside
    the head); ``spacing`` is the (row, column) voxel size in mm."""
    head = head_mask(flair, level)
    out = np.zeros(head.shape, dtype=np.float32)
    for k, sl in enumerate(head):
        if sl.any():
            out[k] = ndi.distance_transform_edt(sl, sampling=tuple(float(x) for x in spacing))
    return out
