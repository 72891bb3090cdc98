"""Whole-volume inference, one function per step (Yoo et al., sections 2.4, 2.5 and 3):

1. :func:`prepare`: the volume in the canonical orientation, on the bundle's in-plane spacing,
   brain-extracted and normalised inside the brain
   (:func:`~WeakTumorSegLib.preprocessing.standardise.standardise`), every axial slice tiled
   into patches;
2. :func:`classify`: the classifier C gates each patch (p <= 0.5: empty map); patches that are
   zero in every channel contain no tissue and are gated out without running C; with ``gate_low``
   a patch below the gate passes when slices above ``gate_low`` join it to a gated one
   (:func:`~WeakTumorSegLib.stages.fusion.hysteresis_gate`; S_US alone segments it); with
   ``slice_smoothing`` each patch's p is first averaged with the same tile's p on the
   neighbouring slices (:func:`~WeakTumorSegLib.stages.fusion.smooth_across_slices`);
3. :func:`segment_patches`: S_US and S_OS run on the gated patches and are fused with
   w = 2(p - 0.5) (:mod:`WeakTumorSegLib.stages.fusion`); a bundle with a final segmenter
   (``final``, trained on the fused pipeline's filtered masks) also runs it on the gated patches,
   or on every tissue patch with ``settings.final_gate`` ``tissue`` (with the bundle's
   ``final.context`` neighbouring slices, :meth:`Tiling.with_neighbours`), and
   its map becomes the main one, averaged with the fused map by ``settings.final_weight``, or with
   ``settings.final_mode`` ``extend`` only where it extends a lesion of the fused mask (step 6,
   after the component filter); the fused mask still gives the difference score and flags;
4. :func:`convert`: the converter U turns the FLAIR of the gated patches into its healthy variant;
5. :func:`seed_masks`: optionally, C's seeds of the gated patches (``seeds.method``)
   (:mod:`WeakTumorSegLib.stages.seeds`);
6. :func:`finish`: overlapping patch maps are averaged (gated-out patches count as zeros), mapped
   back to the input grid, cleared outside the brain, post-processed (:mod:`.postprocess`) and
   binarised; the difference
   |x - x_hat| is averaged over each slice's mask (Eq. 19) to flag low-confidence slices
   (:mod:`WeakTumorSegLib.stages.difference_filter`).

:func:`segment_arrays` runs them in that order. All patches go through the networks in batches
under ``torch.inference_mode``.

For evaluation, ``extra`` asks for more outputs without changing the default ones: the gated
masks of single segmenters (``segmenter_us``, ``segmenter_os``, which cost nothing extra, and any
further segmenter in the bundle such as ``segmenter0`` or ``baseline_seed_only``, gated and
stitched exactly like the fused model) and ``healthy``, the converter's healthy FLAIR for the
residual baseline. The residual baseline of Baur et al. is unsupervised, so ``healthy`` runs the
converter on every tissue patch, not only on the gated ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..bundle.load import Bundle
from ..bundle.settings import InferenceSettings
from ..errors import BundleError
from ..io.images import Geometry
from ..io.orientation import code_from_direction
from ..preprocessing.standardise import Standardised, standardise
from ..preprocessing.tiling import Tiling
from ..stages.difference_filter import flag_slices, mean_in_mask
from ..stages.fusion import fuse, hysteresis_gate, smooth_across_slices
from ..stages.seeds import (RiseConfig, SeedSettings, explanation_maps, extend_negative_seeds,
                           gate_positive_seeds, scoped_levels, volume_levels)
from .checks import out_of_distribution, possible_miss
from .postprocess import postprocess
from .result import SegmentationResult

#: ``progress(stage, done, total)``
ProgressFn = Callable[[str, int, int], None]

#: ``extra`` name asking :func:`segment_arrays` for the healthy FLAIR (:attr:`SegmentationResult.healthy`).
EXTRA_HEALTHY = "healthy"
#: ``extra`` name asking for the fused model's mask when a final network makes the main one.
EXTRA_FUSED = "fused"
#: The bundle model that, when present, makes the main mask instead of the fused segmenters.
FINAL = "final"
#: Bundle models that are not segmenters and so cannot be an ``extra`` mask.
NOT_SEGMENTERS = ("classifier", "converter", FINAL)


@dataclass
class Prepared:
    """A volume ready for the networks: the standardised volume and its patches."""

    std: Standardised
    tiling: Tiling
    patches: np.ndarray  #: (patch, channel, P, P), slice-major
    tissue: np.ndarray  #: indices of the patches that are not zero in every channel
    flair: int  #: index of the FLAIR channel

    @property
    def work(self) -> np.ndarray:
        """(slice, channel, row, column) on the working grid."""
        return self.std.work

    def flair_input(self) -> np.ndarray:
        """The FLAIR scaled to [0, 1], on the input grid and in its layout."""
        return self.std.input_layout(self.std.stack[:, self.flair])

    def back(self, patch_maps: np.ndarray, weights: np.ndarray | None = None,
             fill: np.ndarray | None = None) -> np.ndarray:
        """Patch maps stitched on the working grid and mapped back to the input grid."""
        return self.std.to_input(self.tiling.stitch(patch_maps, weights=weights, fill=fill))


def batched(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, batch: int, device: torch.device,
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


def prepare(bundle: Bundle, channels: Mapping[str, np.ndarray], settings: InferenceSettings,
            geometry: Geometry | None = None) -> Prepared | None:
    """Step 1: the volume ready for the networks, or None when it holds nothing but background
    (then there is nothing to segment). ``geometry`` gives the voxel size and orientation
    (default: 1 mm voxels in the canonical layout)."""
    spacing = geometry.spacing if geometry is not None else (1.0, 1.0, 1.0)
    code = code_from_direction(geometry.direction) if geometry is not None else "PLS"
    std = standardise(channels, bundle.channels, bundle.preprocessing, bundle.flair_channel, spacing, code)
    if std is None:
        return None
    z, _, h, w = std.work.shape
    tiling = Tiling.plan(z, h, w, bundle.patch_size, settings.stride)
    patches = tiling.extract(std.work)
    tissue = np.flatnonzero(patches.reshape(len(patches), -1).any(axis=1))
    return Prepared(std, tiling, patches, tissue, bundle.channels.index(bundle.flair_channel))


def classify(classifier: torch.nn.Module, vol: Prepared, settings: InferenceSettings, device: torch.device,
             say: ProgressFn) -> np.ndarray:
    """Step 2: C's output for every patch (0 for patches without tissue), smoothed across slices
    when ``settings.slice_smoothing`` is set."""
    p = np.zeros(len(vol.patches), dtype=np.float32)
    say("classify", 0, len(vol.tissue))
    p[vol.tissue] = batched(classifier, vol.patches[vol.tissue], settings.batch_size, device,
                            lambda d: say("classify", d, len(vol.tissue)))
    if settings.slice_smoothing > 0:  # tiles without tissue neither take part nor change (they stay gated out)
        has_tissue = np.zeros(len(vol.patches), bool)
        has_tissue[vol.tissue] = True
        shape = (vol.tiling.slices, vol.tiling.per_slice)
        p = smooth_across_slices(p.reshape(shape), settings.slice_smoothing, has_tissue.reshape(shape)).reshape(-1)
    return p


def segment_patches(models: Mapping[str, torch.nn.Module], vol: Prepared, p: np.ndarray, gated: np.ndarray,
                    settings: InferenceSettings, device: torch.device, say: ProgressFn,
                    extra: Sequence[str] = (), final_context: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 3: the fused map of every patch (zero where gated out), and the gated maps of the
    ``extra`` segmenters; a final segmenter reads ``final_context`` neighbouring slices on each side."""
    size, batch = vol.patches.shape[-1], settings.batch_size
    fused = np.zeros((len(vol.patches), size, size), dtype=np.float32)
    say("segment", 0, len(gated))

    def both_segmenters(xb: torch.Tensor) -> torch.Tensor:
        return torch.stack([models["segmenter_us"](xb)[:, 0], models["segmenter_os"](xb)[:, 0]], 1)

    if len(gated):
        both = batched(both_segmenters, vol.patches[gated], batch, device, lambda d: say("segment", d, len(gated)))
        fused[gated] = fuse(torch.from_numpy(p[gated]), torch.from_numpy(both[:, 0]), torch.from_numpy(both[:, 1]),
                            settings.gate_threshold, passed=torch.ones(len(gated), dtype=torch.bool)).numpy()
    single: dict[str, np.ndarray] = {}
    for name in extra:
        maps = np.zeros_like(fused)
        if len(gated):
            if name in ("segmenter_us", "segmenter_os"):
                maps[gated] = both[:, 0 if name == "segmenter_us" else 1]
            else:
                net = models[name]
                maps[gated] = batched(lambda xb, net=net: net(xb)[:, 0], vol.patches[gated], batch, device)
        single[name] = maps
    if FINAL in models and settings.final_weight > 0:  # the final segmenter makes the main mask
        maps = np.zeros_like(fused)
        which = vol.tissue if settings.final_gate == "tissue" else gated
        if len(which):
            net = models[FINAL]
            x = vol.tiling.with_neighbours(vol.patches, which, final_context)
            maps[which] = batched(lambda xb: net(xb)[:, 0], x, batch, device)
        w = 1.0 if settings.final_mode == "extend" else settings.final_weight  # extend: postprocess() combines
        single[FINAL] = maps if w == 1.0 else w * maps + (1.0 - w) * fused
    return fused, single


