"""End-to-end `segment` on an oblique, anisotropic phantom: outputs keep the input geometry."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.io.segmentation import read_segmentation
from support.phantoms import make_phantom, write_case

from conftest import REPO_ROOT, STANDIN_BUNDLE, channel_args, run_cli


def _oblique_direction() -> tuple[float, ...]:
    a, b = np.deg2rad(17.0), np.deg2rad(-8.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return tuple((rz @ rx).ravel())


@pytest.fixture(scope="module")
def oblique_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    ph = make_phantom(shape=(10, 150, 170), seed=11)
    paths = write_case(ph, root / "case", "OBL", spacing=(0.9, 0.9, 3.0), direction=_oblique_direction(),
                       origin=(-91.5, 120.25, -33.0))
    out = root / "out"
    # the shipped phantom-trained stand-in, so that the mask is not trivially empty
    proc = run_cli("segment", "--bundle", STANDIN_BUNDLE, "--out", str(out), "--device", "cpu", "--progress", "none",
                   "--seeds", "--seed-masks", "40", *channel_args(paths))
    return paths, out, proc


def test_four_outputs_exist(oblique_run):
    paths, out, proc = oblique_run
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["OBL_flair.seg.nrrd", "OBL_flair_mask.nii.gz", "OBL_flair_slices.csv",
                            "OBL_flair_report.json"])


def test_mask_geometry_equals_input(oblique_run):
    paths, out, _ = oblique_run
    ref = sitk.ReadImage(str(paths["flair"]))
    mask = sitk.ReadImage(str(out / "OBL_flair_mask.nii.gz"))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_seg_nrrd_tumor_equals_nifti_mask_and_geometry(oblique_run):
    import nrrd

    paths, out, _ = oblique_run
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "OBL_flair_mask.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["seg"]))).astype(bool)
    segments = read_segmentation(out / "OBL_flair.seg.nrrd")
    assert set(segments) == {"Tumor", "Positive seeds", "Negative seeds"}
    # the mask lands on the tumour (3D Dice 0.85), read back in the input's own voxel order
    assert 2 * (mask.astype(bool) & truth).sum() / (mask.sum() + truth.sum()) >= 0.7
    np.testing.assert_array_equal(segments["Tumor"], mask)
    # the seeds too: half the positive seeds on a tumour of under 1 % of the volume, no negative one on it
    pos, neg = segments["Positive seeds"].astype(bool), segments["Negative seeds"].astype(bool)
    assert (pos & truth).sum() >= 0.3 * pos.sum() > 0
    assert (neg & ~truth).sum() >= 0.99 * neg.sum() > 0

    data, header = nrrd.read(str(out / "OBL_flair.seg.nrrd"))
    ref = sitk.ReadImage(str(paths["flair"]))
    assert header["space"] == "left-posterior-superior"
    assert list(header["kinds"]) == ["list", "domain", "domain", "domain"]
    directions = np.asarray(header["space directions"])[1:]
    expected = (np.asarray(ref.GetDirection()).reshape(3, 3) * np.asarray(ref.GetSpacing())).T
    np.testing.assert_allclose(directions, expected, atol=1e-5)
    np.testing.assert_allclose(header["space origin"], ref.GetOrigin(), atol=1e-5)
    names = [header[f"Segment{i}_Name"] for i in range(3)]
    assert names == ["Tumor", "Positive seeds", "Negative seeds"]
    for i in range(3):
        assert "TerminologyEntry:" in header[f"Segment{i}_Tags"]
        assert len(header[f"Segment{i}_Color"].split()) == 3


def test_slice_table_and_report(oblique_run):
    paths, out, _ = oblique_run
    with open(out / "OBL_flair_slices.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["slice", "p_tumor", "difference_score", "flagged", "flag_reason", "tumor_pixels"]
    assert [int(r["slice"]) for r in rows] == list(range(10))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "OBL_flair_mask.nii.gz")))
    assert [int(r["tumor_pixels"]) for r in rows] == mask.sum(axis=(1, 2)).tolist()
    report = json.loads((out / "OBL_flair_report.json").read_text())
    assert report["bundle"]["name"] == "phantom-standin"
    assert report["device"] == "cpu"
    assert report["threshold"] == pytest.approx(0.2)
    for stage in ("read", "preprocess", "classify", "segment", "convert", "postprocess", "write", "total"):
        assert stage in report["timings_s"]
    assert report["counts"]["slices"] == 10
    # the volume uses the anisotropic voxels (0.9 x 0.9 x 3 mm)
    assert report["counts"]["tumor_volume_ml"] == pytest.approx(mask.sum() * 0.9 * 0.9 * 3.0 / 1000, abs=1e-3)


DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "lgg").is_dir(), reason="real patient data ../shared/data/lgg is absent")
def test_real_lgg_volume_round_trips_geometry(tmp_path, tiny_bundle):
    case = sorted(p for p in (DATA / "lgg").iterdir() if p.is_dir())[0]
    paths = {c: case / f"{case.name}_{c}.nii.gz" for c in ("flair", "t1", "t1ce")}
    proc = run_cli("segment", "--bundle", tiny_bundle, "--out", tmp_path, "--progress", "none",
                   *channel_args(paths))
    assert proc.returncode == 0, proc.stderr
    ref = sitk.ReadImage(str(paths["flair"]))
    mask = sitk.ReadImage(str(tmp_path / f"{case.name}_flair_mask.nii.gz"))
    assert mask.GetSize() == ref.GetSize()
    np.testing.assert_allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6)
    with open(tmp_path / f"{case.name}_flair_slices.csv") as fh:
        assert len(list(csv.DictReader(fh))) == ref.GetSize()[2]


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "brats_samples").is_dir(), reason="BraTS sample ../shared/data/brats_samples is absent")
def test_brats_channels_map_to_bundle_channels(tmp_path, tiny_bundle):
    case = DATA / "brats_samples" / "BraTS-GLI-00001-000"
    given = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
    proc = run_cli("segment", "--bundle", tiny_bundle, "--out", tmp_path, "--progress", "none",
                   *[f"-c{c}={case / f'{case.name}-{s}.nii.gz'}" for c, s in given.items()])
    assert proc.returncode == 0, proc.stderr
    assert "channel 't2'" in proc.stderr and "ignored" in proc.stderr
    mask = sitk.ReadImage(str(tmp_path / f"{case.name}-t2f_mask.nii.gz"))
    assert mask.GetSize() == (240, 240, 155)
