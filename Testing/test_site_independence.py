"""Site-independent preprocessing: orientation, voxel size, brain extraction, intensity scale,
declared geometry and the out-of-distribution checks. No trained network needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.errors import InputError
from WeakTumorSegLib.inference.checks import out_of_distribution, possible_miss
from WeakTumorSegLib.io.cohort import discover, read_declarations
from WeakTumorSegLib.io.images import Geometry
from WeakTumorSegLib.io.orientation import CANONICAL, check_code, code_from_direction, direction_from_code
from WeakTumorSegLib.preprocessing.brain import brain_mask, scale01, skull_stripped
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig
from WeakTumorSegLib.preprocessing.orientation import Reorientation
from WeakTumorSegLib.preprocessing.standardise import standardise

PP = PreprocessConfig(spacing_mm=2.0)


def synthetic_head(z: int = 12, size: int = 120, spacing: float = 1.0, seed: int = 0):
    """FLAIR ``(z, size, size)`` of a head that is not skull-stripped at ``spacing`` mm: noisy air,
    bright scalp fat, dark skull, grey brain with darker CSF spots and a bright lesion that reaches
    the brain's edge (the brain includes the CSF around it). Returns ``(flair, brain, lesion)``."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] - size / 2) * spacing
    r = np.hypot(yy, xx)
    radius = 0.42 * size * spacing
    sl = rng.uniform(0, 8, (size, size)).astype(np.float32)
    sl[r < radius] = 180
    sl[r < radius - 6] = 12
    brain = r < radius - 13
    sl[brain] = 30  # CSF between the brain and the skull
    sl[r < radius - 17] = 100
    sl[brain & (np.hypot(yy, xx - 5) < 6)] = 30  # a ventricle
    lesion = brain & (np.hypot(yy - 0.45 * radius, xx) < 0.3 * radius)
    sl[lesion] = 170
    flair = np.stack([sl + rng.normal(0, 3, sl.shape).astype(np.float32) for _ in range(z)])
    flair = np.clip(flair, 0, None)
    return flair, np.repeat(brain[None], z, 0), np.repeat(lesion[None], z, 0)


# -- orientation -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["PLS", "RAS", "LPS", "SPL", "AIR", "ILP", "RIA"])
def test_reorientation_matches_simpleitk_and_inverts(code):
    a = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)
    image = sitk.GetImageFromArray(a)
    image.SetDirection(direction_from_code(code))
    image.SetSpacing((0.5, 0.7, 3.0))
    assert code_from_direction(image.GetDirection()) == code
    reo = Reorientation(code)
    canonical = reo.to_canonical(a)
    assert np.array_equal(canonical, sitk.GetArrayFromImage(sitk.DICOMOrient(image, CANONICAL)))
    assert np.array_equal(reo.to_input(canonical), a)
    assert reo.spacing(image.GetSpacing()) == tuple(reversed(sitk.DICOMOrient(image, CANONICAL).GetSpacing()))
    assert reo.spacing_xyz(reo.spacing(image.GetSpacing())) == pytest.approx(image.GetSpacing())


def test_bad_orientation_code_is_refused():
    for bad in ("PLX", "PPS", "PL", "pls "):
        if bad.strip().upper() == "PLS":
            assert check_code(bad) == "PLS"
            continue
        with pytest.raises(ValueError, match="three letters"):
            check_code(bad)


# -- intensity ---------------------------------------------------------------------------------------


def test_scale01_is_the_same_for_rescaled_uint16_and_zscored_copies():
    flair, _, _ = synthetic_head()
    flair = np.round(flair).astype(np.float32)
    ref = scale01(flair)
    x16 = (flair * 16).astype(np.uint16).astype(np.float32)
    z = (flair - flair.mean()) / flair.std()
    np.testing.assert_allclose(scale01(x16), ref, atol=1e-5)
    np.testing.assert_allclose(scale01(z), ref, atol=1e-4)
    assert ref.min() == 0.0 and ref.max() == 1.0


# -- brain extraction --------------------------------------------------------------------------------


def test_brain_mask_keeps_the_lesion_and_leaves_the_scalp_out():
    flair, brain, lesion = synthetic_head(spacing=2.0)
    mask = brain_mask(flair, 2.0)
    assert mask[lesion].mean() == 1.0
    scalp = ~brain & (flair > 120)
    assert mask[scalp].mean() < 0.05
    assert (mask & brain).sum() / brain.sum() > 0.9  # the outer CSF rim may be left out
    foreground = flair > flair.min()
    assert not skull_stripped(foreground, mask)


def test_a_skull_stripped_input_is_detected():
    flair, brain, _ = synthetic_head(spacing=2.0)
    stripped = flair * brain
    mask = brain_mask(stripped, 2.0)
    assert skull_stripped(stripped > 0, mask)


def test_standardise_sees_copies_of_one_volume_the_same_way():
    flair, brain, lesion = synthetic_head(spacing=1.0)
    flair = np.round(flair)
    ref = standardise({"flair": flair}, ["flair"], PP, "flair", (1.0, 1.0, 5.0), CANONICAL)
    assert ref.stripped is False and ref.work.shape[2] < 120 * 0.55
    zs = standardise({"flair": (flair - flair.mean()) / flair.std()}, ["flair"], PP, "flair", (1.0, 1.0, 5.0))
    np.testing.assert_allclose(zs.work, ref.work, atol=1e-4)
    reo = Reorientation("RIA")
    turned = reo.to_input(flair)
    tr = standardise({"flair": turned}, ["flair"], PP, "flair", reo.spacing_xyz((5.0, 1.0, 1.0)), "RIA")
    np.testing.assert_allclose(tr.work, ref.work, atol=1e-6)
    # the way back lands on the input grid in the input's layout
    back = tr.to_input(tr.brain.astype(np.float32)) > 0.5
    assert back.shape == turned.shape
    assert (back & reo.to_input(lesion)).sum() == reo.to_input(lesion).sum()
    stripped = standardise({"flair": flair * (ref.to_input(ref.brain.astype(np.float32)) > 0.5)}, ["flair"], PP,
                           "flair", (1.0, 1.0, 5.0))
    assert stripped.stripped is True
    assert stripped.work.shape == ref.work.shape
    assert np.abs(stripped.work - ref.work).mean() < 0.01


