"""Evaluating a bundle (Yoo et al., section 4): each patient is segmented with the same inference
as ``segment`` (:func:`~WeakTumorSegLib.inference.pipeline.segment_arrays`), with the single
segmenters and the baselines beside the fused model, every model gated by the classifier
exactly like the fused one; then per-slice counts are summarised (:mod:`.summary`) and written
(:mod:`.report`)."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..baselines import residual_baseline
from ..bundle.info import BUNDLE_FILE, sha256_file
from ..bundle.load import Bundle
from ..inference.pipeline import EXTRA_FUSED, EXTRA_HEALTHY, FINAL, segment_arrays
from ..bundle.settings import InferenceSettings
from ..io.cohort import Case, canonical_slice_labels, read_mask, slice_labels
from ..io.images import read_channels
from ..io.orientation import CANONICAL
from ..metrics import voxels_away
from ..preprocessing.orientation import Reorientation
from ..stages.seeds import SeedSettings
from .summary import FILTER_THRESHOLDS, MODELS, CaseEvaluation, available_models, clean_json, summarise

#: Bundle models evaluated when the bundle has them (Tables 4 and 5).
OPTIONAL_MODELS = ("segmenter0", "baseline_seed_only")
#: ``progress(stage, done, total)``
ProgressFn = Callable[[str, int, int], None]


@dataclass
class EvaluateOptions:
    """The evaluate configuration (saved in metrics.json)."""

    #: the inference settings every patient is segmented with (the bundle's, with the user's overrides)
    settings: InferenceSettings
    #: the seed method and its settings for the seed overlap metric (None: not computed)
    seeds: SeedSettings | None = None
    residual_threshold: float | None = None
    residual_threshold_source: str = "not available"
    residual_median: int = 5
    filter_thresholds: tuple[float, ...] = FILTER_THRESHOLDS
    torch_seed: int = 0


def _counts(masks: Mapping[str, np.ndarray], truth: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model and slice, the mask's pixels and their overlap with the truth."""
    return {key: (m.sum(axis=(1, 2)).astype(np.int64), (m.astype(bool) & truth).sum(axis=(1, 2)).astype(np.int64))
            for key, m in masks.items()}


def evaluate_case(bundle: Bundle, case: Case, device: torch.device | str, options: EvaluateOptions,
                  progress: ProgressFn | None = None) -> CaseEvaluation:
    """Segment one patient and count, per slice, the pixels of every model and their overlap with the truth."""
    t0 = time.perf_counter()
    paths = {c: case.channels[c] for c in bundle.channels}
    volume = read_channels(paths)
    first = bundle.channels[0]
    truth = read_mask(Path(case.mask), volume.geometry, f"channel '{first}' ({paths[first]})")
    have = available_models(bundle.models, options.residual_threshold, options.settings.final_weight)
    extra = [MODELS[k][2] for k in ("s0", "s_os", "s_us", "seed_only") if have[k]]
    if have["residual"]:
        extra.append(EXTRA_HEALTHY)
    if have["final"]:
        extra.append(EXTRA_FUSED)
    geometry = case.geometry(volume.geometry)
    result = segment_arrays(bundle, volume.channels, device, options.settings, seeds=options.seeds,
                            geometry=geometry, extra=extra, progress=progress)
    # per-slice figures count the axial slices of the canonical layout, like the result's per-slice outputs
    axial = Reorientation(result.preprocessing.get("orientation") or CANONICAL).to_canonical
    truth = axial(truth)
    label_csv = None if case.labels is None else canonical_slice_labels(
        slice_labels(case, volume.channels[first].shape[0]), result.preprocessing.get("orientation") or CANONICAL,
        case.labels)
    masks: dict[str, np.ndarray] = {result.network: axial(result.mask)}
    if result.network == FINAL:
        masks["fused"] = axial(result.extra_masks[EXTRA_FUSED])
    for key in ("s0", "s_os", "s_us", "seed_only"):
        if have[key]:
            masks[key] = axial(result.extra_masks[MODELS[key][2]])
    if have["residual"]:
        masks["residual"] = axial(residual_baseline(result.flair, result.healthy, options.residual_threshold,
                                                    options.residual_median))
    counts = _counts(masks, truth)
    away = {k: voxels_away(masks[k], truth) for k in MODELS if k in masks}
    seeds = None
    if options.seeds is not None:
        pos, neg = axial(result.positive_seeds).astype(bool), axial(result.negative_seeds).astype(bool)
        seeds = {"positive_voxels": int(pos.sum()), "positive_in_truth": int((pos & truth).sum()),
                 "negative_voxels": int(neg.sum()), "negative_outside_truth": int((neg & ~truth).sum())}
    return CaseEvaluation(case.id, truth.sum(axis=(1, 2)).astype(np.int64), label_csv, result.p_tumor,
                          result.difference_score, result.flagged, result.flag_reason,
                          {k: counts[k] for k in MODELS if k in counts}, seeds, time.perf_counter() - t0,
                          list(volume.notes), away)


def load_evaluation_bundle(path: str | Path) -> Bundle:
    """Load a bundle with its inference models plus the optional ones of :data:`OPTIONAL_MODELS`."""
    bundle = Bundle.load(path)
    bundle.load_optional(OPTIONAL_MODELS)
    return bundle


def residual_setting(bundle: Bundle, override: float | None) -> tuple[float | None, str, int]:
    """``(threshold, source, median)`` of the residual baseline."""
    rec = ((bundle.config.get("baselines") or {}).get("residual") or {})
    median = int(rec.get("median", 5))
    if override is not None:
        return float(override), "--residual-threshold", median
    if rec.get("threshold") is not None:
        return (float(rec["threshold"]), "bundle.json baselines.residual.threshold (chosen on the training split)",
                median)
    return None, "not available", median


def run_evaluation(bundle: Bundle, cases: Sequence[Case], device: torch.device, options: EvaluateOptions,
                   progress: ProgressFn | None = None,
                   on_case: Callable[[int, int, CaseEvaluation], None] | None = None) -> list[CaseEvaluation]:
    """Evaluate every case in order (seeds fixed with ``torch.manual_seed``)."""
    torch.manual_seed(options.torch_seed)
    np.random.seed(options.torch_seed)
    out = []
    for i, case in enumerate(cases):
        ev = evaluate_case(bundle, case, device, options, progress)
        out.append(ev)
        if on_case:
            on_case(i + 1, len(cases), ev)
    return out


def build_metrics(evaluations: Sequence[CaseEvaluation], bundle: Bundle, options: EvaluateOptions,
                  configuration: Mapping, extra: Mapping | None = None) -> dict:
    """``metrics.json``: the bundle, the configuration, every table's numbers and ``extra``."""
    from .. import __version__

    have = available_models(bundle.models, options.residual_threshold, options.settings.final_weight)
    summary = summarise(evaluations, have, options.settings.gate_threshold, options.seeds is not None,
                        options.filter_thresholds)
    return clean_json({
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"name": bundle.name, "path": str(bundle.path.resolve()),
                   "bundle_json_sha256": sha256_file(bundle.path / BUNDLE_FILE),
                   "channels": bundle.channels, "models": sorted(bundle.config.get("models", {}))},
        "configuration": dict(configuration),
        **summary,
        **(dict(extra) if extra else {}),
    })
