"""Training-time augmentation for other sites' images (not in Yoo et al., who train on the images
as they are): what the standardisation (:mod:`WeakTumorSegLib.preprocessing.standardise`) cannot
remove, drawn anew for every image of every batch.

* geometry: left-right mirroring (p = 0.5), a rotation of up to ``max_degrees`` and a zoom within
  ``zoom`` (head tilt and head size), bilinear, the outside filled with background (0);
* intensity, per channel and inside the brain only (the background stays 0): a gamma within
  ``exp(+-log_gamma)``, a contrast factor within ``1 +- contrast`` and a smooth multiplicative bias
  field of amplitude up to ``bias`` (a bilinearly upsampled 4 x 4 grid), clipped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SiteAugmentation:
    max_degrees: float = 15.0
    zoom: float = 0.1
    log_gamma: float = 0.3
    contrast: float = 0.1
    bias: float = 0.15

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 maps: torch.Tensor | None = None, per_slice: int | None = None):
        """Augment a ``(B, C, H, W)`` batch of images in [0, 1] with a zero background. With ``maps``
        (``(B, K, H, W)`` label maps), returns ``(images, maps)``, the maps moved by the same
        geometry (nearest neighbour, zero outside) and their intensities untouched. With
        ``per_slice``, the channels are several slices of ``per_slice`` channels each (2.5D), and
        every slice's channel k gets the same intensity change."""
        b, c, h, w = x.shape
        draws = per_slice or c

        def uniform(*shape: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(*shape, generator=generator)

        angle = uniform(b) * math.radians(self.max_degrees)
        scale = 1.0 + uniform(b) * self.zoom
        flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros(b)], 1),
                             torch.stack([sin * flip, cos, torch.zeros(b)], 1)], 1).to(x)
        grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        inside = F.grid_sample((x > 0).any(1, keepdim=True).float(), grid, mode="nearest", padding_mode="zeros",
                               align_corners=False)
        gamma = torch.exp(uniform(b, draws) * self.log_gamma).to(x)[:, :, None, None]
        contrast = (1.0 + uniform(b, draws) * self.contrast).to(x)[:, :, None, None]
        field = 1.0 + self.bias * F.interpolate(uniform(b, draws, 4, 4), size=(h, w), mode="bilinear",
                                                align_corners=False).to(x)
        if draws != c:
            gamma, contrast, field = (t.repeat(1, c // draws, 1, 1) for t in (gamma, contrast, field))
        out = (out.clamp(0.0, 1.0) ** gamma * contrast * field).clamp(0.0, 1.0) * inside
        if maps is None:
            return out
        return out, F.grid_sample(maps.to(x), grid, mode="nearest", padding_mode="zeros", align_corners=False)
