"""Whole-volume inference: tiles -> gate -> fused segmenters -> converter -> score -> flags.

This follows 000 sections 2.4, 2.5 and 3 on whole slices:

1. preprocess the volume (:mod:`.preprocess`) and tile every axial slice into patches
   (:mod:`.tiling`, stride from the bundle);
2. the classifier C gates each patch (p <= 0.5: empty map); patches that are zero in every
   channel contain no tissue and are gated out without running C; with
   ``inference.slice_smoothing`` (not in 000) each patch's p is first averaged with the same
   tile's p on the neighbouring slices (:func:`~.fusion.smooth_across_slices`), and that p is
   used everywhere after (gate, fusion weight, the slice's ``p_tumor``);
3. S_US and S_OS run on the gated patches and are fused with w = 2(p - 0.5) (:mod:`.fusion`);
4. overlapping patch probabilities are averaged (gated-out patches count as zeros), mapped back
   to the input grid and binarised at 0.5; with ``inference.scalp_margin_mm`` (not in 000) voxels
   closer than that to the head's outer surface (:func:`~.preprocess.head_depth`) are cleared,
   which keeps masks off the bright scalp fat of images that are not skull-stripped; with
   ``inference.flair_trim`` (not in 000) each mask then loses its voxels that are dim on FLAIR
   next to the mask's median voxel (:func:`~.filtering.flair_trim`); with
   ``inference.keep_components`` (not in 000) each mask keeps only its large 3D connected
   components, their holes filled slice by slice (:func:`~.filtering.keep_components`);
5. the converter U turns the FLAIR channel of the gated patches into its healthy variant; the
   difference |x - x_hat| is measured on the working grid, mapped back, and averaged over each
   slice's mask (Eq. 19) to flag low-confidence slices (:mod:`.filtering`);
6. optionally, RISE seeds of C for the gated patches (:mod:`.seeds`).

All patches go through the networks in batches under ``torch.inference_mode``.

For evaluation (:mod:`.evaluate`, 000 sections 4.3-4.4) ``extra`` asks for more outputs
without changing the default ones: the gated masks of single segmenters (``segmenter_us``,
``segmenter_os``, which cost nothing extra, and any further segmenter in the bundle such as
``segmenter0`` or ``baseline_seed_only``, gated and stitched exactly like the fused model) and
``healthy``, the converter's healthy FLAIR on the input grid for the residual baseline. The
residual baseline of Baur et al. is unsupervised, so ``healthy`` runs the converter on every
tissue patch, not only on the gated ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .bundle import Bundle
from .errors import BundleError
from .filtering import flag_slices, flair_trim, keep_components, mean_in_mask
from .fusion import MAX_SLICE_SMOOTHING, fuse, smooth_across_slices
from .preprocess import brain_bbox, head_depth, head_level, normalize_channels, plan_crop, to_input, to_working
from .seeds import RiseConfig, classifier_rise, extend_negative_seeds, gate_positive_seeds, normalize_maps
from .tiling import Tiling

#: ``progress(stage, done, total)``
ProgressFn = Callable[[str, int, int], None]

#: ``extra`` name asking :func:`segment_arrays` for the healthy FLAIR (:attr:`SegmentationResult.healthy`).
EXTRA_HEALTHY = "healthy"
#: Bundle models that are not segmenters and so cannot be an ``extra`` mask.
_NOT_SEGMENTERS = ("classifier", "converter")

SLICE_COLUMNS = ("slice", "p_tumor", "difference_score", "flagged", "flag_reason", "tumor_pixels")


@dataclass
class SegmentationResult:
    """Everything one volume's inference produces; arrays are ``(slice, row, column)``."""

    mask: np.ndarray
    probability: np.ndarray
    p_tumor: np.ndarray
    difference_score: np.ndarray
    flagged: np.ndarray
    flag_reason: list[str]
    threshold: float
    positive_seeds: np.ndarray | None = None
    negative_seeds: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: ``extra`` segmenters: binary masks and probabilities on the input grid, gated like ``mask``.
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)
    extra_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    #: With ``extra`` containing ``"healthy"``: the converter's healthy FLAIR on the input grid, on
    #: the normalised [0, 1] FLAIR scale; equal to the normalised FLAIR wherever the converter did
    #: not run (background patches, outside the brain box).
    healthy: np.ndarray | None = None
    #: With ``"healthy"``: the normalised [0, 1] FLAIR the converter saw, on the input grid.
    flair: np.ndarray | None = None
    #: The scalp margin applied, in mm (0: none).
    scalp_margin: float = 0.0
    #: The neighbour weight of the classifier's slice smoothing applied (0: none).
    slice_smoothing: float = 0.0
    #: The FLAIR trim fraction applied (0: none).
    flair_trim: float = 0.0
    #: The component fraction applied (0: none); ``probability`` is the map before this step.
    keep_components: float = 0.0

    @property
    def tumor_pixels(self) -> np.ndarray:
        return self.mask.sum(axis=(1, 2)).astype(np.int64)

    def slice_rows(self) -> list[dict]:
        """One row per axial slice, keyed by :data:`SLICE_COLUMNS`."""
        px = self.tumor_pixels
        return [{"slice": k, "p_tumor": f"{self.p_tumor[k]:.4f}",
                 "difference_score": f"{self.difference_score[k]:.4f}",
                 "flagged": int(self.flagged[k]), "flag_reason": self.flag_reason[k], "tumor_pixels": int(px[k])}
                for k in range(len(px))]