def test_standardise_resamples_to_the_bundle_spacing():
    flair, _, _ = synthetic_head(size=120, spacing=1.0)
    fine, _, _ = synthetic_head(size=240, spacing=0.5)
    a = standardise({"flair": flair}, ["flair"], PP, "flair", (1.0, 1.0, 5.0))
    b = standardise({"flair": fine}, ["flair"], PP, "flair", (0.5, 0.5, 5.0))
    assert abs(a.work.shape[2] - b.work.shape[2]) <= 2
    assert a.stats["brain_area_cm2"] == pytest.approx(b.stats["brain_area_cm2"], rel=0.05)


# -- declarations --------------------------------------------------------------------------------------


def _cohort(tmp_path, declaration: dict | str | None):
    for pid in ("P1", "P2"):
        d = tmp_path / pid
        d.mkdir()
        img = sitk.GetImageFromArray(np.ones((3, 8, 8), np.float32))
        sitk.WriteImage(img, str(d / f"{pid}_flair.nii.gz"))
        sitk.WriteImage(sitk.Cast(img, sitk.sitkUInt8), str(d / f"{pid}_seg.nii.gz"))
    if declaration is not None:
        text = declaration if isinstance(declaration, str) else json.dumps(declaration)
        (tmp_path / "geometry.json").write_text(text)


def test_a_cohort_declares_its_true_orientation_and_spacing(tmp_path):
    _cohort(tmp_path, {"orientation": "pls", "spacing_mm": [0.9, 0.9], "patients": {"P2": {"spacing_mm": [1, 1.1]}}})
    cases = {c.id: c for c in discover(tmp_path, ["flair"])}
    header = Geometry((8, 8, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction_from_code("LPS"))
    g1, g2 = cases["P1"].geometry(header), cases["P2"].geometry(header)
    assert code_from_direction(g1.direction) == "PLS" and g1.spacing == (0.9, 0.9, 1.0)
    assert code_from_direction(g2.direction) == "PLS" and g2.spacing == (1.0, 1.1, 1.0)


@pytest.mark.parametrize("text, problem", [
    ('{"orientation": "XYZ"}', "three letters"),
    ('{"spacing_mm": [0.9]}', "two positive numbers"),
    ('{"spacing": [0.9, 0.9]}', "unknown key"),
    ("{not json", "cannot be read"),
])
def test_a_bad_declaration_is_refused_naming_the_file(tmp_path, text, problem):
    _cohort(tmp_path, text)
    with pytest.raises(InputError, match=problem) as err:
        discover(tmp_path, ["flair"])
    assert "geometry.json" in str(err.value)
    with pytest.raises(InputError):
        read_declarations(tmp_path / "geometry.json")


# -- out-of-distribution checks --------------------------------------------------------------------------


def test_a_statistic_far_outside_the_training_range_warns():
    ranges = {"brain_area_cm2": [150.0, 250.0], "flair_median": [0.3, 0.5]}
    assert out_of_distribution({"brain_area_cm2": 260.0, "flair_median": 0.4}, ranges) == []
    msgs = out_of_distribution({"brain_area_cm2": 600.0, "flair_median": 0.4}, ranges)
    assert len(msgs) == 1 and "largest brain section" in msgs[0] and "600" in msgs[0]


def test_an_empty_result_with_a_bright_region_is_not_presented_as_no_tumour():
    flair = np.full((4, 60, 60), 0.4, np.float32)
    brain = np.ones(flair.shape, bool)
    flair[2, 10:30, 10:30] = 1.0  # 20 x 20 voxels of 2 mm: 16 cm^2
    assert "may be a miss" in possible_miss(flair, brain, 2.0, found=False)
    assert possible_miss(flair, brain, 2.0, found=True) is None
    flair[2] = 0.4
    assert possible_miss(flair, brain, 2.0, found=False) is None


# -- augmentation -------------------------------------------------------------------------------------------


def test_site_augmentation_keeps_the_background_and_the_range():
    import torch

    from WeakTumorSegLib.stages.classifier import augment_batch

    torch.manual_seed(0)
    x = torch.zeros(8, 2, 64, 64)
    x[:, :, 16:48, 16:48] = 0.2 + 0.6 * torch.rand(8, 2, 32, 32)
    y = augment_batch(x, "site")
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert (y[:, :, :6, :6] == 0).all()  # far corners stay background under 15 degrees and 10 % zoom
    assert not torch.allclose(y, x)
    tissue = (x > 0).float().mean()
    assert abs((y > 0).float().mean() - tissue) < 0.25 * tissue  # the brain keeps about its size


def test_segment_refuses_a_bad_orientation_code(tmp_path):
    from conftest import run_cli

    flair = tmp_path / "f.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 8, 8), np.float32)), str(flair))
    r = run_cli("segment", "-c", f"flair={flair}", "--orientation", "PLX", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "three letters" in r.stderr
    assert not (tmp_path / "o").exists()
