"""The shipped bundles and sample data: the real-MR default bundle segments the shipped TCGA-LGG
sample patient (the mask lands on the tumour), the FLAIR-only bundle does too from FLAIR alone,
and the phantom stand-in still segments phantoms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from WeakTumorSegLib.bundle.info import MODELS_DIR, default_bundle_dir
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.io.segmentation import read_segmentation
from support.phantoms import make_phantom

from conftest import REPO_ROOT as ROOT, STANDIN_BUNDLE, run_cli

SAMPLES = ROOT / "Resources" / "SampleData"
SAMPLE = SAMPLES / "TCGA_DU_7018_19911220"
PHANTOM_SAMPLE = SAMPLES / "PHANTOM_0001"
DEFAULT_NAME = "tcga-lgg-default"
FLAIR_NAME = "tcga-lgg-flair"
#: each shipped bundle must stay at most this size (bytes): its six float16 networks, the final
#: segmenter (9.5 MB, it makes the mask) included, are about 32 MB; float32 weights or a
#: training-only baseline would exceed it
MAX_BUNDLE_BYTES = 35 * 10**6


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_default_bundle_is_the_real_mr_bundle(monkeypatch):
    monkeypatch.delenv("WEAKTUMORSEG_BUNDLE", raising=False)
    path = default_bundle_dir()
    assert path == MODELS_DIR / DEFAULT_NAME
    bundle = Bundle.load(path)
    assert bundle.channels == ["flair", "t1", "t1ce"]
    assert bundle.config["training"]["preset"] == "default"


@pytest.mark.parametrize("name", [DEFAULT_NAME, FLAIR_NAME])
def test_shipped_bundles_are_small_verified_and_documented(name):
    root = MODELS_DIR / name
    size = sum(f.stat().st_size for f in root.iterdir())
    assert size <= MAX_BUNDLE_BYTES, f"{name} is {size / 1e6:.1f} MB"
    bundle = Bundle.load(root)  # sha256 of every weight file checked
    training = bundle.config["training"]
    # the sample patient is a validation patient: the bundle never trained on it
    assert SAMPLE.name in training["split"]["val"] and SAMPLE.name not in training["split"]["train"]
    assert len(training["split"]["train"]) == 40 and len(training["split"]["val"]) == 10
    card = (root / "MODEL_CARD.md").read_text()
    for words in ("CC BY-NC-SA 4.0", "TCGA", "validation", "per-volume", "AUC"):
        assert words in card, f"model card of {name} does not mention {words!r}"


@pytest.mark.parametrize("sample", [SAMPLE, PHANTOM_SAMPLE], ids=lambda p: p.name)
def test_samples_follow_the_data_layout(sample):
    case = sample.name
    for suffix in ("flair", "t1", "t1ce", "seg"):
        assert (sample / f"{case}_{suffix}.nii.gz").is_file()
    with open(sample / f"{case}_slice_labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["tumor"]) for r in rows] == (read(sample / f"{case}_seg.nii.gz").sum(axis=(1, 2)) > 0).astype(
        int).tolist()
    readme = (sample / "README.md").read_text()
    assert "Licence" in readme


def test_sample_data_carries_its_licence():
    readme = (SAMPLE / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "Buda" in readme and "Mazurowski" in readme


def test_cli_on_the_real_sample_lands_on_the_tumour(tmp_path):
    """The README's main command: the default bundle on the shipped TCGA-LGG patient."""
    case = SAMPLE.name
    proc = run_cli("segment", *[f"-c{c}={SAMPLE / f'{case}_{c}.nii.gz'}" for c in ("flair", "t1", "t1ce")],
                   "--out", str(tmp_path), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) in proc.stdout  # the summary says where the outputs are
    truth = read(SAMPLE / f"{case}_seg.nii.gz")
    mask = read(tmp_path / f"{case}_flair_mask.nii.gz")
    # 3D Dice 0.48 (the final segmenter with the Dice term, 2026-12-06; 0.22 before, covering an eighth
    # of the tumour): one lesion over half the tumour, 77 % of it inside the manual outline and 89 %
    # within two voxels of it (one pixel of the bundle's 1.8 mm grid)
    assert dice(mask, truth) >= 0.35
    near = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3), bool), iterations=2)
    assert (mask.astype(bool) & near).sum() >= 0.85 * mask.sum()
    # the mask is on tumour slices, and most tumour slices get a mask
    tumour_slices = truth.sum(axis=(1, 2)) > 0
    assert mask[tumour_slices].sum() >= 0.8 * mask.sum()
    assert (mask.sum(axis=(1, 2)) > 0)[tumour_slices].mean() >= 0.8
    assert read_segmentation(tmp_path / f"{case}_flair.seg.nrrd")["Tumor"].sum() == mask.sum()
    report = json.loads((tmp_path / f"{case}_flair_report.json").read_text())
    assert report["bundle"]["name"] == DEFAULT_NAME


def test_flair_only_bundle_segments_the_sample_from_flair(tmp_path):
    case = SAMPLE.name
    proc = run_cli("segment", "-b", MODELS_DIR / FLAIR_NAME, f"-cflair={SAMPLE / f'{case}_flair.nii.gz'}",
                   "--out", str(tmp_path), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    mask, truth = read(tmp_path / f"{case}_flair_mask.nii.gz"), read(SAMPLE / f"{case}_seg.nii.gz")
    # the 2026-12-05 training: 3D Dice 0.19, most of the mask on the tumour, little of the tumour covered
    # (the earlier trainings of this recipe 0.36)
    assert dice(mask, truth) >= 0.15 and (mask.astype(bool) & truth.astype(bool)).sum() >= 0.8 * mask.sum()


def test_stand_in_on_the_phantom_sample(tmp_path):
    case = PHANTOM_SAMPLE.name
    proc = run_cli("segment", "-b", STANDIN_BUNDLE,
                   *[f"-c{c}={PHANTOM_SAMPLE / f'{case}_{c}.nii.gz'}" for c in ("flair", "t1", "t1ce")],
                   "--out", str(tmp_path), "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    mask = read(tmp_path / f"{case}_flair_mask.nii.gz")
    assert dice(mask, read(PHANTOM_SAMPLE / f"{case}_seg.nii.gz")) >= 0.75
    report = json.loads((tmp_path / f"{case}_flair_report.json").read_text())
    assert report["bundle"]["name"] == "phantom-standin"


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_unseen_phantoms_are_segmented_by_the_stand_in(seed):
    ph = make_phantom(shape=(20, 170, 180), n_tumors=1, seed=seed)
    result = segment_arrays(Bundle.load(STANDIN_BUNDLE), ph.channels, "cpu")
    assert dice(result.mask, ph.mask) >= 0.7
    # no tumour found far from the truth: slices without tumour stay (nearly) empty
    healthy_slices = ph.slice_labels == 0
    assert result.mask[healthy_slices].sum() <= 0.05 * ph.mask.sum()
