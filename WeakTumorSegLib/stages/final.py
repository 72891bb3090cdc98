"""The final segmenter's labels and losses (not in Yoo et al.; their section 2.5 filter picks the
masks it learns from).

Every training tile gets one of four kinds (:func:`slice_kinds`, :func:`tile_kinds`):

* ``EMPTY``: its slice is labelled tumour-free; its mask is exactly empty (a full label);
* ``MASKED``: a tumour slice whose mask is trusted: the fused pipeline's post-processed mask that
  passes the difference-score filter (non-empty, not flagged), or a reviewer's kept or corrected
  slice; the mask is a full label;
* ``WEAK``: a tumour slice without a trusted mask: only its slice label is known;
* ``EXCLUDED``: never used (a reviewer's excluded slice, a tile without tissue).

Losses: the per-batch pixel weights and the joint loss of Mlynarski et al.'s mixed supervision
(section 2.3), used by the ``self`` trainer without the classification term; the partial-label
losses of Li et al.'s EM regularisation are in :mod:`.partial_labels`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: the final segmenter's trainers (:mod:`WeakTumorSegLib.training.final`)
TRAINERS = ("self", "mixed", "em")
#: ``final.architecture`` -> the registered network: the DCGAN U-Net of Yoo et al.'s segmenters
#: (:mod:`WeakTumorSegLib.networks.dcgan`) or the standard U-Net (:mod:`WeakTumorSegLib.networks.unet2d`).
FINAL_ARCHITECTURES = {"dcgan": "unet", "unet2d": "unet2d"}
EMPTY, MASKED, WEAK, EXCLUDED = 0, 1, 2, 3
KIND_NAMES = {EMPTY: "empty", MASKED: "masked", WEAK: "weak", EXCLUDED: "excluded"}
#: numerical floor of the log in the cross-entropies
EPS = 1e-6


def slice_kinds(labels: np.ndarray, mask_pixels: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Per slice: ``EMPTY`` where the slice label is 0, ``MASKED`` where it is 1 and the mask is
    non-empty and not flagged, ``WEAK`` for the other tumour slices."""
    labels, pixels, flagged = np.asarray(labels), np.asarray(mask_pixels), np.asarray(flagged, bool)
    if not labels.shape == pixels.shape == flagged.shape:
        raise ValueError(f"per-slice arrays differ in length: {labels.shape}, {pixels.shape}, {flagged.shape}")
    trusted = (pixels > 0) & ~flagged
    return np.where(labels == 0, EMPTY, np.where(trusted, MASKED, WEAK)).astype(np.uint8)


def tile_kinds(kinds: np.ndarray, slice_of: np.ndarray, tile_masks: np.ndarray, tissue: np.ndarray,
               p_tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(kind, image label)`` of every tile from its slice's kind.

    ``slice_of`` gives each tile's slice, ``tile_masks`` ``(tiles, P, P)`` the slice mask's part in
    it, ``tissue`` which tiles hold tissue, ``p_tile`` the classifier's output per tile. A tile
    without tissue is ``EXCLUDED``. A masked slice's tile is labelled tumour when its part of the
    mask is non-empty (a tile without it is a full empty label). A weak slice split into several
    tiles keeps only its tile of highest ``p_tile`` (the others' image label is unknown)."""
    kind = np.asarray(kinds)[slice_of].astype(np.uint8)
    has_mask = tile_masks.reshape(len(tile_masks), -1).any(1)
    label = np.where(kind == EMPTY, 0, np.where(kind == MASKED, has_mask, 1)).astype(np.uint8)
    weak = np.flatnonzero(kind == WEAK)
    for s in np.unique(slice_of[weak]):
        own = weak[slice_of[weak] == s]
        if len(own) > 1:
            kind[own[own != own[np.argmax(p_tile[own])]]] = EXCLUDED
    kind[~np.isin(np.arange(len(kind)), tissue)] = EXCLUDED
    return kind, label


def labelled(target: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The pixels of ``target`` ``(B, H, W)`` that carry a label: ``full`` per image ``(B,)`` or per
    pixel ``(B, H, W)``, broadcast to ``target``'s shape."""
    return full.reshape(*full.shape, *([1] * (target.dim() - full.dim()))).expand_as(target)


def pixel_weights(target: torch.Tensor, full: torch.Tensor, t0: float, t1: float) -> torch.Tensor:
    """Mlynarski et al.'s per-batch pixel weights: over the pixels with a label (``full``: ``(B,)``
    bool per image, or ``(B, H, W)`` per pixel), all healthy pixels together weigh ``t0`` and all
    tumour pixels ``t1``; the other pixels weigh 0. ``target`` is ``(B, H, W)`` in {0, 1}."""
    sel = labelled(target, full)
    tumour, healthy = sel & (target > 0.5), sel & (target <= 0.5)
    w = torch.zeros_like(target, dtype=torch.float32 if target.dtype != torch.float64 else torch.float64)
    n1, n0 = tumour.sum(), healthy.sum()
    if n0 > 0:
        w = torch.where(healthy, t0 / n0.to(w.dtype), w)
    if n1 > 0:
        w = torch.where(tumour, t1 / n1.to(w.dtype), w)
    return w


def label_weights(target: torch.Tensor, full: torch.Tensor, t0: float, t1: float, balanced: bool) -> torch.Tensor:
    """:func:`pixel_weights` when ``balanced``; else every labelled pixel weighs the same, 1 / their number."""
    if balanced:
        return pixel_weights(target, full, t0, t1)
    sel = labelled(target, full)
    w = sel.to(torch.float64 if target.dtype == torch.float64 else torch.float32)
    return w / w.sum().clamp(min=1.0)


def weighted_cross_entropy(prob: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """-sum w(px) log p(px, true class) for sigmoid maps ``prob`` ``(B, H, W)``."""
    p = prob.clamp(EPS, 1 - EPS)
    return -(weights * (target * p.log() + (1 - target) * (1 - p).log())).sum()


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, full: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - the soft Dice of ``prob`` and ``target`` ``(B, H, W)`` pooled over the images with a full
    label (``full`` as in :func:`labelled`), the "batch Dice" of nnU-Net; ``smooth`` keeps it defined
    on batches without tumour (there it pushes the map towards 0)."""
    sel = labelled(target, full).to(prob.dtype)
    p, t = prob * sel, target * sel
    return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def mixed_loss(prob: torch.Tensor, logit: torch.Tensor | None, target: torch.Tensor, full: torch.Tensor,
               image_label: torch.Tensor, t0: float, t1: float, a: float,
               balanced: bool = True, dice: float = 0.0) -> tuple[torch.Tensor, dict]:
    """a * Loss_s + (1 - a) * Loss_c (Mlynarski et al., Eq. 3): the weighted cross-entropy on the
    images with a full label (:func:`label_weights`), the branch's cross-entropy on every image.
    Without a branch (``logit`` None) the loss is Loss_s alone (the ``self`` trainer). ``dice`` > 0
    adds that weight of :func:`soft_dice_loss` on the same images to Loss_s (not in the paper)."""
    seg = weighted_cross_entropy(prob, target, label_weights(target, full, t0, t1, balanced))
    if dice > 0:
        seg = seg + dice * soft_dice_loss(prob, target, full)
    if logit is None:
        return seg, {"seg": seg.item()}
    cls = F.binary_cross_entropy_with_logits(logit, image_label.float())
    return a * seg + (1 - a) * cls, {"seg": seg.item(), "cls": cls.item()}
