"""The numbers of an evaluation (Yoo et al., section 4) from per-slice counts: the classifier
(Table 2), the seed overlap (Table 3), the Dice of every model and baseline (Tables 4 and 5),
the difference-score filter curve (Table 6 / A.1) and its correlation with Dice (Table C.1).

Dice is always reported under a named convention: ``per_volume_3d`` (3D Dice of each patient
volume, averaged over the tumour-bearing volumes), ``per_slice_paper`` (2D Dice of every
evaluated axial slice with an empty prediction on an empty truth = 1, averaged over all slices;
the paper's convention) and ``per_slice_tumour`` (2D Dice averaged over the slices whose truth has
tumour). docs/evaluation.md describes the protocol.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..metrics import RESAMPLES, dice_from_counts, mean_interval, roc_auc, sensitivity_specificity
from ..stages.difference_filter import flag_slices

#: Evaluated models: key -> (label, table, bundle model or None for derived ones).
MODELS: dict[str, tuple[str, str, str | None]] = {
    "s0": ("Initial (S0)", "4", "segmenter0"),
    "s_os": ("Refined, over-segmenting (S_OS alone)", "4", "segmenter_os"),
    "s_us": ("Refined, under-segmenting (S_US alone)", "4", "segmenter_us"),
    "fused": ("Combined (fused S_OS + S_US)", "4", None),
    "final": ("Final segmenter (trained on the filtered fused masks; not in the paper)", "4", "final"),
    "seed_only": ("Baseline: S0 trained with the seed loss only", "5", "baseline_seed_only"),
    "residual": ("Baseline: FLAIR residual, 5x5 median, threshold (Baur et al.)", "5", None),
}

#: Difference-score thresholds of the filter curve (Yoo et al., Table A.1).
FILTER_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))

CONVENTIONS = {
    "per_volume_3d": "3D Dice of each patient volume, averaged over the tumour-bearing volumes (truth non-empty)",
    "per_slice_paper": "2D Dice of each axial slice, empty prediction vs empty truth = 1, averaged over all "
                       "evaluated slices (Yoo et al.'s convention)",
    "per_slice_tumour": "2D Dice of each axial slice, averaged over the slices whose truth has tumour",
    "per_volume_3d_interval": "95 % percentile-bootstrap interval of per_volume_3d, the tumour-bearing volumes "
                              f"resampled with replacement {RESAMPLES:,} times (seed 0)",
}


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
    away: dict[str, int] = field(default_factory=dict)  #: per model, :func:`~WeakTumorSegLib.metrics.voxels_away`

    @property
    def slices(self) -> int:
        return int(len(self.truth_pixels))


def available_models(models: Collection[str], residual_threshold: float | None,
                     final_weight: float = 1.0) -> dict[str, bool]:
    """Which of :data:`MODELS` can be evaluated with a bundle that has the networks ``models``
    (the final segmenter only when its ``final_weight`` is above 0)."""
    out = {}
    for key, (_, _, model) in MODELS.items():
        if key == "residual":
            out[key] = residual_threshold is not None
        elif key == "final":
            out[key] = model in models and final_weight > 0
        elif model is None:
            out[key] = True
        else:
            out[key] = model in models
    return out

def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation coefficient; NaN with fewer than two values or a constant input."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def filter_curve(dice: np.ndarray, mask_pixels: np.ndarray, scores: np.ndarray, truth_pixels: np.ndarray,
                 thresholds: Sequence[float] = FILTER_THRESHOLDS) -> list[dict]:
    """Table 6 / A.1: per threshold, the slices the difference-score filter removes (non-empty
    mask and score below the threshold, Yoo et al., section 2.5), the mean per-slice Dice of the kept
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


