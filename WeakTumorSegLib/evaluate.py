"""Evaluation of a model bundle against ground-truth masks (000 section 4, Tables 2-6, C.1).

``weaktumorseg evaluate`` runs whole-volume inference (:func:`.inference.segment_arrays`) on
patients with tumour masks and reports, in the paper's order:

* **Table 2** (000 section 4.1) - classifier AUC, sensitivity and specificity over every
  evaluated axial slice; the slice score is ``p_tumor`` (the largest patch output of C), the
  slice truth is "the mask has tumour in this slice" (and, separately, the patient's slice-label
  CSV when it has one); sensitivity/specificity at the bundle's gate threshold (0.5).
* **Table 3** (section 4.1) - the seed overlap metric of the RISE seeds (:func:`.metrics.seed_overlap`):
  the fraction of positive-seed voxels inside the truth and of negative-seed voxels outside
  it, pooled over all voxels of all evaluated patients. Optional (slow).
* **Table 4** (section 4.3) - Dice of the models of each step: S0 (when the bundle ships a
  ``segmenter0``), S_OS alone, S_US alone and the fused model. Every model is gated by the
  classifier exactly like the fused one (patches with p <= 0.5 give an empty map; 000 section 2.4).
* **Table 5** (section 4.4) - baselines: "S0 trained with the seed loss only" (the bundle model
  ``baseline_seed_only``, when present) and the residual baseline of Baur et al.: the positive
  part of FLAIR minus the converter's healthy FLAIR, median-filtered in-plane 5 x 5 per slice
  (000 writes 5x5x5 on 2D images; DIGEST ambiguity 14), thresholded at
  ``bundle.json["baselines"]["residual"]["threshold"]``. That threshold must come from the
  training patients (:func:`choose_residual_threshold`); it is never chosen on the evaluated
  patients, and without one the baseline is reported as not available. Baur et al.'s method
  is unsupervised, so its healthy FLAIR comes from every tissue patch, without the classifier gate.
* **Table 6 / A.1** (section 4.5) - the filter curve: for thresholds 0.0, 0.1, ..., 0.9 the slices
  whose fused mask is non-empty and whose difference score is below the threshold are removed
  (the paper's rule, :func:`.filtering.flag_slices` without the undecided-classifier flag); the
  mean Dice of the kept and of the removed slices and the percentage of slices removed.
* **Table C.1** - Pearson correlation between the difference score and the fused model's Dice,
  over the slices whose fused mask is non-empty (the only slices the filter can remove).

Dice is always reported under named conventions (DESIGN.md): ``per_volume_3d`` (3D Dice of each
patient volume, averaged over the tumour-bearing volumes), ``per_slice_paper`` (2D Dice of
every evaluated axial slice with empty prediction vs empty truth = 1, averaged over all
slices; the paper's convention) and ``per_slice_tumour`` (2D Dice averaged over the slices whose
truth has tumour). Every axial slice of every volume is evaluated (000 assumes the first and
last 30 BraTS slices empty; here every slice is segmented).
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .bundle import BUNDLE_FILE, Bundle, load_model
from .dataset import Case, read_mask, slice_labels
from .errors import InputError, WeakTumorSegError
from .filtering import flag_slices
from .inference import EXTRA_HEALTHY, segment_arrays
from .io import OutputSet, read_channels, write_csv
from .metrics import dice_from_counts, roc_auc, sensitivity_specificity

#: Bundle models evaluated when the bundle has them (Tables 4 and 5).
OPTIONAL_MODELS = ("segmenter0", "baseline_seed_only")

#: Evaluated models: key -> (label, table, bundle model or None for derived ones).
MODELS: dict[str, tuple[str, str, str | None]] = {
    "s0": ("Initial (S0)", "4", "segmenter0"),
    "s_os": ("Refined, over-segmenting (S_OS alone)", "4", "segmenter_os"),
    "s_us": ("Refined, under-segmenting (S_US alone)", "4", "segmenter_us"),
    "fused": ("Combined (fused S_OS + S_US)", "4", None),
    "seed_only": ("Baseline: S0 trained with the seed loss only", "5", "baseline_seed_only"),
    "residual": ("Baseline: FLAIR residual, 5x5 median, threshold (Baur et al.)", "5", None),
}

#: Difference-score thresholds of the filter curve (000 Table A.1).
FILTER_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))
#: Thresholds tried by :func:`choose_residual_threshold`.
RESIDUAL_GRID = tuple(round(0.02 * i, 2) for i in range(1, 26))

#: Output file names inside ``--out``.
OUTPUTS = {"metrics": "metrics.json", "tables": "tables.md", "per_volume": "per_volume.csv",
           "per_slice": "per_slice.csv", "filter_curve": "filter_curve.csv", "filter_plot": "filter_curve.png"}

CONVENTIONS = {
    "per_volume_3d": "3D Dice of each patient volume, averaged over the tumour-bearing volumes (truth non-empty)",
    "per_slice_paper": "2D Dice of each axial slice, empty prediction vs empty truth = 1, averaged over all "
                       "evaluated slices (paper 000's convention)",
    "per_slice_tumour": "2D Dice of each axial slice, averaged over the slices whose truth has tumour",
}

ProgressFn = Callable[[str, int, int], None]


# --------------------------------------------------------------------------------------------
# Residual baseline (Baur et al.; 000 section 4.4)


def residual_map(flair01: np.ndarray, healthy01: np.ndarray, median: int = 5) -> np.ndarray:
    """Positive part of ``flair01 - healthy01`` median-filtered ``median x median`` in-plane,
    slice by slice (the last two axes are the image plane)."""
    flair01, healthy01 = np.asarray(flair01), np.asarray(healthy01)
    if flair01.shape != healthy01.shape:
        raise ValueError(f"flair {flair01.shape} and healthy {healthy01.shape} differ in shape")
    if flair01.ndim < 2:
        raise ValueError("need at least 2D images")
    r = np.clip(flair01.astype(np.float32) - healthy01.astype(np.float32), 0.0, None)
    if median > 1:
        r = ndimage.median_filter(r, size=(1,) * (r.ndim - 2) + (int(median), int(median)), mode="nearest")
    return r


def residual_baseline(flair01: np.ndarray, healthy01: np.ndarray, threshold: float, median: int = 5) -> np.ndarray:
    """Baur et al.'s residual segmentation: :func:`residual_map` ``> threshold``, as uint8.

    ``flair01`` and ``healthy01`` are FLAIR and its healthy variant on the normalised [0, 1]
    scale, ``(..., row, column)``; tumour is hyperintense in FLAIR, hence the positive part.
    """
    return (residual_map(flair01, healthy01, median) > float(threshold)).astype(np.uint8)


def residual_threshold_curve(flair_list: Sequence[np.ndarray], healthy_list: Sequence[np.ndarray],
                             mask_list: Sequence[np.ndarray], grid: Sequence[float] = RESIDUAL_GRID,
                             median: int = 5) -> list[tuple[float, float]]:
    """``[(threshold, mean per-volume Dice)]`` of :func:`residual_baseline` over ``grid``; the
    mean is over the tumour-bearing volumes (3D Dice of each volume, DESIGN.md's convention)."""
    if not (len(flair_list) == len(healthy_list) == len(mask_list)):
        raise ValueError("flair_list, healthy_list and mask_list must have the same length")
    grid = [float(t) for t in grid]
    if not grid:
        raise ValueError("empty threshold grid")
    totals = np.zeros(len(grid))
    n = 0
    for flair, healthy, mask in zip(flair_list, healthy_list, mask_list):
        truth = np.asarray(mask) > 0
        if truth.shape != np.shape(flair):
            raise ValueError(f"mask {truth.shape} and flair {np.shape(flair)} differ in shape")
        t_sum = int(truth.sum())
        if t_sum == 0:
            continue
        r = residual_map(flair, healthy, median)
        inside, outside = np.sort(r[truth]), np.sort(r[~truth])
        for i, thr in enumerate(grid):  # counts of values > thr from the sorted values
            tp = inside.size - np.searchsorted(inside, thr, side="right")
            fp = outside.size - np.searchsorted(outside, thr, side="right")
            totals[i] += 2.0 * tp / (tp + fp + t_sum)
        n += 1
    if n == 0:
        raise ValueError("no tumour-bearing volume: the residual threshold cannot be chosen")
    return [(t, float(s / n)) for t, s in zip(grid, totals)]


def choose_residual_threshold(flair_list: Sequence[np.ndarray], healthy_list: Sequence[np.ndarray],
                              mask_list: Sequence[np.ndarray], grid: Sequence[float] = RESIDUAL_GRID,
                              median: int = 5) -> float:
    """The residual-baseline threshold maximising the mean per-volume Dice on the given (training)
    volumes, over ``grid`` (0.02, 0.04, ..., 0.5). Ties: the middle of the best thresholds.

    Call it on the training split only and record the result in the bundle as
    ``bundle.json["baselines"]["residual"] = {"threshold": t, "median": 5, ...}``; choosing it on
    the evaluated patients would make the baseline an oracle.
    """
    curve = residual_threshold_curve(flair_list, healthy_list, mask_list, grid, median)
    scores = np.array([s for _, s in curve])
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(curve[int(best[len(best) // 2])][0])


# --------------------------------------------------------------------------------------------
# Pure summaries


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation coefficient; NaN with fewer than two values or a constant input."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def filter_curve(dice: np.ndarray, mask_pixels: np.ndarray, scores: np.ndarray, truth_pixels: np.ndarray,
                 thresholds: Sequence[float] = FILTER_THRESHOLDS) -> list[dict]:
    """Table 6 / A.1: per threshold, the slices the difference-score filter removes (non-empty
    mask and score below the threshold, 000 section 2.5), the mean per-slice Dice of the kept
    and of the removed slices (paper convention; also over kept tumour slices) and the share
    removed (of all slices and of the slices with a non-empty mask)."""
    dice, mask_pixels = np.asarray(dice, dtype=np.float64), np.asarray(mask_pixels)
    scores, truth_pixels = np.asarray(scores, dtype=np.float64), np.asarray(truth_pixels)
    n, nonempty = len(dice), int((mask_pixels > 0).sum())
    rows = []
    for t in thresholds:
        removed, _ = flag_slices(mask_pixels, scores, np.ones(n), float(t), 0.0)
        kept = ~removed
        kept_tumour = kept & (truth_pixels > 0)
        rows.append({
            "threshold": float(t),
            "slices_kept": int(kept.sum()),
            "slices_removed": int(removed.sum()),
            "percent_removed": 100.0 * removed.sum() / n if n else float("nan"),
            "percent_removed_of_nonempty": 100.0 * removed.sum() / nonempty if nonempty else float("nan"),
            "dice_kept_per_slice_paper": float(dice[kept].mean()) if kept.any() else float("nan"),
            "dice_removed_per_slice_paper": float(dice[removed].mean()) if removed.any() else float("nan"),
            "dice_kept_per_slice_tumour": float(dice[kept_tumour].mean()) if kept_tumour.any() else float("nan"),
        })
    return rows


# --------------------------------------------------------------------------------------------
# Patient selection


def select_cases(cases: Sequence[Case], bundle_config: Mapping, data: str | Path, patients: str | None = None,
                 split: str | None = None, bundle_path: str | Path | None = None) -> tuple[list[Case], str, list[str]]:
    """Choose the patients to evaluate: ``(cases, description of the choice, notes)``.

    ``patients``: ``"all"`` or comma-separated ids; ``split``: ``"val"`` or ``"train"`` of the
    split recorded in the bundle (``training.split``). Without either, the bundle's validation
    split when ``data`` is the bundle's training data (same folder, or exactly its patients),
    else every patient.
    """
    by_id = {c.id: c for c in cases}
    rec = (bundle_config.get("training") or {})
    rec_split = rec.get("split") if isinstance(rec.get("split"), Mapping) else None
    notes: list[str] = []

    def same_data() -> bool:
        if rec_split is None:
            return False
        trained = rec.get("data")
        if trained:
            try:
                if Path(trained).resolve() == Path(data).resolve():
                    return True
            except OSError:
                pass
        return set(by_id) == set(rec_split.get("train", [])) | set(rec_split.get("val", []))

    def pick(ids: Sequence[str], what: str) -> list[Case]:
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise InputError(f"{what}: patient(s) not in the cohort: {', '.join(unknown)}", data)
        return [by_id[i] for i in dict.fromkeys(ids)]

    if patients is not None and split is not None:
        raise WeakTumorSegError("give --patients or --split, not both")
    if patients is not None:
        if patients.strip().lower() == "all":
            chosen, source = list(cases), "all patients (--patients all)"
        else:
            ids = [p.strip() for p in patients.split(",") if p.strip()]
            if not ids:
                raise WeakTumorSegError("--patients needs 'all' or comma-separated patient ids")
            chosen, source = pick(ids, "--patients"), "--patients"
    elif split is not None:
        if rec_split is None or split not in rec_split:
            raise InputError(f"the bundle records no training split (training.split.{split}); use --patients",
                             Path(bundle_path) / BUNDLE_FILE if bundle_path is not None else None)
        chosen, source = pick(list(rec_split[split]), f"--split {split}"), f"bundle's '{split}' split (--split {split})"
    elif same_data():
        chosen = pick(list(rec_split.get("val", [])), "the bundle's validation split")
        source = "bundle's validation split (default: --data is the bundle's training data)"
        if not chosen:
            raise InputError("the bundle's validation split is empty; pass --patients", data)
    else:
        chosen, source = list(cases), "all patients (default: --data is not the bundle's training data)"
    if not chosen:
        raise InputError(f"no patients to evaluate ({source})", data)
    if rec_split is not None:
        leaked = sorted(c.id for c in chosen if c.id in set(rec_split.get("train", [])))
        if leaked and split != "train":
            notes.append(f"{len(leaked)} of the {len(chosen)} evaluated patients were in the bundle's "
                         f"training split: {', '.join(leaked[:10])}{' ...' if len(leaked) > 10 else ''}")
    return chosen, source, notes


def require_masks(cases: Sequence[Case], data: str | Path) -> None:
    """Evaluation needs a ground-truth mask for every evaluated patient."""
    lacking = [c.id for c in cases if c.mask is None]
    if not lacking:
        return
    if len(lacking) == len(cases):
        raise InputError(f"evaluation needs ground-truth tumour masks (<id>_seg.nii.gz or a manifest 'mask' "
                         f"column); none of the {len(cases)} selected patients has one", data)
    raise InputError(f"evaluation needs ground-truth tumour masks; {len(lacking)} of the {len(cases)} selected "
                     f"patients have none ({', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}); "
                     "choose patients with masks with --patients", data)


# --------------------------------------------------------------------------------------------
# Evaluation of one patient


@dataclass
class EvaluateOptions:
    """The evaluate configuration (saved in metrics.json)."""

    seeds: bool = True
    seed_masks: int | None = None
    residual_threshold: float | None = None
    residual_threshold_source: str = "not available"
    residual_median: int = 5
    filter_thresholds: tuple[float, ...] = FILTER_THRESHOLDS
    torch_seed: int = 0
    #: overrides the bundle's ``inference.scalp_margin_mm`` (None: the bundle's)
    scalp_margin: float | None = None
    #: overrides the bundle's ``inference.slice_smoothing`` (None: the bundle's)
    smoothing: float | None = None
    #: overrides the bundle's ``inference.flair_trim`` (None: the bundle's)
    trim: float | None = None
    #: overrides the bundle's ``inference.keep_components`` (None: the bundle's)
    components: float | None = None


@dataclass
class CaseEvaluation:
    """Per-slice counts of one patient; ``models`` maps a model key to ``(pixels, overlap)``."""

    id: str
    truth_pixels: np.ndarray
    label_csv: np.ndarray | None
    p_tumor: np.ndarray
    difference_score: np.ndarray
    flagged: np.ndarray
    flag_reason: list[str]
    models: dict[str, tuple[np.ndarray, np.ndarray]]
    seeds: dict[str, int] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def slices(self) -> int:
        return int(len(self.truth_pixels))


def available_models(bundle: Bundle, residual_threshold: float | None) -> dict[str, bool]:
    """Which of :data:`MODELS` can be evaluated with this bundle."""
    out = {}
    for key, (_, _, model) in MODELS.items():
        if key == "residual":
            out[key] = residual_threshold is not None
        elif model is None:
            out[key] = True
        else:
            out[key] = model in bundle.models
    return out


def evaluate_case(bundle: Bundle, case: Case, device: torch.device | str, options: EvaluateOptions,
                  progress: ProgressFn | None = None) -> CaseEvaluation:
    """Segment one patient and count, per slice, the pixels of every model and their overlap with the truth."""
    t0 = time.perf_counter()
    paths = {c: case.channels[c] for c in bundle.channels}
    volume = read_channels(paths)
    first = bundle.channels[0]
    truth = read_mask(Path(case.mask), volume.geometry, f"channel '{first}' ({paths[first]})")
    z = truth.shape[0]
    label_csv = slice_labels(case, z) if case.labels is not None else None
    have = available_models(bundle, options.residual_threshold)
    extra = [MODELS[k][2] for k in ("s0", "s_os", "s_us", "seed_only") if have[k]]
    if have["residual"]:
        extra.append(EXTRA_HEALTHY)
    result = segment_arrays(bundle, volume.channels, device, seeds=options.seeds, seed_masks=options.seed_masks,
                            progress=progress, extra=extra, spacing=volume.geometry.inplane_spacing,
                            scalp_margin=options.scalp_margin, smoothing=options.smoothing, trim=options.trim,
                            components=options.components)
    masks: dict[str, np.ndarray] = {"fused": result.mask}
    for key in ("s0", "s_os", "s_us", "seed_only"):
        if have[key]:
            masks[key] = result.extra_masks[MODELS[key][2]]
    if have["residual"]:
        masks["residual"] = residual_baseline(result.flair, result.healthy, options.residual_threshold,
                                              options.residual_median)
    counts = {key: (m.sum(axis=(1, 2)).astype(np.int64), (m.astype(bool) & truth).sum(axis=(1, 2)).astype(np.int64))
              for key, m in masks.items()}
    seeds = None
    if options.seeds:
        pos, neg = result.positive_seeds.astype(bool), result.negative_seeds.astype(bool)
        seeds = {"positive_voxels": int(pos.sum()), "positive_in_truth": int((pos & truth).sum()),
                 "negative_voxels": int(neg.sum()), "negative_outside_truth": int((neg & ~truth).sum())}
    return CaseEvaluation(case.id, truth.sum(axis=(1, 2)).astype(np.int64), label_csv, result.p_tumor,
                          result.difference_score, result.flagged, result.flag_reason,
                          {k: counts[k] for k in MODELS if k in counts}, seeds, time.perf_counter() - t0,
                          list(volume.notes))


# --------------------------------------------------------------------------------------------
# Summaries over patients


def _nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return _nan(obj)
    return obj


def _classifier_metrics(truth: np.ndarray, scores: np.ndarray, gate: float) -> dict:
    sens, spec = sensitivity_specificity(truth, scores, gate)
    return {"auc": roc_auc(truth, scores), "sensitivity": sens, "specificity": spec,
            "slices": int(len(truth)), "tumour_slices": int(np.sum(truth))}


def summarise(cases: Sequence[CaseEvaluation], bundle: Bundle, options: EvaluateOptions) -> dict:
    """The metrics of Tables 2-6 and C.1 from per-slice counts (see the module docstring)."""
    gate = float(bundle.inference["gate_threshold"])
    truth = np.concatenate([c.truth_pixels for c in cases])
    p = np.concatenate([c.p_tumor for c in cases])
    scores = np.concatenate([c.difference_score for c in cases])
    have = available_models(bundle, options.residual_threshold)

    classifier = {"score": "p_tumor: the largest classifier output over the slice's patches",
                  "decision_threshold": gate,
                  "from_masks": {"truth": "slice has tumour in the ground-truth mask",
                                 **_classifier_metrics(truth > 0, p, gate)}}
    with_labels = [c for c in cases if c.label_csv is not None]
    if with_labels:
        classifier["from_labels"] = {
            "truth": "the patient's slice-label CSV", "patients": len(with_labels),
            **_classifier_metrics(np.concatenate([c.label_csv for c in with_labels]) > 0,
                                  np.concatenate([c.p_tumor for c in with_labels]), gate)}
    else:
        classifier["from_labels"] = None

    if options.seeds:
        tot = {k: sum(c.seeds[k] for c in cases) for k in cases[0].seeds} if cases else {}
        seeds = {"computed": True, "pooled": "voxels of all evaluated patients pooled",
                 "positive_overlap": tot["positive_in_truth"] / tot["positive_voxels"] if tot["positive_voxels"]
                 else float("nan"),
                 "negative_overlap": tot["negative_outside_truth"] / tot["negative_voxels"]
                 if tot["negative_voxels"] else float("nan"), **tot}
    else:
        seeds = {"computed": False, "reason": "--no-seeds"}

    bearing = [c for c in cases if c.truth_pixels.sum() > 0]
    segmentation = {}
    for key, (label, table, model) in MODELS.items():
        entry: dict = {"label": label, "table": table, "bundle_model": model, "available": have[key]}
        if not have[key]:
            entry["reason"] = (f"the bundle has no '{model}' model" if model else
                               "no residual threshold: the bundle has no baselines.residual.threshold "
                               "(computed on its training split) and --residual-threshold was not given")
        else:
            pix = np.concatenate([c.models[key][0] for c in cases])
            ovl = np.concatenate([c.models[key][1] for c in cases])
            d = dice_from_counts(pix, ovl, truth)
            vols = [volume_dice(c, key) for c in bearing]
            entry.update({
                "per_volume_3d": float(np.mean(vols)) if vols else float("nan"),
                "per_slice_paper": float(d.mean()) if len(d) else float("nan"),
                "per_slice_tumour": float(d[truth > 0].mean()) if (truth > 0).any() else float("nan"),
                "volumes": len(vols), "slices": int(len(d)), "tumour_slices": int((truth > 0).sum()),
                "predicted_voxels": int(pix.sum()),
            })
        segmentation[key] = entry

    fused_pix = np.concatenate([c.models["fused"][0] for c in cases])
    fused_dice = dice_from_counts(fused_pix, np.concatenate([c.models["fused"][1] for c in cases]), truth)
    nonempty = fused_pix > 0
    curve = filter_curve(fused_dice, fused_pix, scores, truth, options.filter_thresholds)
    return {
        "cohort": {"patients": len(cases), "tumour_bearing_volumes": len(bearing), "slices": int(len(truth)),
                   "tumour_slices": int((truth > 0).sum()), "truth_voxels": int(truth.sum())},
        "conventions": CONVENTIONS,
        "classifier": classifier,
        "seeds": seeds,
        "segmentation": segmentation,
        "filter_curve": {"model": "fused", "rule": "remove a slice when its fused mask is non-empty and its "
                                                   "difference score < threshold (000 section 2.5)",
                         "dice_convention": "per_slice_paper (and per_slice_tumour for kept tumour slices)",
                         "rows": curve},
        "correlation": {"pearson_difference_score_vs_dice": pearson(scores[nonempty], fused_dice[nonempty]),
                        "slices": int(nonempty.sum()), "model": "fused",
                        "over": "slices whose fused mask is non-empty; Dice per slice"},
    }


def volume_dice(case: CaseEvaluation, key: str) -> float:
    """3D Dice of one patient for model ``key`` (empty vs empty = 1)."""
    pix, ovl = case.models[key]
    return float(dice_from_counts(pix.sum(), ovl.sum(), case.truth_pixels.sum()))


# --------------------------------------------------------------------------------------------
# Output files


def _fmt(x, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(int(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def per_slice_rows(cases: Sequence[CaseEvaluation], keys: Sequence[str]) -> tuple[list[dict], list[str]]:
    columns = ["patient", "slice", "truth_pixels", "label_csv", "p_tumor", "difference_score", "flagged",
               "flag_reason"]
    for key in keys:
        columns += [f"pixels_{key}", f"overlap_{key}", f"dice_{key}"]
    rows = []
    for c in cases:
        dices = {k: dice_from_counts(*c.models[k], c.truth_pixels) for k in keys}
        for s in range(c.slices):
            row = {"patient": c.id, "slice": s, "truth_pixels": int(c.truth_pixels[s]),
                   "label_csv": "" if c.label_csv is None else int(c.label_csv[s]),
                   "p_tumor": _fmt(c.p_tumor[s]), "difference_score": _fmt(c.difference_score[s]),
                   "flagged": int(c.flagged[s]), "flag_reason": c.flag_reason[s]}
            for k in keys:
                row[f"pixels_{k}"] = int(c.models[k][0][s])
                row[f"overlap_{k}"] = int(c.models[k][1][s])
                row[f"dice_{k}"] = _fmt(dices[k][s])
            rows.append(row)
    return rows, columns


def per_volume_rows(cases: Sequence[CaseEvaluation], keys: Sequence[str], seeds: bool) -> tuple[list[dict], list[str]]:
    columns = ["patient", "slices", "tumour_slices", "truth_voxels", "tumour_bearing"]
    for key in keys:
        columns += [f"dice_3d_{key}", f"dice_per_slice_paper_{key}", f"voxels_{key}"]
    if seeds:
        columns += ["positive_seed_voxels", "positive_seed_overlap", "negative_seed_voxels", "negative_seed_overlap"]
    columns += ["flagged_slices", "seconds"]
    rows = []
    for c in cases:
        row = {"patient": c.id, "slices": c.slices, "tumour_slices": int((c.truth_pixels > 0).sum()),
               "truth_voxels": int(c.truth_pixels.sum()), "tumour_bearing": int(c.truth_pixels.sum() > 0),
               "flagged_slices": int(np.sum(c.flagged)), "seconds": f"{c.seconds:.2f}"}
        for k in keys:
            row[f"dice_3d_{k}"] = _fmt(volume_dice(c, k))
            row[f"dice_per_slice_paper_{k}"] = _fmt(float(dice_from_counts(*c.models[k], c.truth_pixels).mean()))
            row[f"voxels_{k}"] = int(c.models[k][0].sum())
        if seeds:
            s = c.seeds
            row["positive_seed_voxels"] = s["positive_voxels"]
            row["positive_seed_overlap"] = _fmt(s["positive_in_truth"] / s["positive_voxels"]
                                                if s["positive_voxels"] else float("nan"))
            row["negative_seed_voxels"] = s["negative_voxels"]
            row["negative_seed_overlap"] = _fmt(s["negative_outside_truth"] / s["negative_voxels"]
                                                if s["negative_voxels"] else float("nan"))
        rows.append(row)
    return rows, columns


FILTER_COLUMNS = ("threshold", "slices_kept", "slices_removed", "percent_removed", "percent_removed_of_nonempty",
                  "dice_kept_per_slice_paper", "dice_removed_per_slice_paper", "dice_kept_per_slice_tumour")


def _num(x, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def tables_markdown(metrics: Mapping) -> str:
    """Markdown tables in the style of 000's Tables 2-6 and C.1, for a README or a model card."""
    cfg, cohort = metrics["configuration"], metrics["cohort"]
    out = [f"### Evaluation of bundle `{metrics['bundle']['name']}`", "",
           (f"{cohort['patients']} patients ({cfg['patients_source']}), {cohort['slices']} axial slices, "
            f"{cohort['tumour_slices']} with tumour; {cohort['tumour_bearing_volumes']} tumour-bearing volumes. "
            f"Data: `{cfg['data']}`."), "",
           "Dice conventions: **per-volume 3D** = " + CONVENTIONS["per_volume_3d"] + "; **per-slice (paper)** = "
           + CONVENTIONS["per_slice_paper"] + "; **per-slice (tumour slices)** = " + CONVENTIONS["per_slice_tumour"]
           + ".", ""]
    c = metrics["classifier"]
    out += [f"**Table 2 - classifier** (slice score p_tumor, decision at p > {c['decision_threshold']:g})", "",
            "| slice truth | slices | tumour slices | AUC | sensitivity | specificity |", "|---|---|---|---|---|---|"]
    for key, name in (("from_masks", "ground-truth mask"), ("from_labels", "slice-label CSV")):
        r = c.get(key)
        if r:
            out.append(f"| {name} | {r['slices']} | {r['tumour_slices']} | {_num(r['auc'])} | "
                       f"{_num(r['sensitivity'])} | {_num(r['specificity'])} |")
    if cfg.get("slice_smoothing"):
        w = cfg["slice_smoothing"]
        out += ["", (f"Slice smoothing {w:g} ({cfg['slice_smoothing_source']}): each p_tumor is the classifier's "
                     f"output averaged with its neighbouring slices' (weights {w:g}, {1 - 2 * w:g}, {w:g}), "
                     "before the gate.")]
    s = metrics["seeds"]
    out += ["", "**Table 3 - seed overlap** (RISE seeds; voxels pooled over patients)", ""]
    if s.get("computed"):
        out += ["| seeds | voxels | overlap |", "|---|---|---|",
                f"| positive (inside truth) | {s['positive_voxels']} | {_num(s['positive_overlap'])} |",
                f"| negative (outside truth) | {s['negative_voxels']} | {_num(s['negative_overlap'])} |",
                "", f"RISE masks: {cfg['rise']['n_masks']}."]
    else:
        out.append(f"Not computed ({s.get('reason', '')}).")
    seg = metrics["segmentation"]
    for table, title, keys in (("4", "Table 4 - Dice of each step", ("s0", "s_os", "s_us", "fused")),
                               ("5", "Table 5 - comparison to baselines", ("s0", "fused", "seed_only", "residual"))):
        out += ["", f"**{title}**", "",
                "| model | per-volume 3D Dice | per-slice Dice (paper) | per-slice Dice (tumour slices) |",
                "|---|---|---|---|"]
        for key in keys:
            e = seg[key]
            if e["available"]:
                out.append(f"| {e['label']} | {_num(e['per_volume_3d'])} | {_num(e['per_slice_paper'])} | "
                           f"{_num(e['per_slice_tumour'])} |")
            else:
                out.append(f"| {e['label']} | not available | not available | not available |")
        if table == "4" and cfg.get("scalp_margin_mm"):
            out += ["", (f"Scalp margin {cfg['scalp_margin_mm']:g} mm ({cfg['scalp_margin_source']}): every "
                         "segmenter's mask is cleared that close to the head's outer surface.")]
        if table == "4" and cfg.get("flair_trim"):
            out += ["", (f"FLAIR trim {cfg['flair_trim']:g} ({cfg['flair_trim_source']}): every segmenter's mask "
                         f"loses its voxels whose FLAIR is below {cfg['flair_trim']:g} times the median FLAIR "
                         "inside that mask.")]
        if table == "4" and cfg.get("keep_components"):
            out += ["", (f"Components {cfg['keep_components']:g} ({cfg['keep_components_source']}): every segmenter's "
                         f"mask keeps its 3D connected components of at least {cfg['keep_components']:g} times the "
                         "largest one's voxels, each slice's holes filled.")]
        if table == "5" and seg["residual"]["available"]:
            res = cfg["residual"]
            out += ["", (f"Residual threshold {res['threshold']:g} ({res['threshold_source']}), "
                         f"{res['median']}x{res['median']} median per slice.")]
    fc = metrics["filter_curve"]["rows"]
    out += ["", ("**Table 6 / A.1 - difference-score filter** (fused model; a slice is removed when its mask is "
                 "non-empty and its difference score is below the threshold; per-slice Dice, paper convention)"), "",
            ("| threshold | Dice of kept slices | Dice of removed slices | Dice of kept tumour slices "
             "| % slices removed |"),
            "|---|---|---|---|---|"]
    for r in fc:
        out.append(f"| {r['threshold']:.1f} | {_num(r['dice_kept_per_slice_paper'])} | "
                   f"{_num(r['dice_removed_per_slice_paper'])} | {_num(r['dice_kept_per_slice_tumour'])} | "
                   f"{_num(r['percent_removed'], 2)} |")
    cor = metrics["correlation"]
    out += ["", "**Table C.1 - correlation**", "",
            (f"Pearson r between difference score and per-slice Dice of the fused model: "
             f"{_num(cor['pearson_difference_score_vs_dice'])} over {cor['slices']} slices with a non-empty mask."),
            ""]
    return "\n".join(out)


def plot_filter_curve(rows: Sequence[Mapping], path: str | Path, title: str = "") -> None:
    """PNG of the filter curve: Dice of the kept slices and % removed against the threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = [r["threshold"] for r in rows]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    nan = float("nan")
    val = lambda r, k: nan if r[k] is None else r[k]  # noqa: E731
    ax.plot(t, [val(r, "dice_kept_per_slice_paper") for r in rows], "o-", color="tab:blue",
            label="Dice of kept slices (per slice, paper)")
    ax.plot(t, [val(r, "dice_kept_per_slice_tumour") for r in rows], "s--", color="tab:cyan",
            label="Dice of kept tumour slices")
    ax.set_xlabel("difference-score threshold")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(t, [val(r, "percent_removed") for r in rows], "^-", color="tab:red", label="% slices removed")
    ax2.set_ylabel("% slices removed", color="tab:red")
    ax2.set_ylim(0, max(5.0, max((val(r, "percent_removed") for r in rows), default=0) * 1.1))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title(title or "Difference-score filter (000 Table 6 / A.1)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


# --------------------------------------------------------------------------------------------
# The whole command


def load_evaluation_bundle(path: str | Path) -> Bundle:
    """Load a bundle with its inference models plus the optional ones of :data:`OPTIONAL_MODELS`."""
    bundle = Bundle.load(path)
    specs = bundle.config.get("models", {})
    for name in OPTIONAL_MODELS:
        if name in specs and name not in bundle.models:
            bundle.models[name] = load_model(bundle.path, name, specs[name])
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
    from . import __version__

    summary = summarise(evaluations, bundle, options)
    return _clean({
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"name": bundle.name, "path": str(bundle.path.resolve()),
                   "bundle_json_sha256": hashlib.sha256((bundle.path / BUNDLE_FILE).read_bytes()).hexdigest(),
                   "channels": bundle.channels, "models": sorted(bundle.config.get("models", {}))},
        "configuration": dict(configuration),
        **summary,
        **(dict(extra) if extra else {}),
    })


def write_outputs(out_dir: str | Path, metrics: Mapping, evaluations: Sequence[CaseEvaluation]) -> list[Path]:
    """Write every output file atomically (all appear together or none)."""
    keys = [k for k, e in metrics["segmentation"].items() if e["available"]]
    seeds = bool(metrics["seeds"].get("computed"))
    slice_rows, slice_cols = per_slice_rows(evaluations, keys)
    vol_rows, vol_cols = per_volume_rows(evaluations, keys, seeds)
    curve = metrics["filter_curve"]["rows"]
    with OutputSet(out_dir) as out:
        Path(out.path(OUTPUTS["metrics"])).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        Path(out.path(OUTPUTS["tables"])).write_text(tables_markdown(metrics))
        write_csv(vol_rows, vol_cols, out.path(OUTPUTS["per_volume"]))
        write_csv(slice_rows, slice_cols, out.path(OUTPUTS["per_slice"]))
        write_csv([{k: _fmt(r[k]) if k != "threshold" else f"{r[k]:.1f}" for k in FILTER_COLUMNS} for r in curve],
                  FILTER_COLUMNS, out.path(OUTPUTS["filter_curve"]))
        plot_filter_curve(curve, out.path(OUTPUTS["filter_plot"]),
                          f"{metrics['bundle']['name']}: difference-score filter (fused model)")
        return out.commit()


def read_csv(path: str | Path) -> list[dict]:
    """Rows of an output CSV as dicts of strings (for tests and scripts)."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


__all__ = ["FILTER_THRESHOLDS", "MODELS", "OUTPUTS", "RESIDUAL_GRID", "CaseEvaluation", "EvaluateOptions",
           "build_metrics", "choose_residual_threshold", "evaluate_case", "filter_curve", "load_evaluation_bundle",
           "pearson", "plot_filter_curve", "require_masks", "residual_baseline", "residual_map",
           "residual_setting", "residual_threshold_curve", "run_evaluation", "select_cases", "summarise",
           "tables_markdown", "write_outputs"]
