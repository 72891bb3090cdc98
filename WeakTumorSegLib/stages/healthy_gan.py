"""Stage 3, the healthy-image generator (Yoo et al., section 2.2.1): the DCGAN losses.

G learns tumour-free FLAIR slices against the discriminator D0 (Eqs. 1-3); the converter's D1
(section 2.2.2, Eq. 6) uses the same discriminator loss. The networks are in
:mod:`WeakTumorSegLib.networks.dcgan`; training is :mod:`WeakTumorSegLib.training.gan`.
"""

from __future__ import annotations

import torch

from .tensors import LOSS_EPS


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor, real_label: float = 0.9,
                       fake_label: float = 0.1) -> torch.Tensor:
    """BCE loss of a discriminator, ``L_D0`` (Eq. 1) and ``L_D1`` (Eq. 6).

    ``d_real`` are the discriminator's probabilities on real images (``X_NC,FLAIR``), ``d_fake``
    those on generated images (``g = G(z)`` for D0, ``x_hat = U(x_C,FLAIR)`` for D1); any
    shape, one value per image (the :class:`Discriminator` ends in a sigmoid, so these are
    probabilities, not logits).

    Decisions:

    * Label smoothing: targets are ``real_label = 0.9`` for real and ``fake_label = 0.1`` for
      generated images, as Eqs. 1 and 6 state. The text calls this "one-sided" but both labels
      are smoothed; the equations are followed (docs/method.md).
    * Averaging: Eq. 1 is ``-(1/N) sum_k`` over every input ``x_in^k`` of both batches, so the
      loss is the mean over the concatenation of the real and generated batches. With two
      batches of the same size B (the paper's setting) this equals
      ``(mean_real + mean_fake) / 2``; with unequal sizes each image weighs the same.
    * Probabilities are clamped to ``[1e-7, 1 - 1e-7]`` before the logarithms so a saturated
      discriminator gives a finite loss (the gradient is zero where the clamp is active).

    The minimum over D of this loss is the binary entropy ``H(0.9)`` (reached at D = 0.9 on
    reals and 0.1 on fakes), not 0.
    """
    p = torch.cat([d_real.reshape(-1), d_fake.reshape(-1)]).clamp(LOSS_EPS, 1.0 - LOSS_EPS)
    y = torch.cat([torch.full_like(d_real.reshape(-1), real_label),
                   torch.full_like(d_fake.reshape(-1), fake_label)])
    return -(y * torch.log(p) + (1.0 - y) * torch.log(1.0 - p)).mean()


def generator_adversarial_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """``L_G`` (Eq. 3) and ``L_adv`` (Eq. 7): ``-mean_k log D(g^k)``.

    ``d_fake`` are the discriminator's probabilities on generated images (any shape, one per
    image). This is the non-saturating generator loss with target 1 (not the smoothed 0.9), as
    written in Eqs. 3 and 7. Probabilities are clamped to ``>= 1e-7`` before the logarithm.
    """
    return -torch.log(d_fake.reshape(-1).clamp_min(LOSS_EPS)).mean()


def bce_to_label(p: torch.Tensor, target: float) -> torch.Tensor:
    """BCE of probabilities ``p`` (any shape) against one smoothed label, as in Eqs. 1 and 6 for
    one of the two batches: training feeds D the real and the generated batch separately and
    weighs each half (:func:`WeakTumorSegLib.training.gan.discriminator_step`), which equals
    :func:`discriminator_loss` over their concatenation for batches of equal size."""
    p = p.reshape(-1).clamp(LOSS_EPS, 1 - LOSS_EPS)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
