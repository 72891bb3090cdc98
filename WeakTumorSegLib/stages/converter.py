"""Stage 4, the converter U (Yoo et al., section 2.2.2): the losses that teach U to turn a
cancerous FLAIR slice into its healthy variant, ``L_U = alpha L_recon + beta L_adv + gamma L_KL``
(Eqs. 7-10). U is a :class:`~WeakTumorSegLib.networks.dcgan.UNet` whose decoder starts as the
trained generator G; training is :mod:`WeakTumorSegLib.training.converter`.
"""

from __future__ import annotations

import torch

from .healthy_gan import generator_adversarial_loss
from .tensors import SIGMA_MIN, flat_images, same_pixels


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, neg_seeds: torch.Tensor) -> torch.Tensor:
    """``L_recon`` (Eq. 8): L1 between ``x_C,FLAIR`` and ``U(x_C,FLAIR)`` on the negative seeds.

    Per image ``k``: ``sum_ij s-_ij |x - x_hat|_ij / sum_ij s-_ij``; then the mean over the
    ``B`` images of the batch (Eq. 8's ``1/N``, computed per minibatch as the paper does).

    ``x`` and ``x_hat`` are ``(B, 1, H, W)`` or ``(B, H, W)``; ``neg_seeds`` has the same number
    of pixels per image (either layout), bool or float (float values act as weights).

    Decision: an image without any negative seed (``sum s- = 0``, where Eq. 8 divides by zero)
    contributes 0 to the sum but still counts in the mean over ``B``. The paper trains U only on
    images whose negative seeds are not empty, so this only guards against a division by zero.
    """
    xf, xh, s = flat_images(x, "x"), flat_images(x_hat, "x_hat"), flat_images(neg_seeds, "neg_seeds")
    same_pixels(xf, (xh, "x_hat"), (s, "neg_seeds"))
    s = s.to(xf.dtype)
    area = s.sum(1)
    num = (s * (xf - xh).abs()).sum(1)
    per_image = torch.where(area > 0, num / area.clamp_min(1e-12), torch.zeros_like(num))
    return per_image.mean()


def kl_loss(code: torch.Tensor) -> torch.Tensor:
    """``L_KL`` (Eq. 9) on the encoder's codes ``z_hat = E(x_C,FLAIR)`` (Eq. 4).

    ``L = -(1/B) sum_k (2 log sigma_k - sigma_k^2 - mu_k^2 + 1)`` where ``mu_k`` and
    ``sigma_k`` are the mean and standard deviation of image ``k``'s code vector.

    Decisions:

    * ``mu`` and ``sigma`` are the empirical statistics of the elements of each code vector
      (the encoder has no separate mean / log-variance heads; the text's "mean and standard
      deviation of z_hat" suggests this; docs/method.md). The loss therefore pushes each
      code's elements towards mean 0 and standard deviation 1.
    * ``sigma`` is the biased (population) standard deviation (divide by the latent size, not
      latent size - 1), so a code like ``[1, -1, 1, -1]`` has ``sigma = 1`` and loss 0.
    * ``sigma`` is clamped to ``>= 1e-6`` before the logarithm.
    * As written in the paper, this is twice the standard ``KL(N(mu, sigma^2) || N(0, 1))
      = (sigma^2 + mu^2 - 1 - 2 log sigma) / 2``; the factor 2 is kept (it only rescales
      gamma). The minimum, 0, is at ``mu = 0, sigma = 1``.

    ``code`` is ``(B, latent)``; ``(B, latent, 1, 1)`` is flattened.
    """
    z = code.reshape(code.shape[0], -1)
    mu = z.mean(1)
    sigma = z.std(1, unbiased=False).clamp_min(SIGMA_MIN)
    return -(2.0 * torch.log(sigma) - sigma ** 2 - mu ** 2 + 1.0).mean()


def converter_loss(x: torch.Tensor, x_hat: torch.Tensor, neg_seeds: torch.Tensor, d1_fake: torch.Tensor,
                   code: torch.Tensor, alpha: float, beta: float,
                   gamma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of the converter U, ``L_U = alpha L_recon + beta L_adv + gamma L_KL`` (Eq. 10).

    ``x`` / ``x_hat``: input cancerous FLAIR and U's output; ``neg_seeds``: their negative
    seeds (:func:`reconstruction_loss`, Eq. 8); ``d1_fake``: D1's probabilities on ``x_hat``
    (:func:`generator_adversarial_loss`, Eq. 7); ``code``: the encoder's code
    (:func:`kl_loss`, Eq. 9). The paper uses ``alpha=10, beta=0.05, gamma=1`` on BraTS and
    ``alpha=50`` on pLGG.

    Returns ``(total, {"recon": ..., "adv": ..., "kl": ...})``; the parts are the unweighted
    terms, still attached to the graph (call ``.item()`` to log them).
    """
    parts = {"recon": reconstruction_loss(x, x_hat, neg_seeds),
             "adv": generator_adversarial_loss(d1_fake),
             "kl": kl_loss(code)}
    total = alpha * parts["recon"] + beta * parts["adv"] + gamma * parts["kl"]
    return total, parts
