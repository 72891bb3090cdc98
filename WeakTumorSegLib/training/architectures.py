"""The networks a training configuration asks for: the classifier C and the U-Nets of the converter
and the segmenters, with the widths of their sections (``gan`` for the converter, which starts as G)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from torch import nn

from ..bundle.save import inference_architectures
from ..networks.registry import build
from ..stages.classifier import classifier_architecture

if TYPE_CHECKING:
    from .run import TrainingRun


def classifier_model(run: TrainingRun) -> nn.Module:
    """C as the configuration asks for it (an ensemble when ``classifier.members`` > 1), on the run's device."""
    arch, kwargs = classifier_architecture(run.config["classifier"])
    return build(arch, {**kwargs, "in_channels": len(run.channels)}).to(run.device)


def unet_kwargs(config: Mapping, section: str, in_channels: int) -> dict:
    """U-Net kwargs: widths from ``section`` (``gan`` for the converter, which starts as G);
    the converter's ``skips`` from ``converter.skips`` (absent or null = all)."""
    c = config[section]
    kwargs = {"in_channels": in_channels, "out_channels": 1, "width": c["width"], "latent": c["latent"]}
    skips = config["converter"].get("skips") if section == "gan" else None
    if skips is not None:
        kwargs["skips"] = int(skips)
    return kwargs


def build_unet(run: TrainingRun, section: str, in_channels: int) -> nn.Module:
    """A U-Net (:func:`unet_kwargs`) on the run's device."""
    return build("unet", unet_kwargs(run.config, section, in_channels)).to(run.device)


def bundle_architectures(config: Mapping, n_channels: int) -> dict[str, tuple[str, dict]]:
    """``(architecture, kwargs)`` of every network a trained bundle holds: the inference networks,
    and S0 and the seed-loss-only baseline (for evaluation, Tables 4 and 5)."""
    archs = inference_architectures(n_channels, classifier_architecture(config["classifier"]),
                                    unet_width=config["segmenter"]["width"], latent=config["segmenter"]["latent"])
    archs["converter"] = ("unet", unet_kwargs(config, "gan", 1))
    for extra in ("segmenter0", "baseline_seed_only"):
        archs[extra] = archs["segmenter_us"]
    return archs
