"""RISE explanation maps and positive/negative seeds (Yoo et al., section 2.1).

RISE (Petsiuk et al. 2018) explains a black-box classifier by masking its input with N random
smooth masks M_i and weighting each mask by the classifier's output on the masked image:

    e = sum_i p(x * M_i) M_i / (N * p1)

Masks are made as in RISE: a ``cells x cells`` binary grid (each cell kept with probability
p1) is upsampled bilinearly to ``(cells + 1) * ceil(size / cells)`` and cropped at a random
shift. Grids and shifts are drawn from a seeded generator up front; the full-size masks are
built batch by batch, so the N full-size masks are never all in memory, and the same seed gives
the same masks whatever the batch size.

With ``centered=True`` the mean score is subtracted first, ``e = sum_i (p_i - mean p) M_i / (N p1)``:
a control variate. The expected map differs from RISE's by a constant, which the per-image
min-max normalisation removes, but the noise of uneven mask coverage (sum_i M_i varies from
pixel to pixel) cancels. With 200 masks on phantoms it raised the share of positive-seed pixels
inside the tumour from 0.43 to 0.81. Trained bundles use it; RISE's own estimator stays the default
of :class:`RiseConfig`.

Decisions where the paper is silent (docs/method.md): maps are computed at the classifier's resolution (the
patch upsampled x2, as C sees it) and resampled to the patch size; :mod:`.gates` turns them into seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ...networks.classifiers import inference_copy
from .gates import check_gate_scope


@dataclass(frozen=True)
class RiseConfig:
    n_masks: int = 1000
    cells: int = 8
    p1: float = 0.5
    batch: int = 100
    seed: int = 0
    positive: float = 0.8
    negative: float = 0.2
    #: subtract the mean score times the mask coverage (a control variate; see :func:`rise_maps`)
    centered: bool = False
    #: if set, S+ also needs FLAIR above this quantile of the image's non-zero FLAIR pixels
    #: (:func:`gate_positive_seeds`; not in the paper, ``None`` = the paper's seeds)
    positive_flair_quantile: float | None = None
    #: if set, tissue at or below this FLAIR quantile joins the segmenters' S- (:func:`extend_negative_seeds`;
    #: not in the paper)
    negative_flair_quantile: float | None = None
    #: where the gates' quantiles are taken: over each image's tissue (``slice``), over all tissue
    #: of the image's volume (``volume``), or the lower of the two (``lower``; :func:`scoped_levels`;
    #: not in the paper)
    flair_gate_scope: str = "slice"
    #: if set, the dark tissue joins S- only where the normalised explanation map is below this
    #: (not in the paper; ``None``: wherever it is dark)
    negative_flair_map: float | None = None

    def __post_init__(self) -> None:
        check_gate_scope(self.flair_gate_scope)

    def to_dict(self) -> dict:
        return asdict(self)


class MaskSource:
    """The N RISE masks of one run, drawn up front as small grids and shifts from a seeded
    generator and expanded to full size one batch at a time.

    All random numbers are drawn before any mask is built, so the masks do not depend on the
    batch size, and only one batch of full-size masks exists at a time.
    """

    def __init__(self, n_masks: int, size: tuple[int, int], cells: int, p1: float, seed: int):
        h, w = size
        gen = torch.Generator().manual_seed(seed)
        self.size, self.n = (h, w), n_masks
        self.cell = (math.ceil(h / cells), math.ceil(w / cells))
        self.up = ((cells + 1) * self.cell[0], (cells + 1) * self.cell[1])
        self.grids = (torch.rand(n_masks, 1, cells, cells, generator=gen) < p1).float()
        self.dy = torch.randint(0, self.cell[0], (n_masks,), generator=gen)
        self.dx = torch.randint(0, self.cell[1], (n_masks,), generator=gen)

    def masks(self, start: int, stop: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks ``start:stop`` as ``(stop - start, 1, H, W)`` in [0, 1]."""
        h, w = self.size
        up = F.interpolate(self.grids[start:stop].to(device), size=self.up, mode="bilinear",
                           align_corners=False).clamp_(0, 1)
        rows = self.dy[start:stop, None].to(device) + torch.arange(h, device=device)[None, :]
        cols = self.dx[start:stop, None].to(device) + torch.arange(w, device=device)[None, :]
        idx = torch.arange(stop - start, device=device)[:, None, None]
        return up[:, 0][idx, rows[:, :, None], cols[:, None, :]][:, None]


