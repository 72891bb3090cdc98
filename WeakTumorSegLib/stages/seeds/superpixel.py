"""Superpixel perturbation seeds (Rajapaksa and Khalvati, "Localized Perturbations For Weakly-Supervised
Segmentation of Glioma Brain Tumours", section 2), in 2D.

A black-box relevance map: the patch is cut into SLIC superpixels (scikit-image) on one channel,
each superpixel in turn is perturbed in every channel and the classifier scores the perturbed
patch; the relevance of superpixel j is how much that lowers the classifier's output,
``max(0, s(x) - s(x_j))``, painted over its pixels. One forward pass per superpixel, where RISE needs
hundreds to thousands per image.

Perturbations as in the paper: ``blank`` sets the superpixel to 0 (the background of normalised
patches), ``min`` / ``max`` to the channel's minimum / maximum over the patch. The paper's learned
perturbation is not implemented. Choices where the paper is silent or 3D (docs/method.md): SLIC runs
in 2D on the patch's tissue only (FLAIR > 0 by default; the background is never perturbed), with
the number of segments and the compactness chosen for 128 x 128 patches on an inner split of the
training patients; the paper's relevance is ``|s(x) - s(x_j)|``, here a rise of the score is no
evidence of tumour and counts as 0; ``score`` is the classifier's probability (the paper's) or its
logit, which does not saturate when several superpixels each suffice for a confident "tumour".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from skimage.segmentation import slic

from ...networks.classifiers import inference_copy
from .rise import CPU_CHUNK, cpu_workers

PERTURBATIONS = ("blank", "min", "max")
SCORES = ("probability", "logit")
SAMPLINGS = ("single", "random")


@dataclass(frozen=True)
class SuperpixelConfig:
    n_segments: int = 50
    #: SLIC's compactness for intensities in [0, 1] (scikit-image's default of 10 is for Lab colour)
    compactness: float = 0.1
    #: the channel SLIC runs on (index into the patch's channels; None = the FLAIR channel)
    channel: int | None = None
    perturbation: str = "blank"
    score: str = "probability"
    #: 'single': each superpixel perturbed alone (the paper); 'random': random halves of the
    #: superpixels perturbed together, ``samples`` times, weighed as RISE weighs its masks
    sampling: str = "single"
    samples: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"superpixel perturbation must be one of {', '.join(PERTURBATIONS)}, "
                             f"got {self.perturbation!r}")
        if self.score not in SCORES:
            raise ValueError(f"superpixel score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"superpixel sampling must be one of {', '.join(SAMPLINGS)}, got {self.sampling!r}")
        if int(self.n_segments) < 2:
            raise ValueError(f"superpixel n_segments must be at least 2, got {self.n_segments}")

    def to_dict(self) -> dict:
        return asdict(self)


def superpixels(images: np.ndarray, n_segments: int, compactness: float) -> np.ndarray:
    """SLIC labels ``(N, H, W)`` of single-channel images ``(N, H, W)`` in [0, 1]: 1, 2, ... on the
    tissue (pixels > 0), 0 on the background."""
    labels = np.zeros(images.shape, dtype=np.int32)
    for i, img in enumerate(images):
        tissue = img > 0
        if tissue.sum() >= 2:
            labels[i] = slic(img.astype(np.float64), n_segments=int(n_segments), compactness=float(compactness),
                             channel_axis=None, mask=tissue, start_label=1)
    return labels


def _values(images: torch.Tensor, perturbation: str) -> torch.Tensor:
    """Per image and channel ``(N, C)``, the value a perturbed superpixel takes."""
    if perturbation == "blank":
        return torch.zeros(images.shape[:2], device=images.device, dtype=images.dtype)
    flat = images.flatten(2)
    return flat.amin(2) if perturbation == "min" else flat.amax(2)


def _to_score(p: torch.Tensor, score: str) -> torch.Tensor:
    p = p.double()
    return torch.logit(p, eps=1e-12) if score == "logit" else p


def superpixel_relevance(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         labels: torch.Tensor, perturbation: str = "blank", score: str = "probability",
                         progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Relevance ``(N, H, W)`` of ``predict`` (probabilities ``(B,)``) for ``images`` ``(N, C, H, W)``
    cut into superpixels ``labels`` ``(N, H, W)`` (0 = never perturbed). ``progress(k)`` after each
    image's superpixels with the number of images done."""
    if torch.is_grad_enabled():
        with torch.inference_mode():
            return superpixel_relevance(predict, images, labels, perturbation, score, progress)
    n, c, h, w = images.shape
    labels = labels.to(images.device).long()
    values = _values(images, perturbation)

    def chunk(part: tuple[int, torch.Tensor]) -> torch.Tensor:
        i, segs = part
        m = (labels[i][None] == segs[:, None, None])[:, None].to(images.dtype)  # (b, 1, H, W)
        with torch.inference_mode():
            return predict(images[i:i + 1] * (1 - m) + values[i][None, :, None, None] * m)

    base = torch.cat([predict(images[i:i + CPU_CHUNK]) for i in range(0, n, CPU_CHUNK)]) if n else torch.zeros(0)
    relevance = torch.zeros(n, h, w, dtype=torch.float32, device=images.device)
    segments = [torch.arange(1, int(labels[i].max()) + 1, device=images.device) for i in range(n)]
    with cpu_workers(images.device) as run:
        for i in range(n):
            parts = [(i, segments[i][s:s + CPU_CHUNK]) for s in range(0, len(segments[i]), CPU_CHUNK)]
            if parts:
                scores = torch.cat(list(run(chunk, parts)))
                drop = (_to_score(base[i], score) - _to_score(scores, score)).clamp_min(0).float()
                table = torch.cat([torch.zeros(1, device=drop.device), drop])
                relevance[i] = table[labels[i]]
            if progress:
                progress(i + 1)
    return relevance


