"""Every input seen the same way: orientation, voxel size, skull and intensity (not in Yoo et al.,
whose pLGG images came from one scanner protocol and were skull-stripped and registered).

:func:`standardise` is the one preprocessing of training and inference:

1. **orientation**: the channels are turned into the canonical layout
   (:mod:`.orientation`) from the header's direction matrix or a declared orientation code;
2. **scale**: each channel goes to [0, 1] between the 1st and 99th percentiles of its voxels
   above its minimum (:func:`~.brain.scale01`: the same for 8-bit, 16-bit, rescaled and z-scored
   copies of one image);
3. **working grid**: the in-plane box of the head is cropped and resampled to the bundle's
   in-plane spacing (``preprocessing.spacing_mm``; :mod:`.crop`);
4. **brain**: the brain is extracted from the FLAIR on the working grid (``brain_extraction``:
   the own method of :mod:`.brain` or deepbet's networks, :mod:`.deepbet_brain`), or, for an
   input found to be skull-stripped already, taken as its non-background; with ``scalp_fat``
   the bright scalp it kept is removed (:mod:`.scalp`);
5. **intensity**: each channel is clipped to the ``clip_percentiles`` of its brain voxels and
   min-max scaled to [0, 1]; everything outside the brain is 0 (Yoo et al., section 3.1, on
   the brain only);
6. the working grid is cropped to the brain's in-plane box, so a skull-stripped copy of an image
   gives the networks the same slices as the image itself.

Bundles written before these steps (no ``spacing_mm``) keep their own preprocessing: raw voxel
axes, :func:`~.intensity.normalize_channels`, the head box resampled by ``inplane_scale``.
:meth:`Standardised.to_input` maps working-grid maps back to the input's voxel grid and layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..io.orientation import CANONICAL
from .brain import brain_mask, fill_slices, scale01, skull_stripped
from .crop import Crop, brain_bbox, plan_crop, to_input, to_working
from .deepbet_brain import deepbet_mask
from .intensity import PreprocessConfig, normalize_channels
from .orientation import Reorientation
from .scalp import scalp_fat


#: ``preprocessing.brain_extraction``: its name -> ``(FLAIR on the working grid, spacing) -> brain``
BRAIN_EXTRACTION = {"own": brain_mask, "deepbet": deepbet_mask}


@dataclass
class Standardised:
    """One volume on the working grid, and the way back to its input grid."""

    reorientation: Reorientation
    stack: np.ndarray  #: (slice, channel, row, column) scaled to [0, 1], canonical layout, input voxel grid
    crop: Crop  #: head box of ``stack`` and its working size
    box: tuple[int, int, int, int]  #: the brain's box ``(y0, y1, x0, x1)`` in the working grid
    work: np.ndarray  #: (slice, channel, row, column) normalised, on the box of the working grid
    brain: np.ndarray | None  #: the brain on the box of the working grid (None: no brain extraction)
    stripped: bool | None  #: whether the input was skull-stripped already (None: not checked)
    spacing: tuple[float, float, float]  #: canonical ``(slice, row, column)`` voxel size of the input, mm
    stats: dict = field(default_factory=dict)  #: what the bundle's out-of-distribution check compares
    background: np.ndarray | None = None  #: per slice, the share of the head box that is background in every channel

    @property
    def canonical_hw(self) -> tuple[int, int]:
        return self.stack.shape[2], self.stack.shape[3]

    def working(self, a: np.ndarray) -> np.ndarray:
        """An input-grid ``(slice, row, column)`` array (a mask) on the box of the working grid (float)."""
        c = self.reorientation.to_canonical(np.asarray(a, dtype=np.float32))
        w = to_working(c[:, None], self.crop)[:, 0]
        y0, y1, x0, x1 = self.box
        return w[:, y0:y1, x0:x1]

    def to_canonical_input(self, maps: np.ndarray) -> np.ndarray:
        """``(slice, row, column)`` maps on the box of the working grid -> the canonical input grid."""
        y0, y1, x0, x1 = self.box
        full = np.zeros((maps.shape[0], self.crop.height, self.crop.width), dtype=np.float32)
        full[:, y0:y1, x0:x1] = maps
        return to_input(full, self.crop, self.canonical_hw)

    def to_input(self, maps: np.ndarray) -> np.ndarray:
        """``(slice, row, column)`` maps on the box of the working grid -> the input's grid and layout."""
        return self.reorientation.to_input(self.to_canonical_input(maps))

    def input_layout(self, canonical: np.ndarray) -> np.ndarray:
        """A canonical input-grid array back in the input's layout."""
        return self.reorientation.to_input(canonical)


