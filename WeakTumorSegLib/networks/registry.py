"""Architecture registry: a bundle names each network by string + keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .attention import AxisAttention
from .classifiers import ClassifierEnsemble, CompactClassifier, VGG16BNClassifier
from .dcgan import Discriminator, Encoder, Generator, UNet
from .ensemble import SegmenterEnsemble
from .mixed import MixedUNet
from .unet2d import MixedUNet2D, UNet2D

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "vgg16_bn": VGG16BNClassifier,
    "compact_classifier": CompactClassifier,
    "classifier_ensemble": ClassifierEnsemble,
    "dcgan_generator": Generator,
    "dcgan_discriminator": Discriminator,
    "encoder": Encoder,
    "unet": UNet,
    "unet_mixed": MixedUNet,
    "unet2d": UNet2D,
    "unet2d_mixed": MixedUNet2D,
    "segmenter_ensemble": SegmenterEnsemble,
    "axis_attention": AxisAttention,
}


def build(architecture: str, kwargs: Mapping | None = None) -> nn.Module:
    """Instantiate a registered architecture, e.g. ``build("unet", {"in_channels": 3})``."""
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[architecture](**dict(kwargs or {}))