def generate_masks(count: int, size: tuple[int, int], cells: int, p1: float, seed: int = 0,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """All ``count`` RISE masks of a run at once, ``(count, 1, H, W)`` (for tests and references;
    :func:`rise_maps` builds them batch by batch)."""
    return MaskSource(count, size, cells, p1, seed).masks(0, count, device)


#: masked images per forward pass on a CPU. A layer's output for 16 images at 128 x 128 with 8
#: channels is 8 MiB, under glibc's largest mmap threshold (32 MiB), so it is reused from the
#: heap; for a batch of 100 (50 MiB) every layer maps and page-faults fresh memory.
CPU_CHUNK = 16


@contextmanager
def cpu_workers(device: torch.device | str = "cpu") -> Iterator[Callable]:
    """``run(fn, items)``, a ``map`` over worker threads for small CPU chunks of forward passes (plain
    ``map`` on another ``device``, where each chunk is one forward pass anyway).

    With T > 1 torch threads the items run on T worker threads whose operators are
    single-threaded (``torch.set_num_threads(1)`` while the context is open, restored after): the
    thin convolutions of a small chunk split poorly over threads inside one operator. Every item
    is computed the same way whatever thread runs it, so results do not depend on scheduling;
    ``fn`` must be safe to call from several threads (a model in eval mode is).
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads == 1:
        yield map
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="seeds") as pool:
            yield pool.map
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _masked_scorer(predict: Callable[[torch.Tensor], torch.Tensor],
                   images: torch.Tensor) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """``score(masks)``: ``predict(images[i] * masks)`` for every image, ``(n, b)``.

    On a GPU each image's masked batch is one forward pass. On a CPU the masked images go
    through ``predict`` ``CPU_CHUNK`` at a time on :func:`cpu_workers`.
    """
    n = len(images)
    if images.device.type != "cpu":
        yield lambda masks: torch.stack([predict(images[i:i + 1] * masks) for i in range(n)])
        return

    def score(masks: torch.Tensor, run: Callable) -> torch.Tensor:
        def chunk(unit: tuple[int, int]) -> torch.Tensor:
            i, start = unit
            with torch.inference_mode():
                return predict(images[i:i + 1] * masks[start:start + CPU_CHUNK])

        parts = list(run(chunk, [(i, s) for i in range(n) for s in range(0, len(masks), CPU_CHUNK)]))
        return torch.cat(parts).reshape(n, len(masks))

    with cpu_workers() as run:
        yield lambda masks: score(masks, run)


def rise_maps(predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, config: RiseConfig,
              progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """RISE saliency ``(N, H, W)`` of ``predict`` (probabilities ``(B,)``) for ``images`` ``(N, C, H, W)``.

    The same masks explain every image. ``progress(k)`` is called after each mask batch with
    the number of masks used so far.
    """
    n, _, h, w = images.shape
    if torch.is_grad_enabled():  # explanation only: never build an autograd graph over N forwards
        with torch.inference_mode():
            return rise_maps(predict, images, config, progress)
    source = MaskSource(config.n_masks, (h, w), config.cells, config.p1, config.seed)
    sal = torch.zeros(n, h, w, dtype=torch.float64, device=images.device)
    coverage = torch.zeros(h, w, dtype=torch.float64, device=images.device)  # sum_i M_i
    p_sum = torch.zeros(n, dtype=torch.float64, device=images.device)  # sum_i p_i per image
    with _masked_scorer(predict, images) as score:
        for start in range(0, config.n_masks, config.batch):
            stop = min(start + config.batch, config.n_masks)
            masks = source.masks(start, stop, images.device)  # (b, 1, H, W)
            flat = masks.reshape(stop - start, h * w).double()
            coverage += flat.sum(0).reshape(h, w)
            scores = score(masks).double()  # (n, b)
            sal += (scores @ flat).reshape(n, h, w)
            p_sum += scores.sum(1)
            if progress:
                progress(stop)
    if config.centered:
        sal -= (p_sum / config.n_masks)[:, None, None] * coverage
    return (sal / (config.n_masks * config.p1)).float()


def classifier_rise(classifier, patches: torch.Tensor, config: RiseConfig,
                    progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """RISE maps of a :class:`~WeakTumorSegLib.classifier.Classifier` for ``(N, C, P, P)``
    patches: masks applied at the classifier's upsampled resolution, maps resampled to P."""
    # N forward passes of one model: BatchNorm folded into the convolutions, channels-last
    # (masked images inherit the channels-last layout of the images)
    fast = inference_copy(classifier)
    with torch.inference_mode():
        xu = classifier.upsample_input(patches).contiguous(memory_format=torch.channels_last)
        maps = rise_maps(fast.forward_upsampled, xu, config, progress)
    if maps.shape[-2:] != patches.shape[-2:]:
        maps = F.interpolate(maps[:, None], size=patches.shape[-2:], mode="area")[:, 0]
    return maps
