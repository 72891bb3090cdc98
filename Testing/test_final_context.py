"""2.5D input of the final segmenter (``final.context``): each patch comes with the patches at the
same place on the neighbouring slices, the volume's end slices standing in beyond its ends, and
the site augmentation changes every slice of one channel alike."""

from __future__ import annotations

import numpy as np
import torch

from WeakTumorSegLib.preprocessing.tiling import Tiling
from WeakTumorSegLib.stages.augmentation import SiteAugmentation


def test_neighbours_are_the_same_place_on_the_adjacent_slices():
    tiling = Tiling.plan(slices=5, height=128, width=192, patch=128, stride=64)  # 2 patches per slice
    assert tiling.per_slice == 2
    index = np.array([0, 3, 9])  # slice 0 left, slice 1 right, slice 4 right
    np.testing.assert_array_equal(tiling.neighbours(index, 1), [[0, 0, 2], [1, 3, 5], [7, 9, 9]])
    np.testing.assert_array_equal(tiling.neighbours(index, 2)[:, 2], index)  # the middle is the patch itself
    # every patch's value says (slice, place, channel): the input holds the slices in order
    s, place = np.divmod(np.arange(tiling.count), 2)
    patches = np.stack([100 * s + 10 * place + c for c in range(3)], 1)[:, :, None, None] * np.ones((1, 1, 128, 128))
    x = tiling.with_neighbours(patches.astype(np.float32), np.array([3]), 1)
    assert x.shape == (1, 9, 128, 128)
    np.testing.assert_array_equal(x[0, :, 0, 0], [10, 11, 12, 110, 111, 112, 210, 211, 212])
    np.testing.assert_array_equal(tiling.with_neighbours(patches, index, 0), patches[index])


def test_augmentation_changes_every_slice_of_a_channel_alike():
    gen = torch.Generator().manual_seed(0)
    flair, t1 = torch.rand(4, 1, 64, 64) * 0.8 + 0.1, torch.rand(4, 1, 64, 64) * 0.8 + 0.1
    x = torch.cat([flair, t1, flair, t1, flair, t1], 1)  # three identical slices of two channels
    out = SiteAugmentation()(x, gen, per_slice=2)
    for k in (2, 4):
        torch.testing.assert_close(out[:, k:k + 2], out[:, :2])
    assert not torch.allclose(out[:, 0], out[:, 1])
    # without per_slice each channel draws its own change
    out = SiteAugmentation()(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[:, 2], out[:, 0])
