"""Tests of the synthetic MR phantoms (support.phantoms)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from support.phantoms import Phantom, make_phantom, write_case


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(seed=0)


def _brain_tissue(p: Phantom) -> np.ndarray:
    """Brain voxels away from the tumour (and its soft edge) and the distractors."""
    near_tumour = ndimage.binary_dilation(p.mask.astype(bool), iterations=3)
    return p.brain_mask.astype(bool) & ~near_tumour & ~p.distractor_mask.astype(bool)


def test_types_and_shapes(phantom):
    assert phantom.shape == (24, 128, 128)
    assert list(phantom.channels) == ["flair", "t1", "t1ce"]
    assert list(phantom.healthy) == ["flair", "t1", "t1ce"]
    for volumes in (phantom.channels, phantom.healthy):
        for volume in volumes.values():
            assert volume.dtype == np.float32 and volume.shape == (24, 128, 128)
    assert phantom.mask.dtype == np.uint8 and phantom.mask.shape == (24, 128, 128)
    assert set(np.unique(phantom.mask)) <= {0, 1}
    assert phantom.slice_labels.dtype == np.uint8 and phantom.slice_labels.shape == (24,)


def test_deterministic_for_seed(phantom):
    again = make_phantom(seed=0)
    np.testing.assert_array_equal(again.mask, phantom.mask)
    np.testing.assert_array_equal(again.slice_labels, phantom.slice_labels)
    for name in phantom.channels:
        np.testing.assert_array_equal(again.channels[name], phantom.channels[name])
        np.testing.assert_array_equal(again.healthy[name], phantom.healthy[name])


def test_different_seeds_differ(phantom):
    other = make_phantom(seed=1)
    assert not np.array_equal(other.mask, phantom.mask)
    assert not np.array_equal(other.channels["flair"], phantom.channels["flair"])
    assert not np.array_equal(other.healthy["t1"], phantom.healthy["t1"])


def test_mask_and_slice_labels(phantom):
    assert phantom.mask.any()
    np.testing.assert_array_equal(phantom.slice_labels, phantom.mask.any(axis=(1, 2)).astype(np.uint8))
    # Roughly tumor_slice_fraction (0.5) of the slices, as one contiguous slab, inside the brain.
    tumour_slices = np.flatnonzero(phantom.slice_labels)
    assert tumour_slices.size == 12
    assert np.all(np.diff(tumour_slices) == 1)
    assert not (phantom.mask.astype(bool) & ~phantom.brain_mask.astype(bool)).any()
    assert phantom.slice_labels[0] == 0 and phantom.slice_labels[-1] == 0


def test_background_zero_and_head_positive(phantom):
    head = phantom.head_mask.astype(bool)
    brain = phantom.brain_mask.astype(bool)
    assert brain.any() and not (brain & ~head).any()
    assert not head[:, 0, :].any() and not head[:, :, 0].any()  # the head fits the field of view
    for volumes in (phantom.channels, phantom.healthy):
        for volume in volumes.values():
            assert np.all(volume[~head] == 0)
            assert np.all(volume[head] > 0)
    # Edge slices show a smaller brain than the middle slice.
    area = brain.sum(axis=(1, 2))
    assert area[0] < 0.8 * area[12] and area[-1] < 0.8 * area[12]


def test_tumour_contrast_and_healthy_counterpart(phantom):
    tumour = phantom.mask.astype(bool)
    tissue = _brain_tissue(phantom)
    flair, healthy_flair = phantom.channels["flair"], phantom.healthy["flair"]
    assert flair[tumour].mean() >= 1.4 * flair[tissue].mean()
    # T1: tumour mildly hypointense.
    assert phantom.channels["t1"][tumour].mean() < phantom.healthy["t1"][tumour].mean()
    # The healthy volume shows ordinary tissue where the tumour was.
    assert healthy_flair[tumour].mean() < 1.2 * flair[tissue].mean()
    near_tumour = ndimage.binary_dilation(tumour, iterations=3)
    for name in phantom.channels:
        diff = np.abs(phantom.channels[name] - phantom.healthy[name])
        assert diff[~near_tumour].max() == 0
        assert diff[tumour].max() > 0
        # Tumour-free slices are untouched.
        free = phantom.slice_labels == 0
        np.testing.assert_array_equal(phantom.channels[name][free], phantom.healthy[name][free])


def test_distractors_in_tumour_free_slices(phantom):
    t1 = phantom.channels["t1"]
    brain = phantom.brain_mask.astype(bool)
    free = phantom.slice_labels == 0
    bright = (t1 > 1.3 * np.median(t1[brain])) & brain & free[:, None, None]
    assert bright.any()
    # ... and that is due to distractors standing out from all ordinary tissue.
    distractors = phantom.distractor_mask.astype(bool)
    assert (distractors & free[:, None, None]).any()
    assert (distractors & ~free[:, None, None]).any()  # in tumour slices as well
    ordinary_max = np.percentile(t1[_brain_tissue(phantom)], 99.5)
    assert t1[distractors & free[:, None, None]].max() > 1.2 * ordinary_max
    # Mildly bright in FLAIR, clearly less than the tumour.
    flair = phantom.channels["flair"]
    core = distractors & (phantom.healthy["t1"] > 1.1 * ordinary_max)
    assert flair[core].mean() < flair[phantom.mask.astype(bool)].mean()


def test_no_tumour():
    p = make_phantom(shape=(16, 96, 96), n_tumors=0, seed=3)
    assert not p.mask.any() and not p.slice_labels.any()
    for name in p.channels:
        np.testing.assert_array_equal(p.channels[name], p.healthy[name])
    assert p.distractor_mask.any()


def test_options():
    p = make_phantom(
        shape=(20, 96, 80), channels=("t2", "t1c", "dwi"), n_tumors=2, tumor_radius=(5, 8),
        n_distractors=0, tumor_slice_fraction=0.4, seed=7,
    )
    assert list(p.channels) == ["t2", "t1c", "dwi"]
    assert p.channels["dwi"].shape == (20, 96, 80)
    assert p.slice_labels.sum() == 8
    assert not p.distractor_mask.any()
    _, n_blobs = ndimage.label(p.mask)
    assert 1 <= n_blobs <= 2
    with pytest.raises(ValueError):
        make_phantom(channels=("flair", "flair"))
    with pytest.raises(ValueError):
        make_phantom(tumor_slice_fraction=1.5)
    with pytest.raises(ValueError):
        make_phantom(shape=(4, 128, 128), n_tumors=5)


def test_write_case_round_trip(phantom, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    ) @ np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    direction = tuple(rotation.ravel())
    spacing, origin = (0.9, 0.8, 5.0), (-90.0, 110.5, -30.0)
    folder = tmp_path / "cases" / "Phantom_001"
    paths = write_case(phantom, folder, "Phantom_001", spacing=spacing, direction=direction, origin=origin)
    assert set(paths) == {"flair", "t1", "t1ce", "seg", "slice_labels"}
    for name in phantom.channels:
        assert paths[name] == folder / f"Phantom_001_{name}.nii.gz"
        image = sitk.ReadImage(str(paths[name]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), phantom.channels[name])
        np.testing.assert_allclose(image.GetSpacing(), spacing)
        np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), direction, atol=1e-5)
    seg = sitk.ReadImage(str(paths["seg"]))
    assert paths["seg"].name == "Phantom_001_seg.nii.gz"
    assert seg.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), phantom.mask)
    np.testing.assert_allclose(seg.GetDirection(), direction, atol=1e-5)

    assert paths["slice_labels"].name == "Phantom_001_slice_labels.csv"
    with open(paths["slice_labels"], newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["slice_index", "slice_number", "tumor", "tumor_pixels"]
    assert len(rows) == 1 + phantom.shape[0]
    for index, row in enumerate(rows[1:]):
        assert int(row[0]) == index and int(row[1]) == index + 1
        assert int(row[2]) == phantom.slice_labels[index]
        assert int(row[3]) == int(phantom.mask[index].sum())


def test_write_case_default_geometry(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    p = make_phantom(shape=(6, 64, 64), channels=("flair",), tumor_radius=(4, 6), seed=2)
    paths = write_case(p, tmp_path / "new", "c")
    image = sitk.ReadImage(str(paths["flair"]))
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(image.GetOrigin(), (0.0, 0.0, 0.0))
