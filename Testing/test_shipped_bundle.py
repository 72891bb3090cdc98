"""The shipped default bundle segments the shipped sample: the mask lands on the tumour."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.bundle import MODELS_DIR, Bundle, default_bundle_dir
from WeakTumorSegLib.inference import segment_arrays
from WeakTumorSegLib.io import read_segmentation
from WeakTumorSegLib.phantoms import make_phantom

from conftest import REPO_ROOT as ROOT, run_cli

SAMPLE = ROOT / "Resources" / "SampleData" / "PHANTOM_0001"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return Bundle.load(MODELS_DIR / (MODELS_DIR / "DEFAULT").read_text().strip())


def test_default_bundle_is_found_without_options(monkeypatch):
    monkeypatch.delenv("WEAKTUMORSEG_BUNDLE", raising=False)
    path = default_bundle_dir()
    assert (path / "bundle.json").is_file()
    assert Bundle.load(path).channels == ["flair", "t1", "t1ce"]


def test_sample_follows_the_data_layout():
    case = SAMPLE.name
    for suffix in ("flair", "t1", "t1ce", "seg"):
        assert (SAMPLE / f"{case}_{suffix}.nii.gz").is_file()
    with open(SAMPLE / f"{case}_slice_labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / f"{case}_seg.nii.gz")))
    assert [int(r["tumor"]) for r in rows] == (seg.sum(axis=(1, 2)) > 0).astype(int).tolist()


def test_cli_on_sample_lands_on_the_tumour(tmp_path):
    case = SAMPLE.name
    proc = run_cli("segment", *[f"-c{c}={SAMPLE / f'{case}_{c}.nii.gz'}" for c in ("flair", "t1", "t1ce")],
                   "--out", str(tmp_path), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) in proc.stdout  # the summary says where the outputs are
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / f"{case}_seg.nii.gz")))
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{case}_flair_mask.nii.gz")))
    assert dice(mask, truth) >= 0.75
    assert read_segmentation(tmp_path / f"{case}_flair.seg.nrrd")["Tumor"].sum() == mask.sum()
    report = json.loads((tmp_path / f"{case}_flair_report.json").read_text())
    assert report["bundle"]["name"] == "phantom-standin"


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_unseen_phantoms_are_segmented(bundle, seed):
    ph = make_phantom(shape=(20, 170, 180), n_tumors=1, seed=seed)
    result = segment_arrays(bundle, ph.channels, "cpu")
    assert dice(result.mask, ph.mask) >= 0.7
    # no tumour found far from the truth: slices without tumour stay (nearly) empty
    healthy_slices = ph.slice_labels == 0
    assert result.mask[healthy_slices].sum() <= 0.05 * ph.mask.sum()