def _optional_setting(bundle: Bundle, key: str, override: float | None, maximum: float | None = None,
                      bound: str = "") -> float:
    """``override`` if given, else the bundle's ``inference[key]`` (0 when it has none); with
    ``maximum``, a value outside ``[0, maximum]`` (``bound`` names the maximum) is a BundleError."""
    value = float((bundle.inference.get(key) if override is None else override) or 0.0)
    if maximum is not None and not 0.0 <= value <= maximum:
        raise BundleError(f"inference.{key} must lie in [0, {bound or f'{maximum:g}'}], got {value:g}", bundle.path)
    return value


def scalp_margin_mm(bundle: Bundle, override: float | None = None) -> float:
    """The scalp margin in mm: ``override`` if given, else the bundle's (0 when it has none)."""
    return _optional_setting(bundle, "scalp_margin_mm", override)


def slice_smoothing(bundle: Bundle, override: float | None = None) -> float:
    """The neighbour weight of the classifier's slice smoothing: ``override`` if given, else the
    bundle's (0 when it has none)."""
    return _optional_setting(bundle, "slice_smoothing", override, MAX_SLICE_SMOOTHING, "1/3")


def flair_trim_fraction(bundle: Bundle, override: float | None = None) -> float:
    """The FLAIR trim fraction: ``override`` if given, else the bundle's (0 when it has none)."""
    return _optional_setting(bundle, "flair_trim", override, 1.0)


def component_fraction(bundle: Bundle, override: float | None = None) -> float:
    """The fraction of the largest component a mask's component needs to be kept: ``override`` if
    given, else the bundle's ``keep_components`` (0 when it has none)."""
    return _optional_setting(bundle, "keep_components", override, 1.0)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BundleError("--device cuda was requested but no CUDA GPU is available to PyTorch "
                          f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BundleError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, batch: int, device: torch.device,
             report: Callable[[int], None] | None = None) -> np.ndarray:
    """Apply ``fn`` to ``x`` in batches on ``device``; returns a float32 numpy array."""
    out = []
    for start in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[start:start + batch])).to(device, non_blocking=True)
        out.append(fn(xb).float().cpu().numpy())
        if report:
            report(min(start + batch, len(x)))
    if not out:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(out, axis=0)