def convert(converter: torch.nn.Module, vol: Prepared, which: np.ndarray, settings: InferenceSettings,
            device: torch.device, say: ProgressFn | None = None) -> np.ndarray:
    """Step 4: the converter's healthy FLAIR of the patches ``which`` (zero elsewhere)."""
    flair = vol.patches[:, vol.flair:vol.flair + 1]
    healthy = np.zeros((len(vol.patches), *vol.patches.shape[-2:]), dtype=np.float32)
    report = (lambda d: say("convert", d, len(which))) if say else None
    if len(which):
        healthy[which] = batched(converter, flair[which], settings.batch_size, device, report)[:, 0]
    return healthy


def seed_masks(classifier: torch.nn.Module, vol: Prepared, gated: np.ndarray, gate_w: np.ndarray,
               seeds: SeedSettings, device: torch.device, say: ProgressFn,
               attention: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: C's positive and negative seeds on the input grid (uint8), from the seed method's maps
    of the gated patches, with the FLAIR gates the bundle was trained with applied per patch as in
    training."""
    total = seeds.work(len(gated))
    emaps = np.zeros((len(vol.patches), *vol.patches.shape[-2:]), dtype=np.float32)
    say("seeds", 0, total)
    if len(gated):
        xg = torch.from_numpy(vol.patches[gated]).to(device)
        emaps[gated] = explanation_maps(seeds, classifier, xg, vol.flair, attention,
                                        lambda d: say("seeds", d, total)).cpu().numpy()
    e_in = vol.back(emaps, weights=gate_w)
    covered = vol.back(np.ones_like(emaps), weights=gate_w) > 0.5
    rise = seeds.rise
    pos, neg = covered & (e_in > seeds.positive), covered & (e_in < seeds.negative)
    if len(gated):
        def on_input(per_patch: torch.Tensor) -> np.ndarray:
            part = np.zeros_like(emaps)
            part[gated] = per_patch.numpy()
            return vol.back(part, weights=gate_w) > 0.5

        flair_g = torch.from_numpy(vol.patches[gated, vol.flair])
        nothing = torch.zeros(flair_g.shape, dtype=torch.bool)

        def levels(q: float) -> torch.Tensor | None:  # rise.flair_gate_scope; the volume is the whole input's
            if rise.flair_gate_scope == "slice":
                return None
            work = torch.from_numpy(vol.work[:, vol.flair])
            whole = volume_levels(work, torch.zeros(len(work), dtype=torch.long), q)[:1].expand(len(flair_g))
            return scoped_levels(flair_g, q, rise.flair_gate_scope, whole)

        if rise.positive_flair_quantile is not None:
            q = rise.positive_flair_quantile
            pos &= on_input(gate_positive_seeds(~nothing, flair_g, q, levels(q)))
        if rise.negative_flair_quantile is not None:
            q = rise.negative_flair_quantile
            dark = extend_negative_seeds(nothing, flair_g, q, levels(q))
            if rise.negative_flair_map is not None:
                dark &= torch.from_numpy(emaps[gated] < rise.negative_flair_map)
            neg |= covered & on_input(dark)
    say("seeds", total, total)
    return pos.astype(np.uint8), neg.astype(np.uint8)


def finish(vol: Prepared, p: np.ndarray, patch_maps: Mapping[str, np.ndarray], healthy: np.ndarray,
           gate_w: np.ndarray,
           settings: InferenceSettings) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, np.ndarray,
                                                 dict[str, np.ndarray]]:
    """Step 6: ``(probabilities, masks, difference scores, p_tumor per slice, tumour pixels per
    slice)``; the first two and the last keyed like ``patch_maps`` (``fused``, ``final`` and the extra
    segmenters), the maps on the input grid. The difference scores are those of the fused mask.
    Post-processing and the per-slice figures work on the axial slices of the canonical
    layout (the input's own slices when it is stored axially), at the input's voxel size."""
    std = vol.std
    probabilities = {name: std.to_canonical_input(vol.tiling.stitch(maps)) for name, maps in patch_maps.items()}
    if std.brain is not None:  # stitching and resampling must not carry a map outside the brain
        brain = std.to_canonical_input(std.brain.astype(np.float32)) > 0.5
        probabilities = {name: pr * brain for name, pr in probabilities.items()}
    probabilities, masks = postprocess(probabilities, std.stack[:, vol.flair], std.spacing[1:], settings)
    x_work = vol.work[:, vol.flair]
    diff = std.to_canonical_input(np.abs(x_work - vol.tiling.stitch(healthy, weights=gate_w, fill=x_work)))
    scores = mean_in_mask(diff, masks["fused"])
    p_slice = p.reshape(vol.tiling.slices, vol.tiling.per_slice).max(axis=1)
    pixels = {name: m.sum(axis=(1, 2)).astype(np.int64) for name, m in masks.items()}
    back = std.reorientation.to_input
    return ({k: back(v) for k, v in probabilities.items()}, {k: back(v) for k, v in masks.items()}, scores,
            p_slice, pixels)


def residual_inputs(vol: Prepared, healthy_all: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(flair, healthy)`` on the input grid for the residual baseline. The residual is taken on
    the working grid and mapped back (like the difference score), so FLAIR - healthy is exactly
    0 wherever the converter did not run."""
    x_work = vol.work[:, vol.flair]
    tissue_w = np.zeros(len(vol.patches))
    tissue_w[vol.tissue] = 1
    residual = vol.std.to_input(x_work - vol.tiling.stitch(healthy_all, weights=tissue_w, fill=x_work))
    flair01 = vol.flair_input().copy()
    return flair01, flair01 - residual


def _check_request(bundle: Bundle, channels: Mapping[str, np.ndarray], extra: Sequence[str]) -> list[str]:
    """The extra segmenters asked for; :class:`BundleError` for a missing channel or segmenter."""
    missing = [c for c in bundle.channels if c not in channels]
    if missing:
        raise BundleError(f"bundle '{bundle.name}' needs channels {', '.join(bundle.channels)}; "
                          f"missing: {', '.join(missing)}", bundle.path)
    if EXTRA_FUSED in extra and FINAL not in bundle.models:
        raise BundleError(f"bundle '{bundle.name}' has no final segmenter, so its main mask is the fused one; "
                          f"do not ask for '{EXTRA_FUSED}' as an extra mask", bundle.path)
    models = [e for e in dict.fromkeys(extra) if e not in (EXTRA_HEALTHY, EXTRA_FUSED)]
    for name in models:
        if name in NOT_SEGMENTERS or name not in bundle.models:
            usable = [m for m in bundle.models if m not in NOT_SEGMENTERS]
            raise BundleError(f"bundle '{bundle.name}' has no loaded segmenter '{name}' "
                              f"(it has: {', '.join(usable)})", bundle.path)
    return models


def _empty_result(flair: np.ndarray, settings: InferenceSettings, seeds: bool,
                  extra_models: Sequence[str], healthy: bool, timings: dict[str, float],
                  network: str) -> SegmentationResult:
    """The result for a volume of nothing but background: an empty mask, not an error."""
    z = flair.shape[0]
    empty = np.zeros(flair.shape, dtype=np.float32)
    seeds_out = empty.astype(np.uint8) if seeds else None
    counts = {"slices": z, "patches": 0, "tissue_patches": 0, "gated_patches": 0, "tumor_slices": 0,
              "tumor_voxels": 0, "flagged_slices": 0}
    return SegmentationResult(empty.astype(np.uint8), empty, np.zeros(z), np.ones(z), np.zeros(z, bool), [""] * z,
                              settings, seeds_out, seeds_out, timings, counts,
                              {n: empty.astype(np.uint8) for n in extra_models},
                              {n: empty.copy() for n in extra_models},
                              empty.copy() if healthy else None, empty.copy() if healthy else None, network=network)


def segment_arrays(bundle: Bundle, channels: Mapping[str, np.ndarray], device: torch.device | str = "cpu",
                   settings: InferenceSettings | None = None, seeds: SeedSettings | RiseConfig | bool | None = None,
                   geometry: Geometry | None = None, extra: Sequence[str] = (),
                   progress: ProgressFn | None = None) -> SegmentationResult:
    """Segment one volume given as ``{channel name: (slice, row, column) array}``.

    ``settings`` defaults to the bundle's (:meth:`~WeakTumorSegLib.bundle.info.BundleInfo.settings`);
    ``seeds``, seed settings (e.g. ``bundle.seeds(method)``, or a RISE configuration; True: the
    bundle's), adds C's seeds; ``geometry`` is the volume's voxel grid (its spacing and direction, possibly declared:
    :meth:`~WeakTumorSegLib.io.images.Geometry.declared`; default 1 mm voxels, canonical layout).
    Channels the bundle does not use are ignored; a missing one raises :class:`BundleError`.
    ``extra`` names further outputs for evaluation (see the module docstring).
    """
    settings = settings or bundle.settings()
    seeds = bundle.seeds() if seeds is True else (seeds or None)
    if isinstance(seeds, RiseConfig):
        seeds = SeedSettings(rise=seeds)
    device = torch.device(device)
    say = progress or (lambda stage, done, total: None)
    extra_models = _check_request(bundle, channels, extra)
    want_healthy = EXTRA_HEALTHY in extra
    models, timings = bundle.models, {}
    t0 = time.perf_counter()
    say("preprocess", 0, 1)
    vol = prepare(bundle, channels, settings, geometry)
    timings["preprocess"] = time.perf_counter() - t0
    say("preprocess", 1, 1)
    if vol is None:
        fused = [EXTRA_FUSED] if EXTRA_FUSED in extra else []
        return _empty_result(np.asarray(channels[bundle.flair_channel]), settings, seeds is not None,
                             [*extra_models, *fused], want_healthy, timings,
                             FINAL if FINAL in bundle.models and settings.final_weight > 0 else "fused")

    with torch.inference_mode():
        t = time.perf_counter()
        p = classify(models["classifier"], vol, settings, device, say)
        shape = (vol.tiling.slices, vol.tiling.per_slice)
        gated = np.flatnonzero(hysteresis_gate(p.reshape(shape), settings.gate_threshold, settings.gate_low))
        gate_w = np.zeros(len(vol.patches))  # 1 for gated patches: stitching weights of their maps
        gate_w[gated] = 1
        timings["classify"] = time.perf_counter() - t
        t = time.perf_counter()
        fused, single = segment_patches(models, vol, p, gated, settings, device, say, extra_models,
                                        bundle.final_context)
        timings["segment"] = time.perf_counter() - t
        t = time.perf_counter()
        say("convert", 0, len(gated))
        healthy = convert(models["converter"], vol, gated, settings, device, say)
        if want_healthy:  # the residual baseline needs every tissue patch, gated or not
            healthy_all = healthy + convert(models["converter"], vol, np.setdiff1d(vol.tissue, gated), settings, device)
        timings["convert"] = time.perf_counter() - t
        pos = neg = None
        if seeds is not None:
            t = time.perf_counter()
            pos, neg = seed_masks(models["classifier"], vol, gated, gate_w, seeds, device, say,
                                  models.get("attention"))
            timings["seeds"] = time.perf_counter() - t

    t = time.perf_counter()
    say("postprocess", 0, 1)
    probabilities, masks, scores, p_slice, pixels = finish(vol, p, {"fused": fused, **single}, healthy, gate_w,
                                                           settings)
    network = FINAL if FINAL in single else "fused"
    flagged, reasons = flag_slices(pixels["fused"], scores, p_slice, settings.filter_threshold,
                                   settings.undecided_margin, settings.gate_threshold)
    mask, probability = masks.pop(network), probabilities.pop(network)
    if EXTRA_FUSED not in extra:
        masks.pop("fused", None), probabilities.pop("fused", None)
    elif network == "fused":  # final_weight 0: the fused mask is the main one and the extra one
        masks["fused"], probabilities["fused"] = mask, probability
    flair01, healthy01 = residual_inputs(vol, healthy_all) if want_healthy else (None, None)
    timings["postprocess"] = time.perf_counter() - t
    say("postprocess", 1, 1)
    counts = {"slices": vol.tiling.slices, "patches": len(vol.patches), "tissue_patches": int(len(vol.tissue)),
              "gated_patches": int(len(gated)), "tumor_slices": int((pixels[network] > 0).sum()),
              "tumor_voxels": int(mask.sum()), "flagged_slices": int(flagged.sum())}
    return SegmentationResult(mask, probability, p_slice, scores, flagged, reasons, settings, pos, neg,
                              timings, counts, masks, probabilities, healthy01, flair01,
                              *_input_checks(bundle, vol, len(gated) > 0 or bool(mask.any())), pixels[network],
                              network)


def _input_checks(bundle: Bundle, vol: Prepared, found: bool) -> tuple[dict, list[str]]:
    """How the input was read, and the warnings of :mod:`.checks`; ``found``: a patch was gated or
    the mask is not empty (a final segmenter reading every tissue patch may mark what C gated out)."""
    std = vol.std
    info = {"orientation": std.reorientation.code, "skull_stripped": std.stripped, "stats": std.stats}
    warnings = out_of_distribution(std.stats, bundle.config.get("preprocessing_stats") or {})
    miss = possible_miss(std.work[:, vol.flair], std.brain, bundle.preprocessing.spacing_mm, found)
    return info, warnings + ([miss] if miss else [])
