"""Classifier gating and fusion of the under- and over-segmenting models (Yoo et al., section 2.4).

For an image with classifier output p: if p <= 0.5 the segmentation is empty; otherwise
w = 2(p - 0.5) and m1 = w * m_OS + (1 - w) * m_US (Eqs. 17-18), binarised at 0.5. A confident
classifier trusts the over-segmenting model S_OS, an unsure one the under-segmenting S_US.

Not in the paper, off unless a bundle sets ``inference.slice_smoothing``: :func:`smooth_across_slices`
averages C's outputs with those of the neighbouring slices before the gate. The paper classifies every
slice on its own; a tumour, however, spans consecutive slices, so a slice between two confident
neighbours is more likely tumour than its own score says, and a lone confident slice less.

Not in the paper either, off unless a bundle sets ``inference.gate_low``: :func:`hysteresis_gate`
also lets through the less confident patches that continue a confidently gated one along the slice
axis, as hysteresis thresholding does with edges; they are segmented by S_US alone (w = 0).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

#: the largest neighbour weight: the slice itself must weigh at least as much as each neighbour
MAX_SLICE_SMOOTHING = 1.0 / 3.0


def smooth_across_slices(p: np.ndarray, weight: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Classifier outputs ``p`` ``(slices, k)`` (k tiles per slice, same tiling on every slice)
    averaged along the slice axis with weights ``(weight, 1 - 2 weight, weight)``.

    Only entries where ``valid`` (default: everywhere) take part: a missing neighbour (beyond the
    first or last slice, or a tile without tissue there) drops out and the remaining weights are
    renormalised. Invalid entries stay as they were. ``weight`` 0 returns ``p`` unchanged.
    """
    if not 0.0 <= weight <= MAX_SLICE_SMOOTHING:
        raise ValueError(f"slice smoothing weight must lie in [0, 1/3], got {weight}")
    p = np.asarray(p, dtype=np.float64)
    if weight == 0 or len(p) < 2:
        return p.astype(np.float32)
    ok = np.ones(p.shape, bool) if valid is None else np.asarray(valid, bool)
    w = ok * np.array(1.0 - 2.0 * weight)
    num, den = w * p, w.copy()
    for a, b in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):  # from below, from above
        num[a] += weight * ok[b] * p[b]
        den[a] += weight * ok[b]
    out = np.where(ok, num / np.where(den > 0, den, 1.0), p)
    return out.astype(np.float32)


def hysteresis_gate(p: np.ndarray, high: float, low: float) -> np.ndarray:
    """Which entries of the classifier outputs ``p`` ``(slices, k)`` (k tiles per slice) pass the
    gate: those above ``high``, and those above ``low`` joined to one of them through consecutive
    slices of the same tile that are all above ``low``. ``low`` 0 (or at least ``high``) gives
    ``p > high``."""
    p = np.asarray(p)
    gated = p > high
    if low <= 0 or low >= high:
        return gated
    along_slices = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool)  # a tile's runs, never its neighbours
    runs, _ = ndimage.label(p > low, structure=along_slices)
    passing = np.unique(runs[gated])
    return np.isin(runs, passing[passing > 0])


def fusion_weight(p: torch.Tensor, gate: float = 0.5) -> torch.Tensor:
    """w = 2(p - 0.5) (Eq. 17), clamped to [0, 1]; ``gate`` is the classifier's decision point."""
    return ((p - gate) / (1.0 - gate)).clamp(0.0, 1.0)


def fuse(p: torch.Tensor, m_us: torch.Tensor, m_os: torch.Tensor, gate: float = 0.5,
         passed: torch.Tensor | None = None) -> torch.Tensor:
    """Fused probability maps ``(B, H, W)`` for classifier outputs ``p`` ``(B,)``.

    Images that do not pass the gate get an all-zero map: by default those with ``p <= gate``;
    ``passed`` ``(B,)`` bool decides instead (:func:`hysteresis_gate`; below the gate w is 0).
    """
    w = fusion_weight(p, gate).reshape(-1, *([1] * (m_us.dim() - 1)))
    m1 = w * m_os + (1.0 - w) * m_us
    keep = (p > gate) if passed is None else passed
    return torch.where(keep.reshape(w.shape), m1, torch.zeros_like(m1))
