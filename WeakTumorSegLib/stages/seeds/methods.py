"""The seed method of a configuration (``seeds.method``) and its explanation maps.

Every method returns maps in [0, 1] per image, which the same thresholds and FLAIR gates
(:mod:`.gates`, the ``rise`` section's ``positive``, ``negative`` and ``*_flair_quantile``) turn
into S+ / S-: ``rise`` (:mod:`.rise`, Yoo et al.), ``superpixel`` (:mod:`.superpixel`, Rajapaksa and
Khalvati), ``gradcam`` and ``acam`` (:mod:`.cam`, Wu et al.; ACAM needs the attention trained with
the classifier's bundle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ...io.names import SEED_METHODS
from .cam import class_maps
from .gates import normalize_maps
from .rise import RiseConfig, classifier_rise
from .superpixel import SuperpixelConfig, classifier_superpixels, pool_over_superpixels, superpixels


@dataclass(frozen=True)
class SeedSettings:
    """One seed method with its settings, resolved once from a configuration's ``seeds`` and ``rise``
    sections (a bundle without ``seeds`` used RISE)."""

    method: str = "rise"
    rise: RiseConfig = field(default_factory=RiseConfig)
    superpixel: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    #: ACAM's attention: Adam steps and learning rate (stages.seeds.cam.fit_attention)
    attention_steps: int = 300
    attention_lr: float = 0.01
    #: if set, every map is averaged over this many SLIC superpixels of the FLAIR (``superpixel``'s
    #: compactness) before the thresholds: seeds that follow the image's boundaries (not in the papers)
    pool_segments: int | None = None

    def __post_init__(self):
        if self.method not in SEED_METHODS:
            raise ValueError(f"seeds.method must be one of {', '.join(SEED_METHODS)}, got {self.method!r}")

    @classmethod
    def from_config(cls, config: Mapping, method: str | None = None, n_masks: int | None = None) -> "SeedSettings":
        """From ``config["seeds"]`` and ``config["rise"]`` (``chunk`` ignored); ``method`` and
        ``n_masks`` (RISE's number of masks), when given, replace the configured ones."""
        rise = {k: v for k, v in dict(config.get("rise") or {}).items() if k != "chunk"}
        if n_masks is not None:
            rise["n_masks"] = int(n_masks)
        seeds = dict(config.get("seeds") or {})
        sp = {k: seeds[k] for k in ("n_segments", "compactness", "channel", "perturbation", "score", "sampling",
                                                "samples", "seed") if k in seeds}
        return cls(method=method or seeds.get("method", "rise"), rise=RiseConfig(**rise),
                   superpixel=SuperpixelConfig(**sp), attention_steps=int(seeds.get("attention_steps", 300)),
                   attention_lr=float(seeds.get("attention_lr", 0.01)),
                   pool_segments=None if seeds.get("pool_segments") is None else int(seeds["pool_segments"]))

    @property
    def positive(self) -> float:
        return self.rise.positive

    @property
    def negative(self) -> float:
        return self.rise.negative

    def work(self, n_images: int) -> int:
        """Progress units of one call of :func:`explanation_maps`: RISE's masks, else images."""
        return self.rise.n_masks if self.method == "rise" else n_images

    def to_dict(self) -> dict:
        return {"method": self.method, **self.superpixel.to_dict(), "attention_steps": self.attention_steps,
                "attention_lr": self.attention_lr, "pool_segments": self.pool_segments}


def explanation_maps(settings: SeedSettings, classifier, patches: torch.Tensor, flair: int = 0,
                     attention: torch.nn.Module | None = None,
                     progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """The seed method's maps ``(N, P, P)`` in [0, 1] (min-max per image) for ``(N, C, P, P)`` patches;
    ``progress(k)`` with ``k`` of :meth:`SeedSettings.work` units done."""
    if settings.method == "rise":
        maps = normalize_maps(classifier_rise(classifier, patches, settings.rise, progress))
    elif settings.method == "superpixel":
        maps = normalize_maps(classifier_superpixels(classifier, patches, settings.superpixel, flair, progress))
    else:
        maps = class_maps(classifier, patches, settings.method, attention, progress)
    if settings.pool_segments:
        labels = superpixels(patches[:, flair].cpu().numpy(), settings.pool_segments, settings.superpixel.compactness)
        maps = normalize_maps(pool_over_superpixels(maps, torch.from_numpy(labels)))
    return maps
