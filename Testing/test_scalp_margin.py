"""The scalp margin (``inference.scalp_margin_mm``, not in the paper): on images that are not
skull-stripped, bright scalp fat looks like FLAIR abnormality, so masks are cleared within a
margin below the head's outer surface (``preprocessing.head.head_depth``)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from WeakTumorSegLib.io.images import Geometry
from WeakTumorSegLib.io.orientation import direction_from_code
from WeakTumorSegLib.bundle.info import MODELS_DIR
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.networks.classifiers import Classifier
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.preprocessing.head import head_depth, head_mask
from WeakTumorSegLib.preprocessing.intensity import normalize_channel

from conftest import REPO_ROOT, run_cli
from test_core import fake_bundle

SAMPLE = REPO_ROOT / "Resources" / "SampleData" / "TCGA_DU_7018_19911220"


def synthetic_head(size: int = 160, radius: float = 60.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(3, size, size) FLAIR of a head that is not skull-stripped, and each voxel's distance to
    the centre: noisy air, a bright scalp ring broken on one side, a dark skull, grey brain
    with a dark lesion that reaches the skull, and a few bright specks of noise in the air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx)
    sl = rng.uniform(0, 8, (size, size)).astype(np.float32)  # air: scanner noise
    sl[r < radius] = 180  # scalp fat, bright
    sl[r < radius - 5] = 10  # skull, dark
    sl[r < radius - 11] = 100  # brain
    sl[(np.abs(yy) < 12) & (xx < 0) & (r > radius - 6)] = 5  # the scalp ring is broken on the left
    sl[(np.abs(yy - 20) < 10) & (xx > 25) & (r < radius - 5)] = 15  # a dark lesion touching the skull
    for y, x in ((5, 5), (8, size - 9), (size - 6, 12)):
        sl[y:y + 2, x:x + 2] = 200  # bright specks in the air
    return np.repeat(sl[None], 3, axis=0), np.repeat(r[None], 3, axis=0)


def test_head_mask_is_the_whole_head_despite_gaps_and_noise():
    flair, r = synthetic_head()
    head = head_mask(flair)
    assert head[r < 58].all()  # the broken scalp and the dark lesion do not open the head
    assert not head[r > 62].any()  # air and the specks of noise stay outside


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.5, 0.5)])
def test_head_depth_is_the_distance_to_the_surface_in_mm(spacing):
    flair, r = synthetic_head()
    depth = head_depth(flair, spacing)
    ring = (r > 39.5) & (r < 40.5)  # 20 px below the 60 px surface
    assert np.allclose(depth[ring], 20 * spacing[0], atol=1.5 * spacing[0])
    assert depth[r > 62].max() == 0


class SureClassifier(Classifier):
    """Tumour in every patch (p = sigmoid(10))."""

    upsample = 1.0

    def logits_upsampled(self, xu: torch.Tensor) -> torch.Tensor:
        return torch.full((xu.shape[0],), 10.0)


def sure_bundle(**inference) -> Bundle:
    """The fake bundle of test_core with every patch gated: its masks cover the whole tissue."""
    bundle = fake_bundle(**inference)
    bundle.models["classifier"] = SureClassifier().eval()
    return bundle


def test_segment_clears_the_margin_and_keeps_the_deep_mask():
    flair, r = synthetic_head()
    vol = np.where(r < 49, 250.0, flair).astype(np.float32)
    bundle = sure_bundle()
    plain = segment_arrays(bundle, {"flair": vol}, "cpu")
    assert plain.mask[r < 62].mean() > 0.9 and plain.settings.scalp_margin_mm == 0.0
    margin = segment_arrays(bundle, {"flair": vol}, "cpu", bundle.settings(scalp_margin_mm=12.0))
    assert margin.settings.scalp_margin_mm == 12.0
    assert not margin.mask[r > 49].any()  # within 12 mm of the 60 mm surface: cleared
    assert margin.mask[r < 47].all()  # deeper: unchanged
    assert not margin.probability[r > 49].any()
    # in mm: with 0.5 mm voxels the same 12 mm margin is 24 voxels deep
    fine = segment_arrays(bundle, {"flair": vol}, "cpu", bundle.settings(scalp_margin_mm=12.0),
                          geometry=Geometry((160, 160, 3), (0.5, 0.5, 1.0), (0.0,) * 3, direction_from_code("PLS")))
    assert not fine.mask[r > 37].any() and fine.mask[r < 35].all()
    # the bundle's own setting applies when no override is given; 0 turns it off
    configured = sure_bundle(scalp_margin_mm=12.0)
    assert np.array_equal(segment_arrays(configured, {"flair": vol}, "cpu").mask, margin.mask)
    off = segment_arrays(configured, {"flair": vol}, "cpu", configured.settings(scalp_margin_mm=0))
    assert np.array_equal(off.mask, plain.mask)


def _read(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def segment_sample(out, *options: str) -> tuple[subprocess.CompletedProcess, np.ndarray, dict]:
    """``segment`` on the real sample patient (FLAIR, T1, T1ce) into ``out`` with ``options``:
    the finished process, the mask (bool) and ``report.json``."""
    case = SAMPLE.name
    channels = [f"-c{c}={SAMPLE / f'{case}_{c}.nii.gz'}" for c in ("flair", "t1", "t1ce")]
    proc = run_cli("segment", *channels, "--out", out, "--device", "cpu", "--progress", "none", *options)
    assert proc.returncode == 0, proc.stderr
    return (proc, _read(out / f"{case}_flair_mask.nii.gz").astype(bool),
            json.loads((out / f"{case}_flair_report.json").read_text()))


def test_shipped_bundles_keep_masks_inside_the_brain_without_a_scalp_margin(tmp_path):
    """The shipped TCGA-LGG bundles extract the brain instead of clearing a scalp margin: the sample's
    mask lies inside the brain the pipeline extracts (none of it in the outer 8 mm of the head), it
    still lands on the tumour, and the report says the input was not skull-stripped."""
    bundle = Bundle.load(MODELS_DIR / "tcga-lgg-default")
    assert bundle.settings().scalp_margin_mm == 0.0 and bundle.preprocessing.spacing_mm
    proc, mask, report = segment_sample(tmp_path / "out")
    assert report["preprocessing"]["skull_stripped"] is False and report["scalp_margin_mm"] == 0.0
    assert "scalp margin" not in proc.stdout and "brain extracted" in proc.stdout
    case = SAMPLE.name
    flair = _read(SAMPLE / f"{case}_flair.nii.gz").astype(np.float32)
    rim = head_depth(normalize_channel(flair), (0.9, 0.9)) <= 8
    assert mask.sum() > 5000 and not (mask & rim).any()
    truth = _read(SAMPLE / f"{case}_seg.nii.gz").astype(bool)
    assert (mask & truth).sum() > 0.5 * mask.sum()
