"""Write cohort patients' true masks as reviewed exports of the Slicer module.

Mlynarski et al.'s comparison (a few fully annotated patients plus many slice-labelled ones) and
the final segmenter's ceiling (every training patient annotated) need exports that a reviewer
would have made by correcting every slice: ``<patient>_flair_mask.nii.gz`` (the true mask on the
FLAIR's voxel grid) and ``<patient>_flair_manifest.csv`` (every slice ``corrected``). The folder is
then given to ``weaktumorseg train --annotations``.

    python benchmarks/annotated_exports.py --data ../shared/data/lgg --out ann5 --count 5 \\
        --from-split RUN/split.json        # 5 of the run's training patients, drawn with --seed
    python benchmarks/annotated_exports.py --data ../shared/data/lgg --out ann --patient ID [--patient ID ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import SimpleITK as sitk  # noqa: E402

from WeakTumorSegLib.io.annotations import MANIFEST_SUFFIX, MASK_SUFFIX  # noqa: E402
from WeakTumorSegLib.io.cohort import discover  # noqa: E402


def write_export(case, out: Path) -> int:
    """One patient's true mask as a fully corrected export; returns its tumour voxels."""
    flair = sitk.ReadImage(str(case.channels["flair"]))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))) > 0
    if truth.shape != sitk.GetArrayFromImage(flair).shape:
        raise SystemExit(f"{case.mask}: mask grid {truth.shape} differs from the FLAIR's")
    mask = sitk.GetImageFromArray(truth.astype(np.uint8))
    mask.CopyInformation(flair)
    stem = f"{case.id}_flair"
    sitk.WriteImage(mask, str(out / f"{stem}{MASK_SUFFIX}"), True)
    with open(out / f"{stem}{MANIFEST_SUFFIX}", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("volume", "slice", "status", "difference_score", "tumor_pixels"))
        for k in range(truth.shape[0]):
            w.writerow((stem, k, "corrected", "", int(truth[k].sum())))
    return int(truth.sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="cohort folder with masks")
    ap.add_argument("--out", type=Path, required=True, help="export folder to write (created)")
    ap.add_argument("--patient", action="append", default=[], help="patient id to export (repeatable)")
    ap.add_argument("--from-split", type=Path, help="a training run's split.json: draw from its training patients")
    ap.add_argument("--count", type=int, help="with --from-split: how many to draw (default: all of them)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    args = ap.parse_args(argv)
    cases = {c.id: c for c in discover(args.data, ["flair"])}
    ids = list(args.patient)
    if args.from_split:
        pool = sorted(json.loads(args.from_split.read_text())["train"])
        n = len(pool) if args.count is None else args.count
        ids += sorted(np.random.default_rng(args.seed).choice(pool, n, replace=False).tolist())
    if not ids:
        ap.error("give --patient or --from-split")
    args.out.mkdir(parents=True, exist_ok=True)
    for pid in ids:
        if pid not in cases or cases[pid].mask is None:
            raise SystemExit(f"{args.data}: no patient {pid} with a mask")
        print(f"{pid}: {write_export(cases[pid], args.out)} tumour voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
