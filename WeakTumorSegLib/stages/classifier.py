"""Stage 1, the classifier C (Yoo et al., sections 2.1 and 3.2): its training-time augmentation
and the architecture a configuration asks for. The networks are in
:mod:`WeakTumorSegLib.networks.classifiers`; training is :mod:`WeakTumorSegLib.training.classifier`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .augmentation import SiteAugmentation

AUGMENTATIONS = ("none", "flip", "site")


def augment_batch(x: torch.Tensor, mode: str = "none", generator: torch.Generator | None = None) -> torch.Tensor:
    """Training-time augmentation of a ``(B, C, H, W)`` batch (not in the paper, which trains on the
    images as they are): ``"flip"`` mirrors each image left-right with probability 0.5 (brains
    are roughly symmetric, tumours occur on either side); ``"site"`` adds rotation, zoom, gamma,
    contrast and bias field (:class:`~.augmentation.SiteAugmentation`); ``"none"`` returns ``x``."""
    if mode == "none":
        return x
    if mode == "site":
        return SiteAugmentation()(x, generator)
    if mode != "flip":
        raise ValueError(f"unknown augmentation {mode!r}; choose one of {', '.join(AUGMENTATIONS)}")
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def classifier_architecture(section: Mapping) -> tuple[str, dict]:
    """``(architecture, kwargs)`` of a configuration's ``classifier`` section: the section's own
    architecture, or a :class:`ClassifierEnsemble` of it when ``members`` is above 1."""
    members = int(section.get("members", 1))  # resolve_config has checked it
    if members == 1:
        return section["architecture"], dict(section["kwargs"])
    return "classifier_ensemble", {"architecture": section["architecture"], "kwargs": dict(section["kwargs"]),
                                   "members": members}


def classifier_loss(p: torch.Tensor, y: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of C (section 3.2: class weights so that both classes
    weigh equally): tumour slices weigh ``pos_weight`` (tumour-free / tumour slices), the others 1."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(p, y, weight=torch.where(y > 0, pos_weight, torch.ones_like(y)))
