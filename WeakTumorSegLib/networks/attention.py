"""Attention along each in-plane axis of a classifier's feature maps, for ACAM seeds (Wu et al.,
"Weakly Supervised Brain Lesion Segmentation via Attentional Representation Learning", section 2.1).

For features ``F`` of shape ``(B, K, h, w)``, the attention along H averages each channel over
every row (``F^H``, ``(B, h, K)``), scores the rows with a linear map ``g_r = w_H^T F^H(r) + b_H``
and takes the softmax over the rows; the attention along W does the same over the columns with its
own weights. One pair of linear maps per member of a classifier ensemble. In 2D only the H and W
axes exist (the paper's D axis is the slice axis of its 3D volumes).
"""

from __future__ import annotations

import torch
from torch import nn


class AxisAttention(nn.Module):
    """Row and column attention ``(s_H (B, h), s_W (B, w))`` over feature maps of ``channels`` channels,
    one pair of linear scores per classifier member."""

    def __init__(self, channels: int, members: int = 1):
        super().__init__()
        if int(members) < 1 or int(channels) < 1:
            raise ValueError(f"attention needs at least one channel and member, got {channels} and {members}")
        self.rows = nn.ModuleList(nn.Linear(int(channels), 1) for _ in range(int(members)))
        self.cols = nn.ModuleList(nn.Linear(int(channels), 1) for _ in range(int(members)))

    def forward(self, f: torch.Tensor, member: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[member](f.mean(dim=3).transpose(1, 2))[..., 0]  # (B, h)
        cols = self.cols[member](f.mean(dim=2).transpose(1, 2))[..., 0]  # (B, w)
        return torch.softmax(rows, dim=1), torch.softmax(cols, dim=1)
