"""Classifier networks C (Yoo et al., sections 2.1 and 3.2).

C maps a ``(B, C, 128, 128)`` patch to the probability that it contains tumour. As in the
paper, the input is upsampled bilinearly (x2 by default) inside the model, so RISE masks and
the network see the upsampled image (:meth:`Classifier.forward_upsampled`).

* :class:`VGG16BNClassifier` - VGG16 with batch normalisation, first layer taking C channels,
  last linear layer giving one logit (the paper's model). ``width`` scales the channel
  counts (64 = the original), ``hidden`` the two fully connected layers (4096 originally).
* :class:`CompactClassifier` - the same interface with a few conv blocks and global average
  or max pooling, small enough for CPU training and a bundle of a few MB.
* :class:`ClassifierEnsemble` - several classifiers of one architecture whose probabilities are
  averaged (``classifier.members``; not in the paper, which trains one).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class Classifier(nn.Module):
    """Common interface: ``forward(x)`` returns probabilities ``(B,)`` for ``(B, C, H, W)``."""

    upsample: float

    def upsample_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample == 1:
            return x
        return F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)

    def feature_maps(self, xu: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The last convolutional feature maps ``(B, K, h, w)`` of inputs at the model's resolution
        (what Grad-CAM, CAM and ACAM explain; :mod:`WeakTumorSegLib.stages.seeds.cam`)."""
        raise NotImplementedError

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def logits_upsampled(self, xu: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.feature_maps(xu))

    def forward_upsampled(self, xu: torch.Tensor) -> torch.Tensor:
        """Probabilities for inputs already at the model's (upsampled) resolution."""
        return torch.sigmoid(self.logits_upsampled(xu))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_upsampled(self.upsample_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def inference_copy(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model for repeated inference: every ``Conv2d`` directly followed
    by a ``BatchNorm2d`` in an ``nn.Sequential`` becomes one convolution with the normalisation
    folded into its weights and bias (the same function up to float rounding, about 1e-7), and
    the copy is laid out channels-last, where the thin convolutions of the classifiers run
    about twice as fast on CPUs. The model itself is left unchanged; a model in training mode
    is copied without folding (its BatchNorm uses batch statistics)."""
    fast = copy.deepcopy(model)
    if not model.training:
        for seq in [m for m in fast.modules() if isinstance(m, nn.Sequential)]:
            layers, merged = list(seq), []
            while layers:
                layer = layers.pop(0)
                if isinstance(layer, nn.Conv2d) and layers and isinstance(layers[0], nn.BatchNorm2d) \
                        and layers[0].track_running_stats:
                    layer = fuse_conv_bn_eval(layer, layers.pop(0))
                merged.append(layer)
            if len(merged) != len(seq):
                for name in list(seq._modules):
                    del seq._modules[name]
                for i, layer in enumerate(merged):
                    seq.add_module(str(i), layer)
    return fast.to(memory_format=torch.channels_last)


VGG16_LAYOUT = (1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M")


class VGG16BNClassifier(Classifier):
    def __init__(self, in_channels: int = 4, width: int = 64, hidden: int = 4096, upsample: float = 2.0,
                 dropout: float = 0.5):
        super().__init__()
        self.upsample = float(upsample)
        layers: list[nn.Module] = []
        c = in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = width * int(item)
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def feature_maps(self, xu: torch.Tensor) -> torch.Tensor:
        return self.features(xu)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(f))[:, 0]


class CompactClassifier(Classifier):
    def __init__(self, in_channels: int = 4, width: int = 16, blocks: int = 5, upsample: float = 2.0,
                 pool: str = "avg"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', not {pool!r}")
        self.upsample = float(upsample)
        self.pool = pool
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(blocks):
            out = width * min(2 ** i, 8)
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def feature_maps(self, xu: torch.Tensor) -> torch.Tensor:
        return self.features(xu)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        pooled = torch.amax(f, dim=(2, 3)) if self.pool == "max" else f.mean(dim=(2, 3))
        return self.head(pooled)[:, 0]


class ClassifierEnsemble(Classifier):
    """``members`` classifiers of one architecture, each trained as a classifier of its own would
    be (own initialisation, data order and schedule); C's probability is their mean (not in the paper).
    The averaged output is what the gate, the fusion weight, RISE and the refinement see."""

    def __init__(self, architecture: str = "compact_classifier", kwargs: Mapping | None = None, members: int = 3,
                 in_channels: int | None = None):
        super().__init__()
        if architecture not in MEMBER_ARCHITECTURES:
            raise ValueError(f"an ensemble member must be one of {', '.join(MEMBER_ARCHITECTURES)}, "
                             f"not {architecture!r}")
        if int(members) < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        kw = dict(kwargs or {})
        if in_channels is not None:
            kw["in_channels"] = in_channels
        self.members = nn.ModuleList(MEMBER_ARCHITECTURES[architecture](**kw) for _ in range(int(members)))
        self.upsample = self.members[0].upsample

    def forward_upsampled(self, xu: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.forward_upsampled(xu) for m in self.members]).mean(dim=0)

    def logits_upsampled(self, xu: torch.Tensor) -> torch.Tensor:
        return torch.logit(self.forward_upsampled(xu), eps=1e-7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_upsampled(self.upsample_input(x))


#: Architectures a :class:`ClassifierEnsemble` can be made of.
MEMBER_ARCHITECTURES: dict[str, type[Classifier]] = {"vgg16_bn": VGG16BNClassifier,
                                                     "compact_classifier": CompactClassifier}
