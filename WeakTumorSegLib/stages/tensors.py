"""Helpers shared by the losses of the stages: per-image flattening, shape checks, clamps."""

from __future__ import annotations

import torch

#: Lower clamp on probabilities before a logarithm (and ``1 - eps`` upper clamp).
LOSS_EPS = 1e-7
#: Lower clamp on the standard deviation of a code vector in :func:`kl_loss`.
SIGMA_MIN = 1e-6


def flat_images(t: torch.Tensor, name: str) -> torch.Tensor:
    """``(B, ...)`` -> ``(B, P)`` with ``P`` the pixels of one image; bool/int become float."""
    if t.dim() < 2:
        raise ValueError(f"{name} must have a batch dimension and pixels, got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    return t.reshape(t.shape[0], -1)


def same_pixels(ref: torch.Tensor, *others: tuple[torch.Tensor, str]) -> None:
    for t, name in others:
        if t.shape != ref.shape:
            raise ValueError(f"{name} has {tuple(t.shape)} (batch, pixels); expected {tuple(ref.shape)}")