def superpixel_rise(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                    samples: int = 100, seed: int = 0, perturbation: str = "blank", score: str = "probability",
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Relevance ``(N, H, W)`` from ``samples`` random halves of the superpixels perturbed together:
    ``e = sum_k (s_k - mean s) M_k / (samples / 2)`` with ``M_k`` = 1 on the kept superpixels (and the
    background), as RISE's centred estimator weighs its masks (:func:`~.rise.rise_maps`). The same
    random keep/perturb table (per superpixel number) serves every image."""
    if torch.is_grad_enabled():
        with torch.inference_mode():
            return superpixel_rise(predict, images, labels, samples, seed, perturbation, score, progress)
    n, c, h, w = images.shape
    labels = labels.to(images.device).long()
    values = _values(images, perturbation)
    gen = torch.Generator().manual_seed(seed)
    top = int(labels.max()) if n else 0
    keep = (torch.rand(samples, top + 1, generator=gen) < 0.5).to(images.dtype).to(images.device)
    keep[:, 0] = 1  # the background is never perturbed
    relevance = torch.zeros(n, h, w, dtype=torch.float32, device=images.device)

    def chunk(part: tuple[int, int]) -> torch.Tensor:
        i, start = part
        m = keep[start:start + CPU_CHUNK][:, labels[i]][:, None]  # (b, 1, H, W)
        with torch.inference_mode():
            return predict(images[i:i + 1] * m + values[i][None, :, None, None] * (1 - m))

    with cpu_workers(images.device) as run:
        for i in range(n):
            scores = _to_score(torch.cat(list(run(chunk, [(i, k) for k in range(0, samples, CPU_CHUNK)]))), score)
            masks = keep[:, labels[i]].reshape(samples, -1).double()
            relevance[i] = (((scores - scores.mean()) @ masks) / (samples * 0.5)).reshape(h, w).float()
            if progress:
                progress(i + 1)
    return relevance


def pool_over_superpixels(maps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each map ``(N, H, W)`` replaced by its mean over each superpixel of ``labels`` ``(N, H, W)``
    (0 on the background, label 0): a map that follows the image's boundaries."""
    out = torch.zeros_like(maps)
    labels = labels.to(maps.device).long()
    for i in range(len(maps)):
        lab = labels[i].flatten()
        k = int(lab.max()) + 1
        sums = torch.zeros(k, dtype=maps.dtype, device=maps.device).index_add_(0, lab, maps[i].flatten())
        counts = torch.bincount(lab, minlength=k).to(maps.dtype)
        mean = sums / counts.clamp_min(1)
        mean[0] = 0
        out[i] = mean[labels[i]]
    return out


def classifier_superpixels(classifier, patches: torch.Tensor, config: SuperpixelConfig, flair: int = 0,
                           progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Superpixel relevance of a classifier for ``(N, C, P, P)`` patches (SLIC on channel
    ``config.channel``, default ``flair``)."""
    channel = flair if config.channel is None else int(config.channel)
    labels = superpixels(patches[:, channel].cpu().numpy(), config.n_segments, config.compactness)
    fast = inference_copy(classifier)
    x = patches.contiguous(memory_format=torch.channels_last)
    if config.sampling == "random":
        return superpixel_rise(fast, x, torch.from_numpy(labels), config.samples, config.seed, config.perturbation,
                               config.score, progress)
    return superpixel_relevance(fast, x, torch.from_numpy(labels), config.perturbation, config.score, progress)
