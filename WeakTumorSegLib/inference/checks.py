"""Saying when a volume is unlike the bundle's training data (not in Yoo et al.).

Two checks, whose messages go to stderr, ``_report.json`` and the Slicer module:

* :func:`out_of_distribution`: a statistic of the standardised volume
  (:func:`~WeakTumorSegLib.preprocessing.standardise.volume_stats`) outside the range the bundle
  saw over its training volumes (``preprocessing_stats`` in ``bundle.json``), widened by
  :data:`RANGE_SLACK` of its width on each side;
* :func:`possible_miss`: nothing was found (no patch gated, an empty mask) although the FLAIR
  shows a large bright region inside the brain, so an empty mask is not presented as a confident
  "no tumour".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi

#: Each training range is widened by this fraction of its width on both sides before a value counts as outside.
RANGE_SLACK = 0.25
#: FLAIR level (normalised inside the brain, where 1 is the brain's 99th percentile) of a bright region.
BRIGHT_LEVEL = 0.9
#: Smallest in-plane area, in cm^2, of a bright region that makes an empty result suspect.
BRIGHT_AREA_CM2 = 2.0

_NAMES = {"brain_area_cm2": "largest brain section (cm^2)", "flair_median": "median FLAIR in the brain",
          "flair_iqr": "FLAIR interquartile range in the brain"}


def out_of_distribution(stats: Mapping[str, float], ranges: Mapping[str, list]) -> list[str]:
    """One message per statistic outside its (widened) training range."""
    out = []
    for key, value in stats.items():
        if key not in ranges:
            continue
        lo, hi = (float(x) for x in ranges[key])
        slack = RANGE_SLACK * max(hi - lo, 1e-6)
        if not lo - slack <= value <= hi + slack:
            out.append(f"the input is unlike the bundle's training data: {_NAMES.get(key, key)} is {value:g}, "
                       f"training volumes had {lo:g} to {hi:g}; check the orientation, voxel size and sequence")
    return out


def bright_region_cm2(flair: np.ndarray, brain: np.ndarray, spacing_mm: float) -> tuple[float, int]:
    """The largest in-plane bright region inside the brain: ``(area in cm^2, slice)``."""
    best, where = 0.0, -1
    bright = (flair >= BRIGHT_LEVEL) & brain
    for k in np.flatnonzero(bright.any(axis=(1, 2))):
        labels, n = ndi.label(bright[k])
        if n:
            area = float(np.bincount(labels.ravel())[1:].max()) * spacing_mm * spacing_mm / 100.0
            if area > best:
                best, where = area, int(k)
    return best, where


def possible_miss(flair: np.ndarray, brain: np.ndarray | None, spacing_mm: float | None, found: bool) -> str | None:
    """A message when nothing was found (no patch gated, an empty mask) but the FLAIR has a bright
    region of at least :data:`BRIGHT_AREA_CM2` inside the brain; None otherwise."""
    if found or brain is None or spacing_mm is None:
        return None
    area, k = bright_region_cm2(flair, brain, spacing_mm)
    if area < BRIGHT_AREA_CM2:
        return None
    return (f"no slice was gated as tumour, but the FLAIR shows a bright region of {area:.1f} cm^2 inside the "
            f"brain (slice {k} of the working grid); the empty mask may be a miss: review the images")
