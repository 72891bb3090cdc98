"""DCGAN generator G, discriminators D0/D1, encoder E and the U-Net (000 sections 2.2, 3.2).

Paper 000 gives the block structure but not the widths or kernels (DIGEST ambiguity 10); a
standard 128-pixel DCGAN is used:

* :class:`Generator` G: 6 transposed-conv blocks 1 -> 4 -> 8 -> 16 -> 32 -> 64 -> 128, each
  ConvTranspose + BatchNorm + ReLU, the last without BatchNorm and with a sigmoid. Input is a
  ``latent``-dimensional code (100 in the paper).
* :class:`Discriminator` D: 6 conv blocks 128 -> 64 -> 32 -> 16 -> 8 -> 4 -> 1, Conv +
  BatchNorm + LeakyReLU(0.2), no BatchNorm in the first and last blocks, sigmoid output.
* :class:`Encoder` E: the discriminator's layout with a ``latent``-vector output (no sigmoid).
* :class:`UNet`: E followed by G with skip connections. Each skip is two conv + ReLU blocks:
  the first takes the encoder feature, its output is concatenated with the decoder feature and
  passed through the second. G's blocks keep their shapes, so a trained G's weights load into
  the U-Net's decoder (``unet.decoder.load_state_dict(g.state_dict())``). The converter U
  (FLAIR -> healthy FLAIR) and the segmenters S0 / S_US / S_OS (C channels -> tumour
  probability) are both this U-Net.

``width`` is the channel count of the outermost encoder block and of the last decoder block
(64 in a standard DCGAN); inner blocks use 2, 4, 8, 16 times that. The spatial size is fixed
at 128 by the six stride-2 stages.
"""

from __future__ import annotations

import torch
from torch import nn

PATCH = 128
MULTS = (1, 2, 4, 8, 16)  # encoder widths at 64, 32, 16, 8, 4 pixels


class Generator(nn.Module):
    def __init__(self, latent: int = 100, width: int = 64, out_channels: int = 1):
        super().__init__()
        self.latent = latent
        dec = [width * m for m in reversed(MULTS)]  # 16w @4, 8w @8, 4w @16, 2w @32, w @64
        blocks = [nn.Sequential(nn.ConvTranspose2d(latent, dec[0], 4, 1, 0, bias=False),
                                nn.BatchNorm2d(dec[0]), nn.ReLU(True))]
        for a, b in zip(dec[:-1], dec[1:]):
            blocks.append(nn.Sequential(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
                                        nn.ReLU(True)))
        blocks.append(nn.Sequential(nn.ConvTranspose2d(dec[-1], out_channels, 4, 2, 1), nn.Sigmoid()))
        self.blocks = nn.ModuleList(blocks)
        self.widths = dec

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z.reshape(z.shape[0], self.latent, 1, 1)
        for block in self.blocks:
            h = block(h)
        return h


def _conv_stack(in_channels: int, width: int) -> nn.ModuleList:
    """The five stride-2 blocks shared by the discriminator and the encoder."""
    enc = [width * m for m in MULTS]
    blocks = [nn.Sequential(nn.Conv2d(in_channels, enc[0], 4, 2, 1), nn.LeakyReLU(0.2, True))]
    for a, b in zip(enc[:-1], enc[1:]):
        blocks.append(nn.Sequential(nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b),
                                    nn.LeakyReLU(0.2, True)))
    return blocks


