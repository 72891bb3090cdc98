"""Signs that a training run failed, reported as warnings: logged when seen, repeated after the stage
times and kept in ``bundle.json`` under ``training.warnings`` (``segment`` and ``evaluate`` repeat
them): a segmenter that collapsed to empty masks and, when the cohort has masks, positive seeds
mostly outside the tumours or a fused model that misses the validation tumours."""

from __future__ import annotations

import math
from collections.abc import Mapping

#: below this share of its positive seeds covered, a segmenter is reported as collapsed
COLLAPSE_RECALL = 0.05
SEGMENTER_STAGES = ("segmenter0", "segmenter_us", "segmenter_os", "segmenter_seed_only")
#: a run whose positive seeds lie less than this much inside the tumour masks (Yoo et al., section 4.1
#: seed overlap on X_C) learnt its seeds away from the tumour (working TCGA-LGG runs: 0.23-0.80,
#: phantom runs above 0.8; a failed run: 0.05)
MIN_SEED_OVERLAP = 0.15
#: a run whose fused model scores below this Dice on the validation tumour slices (patch level)
#: segments little of any tumour (working TCGA-LGG runs: 0.22-0.53, phantoms about 0.7; a failed
#: run: 0.06)
MIN_VALIDATION_DICE = 0.15


def training_warnings(stages: Mapping[str, Mapping], metrics: Mapping | None = None) -> list[str]:
    """One line per sign that a run failed, from the stages' ``done.json`` records and the
    bundle's validation ``metrics``: a segmenter that collapsed to empty masks; with masks, positive
    seeds away from the tumours and a fused model that misses the validation tumours. Empty when
    the run looks sound (a label-only cohort can only show the first)."""
    out = []
    for stage in SEGMENTER_STAGES:
        recall = (stages.get(stage) or {}).get("positive_seed_recall")
        if recall is not None and recall < COLLAPSE_RECALL:
            out.append(f"{stage}: the mask covers {100 * recall:.1f} % of the positive seeds of its training images "
                       "(the output stays below 0.5 there); the size prior may be too strong for this cohort: "
                       "lower segmenter.zeta")
    overlap = (stages.get("seeds") or {}).get("seed_overlap_positive")
    if overlap is not None and overlap < MIN_SEED_OVERLAP:
        out.append(f"seeds: only {overlap:.0%} of the positive seeds lie inside the tumour masks (expected at "
                   f"least {MIN_SEED_OVERLAP:.0%}): the classifier's explanations miss the tumours and the "
                   "segmenters learn from them; train again with another 'seed' in --config or with more patients")
    dice = (metrics or {}).get("dice_fused_tumour_slices")
    if dice is not None and math.isfinite(dice) and dice < MIN_VALIDATION_DICE:
        out.append(f"validation: the fused model's Dice on the validation tumour slices is {dice:.2f} (expected at "
                   f"least {MIN_VALIDATION_DICE:.2f}): this bundle segments little of any tumour")
    return out
