"""The final segmenter's U-Net with an image-level classification branch (Mlynarski et al., "Deep
Learning with Mixed Supervision for Brain Tumor Segmentation", section 2.2).

The segmentation part is the project's U-Net (:class:`~.dcgan.UNet`, 128-pixel patches; or the
standard U-Net, :class:`~.unet2d.MixedUNet2D`). The branch reads the last decoder feature map (the
paper's second-to-last layer; ``width`` channels at 64 pixels here, at 128 in the standard U-Net):
mean pooling to 8 x 8, a 3 x 3 convolution to 32 channels with ReLU, then
seven fully connected layers with ReLU (none after the last) whose first and fifth outputs are
concatenated before the sixth; the last gives one logit of "tumour in this image" (the paper's two
softmax scores, written as one sigmoid). The paper does not give the widths of the fully connected
layers; ``hidden`` is used for all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from .dcgan import UNet


class ClassificationBranch:
    """Mixin: the branch's layers (:meth:`init_branch`) and its logit from a decoder feature map
    (:meth:`branch_logit`); the layers' names are those of the bundles already written."""

    def init_branch(self, feat: int, pool: int, hidden: int) -> None:
        self.branch_conv = nn.Sequential(nn.AvgPool2d(pool, pool, ceil_mode=True), nn.Conv2d(feat, 32, 3, padding=1),
                                         nn.ReLU(True))
        flat = 32 * 8 * 8  # the 8 x 8 pooled map
        self.fc1 = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(True))
        self.fc2_5 = nn.Sequential(*[nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(True)) for _ in range(4)])
        self.fc6 = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(True))
        self.fc7 = nn.Linear(hidden, 1)

    def branch_logit(self, h: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits of "tumour in this image" from the feature map ``h``."""
        first = self.fc1(self.branch_conv(h).flatten(1))
        fifth = self.fc2_5(first)
        return self.fc7(self.fc6(torch.cat([first, fifth], 1)))[:, 0]


class MixedUNet(UNet, ClassificationBranch):
    """:class:`~.dcgan.UNet` plus a classification branch; ``forward`` returns the map only (as every
    segmenter of a bundle), ``forward(x, with_logit=True)`` also the branch's logit ``(B,)``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 64, latent: int = 100,
                 skips: int | None = None, hidden: int = 64):
        super().__init__(in_channels, out_channels, width, latent, skips)
        self.init_branch(self.decoder.widths[-1], 8, hidden)  # 64-pixel features pooled by 8

    def forward(self, x: torch.Tensor, with_logit: bool = False):
        feats = self.encoder.features(x)
        skips = list(reversed(feats[:-1]))
        h = feats[-1]
        blocks = self.decoder.blocks
        for i, block in enumerate(blocks[:-1]):
            h = block(h)
            if i < self.n_skips:
                h = self.skips[i](skips[i], h)
        out = blocks[-1](h)
        return (out, self.branch_logit(h)) if with_logit else out
