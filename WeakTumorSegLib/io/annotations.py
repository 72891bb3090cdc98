"""Reviewed results exported by the Slicer module, read back for training.

An export folder holds, per reviewed volume, ``<volume>_mask.nii.gz`` (the possibly corrected
tumour mask on the volume's voxel grid) and ``<volume>_manifest.csv`` (columns ``volume, slice,
status, difference_score, tumor_pixels``; one row per slice ``k`` of the stored volume, status
``kept``, ``corrected``, ``flagged`` or ``excluded``). A ``<volume>.seg.nrrd`` beside them is not
needed. An export belongs to the cohort patient whose id is the volume name or its beginning
followed by ``_`` (``TCGA_DU_7018_19911220_flair`` belongs to ``TCGA_DU_7018_19911220``).

Training reads a ``kept`` or ``corrected`` slice as fully annotated (its mask is the truth), a
``flagged`` one as weakly labelled and never uses an ``excluded`` one.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .cohort import Case, read_mask
from .images import Geometry, read_image

STATUSES = ("kept", "flagged", "corrected", "excluded")
MANIFEST_SUFFIX = "_manifest.csv"
MASK_SUFFIX = "_mask.nii.gz"


@dataclass(frozen=True)
class Annotation:
    """One exported volume: its mask file and each stored slice's review status."""

    volume: str
    mask: Path
    manifest: Path
    status: tuple[str, ...]  #: per slice ``k`` of the stored volume

    def full(self) -> np.ndarray:
        """Per stored slice: True where the mask is the truth (``kept`` or ``corrected``)."""
        return np.isin(np.asarray(self.status), ("kept", "corrected"))

    def excluded(self) -> np.ndarray:
        return np.asarray(self.status) == "excluded"


def read_manifest(path: Path) -> tuple[str, tuple[str, ...]]:
    """``(volume name, statuses by slice)`` of one manifest; :class:`InputError` naming it otherwise."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the export manifest ({exc})", path) from None
    if not rows or not {"volume", "slice", "status"} <= set(rows[0]):
        raise InputError("not an export manifest: it needs rows with columns volume, slice and status", path)
    status: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        try:
            k = int(row["slice"])
        except (TypeError, ValueError):
            raise InputError(f"line {line}: slice {row['slice']!r} is not a whole number", path) from None
        if row["status"] not in STATUSES:
            raise InputError(f"line {line}: status {row['status']!r} is not one of {', '.join(STATUSES)}", path)
        status[k] = row["status"]
    if sorted(status) != list(range(len(status))):
        raise InputError(f"slices must run 0..{len(status) - 1} once each", path)
    return rows[0]["volume"], tuple(status[k] for k in range(len(status)))


def read_annotations(folder: str | Path) -> list[Annotation]:
    """Every export in ``folder`` (a manifest with its mask beside it)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError("annotation folder not found", root)
    out = []
    for manifest in sorted(root.glob(f"*{MANIFEST_SUFFIX}")):
        stem = manifest.name[: -len(MANIFEST_SUFFIX)]
        mask = root / f"{stem}{MASK_SUFFIX}"
        if not mask.is_file():
            raise InputError(f"the export's mask {mask.name} is missing beside its manifest", manifest)
        _, status = read_manifest(manifest)
        out.append(Annotation(stem, mask, manifest, status))
    if not out:
        raise InputError(f"no export in the folder (no *{MANIFEST_SUFFIX})", root)
    return out


def match_annotations(annotations: Sequence[Annotation], ids: Sequence[str], where: Path) -> dict[str, Annotation]:
    """Each export's patient id (see the module docstring); an export matching no patient, or a
    patient with two exports, is an :class:`InputError`."""
    out: dict[str, Annotation] = {}
    for a in annotations:
        owners = [i for i in ids if a.volume == i or a.volume.startswith(i + "_")]
        if not owners:
            raise InputError(f"export '{a.volume}' belongs to no patient of the cohort", a.manifest)
        owner = max(owners, key=len)
        if owner in out:
            raise InputError(f"patient {owner} has two exports ({out[owner].volume} and {a.volume})", where)
        out[owner] = a
    return out


def check_export(annotation: Annotation, case: Case) -> np.ndarray:
    """The export's mask, read after checking that it lies on the voxel grid of the patient's first
    channel and that its manifest lists every slice; :class:`InputError` naming the file otherwise."""
    name, path = next(iter(case.channels.items()))
    image, _ = read_image(path)
    mask = read_mask(annotation.mask, Geometry.of(image), f"its image, channel '{name}' ({path})")
    if len(annotation.status) != mask.shape[0]:
        raise InputError(f"the manifest lists {len(annotation.status)} slices, the volume has {mask.shape[0]}",
                         annotation.manifest)
    return mask