def _normalise_in_brain(work: np.ndarray, brain: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    out = np.zeros_like(work)
    if not brain.any():
        return out
    for c in range(work.shape[1]):
        ch = work[:, c]
        lo, hi = (float(q) for q in np.percentile(ch[brain], percentiles))
        if hi > lo:
            out[:, c] = np.clip((ch - lo) / (hi - lo), 0.0, 1.0) * brain
    return out


def volume_stats(work: np.ndarray, brain: np.ndarray, flair: int, spacing_mm: float) -> dict:
    """Statistics of a standardised volume that the bundle records over its training volumes: the
    largest brain section in cm^2 (a wrong voxel size shows here) and the FLAIR's median and
    interquartile range inside the brain (another contrast shows here)."""
    if not brain.any():
        return {}
    f = work[:, flair][brain]
    q25, q50, q75 = (float(x) for x in np.percentile(f, (25, 50, 75)))
    area = float(brain.sum(axis=(1, 2)).max()) * spacing_mm * spacing_mm / 100.0
    return {"brain_area_cm2": round(area, 3), "flair_median": round(q50, 4), "flair_iqr": round(q75 - q25, 4)}


def standardise(channels: Mapping[str, np.ndarray], names: Sequence[str], pp: PreprocessConfig,
                flair: str, spacing_xyz: Sequence[float] = (1.0, 1.0, 1.0),
                orientation: str = CANONICAL) -> Standardised | None:
    """The volume ``{channel: (slice, row, column) array}`` standardised for the networks (see the
    module docstring), or None when it holds nothing but background. ``spacing_xyz`` is the ITK
    voxel size and ``orientation`` the code of the stored layout (header or declared)."""
    legacy = pp.spacing_mm is None
    reo = Reorientation(CANONICAL if legacy else orientation)
    fi = list(names).index(flair)
    spacing = reo.spacing(spacing_xyz)
    if legacy:
        stack = normalize_channels(channels, names, pp.clip_percentiles)
    else:
        stack = np.stack([scale01(reo.to_canonical(np.asarray(channels[n], dtype=np.float32))) for n in names], 1)
    bbox = brain_bbox(stack, pp.brain_threshold)
    if bbox is None:
        return None
    if legacy:
        crop = plan_crop(bbox, pp.inplane_scale)
        work = to_working(stack, crop)
        return Standardised(reo, stack, crop, (0, crop.height, 0, crop.width), work, None, None, spacing)
    crop = plan_crop(bbox, spacing[1] / pp.spacing_mm, spacing[2] / pp.spacing_mm)
    work = to_working(stack, crop)
    foreground = to_working((stack[:, fi:fi + 1] > 0).astype(np.float32), crop)[:, 0] > 0.5
    brain = BRAIN_EXTRACTION[pp.brain_extraction](work[:, fi], pp.spacing_mm)
    stripped = skull_stripped(foreground, brain)
    if stripped:
        brain = fill_slices(foreground)
    elif pp.scalp_fat:
        brain &= ~scalp_fat(work[:, fi], pp.spacing_mm)
    box = brain_bbox(brain[:, None], 0.5) if brain.any() else (0, crop.height, 0, crop.width)
    y0, y1, x0, x1 = box
    brain = brain[:, y0:y1, x0:x1]
    work = _normalise_in_brain(work[:, :, y0:y1, x0:x1], brain, pp.clip_percentiles)
    stats = volume_stats(work, brain, fi, pp.spacing_mm)
    background = (stack[:, :, crop.y0:crop.y1, crop.x0:crop.x1] == 0).all(axis=1).mean(axis=(1, 2))
    return Standardised(reo, stack, crop, box, work, brain, stripped, spacing, stats, background)
