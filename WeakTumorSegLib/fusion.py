"""Classifier gating and fusion of the under- and over-segmenting models (000 section 2.4).

For an image with classifier output p: if p <= 0.5 the segmentation is empty; otherwise
w = 2(p - 0.5) and m1 = w * m_OS + (1 - w) * m_US (Eqs. 17-18), binarised at 0.5. A confident
classifier trusts the over-segmenting model S_OS, an unsure one the under-segmenting S_US.
"""

from __future__ import annotations

import torch


def fusion_weight(p: torch.Tensor, gate: float = 0.5) -> torch.Tensor:
    """w = 2(p - 0.5) (Eq. 17), clamped to [0, 1]; ``gate`` is the classifier's decision point."""
    return ((p - gate) / (1.0 - gate)).clamp(0.0, 1.0)


def fuse(p: torch.Tensor, m_us: torch.Tensor, m_os: torch.Tensor, gate: float = 0.5) -> torch.Tensor:
    """Fused probability maps ``(B, H, W)`` for classifier outputs ``p`` ``(B,)``.

    Images with ``p <= gate`` get an all-zero map (they are gated out).
    """
    w = fusion_weight(p, gate).reshape(-1, *([1] * (m_us.dim() - 1)))
    m1 = w * m_os + (1.0 - w) * m_us
    return torch.where((p > gate).reshape(w.shape), m1, torch.zeros_like(m1))
