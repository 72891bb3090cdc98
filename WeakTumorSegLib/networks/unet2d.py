"""A standard 2D U-Net (Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image
Segmentation"), for the final segmenter only (not in Yoo et al.).

The segmenters of Yoo et al. are the DCGAN encoder-decoder of :mod:`.dcgan`: one 4 x 4 stride-2
convolution per level and no feature map at the input's resolution, so a mask is decoded from
64-pixel features. The final segmenter has no such constraint (it shares no weights with the
GAN), and the networks the field trains on full masks (Mlynarski et al.'s among them) are this
U-Net: at each of ``levels + 1`` resolutions two 3 x 3 convolutions with BatchNorm and ReLU,
max pooling down, 2 x 2 transposed convolutions up, the encoder's features concatenated at
every level, a 1 x 1 convolution and a sigmoid at the input's resolution. ``width`` is the
channel count at full resolution, doubled at each level down. The input's side must be a multiple
of ``2 ** levels``.
"""

from __future__ import annotations

import torch
from torch import nn

from .mixed import ClassificationBranch


def _double_conv(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True),
                         nn.Conv2d(b, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True))


class UNet2D(nn.Module):
    """``forward(x)`` returns the ``(B, out_channels, H, W)`` sigmoid map."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, levels: int = 4):
        super().__init__()
        if int(levels) < 1:
            raise ValueError(f"a U-Net needs at least one level, got {levels}")
        widths = [width * 2 ** i for i in range(int(levels) + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])]
                                  + [_double_conv(a, b) for a, b in zip(widths[:-1], widths[1:])])
        self.up = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, 2) for a, b in zip(widths[:-1], widths[1:]))
        self.merge = nn.ModuleList(_double_conv(2 * a, a) for a in widths[:-1])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder feature map, ``(B, width, H, W)``."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        h = skips.pop()
        for i in reversed(range(len(self.up))):
            h = self.merge[i](torch.cat([skips.pop(), self.up[i](h)], 1))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x)))


class MixedUNet2D(UNet2D, ClassificationBranch):
    """:class:`UNet2D` with Mlynarski et al.'s classification branch on its last decoder feature map
    (pooled 16 x 16 on a 128-pixel patch, as the DCGAN U-Net's 64-pixel map is pooled 8 x 8), for
    ``final.trainer`` ``mixed``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 16, levels: int = 4,
                 hidden: int = 64, patch: int = 128):
        super().__init__(in_channels, out_channels, width, levels)
        self.init_branch(width, patch // 8, hidden)

    def forward(self, x: torch.Tensor, with_logit: bool = False):
        h = self.features(x)
        out = torch.sigmoid(self.head(h))
        return (out, self.branch_logit(h)) if with_logit else out
