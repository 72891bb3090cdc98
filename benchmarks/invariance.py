"""Does a bundle see every copy of a patient the same way? Copies of the TCGA-LGG validation patients
as other sites would store them, and each copy's per-volume Dice next to the unmodified patients'.

Copies (each a cohort folder with true headers, ``<out>/copies-<channels>/<name>/``, of the
bundle's channels):

* ``stripped``: every channel zero outside the brain mask the pipeline extracts from the
  original (then fed as if it had been skull-stripped elsewhere);
* ``spacing_1.0`` and ``spacing_0.5``: resampled in-plane (linear; the mask nearest-neighbour)
  from the declared 0.9 mm to 1.0 x 1.0 mm and 0.5 x 0.5 mm, the spacing in the header;
* ``uint16_x16``: intensities times 16, stored as uint16;
* ``zscore``: intensities z-scored over the whole volume, stored as float32 (negative values);
* ``reoriented``: the same anatomy stored in another axis order, orientation code ``RIA``
  (columns towards patient right, rows inferior, slices anterior), with its direction matrix.

The unmodified patients are evaluated from ``--data`` with the cohort's geometry declaration.

    python benchmarks/invariance.py --data ../shared/data/lgg \\
        --geometry Resources/Cohorts/tcga-lgg.geometry.json \\
        --bundle Resources/Models/tcga-lgg-flair --out /tmp/invariance

writes ``<out>/<bundle>/invariance.json`` and prints a table (per-volume Dice and its difference).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from _common import REPO_ROOT

from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.io.cohort import discover
from WeakTumorSegLib.io.images import read_channels
from WeakTumorSegLib.io.orientation import code_from_direction, direction_from_code
from WeakTumorSegLib.preprocessing.orientation import Reorientation
from WeakTumorSegLib.preprocessing.standardise import standardise

COPIES = ("stripped", "spacing_1.0", "spacing_0.5", "uint16_x16", "zscore", "reoriented")
REORIENTED = "RIA"


def _image(a: np.ndarray, spacing, direction, dtype) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(a.astype(dtype)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(direction)
    return img


def _resample(img: sitk.Image, inplane: float, nearest: bool) -> sitk.Image:
    sp = img.GetSpacing()
    size = [int(round(img.GetSize()[i] * sp[i] / inplane)) for i in (0, 1)] + [img.GetSize()[2]]
    return sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                         img.GetOrigin(), (inplane, inplane, sp[2]), img.GetDirection(), 0.0, img.GetPixelID())


def make_copies(bundle: Bundle, data: Path, geometry: Path, ids: list[str], out: Path) -> None:
    cases = {c.id: c for c in discover(data, bundle.channels, geometry)}
    for pid in ids:
        case = cases[pid]
        vol = read_channels(case.channels)
        geom = case.geometry(vol.geometry)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask))) > 0
        std = standardise(vol.channels, bundle.channels, bundle.preprocessing, bundle.flair_channel, geom.spacing,
                          code_from_direction(geom.direction))
        brain = std.to_input(std.brain.astype(np.float32)) > 0.5
        spacing, direction = geom.spacing, geom.direction
        for name in COPIES:
            folder = out / name / pid
            folder.mkdir(parents=True, exist_ok=True)
            arrays = dict(vol.channels)
            seg, sp, dr, dtype = mask, spacing, direction, np.float32
            if name == "stripped":
                arrays = {c: a * brain for c, a in arrays.items()}
            elif name == "uint16_x16":
                arrays, dtype = {c: np.round(a) * 16 for c, a in arrays.items()}, np.uint16
            elif name == "zscore":
                arrays = {c: (a - a.mean()) / a.std() for c, a in arrays.items()}
            elif name == "reoriented":
                reo = Reorientation(REORIENTED)
                canon = Reorientation(code_from_direction(direction))
                arrays = {c: reo.to_input(canon.to_canonical(a)) for c, a in arrays.items()}
                seg = reo.to_input(canon.to_canonical(mask))
                sp = reo.spacing_xyz(canon.spacing(spacing))
                dr = direction_from_code(REORIENTED)
            for c, a in arrays.items():
                img = _image(a, sp, dr, dtype)
                if name.startswith("spacing_"):
                    img = _resample(img, float(name.split("_")[1]), nearest=False)
                sitk.WriteImage(img, str(folder / f"{pid}_{c}.nii.gz"), useCompression=True)
            img = _image(seg, sp, dr, np.uint8)
            if name.startswith("spacing_"):
                img = _resample(img, float(name.split("_")[1]), nearest=True)
            sitk.WriteImage(img, str(folder / f"{pid}_seg.nii.gz"), useCompression=True)


def evaluate(bundle: Path, data: Path, ids: list[str], out: Path, threads: int, geometry: Path | None) -> float:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "WeakTumorSegLib", "evaluate", "--bundle", str(bundle), "--data", str(data),
           "--patients", ",".join(ids), "--no-seeds", "--out", str(out), "--threads", str(threads),
           "--progress", "none", "--quiet"]
    if geometry is not None:
        cmd += ["--geometry", str(geometry)]
    subprocess.run(cmd, check=True, cwd=REPO_ROOT)
    seg = json.loads((out / "metrics.json").read_text())["segmentation"]
    main = seg["final"] if seg.get("final", {}).get("available") else seg["fused"]  # the bundle's own mask
    return float(main["per_volume_3d"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--geometry", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    for path in args.bundle:
        bundle = Bundle.load(path)
        name, ids = bundle.name, list(bundle.config["training"]["split"]["val"])
        copies = args.out / ("copies-" + "-".join(bundle.channels))  # the copies hold the bundle's channels
        if not (copies / COPIES[-1]).is_dir():
            make_copies(bundle, args.data, args.geometry, ids, copies)
        res = {"unmodified": evaluate(path, args.data, ids, args.out / name / "unmodified", args.threads,
                                      args.geometry)}
        for copy in COPIES:
            res[copy] = evaluate(path, copies / copy, ids, args.out / name / copy, args.threads, None)
        (args.out / name).mkdir(parents=True, exist_ok=True)
        (args.out / name / "invariance.json").write_text(json.dumps({"patients": ids, "per_volume_dice": res},
                                                                    indent=2) + "\n")
        print(f"bundle {name}: per-volume Dice on {len(ids)} validation patients")
        for k, v in res.items():
            print(f"  {k:12s} {v:.4f}  ({v - res['unmodified']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
