"""DCGAN generator G, discriminators D0/D1, encoder E and the U-Net (Yoo et al., sections 2.2 and 3.2).

The paper gives the block structure but not the widths or kernels; a standard 128-pixel DCGAN
is used (docs/method.md):

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
    128 input; ``None`` = all five). the paper does not say at which levels U has skips. Without the
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
