"""Intensity normalisation (Yoo et al., section 3.1): each channel's non-zero voxels are clipped
to their 1st/99th percentiles and min-max scaled to [0, 1], the zero background staying 0.

The parameters travel with the bundle (``preprocessing`` in ``bundle.json``) so inference
normalises as training did. Arrays are ``(slice, row, column)`` per channel; stacked channel
arrays are ``(slice, channel, row, column)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters, stored in the bundle's ``preprocessing`` section."""

    clip_percentiles: tuple[float, float] = (1.0, 99.0)
    inplane_scale: float = 1.0
    brain_threshold: float = 0.0
    spacing_mm: float | None = None
    """In-plane voxel size of the working grid; None: bundles from before site-independent
    preprocessing (raw voxel axes, no brain extraction, ``inplane_scale``)."""
    brain_extraction: str = "own"
    """``own`` (:mod:`.brain`) or ``deepbet`` (:mod:`.deepbet_brain`); bundles without the key
    were trained with ``own``."""
    scalp_fat: bool = False
    """Remove the bright scalp that the brain mask kept (:mod:`.scalp`); bundles without the key
    were trained without."""

    @classmethod
    def from_dict(cls, d: Mapping) -> "PreprocessConfig":
        spacing = d.get("spacing_mm")
        return cls(tuple(d.get("clip_percentiles", (1.0, 99.0))), float(d.get("inplane_scale", 1.0)),
                   float(d.get("brain_threshold", 0.0)), None if spacing is None else float(spacing),
                   str(d.get("brain_extraction", "own")), bool(d.get("scalp_fat", False)))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()
                if not (k == "spacing_mm" and v is None)}


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


def zero_fraction(stack: np.ndarray) -> np.ndarray:
    """Per slice, the fraction of in-plane positions that are zero in every channel (the paper drops
    training slices where this exceeds 0.5)."""
    return (stack == 0).all(axis=1).mean(axis=(1, 2))