def segment_arrays(bundle: Bundle, channels: Mapping[str, np.ndarray], device: torch.device | str = "cpu",
                   threshold: float | None = None, seeds: bool = False, seed_masks: int | None = None,
                   progress: ProgressFn | None = None, extra: Sequence[str] = (),
                   spacing: Sequence[float] = (1.0, 1.0), scalp_margin: float | None = None,
                   smoothing: float | None = None, trim: float | None = None,
                   components: float | None = None) -> SegmentationResult:
    """Segment one volume given as ``{channel name: (slice, row, column) array}``.

    Channels the bundle does not use are ignored; a missing one raises :class:`BundleError`.
    ``threshold`` overrides the bundle's difference-score threshold; ``seeds`` adds RISE seeds
    (``seed_masks`` overrides the bundle's number of RISE masks). ``spacing`` is the in-plane
    (row, column) voxel size in mm; ``scalp_margin`` overrides the bundle's
    ``scalp_margin_mm`` (0 turns it off, as skull-stripped images need); ``smoothing`` overrides
    its ``slice_smoothing``, ``trim`` its ``flair_trim`` and ``components`` its
    ``keep_components`` (0 turns any of them off).

    ``extra`` (for evaluation) names further outputs: a segmenter among ``bundle.models`` (e.g.
    ``segmenter_us``, ``segmenter_os``, ``segmenter0``, ``baseline_seed_only``) fills
    ``result.extra_masks[name]`` / ``result.extra_probabilities[name]``, with the classifier
    gate, patch averaging and ``mask_threshold`` of the fused model; ``"healthy"`` fills
    ``result.healthy`` and ``result.flair``. The default outputs do not change.
    """
    device = torch.device(device)
    say = progress or (lambda stage, done, total: None)
    missing = [c for c in bundle.channels if c not in channels]
    if missing:
        raise BundleError(f"bundle '{bundle.name}' needs channels {', '.join(bundle.channels)}; "
                          f"missing: {', '.join(missing)}", bundle.path)
    extra = list(dict.fromkeys(extra))
    want_healthy = EXTRA_HEALTHY in extra
    extra_models = [e for e in extra if e != EXTRA_HEALTHY]
    for name in extra_models:
        if name in _NOT_SEGMENTERS or name not in bundle.models:
            usable = [m for m in bundle.models if m not in _NOT_SEGMENTERS]
            raise BundleError(f"bundle '{bundle.name}' has no loaded segmenter '{name}' "
                              f"(it has: {', '.join(usable)})", bundle.path)
    inf = bundle.inference
    gate, batch = float(inf["gate_threshold"]), int(inf["batch_size"])
    thr = float(inf["filter_threshold"] if threshold is None else threshold)
    mask_thr = float(inf["mask_threshold"])
    margin = scalp_margin_mm(bundle, scalp_margin)
    smooth = slice_smoothing(bundle, smoothing)
    trim = flair_trim_fraction(bundle, trim)
    components = component_fraction(bundle, components)
    pp, patch = bundle.preprocessing, bundle.patch_size
    flair_idx = bundle.channels.index(bundle.flair_channel)
    models = bundle.models
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("preprocess", 0, 1)
    stack = normalize_channels(channels, bundle.channels, pp.clip_percentiles)
    z, _, ny, nx = stack.shape
    bbox = brain_bbox(stack, pp.brain_threshold)
    empty = np.zeros((z, ny, nx), dtype=np.float32)
    if bbox is None:  # nothing but background: an empty mask, not an error
        timings["preprocess"] = time.perf_counter() - t0
        say("preprocess", 1, 1)
        return SegmentationResult(empty.astype(np.uint8), empty, np.zeros(z), np.ones(z), np.zeros(z, bool),
                                  [""] * z, thr, empty.astype(np.uint8) if seeds else None,
                                  empty.astype(np.uint8) if seeds else None, timings,
                                  {"slices": z, "patches": 0, "tissue_patches": 0, "gated_patches": 0,
                                   "tumor_slices": 0, "tumor_voxels": 0, "flagged_slices": 0},
                                  {n: empty.astype(np.uint8) for n in extra_models},
                                  {n: empty.copy() for n in extra_models},
                                  stack[:, flair_idx].copy() if want_healthy else None,
                                  stack[:, flair_idx].copy() if want_healthy else None)
    crop = plan_crop(bbox, pp.inplane_scale)
    work = to_working(stack, crop)
    tiling = Tiling.plan(z, crop.height, crop.width, patch, int(inf["stride"]))
    patches = tiling.extract(work)
    timings["preprocess"] = time.perf_counter() - t0
    say("preprocess", 1, 1)

    with torch.inference_mode():
        # -- classifier gate ------------------------------------------------------------------
        t = time.perf_counter()
        tissue = np.flatnonzero(patches.reshape(len(patches), -1).any(axis=1))
        p = np.zeros(len(patches), dtype=np.float32)
        say("classify", 0, len(tissue))
        p[tissue] = _batched(models["classifier"], patches[tissue], batch, device,
                             lambda d: say("classify", d, len(tissue)))
        if smooth > 0:  # tiles without tissue neither take part nor change (they stay gated out)
            has_tissue = np.zeros(len(patches), bool)
            has_tissue[tissue] = True
            p = smooth_across_slices(p.reshape(z, tiling.per_slice), smooth,
                                     has_tissue.reshape(z, tiling.per_slice)).reshape(-1)
        gated = np.flatnonzero(p > gate)
        gate_w = np.zeros(len(patches))  # 1 for gated patches: stitching weights of their maps
        gate_w[gated] = 1
        timings["classify"] = time.perf_counter() - t

        # -- fused segmenters -----------------------------------------------------------------
        t = time.perf_counter()
        fused = np.zeros((len(patches), patch, patch), dtype=np.float32)
        say("segment", 0, len(gated))

        def seg(xb: torch.Tensor) -> torch.Tensor:
            return torch.stack([models["segmenter_us"](xb)[:, 0], models["segmenter_os"](xb)[:, 0]], 1)

        if len(gated):
            both = _batched(seg, patches[gated], batch, device, lambda d: say("segment", d, len(gated)))
            fused[gated] = fuse(torch.from_numpy(p[gated]), torch.from_numpy(both[:, 0]),
                                torch.from_numpy(both[:, 1]), gate).numpy()
        # single segmenters for evaluation: gated patch maps, stitched like the fused ones below
        extra_patch_maps: dict[str, np.ndarray] = {}
        for name in extra_models:
            maps = np.zeros((len(patches), patch, patch), dtype=np.float32)
            if len(gated):
                if name in ("segmenter_us", "segmenter_os"):
                    maps[gated] = both[:, 0 if name == "segmenter_us" else 1]
                else:
                    net = models[name]
                    maps[gated] = _batched(lambda xb, net=net: net(xb)[:, 0], patches[gated], batch, device)
            extra_patch_maps[name] = maps
        timings["segment"] = time.perf_counter() - t

        # -- converter: healthy FLAIR of the gated patches ---------------------------------------
        t = time.perf_counter()
        flair_patches = patches[:, flair_idx:flair_idx + 1]
        healthy = np.zeros((len(patches), patch, patch), dtype=np.float32)
        say("convert", 0, len(gated))
        if len(gated):
            healthy[gated] = _batched(models["converter"], flair_patches[gated], batch, device,
                                      lambda d: say("convert", d, len(gated)))[:, 0]
        if want_healthy:  # the residual baseline needs every tissue patch, gated or not
            healthy_all = healthy.copy()
            rest = np.setdiff1d(tissue, gated)
            if len(rest):
                healthy_all[rest] = _batched(models["converter"], flair_patches[rest], batch, device)[:, 0]
        timings["convert"] = time.perf_counter() - t

        # -- seeds (optional) -------------------------------------------------------------------
        pos_seeds = neg_seeds = None
        if seeds:
            t = time.perf_counter()
            rise = bundle.rise
            if seed_masks is not None:
                rise = RiseConfig(**{**rise.to_dict(), "n_masks": int(seed_masks)})
            n_batches = -(-rise.n_masks // rise.batch)
            emaps = np.zeros((len(patches), patch, patch), dtype=np.float32)
            say("seeds", 0, n_batches)
            if len(gated):
                xg = torch.from_numpy(patches[gated]).to(device)
                maps = classifier_rise(models["classifier"], xg, rise,
                                       lambda d: say("seeds", -(-d // rise.batch), n_batches))
                emaps[gated] = normalize_maps(maps).cpu().numpy()
            e_in = to_input(tiling.stitch(emaps, weights=gate_w), crop, (ny, nx))
            covered = to_input(tiling.stitch(np.ones_like(emaps), weights=gate_w), crop, (ny, nx)) > 0.5
            pos_seeds, neg_seeds = covered & (e_in > rise.positive), covered & (e_in < rise.negative)
            if len(gated):  # the FLAIR gates the bundle was trained with, per patch as in training
                def on_input(per_patch: torch.Tensor) -> np.ndarray:
                    part = np.zeros_like(emaps)
                    part[gated] = per_patch.numpy()
                    return to_input(tiling.stitch(part, weights=gate_w), crop, (ny, nx)) > 0.5

                flair_g = torch.from_numpy(flair_patches[gated, 0])
                nothing = torch.zeros(flair_g.shape, dtype=torch.bool)
                if rise.positive_flair_quantile is not None:
                    pos_seeds &= on_input(gate_positive_seeds(~nothing, flair_g, rise.positive_flair_quantile))
                if rise.negative_flair_quantile is not None:
                    neg_seeds |= covered & on_input(extend_negative_seeds(nothing, flair_g,
                                                                          rise.negative_flair_quantile))
            pos_seeds, neg_seeds = pos_seeds.astype(np.uint8), neg_seeds.astype(np.uint8)
            say("seeds", n_batches, n_batches)
            timings["seeds"] = time.perf_counter() - t

    # -- stitch, map back, binarise, score --------------------------------------------------------
    t = time.perf_counter()
    say("postprocess", 0, 1)
    prob = to_input(tiling.stitch(fused), crop, (ny, nx))
    extra_prob = {name: to_input(tiling.stitch(maps), crop, (ny, nx)) for name, maps in extra_patch_maps.items()}
    flair_in = stack[:, flair_idx]
    if margin > 0:  # voxels within the scalp margin are never tumour: their probabilities are cleared
        maps = [prob, *extra_prob.values()]
        ks = np.flatnonzero(np.logical_or.reduce([m.any(axis=(1, 2)) for m in maps]))
        if len(ks):  # only slices with a map need the head (the threshold is the whole volume's)
            inside = head_depth(flair_in[ks], spacing, head_level(flair_in)) > margin
            for pr in maps:
                pr[ks] *= inside
    if trim > 0:  # each model's mask loses its voxels that are dim on FLAIR next to its median voxel
        prob = flair_trim(prob, flair_in, trim, mask_thr)
        extra_prob = {name: flair_trim(pr, flair_in, trim, mask_thr) for name, pr in extra_prob.items()}

    def binarise(pr: np.ndarray) -> np.ndarray:
        return keep_components(pr > mask_thr, components).astype(np.uint8)

    mask = binarise(prob)
    x_work = work[:, flair_idx]
    healthy_work = tiling.stitch(healthy, weights=gate_w, fill=x_work)
    diff = to_input(np.abs(x_work - healthy_work), crop, (ny, nx))
    scores = mean_in_mask(diff, mask)
    p_slice = p.reshape(z, tiling.per_slice).max(axis=1)
    flagged, reasons = flag_slices(mask.sum(axis=(1, 2)), scores, p_slice, thr, float(inf["undecided_margin"]), gate)
    extra_masks = {name: binarise(pr) for name, pr in extra_prob.items()}
    flair01 = healthy01 = None
    if want_healthy:
        # the residual is taken on the working grid and mapped back (like the difference score),
        # so FLAIR - healthy is exactly 0 wherever the converter did not run
        tissue_w = np.zeros(len(patches))
        tissue_w[tissue] = 1
        residual = to_input(x_work - tiling.stitch(healthy_all, weights=tissue_w, fill=x_work), crop, (ny, nx))
        flair01 = stack[:, flair_idx].copy()
        healthy01 = flair01 - residual
    timings["postprocess"] = time.perf_counter() - t
    say("postprocess", 1, 1)
    counts = {"slices": z, "patches": len(patches), "tissue_patches": int(len(tissue)),
              "gated_patches": int(len(gated)), "tumor_slices": int((mask.sum(axis=(1, 2)) > 0).sum()),
              "tumor_voxels": int(mask.sum()), "flagged_slices": int(flagged.sum())}
    return SegmentationResult(mask, prob, p_slice, scores, flagged, reasons, thr, pos_seeds, neg_seeds, timings,
                              counts, extra_masks, extra_prob, healthy01, flair01, margin, smooth, trim,
                              components)
