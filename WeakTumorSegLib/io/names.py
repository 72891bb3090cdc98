"""Names other parts rely on: the output files of ``segment``, the columns of its per-slice table
and the segments of its segmentation file. The Slicer module reads them from here; this module
imports nothing beyond the standard library."""

from __future__ import annotations

#: Columns of ``<name>_slices.csv``, one row per axial slice.
SLICE_COLUMNS = ("slice", "p_tumor", "difference_score", "flagged", "flag_reason", "tumor_pixels")
#: Segment names of ``<name>.seg.nrrd``.
TUMOR_SEGMENT = "Tumor"
POSITIVE_SEEDS_SEGMENT = "Positive seeds"
NEGATIVE_SEEDS_SEGMENT = "Negative seeds"
#: Why a slice is flagged (``flag_reason``; several are joined by ``;``).
REASON_LOW_DIFFERENCE = "low_difference_score"
REASON_UNDECIDED = "classifier_undecided"


def segment_outputs(name: str) -> dict[str, str]:
    """The file names ``segment`` writes for the output stem ``name``, by kind."""
    return {"segmentation": f"{name}.seg.nrrd", "mask": f"{name}_mask.nii.gz",
            "slices": f"{name}_slices.csv", "report": f"{name}_report.json"}

#: The seed methods (``seeds.method``; :mod:`WeakTumorSegLib.stages.seeds`), here so that the CLI
#: can offer them without importing torch.
SEED_METHODS = ("rise", "superpixel", "gradcam", "acam")
