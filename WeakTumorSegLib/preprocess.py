"""Intensity normalisation, brain bounding box and in-plane resampling (000 section 3.1).

The paper crops each volume to the brain's bounding box, clips non-zero intensities to their
1st/99th percentiles, min-max scales them and splits the volume into axial slices; for the
240x240 pLGG slices it halves the in-plane resolution first. Here the same steps run on a whole
volume, in this order:

1. :func:`normalize_channel` per channel: clip non-zero voxels to the percentiles, min-max to
   [0, 1] (zero background stays 0).
2. :func:`brain_bbox`: the in-plane box (shared by all slices) holding every voxel above
   ``brain_threshold`` in any channel.
3. :func:`to_working`: crop to that box and resample in-plane by ``inplane_scale`` (the scale
   recorded in the bundle, so inference sees the brain at the scale training saw).

:func:`to_input` is the inverse mapping: it resamples working-grid maps back to the box and
places them into the input grid, so every input voxel receives a value and the output grid is
the input grid exactly (at ``inplane_scale == 1`` the round trip is the identity).

:func:`head_depth` (not in 000) measures how deep each voxel lies below the head's outer
surface; inference uses it to keep masks off the scalp and skull of images that are not
skull-stripped (``inference.scalp_margin_mm``).

Arrays are ``(slice, row, column)`` per channel; stacked channel arrays are
``(slice, channel, row, column)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.filters import threshold_otsu


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters, stored in the bundle's ``preprocessing`` section."""

    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    inplane_scale: float = 1.0
    brain_threshold: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping) -> "PreprocessConfig":
        return cls(tuple(d.get("clip_percentiles", (1.0, 99.0))), float(d.get("inplane_scale", 1.0)),
                   float(d.get("brain_threshold", 0.0)))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Crop:
    """Where the working grid sits in the input grid: box ``[y0:y1, x0:x1]`` and its working size."""

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int


def normalize_channel(volume: np.ndarray, percentiles: Sequence[float] = (1.0, 99.0)) -> np.ndarray:
    """Clip non-zero voxels to the given percentiles of the non-zero voxels, min-max to [0, 1].

    Zero voxels (background of skull-stripped volumes) stay 0. An all-zero or constant
    volume gives zeros.
    """
    v = np.asarray(volume, dtype=np.float32)
    nz = v != 0
    if not nz.any():
        return np.zeros_like(v)
    lo, hi = (float(q) for q in np.percentile(v[nz], percentiles))
    # min-max of the clipped volume (its zero background included, if any); the background
    # is kept at exactly 0 even when intensities are signed (z-scored volumes)
    vmin = lo if nz.all() else min(lo, 0.0)
    if hi - vmin <= 0:
        return np.zeros_like(v)
    out = (np.clip(v, lo, hi) - np.float32(vmin)) * np.float32(1.0 / (hi - vmin))
    out[~nz] = 0
    return out.astype(np.float32, copy=False)


def normalize_channels(channels: Mapping[str, np.ndarray], names: Sequence[str],
                       percentiles: Sequence[float] = (1.0, 99.0)) -> np.ndarray:
    """Normalise the named channels and stack them as ``(slice, channel, row, column)``."""
    return np.stack([normalize_channel(channels[n], percentiles) for n in names], axis=1)


def brain_bbox(stack: np.ndarray, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
    """In-plane box ``(y0, y1, x0, x1)`` (end-exclusive) of voxels above ``threshold`` in any
    channel of any slice, or None if there is none."""
    fg = (stack > threshold).any(axis=(0, 1))
    if not fg.any():
        return None
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


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


def _convex_hull(mask: np.ndarray) -> np.ndarray:
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
            out[k] = _convex_hull(_large_components(m, 0.02))
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


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    down = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=down)


def plan_crop(bbox: tuple[int, int, int, int], scale: float) -> Crop:
    y0, y1, x0, x1 = bbox
    return Crop(y0, y1, x0, x1, max(1, int(round((y1 - y0) * scale))), max(1, int(round((x1 - x0) * scale))))


def to_working(stack: np.ndarray, crop: Crop) -> np.ndarray:
    """Crop ``(slice, channel, row, column)`` to the box and resample to the working size."""
    t = torch.from_numpy(np.ascontiguousarray(stack[:, :, crop.y0:crop.y1, crop.x0:crop.x1]))
    return _resize(t, (crop.height, crop.width)).numpy()


def to_input(maps: np.ndarray, crop: Crop, input_hw: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_working` for ``(slice, row, column)`` maps: resample back to the
    box and place it into a zero input grid of in-plane size ``input_hw``."""
    z = maps.shape[0]
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    back = _resize(t, (crop.y1 - crop.y0, crop.x1 - crop.x0))[:, 0].numpy()
    out = np.zeros((z, *input_hw), dtype=np.float32)
    out[:, crop.y0:crop.y1, crop.x0:crop.x1] = back
    return out


def zero_fraction(stack: np.ndarray) -> np.ndarray:
    """Per slice, the fraction of in-plane positions that are zero in every channel (000 drops
    training slices where this exceeds 0.5)."""
    return (stack == 0).all(axis=1).mean(axis=(1, 2))
