"""Segmenters S0, S_US, S_OS: losses (Yoo et al., section 2.3, 2.4).

The three segmenters are :class:`~WeakTumorSegLib.generator.UNet` models producing a tumour
probability map ``m`` (``(B, 1, H, W)``, sigmoid output). They are trained with

``L_M0 = delta L_seed + epsilon L_var + zeta L_size``  (Eq. 15)

where ``L_seed`` (Eq. 12; Eq. 16 for S_US / S_OS with the refined positive seeds S+,r) pulls
``m`` to 1 on positive and to 0 on negative seeds, ``L_var`` (Eq. 13) is the L1 difference
between the FLAIR image and its non-cancerous variant outside the segmentation, and ``L_size``
(Eq. 14) is the mean of ``m``. The same functions serve S0 (seeds S+, S-) and the refined
S_US / S_OS (seeds S+,r, S-,r): only the seeds passed in differ.

Shapes: ``m`` is ``(B, 1, H, W)`` or ``(B, H, W)``; seeds and FLAIR images have the same number
of pixels per image in either layout (they are flattened per image, never broadcast). Seeds
may be bool or float.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tensors import LOSS_EPS, flat_images, same_pixels


@dataclass(frozen=True)
class SegmenterLossWeights:
    """Weights of Eq. 15. The defaults are the paper's BraTS values (section 3.2,
    ``delta=4, epsilon=1, zeta=0.25``); on pLGG the paper used ``zeta=0.2``."""

    delta: float = 4.0
    epsilon: float = 1.0
    zeta: float = 0.25


def seed_loss(m: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, balanced: bool = False) -> torch.Tensor:
    """``L_seed`` (Eq. 12) / ``L_seed,r`` (Eq. 16): cross-entropy of ``m`` on the seeds.

    Per image ``k``::

        (sum_{ij in S+} -log m_ij + sum_{ij in S-} -log(1 - m_ij)) / (|S+| + |S-|)

    then the mean over the ``B`` images of the batch (the paper's ``1/N``, per minibatch).

    Decisions:

    * Negative seeds use ``-log(1 - m)``. Eqs. 12 and 16 apply ``log(m)`` to both seed sets,
      which would push ``m`` to 1 on the negative seeds and contradicts the text ("guide the
      model toward the desired tumor segmentations"; outputs "close to 0 or 1"); the text is
      followed (docs/method.md).
    * An image with no seed at all (``|S+| + |S-| = 0``) contributes 0 but still counts in the
      mean over ``B``.
    * ``m`` is clamped to ``[1e-7, 1 - 1e-7]`` before the logarithms.
    * Float seeds act as weights (``|S|`` is their sum); a pixel in both sets counts in both.

    Option (not in the paper): ``balanced=True`` averages the positive and the negative term
    separately and takes their mean, ``(mean_{S+} -log m + mean_{S-} -log(1 - m)) / 2`` (an
    image lacking one seed set uses the other alone). When tumours cover a few percent of an
    image the paper's pooled form is dominated by the negative seeds, and an all-zero map
    scores well; the presets ``default`` and ``tiny`` use the balanced form, ``paper`` the
    pooled one (``segmenter.balanced_seed_loss``).
    """
    mf, p, n = flat_images(m, "m"), flat_images(pos, "pos"), flat_images(neg, "neg")
    same_pixels(mf, (p, "pos"), (n, "neg"))
    p, n = p.to(mf.dtype), n.to(mf.dtype)
    mc = mf.clamp(LOSS_EPS, 1.0 - LOSS_EPS)
    pos_sum, neg_sum = -(p * torch.log(mc)).sum(1), -(n * torch.log(1.0 - mc)).sum(1)
    n_pos, n_neg = p.sum(1), n.sum(1)
    if balanced:
        lp, ln = pos_sum / n_pos.clamp_min(1e-12), neg_sum / n_neg.clamp_min(1e-12)
        has_p, has_n = n_pos > 0, n_neg > 0
        per_image = torch.where(has_p & has_n, (lp + ln) / 2,
                                torch.where(has_p, lp, torch.where(has_n, ln, torch.zeros_like(lp))))
    else:
        count = n_pos + n_neg
        per_image = torch.where(count > 0, (pos_sum + neg_sum) / count.clamp_min(1e-12),
                                torch.zeros_like(pos_sum))
    return per_image.mean()


def variation_loss(m: torch.Tensor, x_flair: torch.Tensor, x_hat_flair: torch.Tensor) -> torch.Tensor:
    """``L_var`` (Eq. 13): L1 between FLAIR and its non-cancerous variant outside ``m``.

    Per image: ``sum_ij (1 - m_ij) |x_ij - x_hat_ij| / (H W)``; then the mean over images.

    Decisions:

    * The voxel-wise L1 map is weighted by ``1 - m`` as the text says. Eq. 13 weights it by the
      negative seeds ``s-`` and normalises by ``sum s-`` (copied from Eq. 8), which would make
      the term independent of ``m`` and so of no use for training the segmenter (docs/method.md).
      Where ``m = 1`` the difference is ignored.
    * Normalisation (unspecified in the paper): divide by the number of pixels ``H W`` of the
      image, i.e. the per-pixel mean, which keeps the term on the scale of ``L_recon``
      (a mean absolute difference) and independent of the patch size.
    * Non-cancerous images have ``x_hat = x`` (section 2.3), so the caller passes
      ``x_hat_flair = x_flair`` for them and their term is 0 (they still count in the mean).

    ``x_hat_flair`` is normally the converter's precomputed output (a constant); it is not
    detached here, so detach it if U must not receive gradients.
    """
    mf = flat_images(m, "m")
    xf, xh = flat_images(x_flair, "x_flair"), flat_images(x_hat_flair, "x_hat_flair")
    same_pixels(mf, (xf, "x_flair"), (xh, "x_hat_flair"))
    return ((1.0 - mf) * (xf - xh).abs()).mean(1).mean()


def size_loss(m: torch.Tensor) -> torch.Tensor:
    """``L_size`` (Eq. 14): the mean of ``m`` over the pixels of each image, then over images
    (equal to the mean over all values, as every image has the same size)."""
    return flat_images(m, "m").mean(1).mean()


def segmenter_loss(m: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, x_flair: torch.Tensor,
                   x_hat_flair: torch.Tensor, delta: float = 4.0, epsilon: float = 1.0,
                   zeta: float = 0.25, balanced: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L_M0 = delta L_seed + epsilon L_var + zeta L_size`` (Eq. 15), also used for S_US and
    S_OS with the refined seeds (Eq. 16).

    See :func:`seed_loss`, :func:`variation_loss` and :func:`size_loss` for the terms and the
    decisions taken there (``balanced`` selects the class-balanced seed term); the default
    weights are the paper's BraTS values
    (:class:`SegmenterLossWeights`; ``zeta = 0.2`` on pLGG).

    Returns ``(total, {"seed": ..., "var": ..., "size": ...})``; the parts are the unweighted
    terms, still attached to the graph (call ``.item()`` to log them).
    """
    parts = {"seed": seed_loss(m, pos, neg, balanced),
             "var": variation_loss(m, x_flair, x_hat_flair),
             "size": size_loss(m)}
    total = delta * parts["seed"] + epsilon * parts["var"] + zeta * parts["size"]
    return total, parts
