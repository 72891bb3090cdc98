"""Seed refinement with the classifier (Yoo et al., section 2.4).

The initial segmenter S0 gives masks M0 on the true-positive images X_C. Each mask is
binarised at 0.5 (values above become 1, values at or below become 0) and split into connected
components. Every component is tested on its own: it is dilated with disks of radius 1..5, the
dilated region is blanked in the image (set to 0 in every channel) and the classifier C scores
the blanked image. A component is accepted when C's mean output over the five radii is below
0.5, i.e. blanking it removes what C sees as tumour, consistently across the radii.

Accepted components, undilated, form the refined positive seeds S+,r; the images with at least
one accepted component form X_C,r. Negative seeds are left to the caller (the paper keeps them
unchanged and only restricts them to X_C,r and X_NC).

Decisions where the paper is silent (docs/method.md):

* several accepted components in one image: the seed is their union;
* the seed is the undilated component (dilation only serves the test);
* blanking writes 0 in every channel (``x * (1 - dilated)`` with a binary mask, written as an
  assignment so that non-finite values are blanked too);
* components are 8-connected in 2D (diagonal neighbours join a component);
* ``min_size`` drops components smaller than that many pixels before testing; the default 1
  keeps all of them.

Every blanked variant (each component at each radius, across all images) goes through the
classifier in batches of ``RefineConfig.batch`` under ``torch.inference_mode``; variants are
built batch by batch, so at most one batch of blanked images exists at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import disk

#: 8-connectivity in 2D.
CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class RefineConfig:
    radii: tuple[int, ...] = (1, 2, 3, 4, 5)
    accept_below: float = 0.5
    binarize_at: float = 0.5
    min_size: int = 1
    batch: int = 64

    def __post_init__(self):
        if len(self.radii) == 0:
            raise ValueError("radii must not be empty")
        if any(int(r) != r or r < 0 for r in self.radii):
            raise ValueError(f"radii must be non-negative integers, not {self.radii!r}")
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, not {self.min_size}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, not {self.batch}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["radii"] = list(self.radii)
        return d


@dataclass
class RefineResult:
    seeds: np.ndarray         #: bool (N, H, W): refined positive seeds S+,r (union of accepted components)
    accepted: np.ndarray      #: bool (N,): image has >= 1 accepted component (membership of X_C,r)
    n_components: np.ndarray  #: int (N,): components tested (after ``min_size``)
    n_accepted: np.ndarray    #: int (N,)
    scores: list[np.ndarray] = field(default_factory=list)  #: per image, C's mean output per component


def disk_dilations(component: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """``component`` (H, W) dilated by a disk of each radius: ``(len(radii), H, W)`` bool.

    Radius 0 returns the component itself. Pixels outside the image count as background.
    """
    comp = np.asarray(component, dtype=bool)
    if comp.ndim != 2:
        raise ValueError(f"component must be 2D, got shape {comp.shape}")
    out = np.zeros((len(radii),) + comp.shape, dtype=bool)
    if not comp.any() or len(radii) == 0:
        return out
    # Dilate inside the component's bounding box grown by the largest radius: same result,
    # much less work for small components in large images.
    pad = int(max(radii))
    rows, cols = np.nonzero(comp)
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, comp.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, comp.shape[1])
    crop = comp[r0:r1, c0:c1]
    for k, r in enumerate(radii):
        r = int(r)
        out[k, r0:r1, c0:c1] = crop if r == 0 else ndimage.binary_dilation(crop, structure=disk(r).astype(bool))
    return out


def label_components(mask: np.ndarray, binarize_at: float = 0.5, min_size: int = 1) -> tuple[np.ndarray, int]:
    """8-connected components of ``mask > binarize_at``, those under ``min_size`` pixels dropped.

    Returns ``(labels, count)``: ``labels`` (H, W) int32 with 0 for background and 1..count for
    the kept components, numbered in scan order.
    """
    binary = np.asarray(mask) > binarize_at
    labels, count = ndimage.label(binary, structure=CONNECTIVITY)
    labels = labels.astype(np.int32, copy=False)
    if count and min_size > 1:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_size
        keep[0] = False
        relabel = np.zeros(count + 1, dtype=np.int32)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        labels, count = relabel[labels], int(keep.sum())
    return labels, int(count)


def _variants(images: np.ndarray, labels: list[np.ndarray], counts: np.ndarray,
              radii: Sequence[int]) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """``(image, component, radius index, blanked image)`` for every variant, lazily."""
    for i, (lab, count) in enumerate(zip(labels, counts)):
        for c in range(int(count)):
            dilated = disk_dilations(lab == c + 1, radii)
            for k in range(len(radii)):
                x = images[i].copy()
                x[:, dilated[k]] = 0
                yield i, c, k, x


def refine_seeds(classify: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, masks: np.ndarray,
                 config: RefineConfig = RefineConfig(), device: torch.device | str = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> RefineResult:
    """Refined positive seeds S+,r and membership of X_C,r (Yoo et al., section 2.4).

    ``classify`` maps ``(B, C, H, W)`` float32 on ``device`` to probabilities ``(B,)``;
    ``images`` is ``(N, C, H, W)`` (the true-positive images X_C), ``masks`` ``(N, H, W)`` are S0's
    probabilities. ``progress(done, total)`` is called after each batch with the number of
    blanked variants scored so far.
    """
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if masks.shape != (images.shape[0],) + images.shape[2:]:
        raise ValueError(f"masks must be (N, H, W) = {(images.shape[0],) + images.shape[2:]}, "
                         f"got {masks.shape}")
    n, _, h, w = images.shape
    radii = tuple(int(r) for r in config.radii)
    n_r = len(radii)

    labels, counts = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        lab, count = label_components(masks[i], config.binarize_at, config.min_size)
        labels.append(lab)
        counts[i] = count
    raw = [np.zeros((int(c), n_r), dtype=np.float64) for c in counts]
    total = int(counts.sum()) * n_r

    done = 0
    buffer: list[tuple[int, int, int, np.ndarray]] = []

    def flush() -> None:
        nonlocal done
        batch = torch.from_numpy(np.stack([v[3] for v in buffer])).to(device)
        p = classify(batch)
        p = torch.as_tensor(p).detach().reshape(-1).to("cpu", torch.float64).numpy()
        if p.shape[0] != len(buffer):
            raise ValueError(f"classify returned {p.shape[0]} outputs for a batch of {len(buffer)}")
        for (i, c, k, _), value in zip(buffer, p):
            raw[i][c, k] = value
        done += len(buffer)
        buffer.clear()
        if progress:
            progress(done, total)

    with torch.inference_mode():
        for variant in _variants(images, labels, counts, radii):
            buffer.append(variant)
            if len(buffer) == config.batch:
                flush()
        if buffer:
            flush()

    seeds = np.zeros((n, h, w), dtype=bool)
    scores, n_accepted = [], np.zeros(n, dtype=np.int64)
    for i in range(n):
        mean = raw[i].mean(axis=1) if counts[i] else np.zeros(0, dtype=np.float64)
        ok = mean < config.accept_below
        if ok.any():
            seeds[i] = np.isin(labels[i], np.flatnonzero(ok) + 1)
        scores.append(mean)
        n_accepted[i] = int(ok.sum())
    return RefineResult(seeds=seeds, accepted=n_accepted > 0, n_components=counts, n_accepted=n_accepted,
                        scores=scores)

