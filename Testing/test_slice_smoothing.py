"""Slice smoothing of the classifier gate (``inference.slice_smoothing``, not in the paper): each
patch's tumour probability is averaged with the same tile's on the neighbouring slices before
the gate, the fusion weight and the slice's ``p_tumor``."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from WeakTumorSegLib.bundle.info import MODELS_DIR
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.networks.classifiers import Classifier
from WeakTumorSegLib.stages.fusion import smooth_across_slices
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.preprocessing.intensity import normalize_channel

from test_core import ConstSegmenter, fake_bundle
from test_scalp_margin import SAMPLE, segment_sample


def test_smoothing_by_hand():
    p = np.array([[0.2, 0.0], [0.9, 0.8], [0.1, 0.6], [0.8, 0.3], [0.0, 0.7]])
    valid = np.array([[1, 0], [1, 1], [1, 1], [1, 1], [0, 1]], bool)
    out = smooth_across_slices(p, 0.25, valid)
    expected = np.array([
        [(0.5 * 0.2 + 0.25 * 0.9) / 0.75, 0.0],  # first slice: no neighbour below; the tile without tissue stays
        [0.5 * 0.9 + 0.25 * 0.2 + 0.25 * 0.1, (0.5 * 0.8 + 0.25 * 0.6) / 0.75],  # right tile: slice 0 has no tissue
        [0.5 * 0.1 + 0.25 * 0.9 + 0.25 * 0.8, 0.5 * 0.6 + 0.25 * 0.8 + 0.25 * 0.3],
        [(0.5 * 0.8 + 0.25 * 0.1) / 0.75, 0.5 * 0.3 + 0.25 * 0.6 + 0.25 * 0.7],  # slice 4's left tile: no tissue
        [0.0, (0.5 * 0.7 + 0.25 * 0.3) / 0.75],
    ])
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(smooth_across_slices(p, 1 / 3)[2, 0], (0.9 + 0.1 + 0.8) / 3, atol=1e-6)
    np.testing.assert_array_equal(smooth_across_slices(p, 0.0), p.astype(np.float32))
    with pytest.raises(ValueError, match="1/3"):
        smooth_across_slices(p, 0.4)


# one 128 x 128 tile per slice; slice k has the constant intensity LEVELS[k] and the classifier
# answers RAW_P[k] for it; the last slice is empty (no tissue)
LEVELS = (50.0, 100.0, 150.0, 200.0, 250.0, 300.0, 0.0)
RAW_P = (0.9, 0.4, 0.9, 0.1, 0.6, 0.1, 0.0)


def stack_volume() -> np.ndarray:
    return np.stack([np.full((128, 128), v, np.float32) for v in LEVELS])


class LookupClassifier(Classifier):
    """Probability RAW_P[k] for a patch whose mean is slice k's normalised level."""

    def __init__(self):
        super().__init__()
        self.upsample = 1.0
        self.keys = torch.tensor(normalize_channel(stack_volume()).mean(axis=(1, 2))[:-1])
        self.p = torch.tensor(RAW_P[:-1])

    def logits_upsampled(self, xu):
        k = (xu[:, 0].mean(dim=(1, 2))[:, None] - self.keys[None]).abs().argmin(1)
        return torch.logit(self.p[k].to(xu.dtype))


def lookup_bundle(**inference) -> Bundle:
    bundle = fake_bundle(**inference)
    bundle.models.update(classifier=LookupClassifier().eval(), segmenter_us=ConstSegmenter(0.9))
    return bundle


def test_segment_gates_on_the_smoothed_probability():
    vol = {"flair": stack_volume()}
    plain = segment_arrays(lookup_bundle(), vol, "cpu")
    np.testing.assert_allclose(plain.p_tumor, RAW_P, atol=1e-5)
    assert plain.tumor_pixels.astype(bool).tolist() == [True, False, True, False, True, False, False]
    smoothing_bundle = lookup_bundle()
    smooth = segment_arrays(smoothing_bundle, vol, "cpu", smoothing_bundle.settings(slice_smoothing=0.25))
    assert smooth.settings.slice_smoothing == 0.25 and plain.settings.slice_smoothing == 0.0
    expected = [(0.45 + 0.1) / 0.75, 0.2 + 0.45, 0.45 + 0.1 + 0.025, 0.05 + 0.225 + 0.15, 0.3 + 0.05,
                (0.05 + 0.15) / 0.75, 0.0]  # the empty slice neither counts for slice 5 nor changes
    np.testing.assert_allclose(smooth.p_tumor, expected, atol=1e-5)
    # slice 1 (0.4 between two confident slices) is now segmented; the lone slice 4 is not
    assert smooth.tumor_pixels.astype(bool).tolist() == [True, True, True, False, False, False, False]
    # the bundle's own setting applies when no override is given; 0 turns it off
    configured = lookup_bundle(slice_smoothing=0.25)
    np.testing.assert_array_equal(segment_arrays(configured, vol, "cpu").mask, smooth.mask)
    off = segment_arrays(configured, vol, "cpu", configured.settings(slice_smoothing=0))
    np.testing.assert_array_equal(off.mask, plain.mask)


def test_smoothing_reaches_segment_and_segment_records_it(tmp_path):
    """``--slice-smoothing 0.25`` reaches ``segment``: on the sample patient the slices' p_tumor
    jump less from slice to slice than with the shipped bundles' setting, which is now 0 (on unseen
    patients of the inner folds smoothing did not raise the Dice; docs/options.md)."""
    for name in ("tcga-lgg-default", "tcga-lgg-flair"):
        assert Bundle.load(MODELS_DIR / name).settings().slice_smoothing == 0.0
    reports, p_tumor = {}, {}
    for label, extra in (("smooth", ["--slice-smoothing", "0.25"]), ("bundle", [])):
        reports[label] = segment_sample(tmp_path / label, *extra)[2]
        with open(tmp_path / label / f"{SAMPLE.name}_flair_slices.csv", newline="") as fh:
            p_tumor[label] = np.array([float(r["p_tumor"]) for r in csv.DictReader(fh)])
    assert reports["smooth"]["slice_smoothing"] == 0.25
    assert reports["smooth"]["slice_smoothing_source"] == "--slice-smoothing"
    assert reports["bundle"]["slice_smoothing"] == 0.0 and reports["bundle"]["slice_smoothing_source"] == "bundle"
    jumps = {label: float(np.abs(np.diff(p)).sum()) for label, p in p_tumor.items()}
    assert jumps["smooth"] < 0.95 * jumps["bundle"], jumps