class Discriminator(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        blocks = _conv_stack(in_channels, width)
        blocks.append(nn.Sequential(nn.Conv2d(width * MULTS[-1], 1, 4, 1, 0), nn.Sigmoid()))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x.reshape(x.shape[0])


class Encoder(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 64, latent: int = 100):
        super().__init__()
        blocks = _conv_stack(in_channels, width)
        blocks.append(nn.Conv2d(width * MULTS[-1], latent, 4, 1, 0))
        self.blocks = nn.ModuleList(blocks)
        self.widths = [width * m for m in MULTS]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of every block: 5 feature maps (64..4 pixels) and the code ``(B, latent, 1, 1)``."""
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1].flatten(1)


class Skip(nn.Module):
    """conv+ReLU on the encoder feature, concatenate with the decoder feature, conv+ReLU."""

    def __init__(self, enc_channels: int, dec_channels: int):
        super().__init__()
        self.first = nn.Sequential(nn.Conv2d(enc_channels, dec_channels, 3, padding=1), nn.ReLU(True))
        self.second = nn.Sequential(nn.Conv2d(2 * dec_channels, dec_channels, 3, padding=1), nn.ReLU(True))

    def forward(self, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
        return self.second(torch.cat([self.first(enc), dec], dim=1))


class UNet(nn.Module):
    """Encoder + generator with skip connections. ``forward`` returns the decoder's sigmoid map;
    :meth:`forward_with_code` also returns the encoder's code (for the converter's KL loss).

    ``skips`` keeps that many skip connections, coarsest first (4, 8, 16, 32, 64 pixels for a
    128 input; ``None`` = all five). 000 does not say at which levels U has skips. Without the
    64-pixel one the converter cannot copy a tumour through at nearly full resolution: on
    phantoms (``tiny``, 30 epochs) its change inside / outside the tumour was 3.2 with four
    skips and 2.2 with five."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, latent: int = 100,
                 skips: int | None = None):
        super().__init__()
        self.encoder = Encoder(in_channels, width, latent)
        self.decoder = Generator(latent, width, out_channels)
        enc = list(reversed(self.encoder.widths))  # 16w @4 ... w @64
        pairs = list(zip(enc, self.decoder.widths))  # (encoder, decoder) channels per level
        if skips is not None and not 0 <= skips <= len(pairs):
            raise ValueError(f"skips must lie in [0, {len(pairs)}], got {skips}")
        self.n_skips = len(pairs) if skips is None else int(skips)
        self.skips = nn.ModuleList(Skip(e, d) for e, d in pairs[:self.n_skips])

    def forward_with_code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.encoder.features(x)
        code = feats[-1]
        skips = list(reversed(feats[:-1]))  # 4, 8, 16, 32, 64 pixels
        h = code
        blocks = self.decoder.blocks
        for i, block in enumerate(blocks[:-1]):
            h = block(h)
            if i < self.n_skips:
                h = self.skips[i](skips[i], h)
        return blocks[-1](h), code.flatten(1)

    def forward(self, x: torch.Tensor, return_code: bool = False):
        """The output map, or ``(map, code)`` with ``return_code`` (works through DDP)."""
        out, code = self.forward_with_code(x)
        return (out, code) if return_code else out


# ---------------------------------------------------------------------------------------------
# Losses of the DCGAN (G, D0) and of the converter U (D1) - 000 section 2.2, Eqs. 1-10.
# ---------------------------------------------------------------------------------------------

#: Lower clamp on probabilities before a logarithm (and ``1 - eps`` upper clamp).
LOSS_EPS = 1e-7
#: Lower clamp on the standard deviation of a code vector in :func:`kl_loss`.
SIGMA_MIN = 1e-6


def _flat_images(t: torch.Tensor, name: str) -> torch.Tensor:
    """``(B, ...)`` -> ``(B, P)`` with ``P`` the pixels of one image; bool/int become float."""
    if t.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and pixels, got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    return t.reshape(t.shape[0], -1)


def _same_pixels(ref: torch.Tensor, *others: tuple[torch.Tensor, str]) -> None:
    for t, name in others:
        if t.shape != ref.shape:
            raise ValueError(f"{name} has {tuple(t.shape)} (batch, pixels); expected {tuple(ref.shape)}")


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
      are smoothed; the equations are followed (DIGEST ambiguity 4).
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
    xf, xh, s = _flat_images(x, "x"), _flat_images(x_hat, "x_hat"), _flat_images(neg_seeds, "neg_seeds")
    _same_pixels(xf, (xh, "x_hat"), (s, "neg_seeds"))
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
      deviation of z_hat" suggests this; DIGEST ambiguity 3). The loss therefore pushes each
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
