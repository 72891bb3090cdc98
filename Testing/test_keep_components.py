"""The component filter (``inference.keep_components``, not in the paper): a mask keeps its large 3D
connected components and has the holes of each slice filled (``inference.postprocess.keep_components``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from WeakTumorSegLib.bundle.info import MODELS_DIR
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.inference.postprocess import keep_components
from WeakTumorSegLib.inference.pipeline import segment_arrays

from test_core import fake_bundle
from test_scalp_margin import segment_sample


def test_components_by_hand():
    mask = np.zeros((3, 12, 12), bool)
    mask[0:3, 1:7, 1:7] = True      # 108 voxels
    mask[1, 3:5, 3:5] = False       # a hole in the middle slice: 104 voxels left
    mask[0, 9:11, 9:11] = True      # 4 voxels, apart from the block
    mask[2, 7, 7] = True            # touches the block's corner (26-connected): part of it
    mask[1, 9:12, 0:6] = True       # 18 voxels, apart
    kept = keep_components(mask, 0.5)
    expected = mask.copy()
    expected[0, 9:11, 9:11] = False
    expected[1, 9:12, 0:6] = False
    expected[1, 3:5, 3:5] = True
    np.testing.assert_array_equal(kept, expected)
    assert not mask[1, 3, 3]  # the input is not modified
    # a smaller fraction keeps the 18-voxel component (18 >= 0.15 * 105), not the 4-voxel one
    kept = keep_components(mask, 0.15)
    assert kept[1, 9:12, 0:6].all() and not kept[0, 9:11, 9:11].any()
    assert keep_components(mask, 0.0) is mask
    assert not keep_components(np.zeros_like(mask), 0.5).any()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        keep_components(mask, 1.5)


class BrightSegmenter(nn.Module):
    """Probability 0.9 where the (normalised) FLAIR is above 0.75, else 0.1."""

    def forward(self, x):
        return torch.where(x[:, :1] > 0.75, 0.9, 0.1).to(x.dtype)


def block_volume() -> tuple[np.ndarray, np.ndarray]:
    """(3, 128, 128) FLAIR: dim tissue (100) in rows and columns 10..117, a bright block (200) in
    columns 10..90 with a dim hole in the middle slice, and a small bright spot apart from it.
    Returns the volume and the block with its hole filled."""
    vol = np.zeros((3, 128, 128), np.float32)
    vol[:, 10:118, 10:118] = 100.0
    vol[:, 10:118, 10:91] = 200.0
    block = vol == 200.0
    vol[1, 50:56, 40:46] = 100.0
    vol[:, 20:26, 105:111] = 200.0
    return vol, block


def test_segment_filters_every_model_and_follows_the_bundle():
    vol, block = block_volume()
    bundle = fake_bundle()
    bundle.models["segmenter_us"] = bundle.models["segmenter_os"] = BrightSegmenter()
    plain = segment_arrays(bundle, {"flair": vol}, "cpu", extra=["segmenter_os"])
    bright = vol == 200.0
    np.testing.assert_array_equal(plain.mask.astype(bool), bright)  # the spot and the hole as they are
    assert plain.settings.keep_components == 0.0
    kept = segment_arrays(bundle, {"flair": vol}, "cpu", bundle.settings(keep_components=0.5),
                          extra=["segmenter_os"])
    assert kept.settings.keep_components == 0.5
    np.testing.assert_array_equal(kept.mask.astype(bool), block)
    np.testing.assert_array_equal(kept.extra_masks["segmenter_os"].astype(bool), block)
    assert kept.counts["tumor_voxels"] == block.sum()
    # the bundle's own setting applies when no override is given; 0 turns it off
    configured = fake_bundle(keep_components=0.5)
    configured.models["segmenter_us"] = configured.models["segmenter_os"] = BrightSegmenter()
    np.testing.assert_array_equal(segment_arrays(configured, {"flair": vol}, "cpu").mask, kept.mask)
    off = segment_arrays(configured, {"flair": vol}, "cpu", configured.settings(keep_components=0))
    np.testing.assert_array_equal(off.mask, plain.mask)


def test_shipped_bundles_filter_components_and_segment_records_it(tmp_path):
    """On the sample patient the bundle's 0.5 leaves one large component (or several of similar
    size) and no holes, and the mask is the unfiltered one's large components, holes filled (the
    fused mask: ``--final-weight 0``; the final segmenter's extension is tested in
    test_extend_lesions.py)."""
    for name in ("tcga-lgg-default", "tcga-lgg-flair"):
        assert Bundle.load(MODELS_DIR / name).settings().keep_components == 0.5
    masks, reports = {}, {}
    for label, extra in (("bundle", []), ("off", ["--keep-components", "0"])):
        _, masks[label], reports[label] = segment_sample(tmp_path / label, "--final-weight", "0", *extra)
    assert reports["bundle"]["keep_components"] == 0.5 and reports["bundle"]["keep_components_source"] == "bundle"
    assert reports["off"]["keep_components"] == 0.0 and reports["off"]["keep_components_source"] == "--keep-components"
    labels, n = ndimage.label(masks["off"], structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    assert n > 1 and (sizes < 0.5 * sizes.max()).any()  # the unfiltered mask has small components to drop
    np.testing.assert_array_equal(masks["bundle"], keep_components(masks["off"], 0.5))
    small = np.isin(labels, np.flatnonzero(sizes < 0.5 * sizes.max()) + 1)
    assert not (masks["bundle"] & small).any()