def _nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def clean_json(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return _nan(obj)
    return obj


def _classifier_metrics(truth: np.ndarray, scores: np.ndarray, gate: float) -> dict:
    sens, spec = sensitivity_specificity(truth, scores, gate)
    return {"auc": roc_auc(truth, scores), "sensitivity": sens, "specificity": spec,
            "slices": int(len(truth)), "tumour_slices": int(np.sum(truth))}


def classifier_summary(cases: Sequence[CaseEvaluation], gate: float) -> dict:
    """Table 2: AUC, sensitivity and specificity of ``p_tumor`` against the masks' slice truth and,
    when the patients have them, against their slice-label CSVs."""
    truth = np.concatenate([c.truth_pixels for c in cases]) > 0
    p = np.concatenate([c.p_tumor for c in cases])
    out = {"score": "p_tumor: the largest classifier output over the slice's patches",
           "decision_threshold": gate,
           "from_masks": {"truth": "slice has tumour in the ground-truth mask", **_classifier_metrics(truth, p, gate)}}
    with_labels = [c for c in cases if c.label_csv is not None]
    out["from_labels"] = None
    if with_labels:
        out["from_labels"] = {
            "truth": "the patient's slice-label CSV", "patients": len(with_labels),
            **_classifier_metrics(np.concatenate([c.label_csv for c in with_labels]) > 0,
                                  np.concatenate([c.p_tumor for c in with_labels]), gate)}
    return out


def seed_summary(cases: Sequence[CaseEvaluation], computed: bool) -> dict:
    """Table 3: the seed overlap metric, voxels pooled over the patients."""
    if not computed:
        return {"computed": False, "reason": "--no-seeds"}
    tot = {k: sum(c.seeds[k] for c in cases) for k in cases[0].seeds} if cases else {}
    return {"computed": True, "pooled": "voxels of all evaluated patients pooled",
            "positive_overlap": tot["positive_in_truth"] / tot["positive_voxels"] if tot["positive_voxels"]
            else float("nan"),
            "negative_overlap": tot["negative_outside_truth"] / tot["negative_voxels"]
            if tot["negative_voxels"] else float("nan"), **tot}


def segmentation_summary(cases: Sequence[CaseEvaluation], have: Mapping[str, bool]) -> dict:
    """Tables 4 and 5: every model's Dice under the three conventions (or why it is not available)."""
    truth = np.concatenate([c.truth_pixels for c in cases])
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
                "per_volume_3d_interval": list(mean_interval(vols)),
                "per_slice_paper": float(d.mean()) if len(d) else float("nan"),
                "per_slice_tumour": float(d[truth > 0].mean()) if (truth > 0).any() else float("nan"),
                "volumes": len(vols), "slices": int(len(d)), "tumour_slices": int((truth > 0).sum()),
                "predicted_voxels": int(pix.sum()),
            })
        segmentation[key] = entry
    return segmentation


def summarise(cases: Sequence[CaseEvaluation], have: Mapping[str, bool], gate: float, seeds: bool,
              thresholds: Sequence[float] = FILTER_THRESHOLDS) -> dict:
    """The metrics of Tables 2-6 and C.1 from per-slice counts (see the module docstring); ``have``
    says which models were evaluated (:func:`available_models`), ``gate`` is the classifier's
    decision threshold and ``seeds`` whether the seed overlap was computed."""
    truth = np.concatenate([c.truth_pixels for c in cases])
    scores = np.concatenate([c.difference_score for c in cases])
    fused_pix = np.concatenate([c.models["fused"][0] for c in cases])
    fused_dice = dice_from_counts(fused_pix, np.concatenate([c.models["fused"][1] for c in cases]), truth)
    nonempty = fused_pix > 0
    bearing = sum(1 for c in cases if c.truth_pixels.sum() > 0)
    return {
        "cohort": {"patients": len(cases), "tumour_bearing_volumes": bearing, "slices": int(len(truth)),
                   "tumour_slices": int((truth > 0).sum()), "truth_voxels": int(truth.sum())},
        "conventions": CONVENTIONS,
        "classifier": classifier_summary(cases, gate),
        "seeds": seed_summary(cases, seeds),
        "segmentation": segmentation_summary(cases, have),
        "filter_curve": {"model": "fused", "rule": "remove a slice when its fused mask is non-empty and its "
                                                   "difference score < threshold (Yoo et al., section 2.5)",
                         "dice_convention": "per_slice_paper (and per_slice_tumour for kept tumour slices)",
                         "rows": filter_curve(fused_dice, fused_pix, scores, truth, thresholds)},
        "correlation": {"pearson_difference_score_vs_dice": pearson(scores[nonempty], fused_dice[nonempty]),
                        "slices": int(nonempty.sum()), "model": "fused",
                        "over": "slices whose fused mask is non-empty; Dice per slice"},
    }


def volume_dice(case: CaseEvaluation, key: str) -> float:
    """3D Dice of one patient for model ``key`` (empty vs empty = 1)."""
    pix, ovl = case.models[key]
    return float(dice_from_counts(pix.sum(), ovl.sum(), case.truth_pixels.sum()))
