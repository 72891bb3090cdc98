"""The FLAIR trim (``inference.flair_trim``, not in the paper): a mask loses its voxels that are much
darker on FLAIR than the mask's median voxel (``inference.postprocess.flair_trim``), for targets that are
FLAIR-hyperintense by definition."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.bundle.info import MODELS_DIR
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.inference.postprocess import flair_trim
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.preprocessing.intensity import normalize_channel

from test_core import ConstSegmenter, fake_bundle
from test_scalp_margin import SAMPLE, segment_sample


def test_trim_by_hand():
    prob = np.array([[[0.9, 0.9, 0.2, 0.9, 0.6]]], np.float32)
    flair = np.array([[[1.0, 0.5, 0.1, 0.8, 0.7]]], np.float32)
    # mask: voxels 0, 1, 3, 4; median FLAIR inside 0.75; level 0.9 * 0.75 = 0.675
    out = flair_trim(prob, flair, 0.9)
    # voxel 1 (0.5 < 0.675) is cleared; voxel 2 is not in the mask: untouched
    np.testing.assert_array_equal(out, np.array([[[0.9, 0.0, 0.2, 0.9, 0.6]]], np.float32))
    assert prob[0, 0, 1] == np.float32(0.9)  # the input is not modified
    # with threshold 0.8 the mask is voxels 0, 1, 3: median 0.8, level 0.72
    np.testing.assert_array_equal(flair_trim(prob, flair, 0.9, threshold=0.8), out)
    assert flair_trim(prob, flair, 0.0) is prob
    assert flair_trim(np.zeros_like(prob), flair, 0.9).max() == 0  # an empty mask stays empty
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flair_trim(prob, flair, 1.5)


def two_tone_volume() -> np.ndarray:
    """(3, 128, 128): a zero background around tissue in rows and columns 10..117, dim (100) in
    columns 10..50 and bright (200) in 51..117; normalised 0.5 and 1.0."""
    vol = np.zeros((3, 128, 128), np.float32)
    vol[:, 10:118, 10:118] = 200.0
    vol[:, 10:118, 10:51] = 100.0
    return vol


def test_segment_trims_every_model_and_follows_the_bundle():
    vol = {"flair": two_tone_volume()}
    bundle = fake_bundle()
    bundle.models["segmenter_us"] = ConstSegmenter(0.9)  # every gated voxel is in every mask
    tissue = vol["flair"] > 0
    plain = segment_arrays(bundle, vol, "cpu", extra=["segmenter_os"])
    assert plain.mask[tissue].all() and plain.settings.flair_trim == 0.0
    trimmed = segment_arrays(bundle, vol, "cpu", bundle.settings(flair_trim=0.9), extra=["segmenter_os"])
    assert trimmed.settings.flair_trim == 0.9
    bright = vol["flair"] == 200  # the median voxel is bright: the dim columns fall below 0.9 of it
    np.testing.assert_array_equal(trimmed.mask.astype(bool), bright)
    np.testing.assert_array_equal(trimmed.extra_masks["segmenter_os"].astype(bool), bright)
    assert (trimmed.probability[~bright] == 0).all()
    # the dim columns (0.5) are not below 0.4 of the median (1.0)
    assert segment_arrays(bundle, vol, "cpu", bundle.settings(flair_trim=0.4)).mask[tissue].all()
    # the bundle's own setting applies when no override is given; 0 turns it off
    configured = fake_bundle(flair_trim=0.9)
    configured.models["segmenter_us"] = ConstSegmenter(0.9)
    np.testing.assert_array_equal(segment_arrays(configured, vol, "cpu").mask, trimmed.mask)
    off = segment_arrays(configured, vol, "cpu", configured.settings(flair_trim=0))
    np.testing.assert_array_equal(off.mask, plain.mask)


def test_trim_reaches_segment_and_segment_records_it(tmp_path):
    """On the sample patient ``--flair-trim 0.9`` removes exactly the voxels of the untrimmed mask
    whose FLAIR lies below 0.9 times that mask's median. The shipped bundles no longer trim: on
    unseen patients of two inner folds it lowered the Dice (docs/options.md)."""
    for name in ("tcga-lgg-default", "tcga-lgg-flair"):
        assert Bundle.load(MODELS_DIR / name).settings().flair_trim == 0.0
    masks, reports = {}, {}
    fused_only = ("--keep-components", "0", "--final-weight", "0")  # the fused mask, unfiltered
    for label, extra in (("trim", ["--flair-trim", "0.9"]), ("bundle", [])):
        _, masks[label], reports[label] = segment_sample(tmp_path / label, *fused_only, *extra)
    assert reports["trim"]["flair_trim"] == 0.9 and reports["trim"]["flair_trim_source"] == "--flair-trim"
    assert reports["bundle"]["flair_trim"] == 0.0 and reports["bundle"]["flair_trim_source"] == "bundle"
    flair = normalize_channel(sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / f"{SAMPLE.name}_flair.nii.gz"))))
    dim = flair < 0.9 * np.median(flair[masks["bundle"]])
    assert (masks["bundle"] & dim).sum() > 1000
    np.testing.assert_array_equal(masks["trim"], masks["bundle"] & ~dim)
