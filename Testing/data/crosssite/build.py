"""Rebuild the cross-site validation cases from their original files.

Source: https://github.com/JeroenBertels/deepvoxnet2, folder demos/brats_2018,
commit 46d6e32ae942b57553e1ba278b0d9d9ff869e7f8 (unchanged at 038837622ee85bbeb92a74fcaf0942c529001a4b).
Each source folder case_<n>/ holds FLAIR.nii.gz, T1.nii.gz, GT_W.nii.gz (whole-tumour mask)
and subject_id.txt (original BraTS 2018 subject id).

Transformation (lossless, voxel grid unchanged):
  * FLAIR, T1: float32 -> int16 (the source values are integers in [0, 32767); this is asserted).
  * GT_W: float32 {0, 1} -> uint8 {0, 1} (asserted binary and non-empty).
  * Spacing, origin and direction are copied from the source image; no cropping, no resampling.

Usage:
    python build.py <path/to/deepvoxnet2/demos/brats_2018> [<output dir>]
"""

import os
import sys

import numpy as np
import SimpleITK as sitk

# source folder -> BraTS 2018 subject id (from the subject_id.txt files); CBICA subjects only
CASES = {
    "case_0": "Brats18_CBICA_AOO_1",
    "case_2": "Brats18_CBICA_ARW_1",
    "case_3": "Brats18_CBICA_ASK_1",
    "case_5": "Brats18_CBICA_AAB_1",
    "case_6": "Brats18_CBICA_ATV_1",
    "case_7": "Brats18_CBICA_ASA_1",
    "case_8": "Brats18_CBICA_AQN_1",
}

CHANNELS = (("FLAIR", "flair"), ("T1", "t1"))


def convert(src_dir, out_dir):
    for folder, case_id in sorted(CASES.items()):
        case_src = os.path.join(src_dir, folder)
        with open(os.path.join(case_src, "subject_id.txt")) as fh:
            assert case_id in fh.read(), (folder, case_id)
        case_out = os.path.join(out_dir, case_id)
        os.makedirs(case_out, exist_ok=True)

        ref = None
        for src_name, suffix in CHANNELS:
            img = sitk.ReadImage(os.path.join(case_src, src_name + ".nii.gz"))
            arr = sitk.GetArrayFromImage(img)
            assert np.array_equal(arr, np.round(arr)), (case_id, src_name)
            assert arr.min() >= 0 and arr.max() < 32767, (case_id, src_name)
            out = sitk.GetImageFromArray(arr.astype(np.int16))
            out.CopyInformation(img)
            sitk.WriteImage(out, os.path.join(case_out, "%s_%s.nii.gz" % (case_id, suffix)), True)
            ref = ref or img

        seg = sitk.ReadImage(os.path.join(case_src, "GT_W.nii.gz"))
        arr = sitk.GetArrayFromImage(seg)
        assert set(np.unique(arr).tolist()) <= {0.0, 1.0} and arr.any(), case_id
        assert seg.GetSize() == ref.GetSize() and seg.GetSpacing() == ref.GetSpacing()
        out = sitk.GetImageFromArray(arr.astype(np.uint8))
        out.CopyInformation(seg)
        sitk.WriteImage(out, os.path.join(case_out, "%s_seg.nii.gz" % case_id), True)
        print(case_id, "done")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__)))
