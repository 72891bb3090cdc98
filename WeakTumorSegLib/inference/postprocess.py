"""Post-processing of the fused probability map before it becomes the mask (not in Yoo et al.;
each step is off unless the bundle or an option turns it on; docs/options.md has the measurements).

In the order :func:`postprocess` applies them:

* **scalp margin** (``inference.scalp_margin_mm``): voxels closer than that to the head's outer
  surface (:func:`~WeakTumorSegLib.preprocessing.head.head_depth`) are cleared, which keeps masks
  off the bright scalp fat of images that are not skull-stripped;
* **FLAIR trim** (``inference.flair_trim``, :func:`flair_trim`): the mask loses its voxels that
  are much darker on FLAIR than the mask's typical voxel. The segmenters learn from RISE's seeds,
  which are about a mask cell wide, and their masks spread over the tissue around a small tumour;
  for a target that is FLAIR-hyperintense by definition (glioma, oedema) that tissue is the
  mask's dim part;
* **component filter** (``inference.keep_components``, :func:`keep_components`): the mask keeps
  its large 3D connected components and their holes are filled slice by slice. A glioma is one
  lesion, while the segmenters also mark small bright spots elsewhere; and the FLAIR trim leaves
  holes where the tumour is less bright than its median;
* **final segmenter's extent** (``inference.final_mode`` ``extend``, :func:`extend_lesions`): the
  lesions of the fused mask, as the component filter left them, grow by the final segmenter's
  components that touch them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from ..preprocessing.head import head_depth, head_level
from ..bundle.settings import InferenceSettings


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


def extend_lesions(lesions: np.ndarray, final: np.ndarray) -> np.ndarray:
    """The mask of ``inference.final_mode`` ``extend``: the binary ``lesions`` (the fused mask after
    the component filter) with every 3D connected component (26-connected) of the binary ``final``
    that touches them. The fused pipeline decides which lesions there are, the final segmenter,
    trained on whole masks, how far they reach; its components elsewhere are dropped. A new boolean
    array; ``lesions`` itself (as bool) when there is nothing to add."""
    lesions, final = np.asarray(lesions, bool), np.asarray(final, bool)
    if not (lesions.any() and final.any()):
        return lesions
    labels, _ = ndimage.label(final, structure=np.ones((3, 3, 3), bool))
    touching = np.unique(labels[lesions & final])
    return lesions | np.isin(labels, touching[touching > 0])


def clear_scalp(probabilities: Mapping[str, np.ndarray], flair: np.ndarray, spacing: Sequence[float],
                margin: float) -> dict[str, np.ndarray]:
    """The maps with every voxel within ``margin`` mm of the head's outer surface set to 0 (copies;
    the maps themselves when ``margin`` is 0). ``flair`` is the normalised FLAIR on the same grid;
    only slices where some map is non-zero need the head (its level is the whole volume's)."""
    if margin <= 0 or not probabilities:
        return dict(probabilities)
    out = {name: pr.copy() for name, pr in probabilities.items()}
    ks = np.flatnonzero(np.logical_or.reduce([pr.any(axis=(1, 2)) for pr in out.values()]))
    if len(ks):
        inside = head_depth(flair[ks], spacing, head_level(flair)) > margin
        for pr in out.values():
            pr[ks] *= inside
    return out


def postprocess(probabilities: Mapping[str, np.ndarray], flair: np.ndarray, spacing: Sequence[float],
                settings: InferenceSettings) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every model's probability map through the scalp margin and the FLAIR trim, then binarised
    at ``settings.mask_threshold`` and through the component filter. With ``settings.final_mode``
    ``extend``, ``final`` is then the ``fused`` mask grown by :func:`extend_lesions`, its map the
    fused one raised to the final segmenter's where it grew. Returns ``(probabilities, masks)`` keyed
    like the input; the masks are uint8. ``flair`` is the normalised [0, 1] FLAIR and ``spacing`` the
    in-plane (row, column) voxel size in mm."""
    out = clear_scalp(probabilities, flair, spacing, settings.scalp_margin_mm)
    if settings.flair_trim > 0:  # each model's mask loses its voxels that are dim on FLAIR next to its median voxel
        out = {name: flair_trim(pr, flair, settings.flair_trim, settings.mask_threshold) for name, pr in out.items()}
    extend = settings.final_mode == "extend" and {"fused", "final"} <= set(out)
    masks = {name: keep_components(pr > settings.mask_threshold, settings.keep_components).astype(np.uint8)
             for name, pr in out.items() if not (extend and name == "final")}  # extend filters the fused lesions only
    if extend:
        grown = extend_lesions(masks["fused"], out["final"] > settings.mask_threshold)
        out["final"] = np.maximum(out["fused"], out["final"] * grown)
        masks["final"] = grown.astype(np.uint8)
    return out, masks
