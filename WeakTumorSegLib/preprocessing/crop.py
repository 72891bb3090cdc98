"""The brain's bounding box and the working grid (Yoo et al., section 3.1).

The paper crops each volume to the brain's bounding box and, for the 240 x 240 pLGG slices,
halves the in-plane resolution. Here :func:`brain_bbox` finds the in-plane box (shared by all
slices) holding every voxel above ``brain_threshold`` in any channel, and :func:`to_working`
crops to it and resamples it in-plane: from the input's voxel size to the bundle's
``spacing_mm`` (:mod:`.standardise`), or by ``inplane_scale`` for older bundles, so inference sees
the brain at the scale training saw.

:func:`to_input` is the inverse mapping: it resamples working-grid maps back to the box and
places them into the input grid, so every input voxel receives a value and the output grid is
the input grid exactly (at scale 1 the round trip is the identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Crop:
    """Where the working grid sits in the input grid: box ``[y0:y1, x0:x1]`` and its working size."""

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int


def brain_bbox(stack: np.ndarray, threshold: float = 0.0) -> tuple[int, int, int, int] | None:
    """In-plane box ``(y0, y1, x0, x1)`` (end-exclusive) of voxels above ``threshold`` in any
    channel of any slice, or None if there is none."""
    fg = (stack > threshold).any(axis=(0, 1))
    if not fg.any():
        return None
    rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    down = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=down)


def plan_crop(bbox: tuple[int, int, int, int], scale: float, scale_x: float | None = None) -> Crop:
    """The crop to ``bbox``, resampled by ``scale`` (rows) and ``scale_x`` (columns; default ``scale``)."""
    y0, y1, x0, x1 = bbox
    sx = scale if scale_x is None else scale_x
    return Crop(y0, y1, x0, x1, max(1, int(round((y1 - y0) * scale))), max(1, int(round((x1 - x0) * sx))))


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
