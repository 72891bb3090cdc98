"""The README's picture of the skull-stripped BraTS case: its FLAIR with each bundle's mask outlined,
on the axial slices where any bundle found tumour (and one slice either side).

    python benchmarks/brats_montage.py --out docs/brats-montage.png \\
        --bundle Resources/Models/tcga-lgg-default --bundle Resources/Models/tcga-lgg-flair

Runs ``weaktumorseg segment`` on ``../shared/data/brats_samples/BraTS-GLI-00001-000`` with each bundle
(into a temporary folder) and draws the slices in radiological display (patient right on the left).
The case has no ground-truth mask: the picture shows where the masks fall, not their accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from _common import BRATS_CHANNELS, REPO_ROOT  # noqa: E402

CASE = REPO_ROOT.parent / "shared" / "data" / "brats_samples" / "BraTS-GLI-00001-000"


def _axial(path: Path) -> np.ndarray:
    """A volume as axial slices in radiological display (rows anterior -> posterior, columns patient right -> left)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, action="append", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--columns", type=int, default=6)
    args = ap.parse_args()
    files = {BRATS_CHANNELS[p.name.split("-")[-1].split(".")[0]]: p for p in sorted(CASE.glob("*.nii.gz"))}
    flair = _axial(files["flair"])
    masks, reports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.bundle:
            out = Path(tmp) / bundle.name
            cmd = [sys.executable, "-m", "WeakTumorSegLib", "segment", "--bundle", str(bundle), "--out", str(out),
                   "--name", "brats", "--threads", "2", "--progress", "none", "--quiet"]
            info = json.loads((bundle / "bundle.json").read_text())
            for ch in info["channels"]:
                cmd += ["-c", f"{ch}={files[ch]}"]
            subprocess.run(cmd, check=True, cwd=REPO_ROOT)
            masks[bundle.name] = _axial(out / "brats_mask.nii.gz") > 0
            reports[bundle.name] = json.loads((out / "brats_report.json").read_text())
    found = np.flatnonzero(np.logical_or.reduce([m.any(axis=(1, 2)) for m in masks.values()]))
    lo, hi = (found.min() - 1, found.max() + 1) if len(found) else (60, 100)
    ks = np.unique(np.linspace(max(lo, 0), min(hi, flair.shape[0] - 1), args.columns).round().astype(int))
    fig, axes = plt.subplots(len(masks), len(ks), figsize=(2.2 * len(ks), 2.4 * len(masks)), squeeze=False)
    for r, (name, mask) in enumerate(masks.items()):
        c = reports[name]["counts"]
        for j, k in enumerate(ks):
            ax = axes[r, j]
            ax.imshow(flair[k], cmap="gray")
            if mask[k].any():
                ax.contour(mask[k], [0.5], colors="red", linewidths=0.8)
            ax.set_axis_off()
            ax.set_title(f"slice {k}", fontsize=8)
        axes[r, 0].text(-0.05, 0.5, f"{name}\n{c['tumor_volume_ml']} ml", transform=axes[r, 0].transAxes,
                        rotation=90, ha="right", va="center", fontsize=8)
    fig.suptitle("BraTS-GLI-00001-000 (skull-stripped, 1 mm): FLAIR with each bundle's mask", fontsize=9)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90)
    for name, rep in reports.items():
        print(name, rep["counts"], rep["preprocessing"].get("skull_stripped"), rep["warnings"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
