"""Several segmentation networks of one architecture whose probabilities are averaged (not in the
papers): the final segmenter's ``final.members``, each member trained on its own (own
initialisation and data order), as the classifier's members are."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .dcgan import UNet
from .mixed import MixedUNet
from .unet2d import MixedUNet2D, UNet2D

#: Architectures a :class:`SegmenterEnsemble` can be made of.
SEGMENTER_MEMBERS: dict[str, type[nn.Module]] = {"unet": UNet, "unet_mixed": MixedUNet, "unet2d": UNet2D,
                                                  "unet2d_mixed": MixedUNet2D}


class SegmenterEnsemble(nn.Module):
    """``members`` networks of ``architecture``; the output is the mean of their probability maps
    (and, with ``with_logit``, of their classification branches' logits)."""

    def __init__(self, architecture: str = "unet", kwargs: Mapping | None = None, members: int = 3):
        super().__init__()
        if architecture not in SEGMENTER_MEMBERS:
            raise ValueError(f"an ensemble member must be one of {', '.join(SEGMENTER_MEMBERS)}, not {architecture!r}")
        if int(members) < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.members = nn.ModuleList(SEGMENTER_MEMBERS[architecture](**dict(kwargs or {})) for _ in range(int(members)))

    def forward(self, x: torch.Tensor, with_logit: bool = False):
        if not with_logit:
            return torch.stack([m(x) for m in self.members]).mean(dim=0)
        probs, logits = zip(*(m(x, with_logit=True) for m in self.members))
        return torch.stack(probs).mean(dim=0), torch.stack(logits).mean(dim=0)
