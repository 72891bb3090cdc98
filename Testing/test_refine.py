"""Seed refinement (Yoo et al., section 2.4) with a deterministic fake classifier.

The fake classifier says "tumour" (p = 1) while any pixel of channel 0 inside a fixed tumour
square is still bright (> 0.5), and p = 0 once the whole square has been blanked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import disk

from WeakTumorSegLib.stages.refinement import RefineConfig, disk_dilations, label_components, refine_seeds

SIZE = 32
SQ = (slice(10, 16), slice(10, 16))  # the tumour square, rows/cols 10..15


class FakeClassifier:
    """p = 1 if max of channel 0 inside the tumour square > 0.5, else 0; records its inputs."""

    def __init__(self, record: bool = False):
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.record = record
        self.seen: list[torch.Tensor] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.dtype == torch.float32
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        self.grad_enabled.append(torch.is_grad_enabled())
        if self.record:
            self.seen.extend(x.clone())
        return (x[:, 0, SQ[0], SQ[1]].flatten(1).amax(1) > 0.5).float()


def make_images(n: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.5, 1.5, size=(n, channels, SIZE, SIZE)).astype(np.float32)
    x[:, 0] = rng.uniform(0.0, 0.4, size=(n, SIZE, SIZE))  # dark background in channel 0
    x[:, 0, SQ[0], SQ[1]] = 1.0  # bright tumour
    return x


def square_mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=np.float32)
    m[SQ] = 0.9
    return m


def distractor_mask() -> np.ndarray:
    m = np.zeros((SIZE, SIZE), dtype=np.float32)
    m[25:28, 25:28] = 0.8  # 5-pixel dilation reaches row/col 20 at most: far from the square
    return m


def partial_mask(cols: int) -> np.ndarray:
    """Covers the square's rows but only its first ``cols`` columns."""
    m = np.zeros((SIZE, SIZE), dtype=np.float32)
    m[10:16, 10:10 + cols] = 0.7
    return m


def test_tumour_component_accepted_and_distractor_rejected():
    images = make_images(2)
    masks = np.stack([square_mask(), distractor_mask()])
    res = refine_seeds(FakeClassifier(), images, masks)
    assert res.accepted.tolist() == [True, False]
    assert res.n_components.tolist() == [1, 1]
    assert res.n_accepted.tolist() == [1, 0]
    np.testing.assert_allclose(res.scores[0], [0.0])
    np.testing.assert_allclose(res.scores[1], [1.0])
    np.testing.assert_array_equal(res.seeds[0], square_mask() > 0.5)
    assert not res.seeds[1].any()
    assert res.seeds.dtype == bool and res.seeds.shape == (2, SIZE, SIZE)


def test_mixed_image_keeps_only_tumour_component_undilated():
    images = make_images(1)
    masks = (square_mask() + distractor_mask())[None]
    res = refine_seeds(FakeClassifier(), images, masks)
    assert res.n_components.tolist() == [2]
    assert res.n_accepted.tolist() == [1]
    assert res.accepted.tolist() == [True]
    np.testing.assert_allclose(np.sort(res.scores[0]), [0.0, 1.0])
    np.testing.assert_array_equal(res.seeds[0], square_mask() > 0.5)  # exactly the component


def test_union_of_several_accepted_components():
    # Two bright squares that the classifier needs together: blanking either one removes the
    # tumour, so both components are accepted and the seed is their union.
    sq2 = (slice(20, 24), slice(2, 6))

    def classify(x):
        a = x[:, 0, SQ[0], SQ[1]].flatten(1).amax(1) > 0.5
        b = x[:, 0, sq2[0], sq2[1]].flatten(1).amax(1) > 0.5
        return (a & b).float()  # blanking either square removes the tumour

    images = make_images(1)
    images[0, 0, sq2[0], sq2[1]] = 1.0
    m = square_mask()
    m[sq2] = 0.9
    res = refine_seeds(classify, images, m[None])
    assert res.n_components.tolist() == [2] and res.n_accepted.tolist() == [2]
    np.testing.assert_array_equal(res.seeds[0], m > 0.5)


def test_empty_mask_has_no_components_and_is_not_accepted():
    clf = FakeClassifier()
    masks = np.zeros((1, SIZE, SIZE), dtype=np.float32)
    masks[0, 3, 3] = 0.5  # at the threshold: not foreground (strictly above 0.5 counts)
    res = refine_seeds(clf, make_images(1), masks)
    assert res.n_components.tolist() == [0]
    assert res.n_accepted.tolist() == [0]
    assert res.accepted.tolist() == [False]
    assert res.scores[0].shape == (0,)
    assert not res.seeds.any()
    assert clf.calls == 0


@pytest.mark.parametrize("cols, expected_p, accepted", [
    (3, [1, 1, 0, 0, 0], True),   # radius >= 3 reaches column 15: mean 0.4 < 0.5
    (2, [1, 1, 1, 0, 0], False),  # radius >= 4 needed: mean 0.6
])
def test_partial_component_mean_over_radii(cols, expected_p, accepted):
    clf = FakeClassifier(record=True)
    images = make_images(1)
    res = refine_seeds(clf, images, partial_mask(cols)[None])
    assert len(clf.seen) == 5
    p = [float(FakeClassifier()(v[None])[0]) for v in clf.seen]  # re-score the variants in order
    assert p == expected_p
    np.testing.assert_allclose(res.scores[0], [np.mean(expected_p)])
    assert res.accepted.tolist() == [accepted]
    if accepted:
        np.testing.assert_array_equal(res.seeds[0], partial_mask(cols) > 0.5)
    else:
        assert not res.seeds[0].any()


def test_accept_threshold_is_strict():
    # Mean 0.4 with accept_below 0.4 is not accepted.
    res = refine_seeds(FakeClassifier(), make_images(1), partial_mask(3)[None], RefineConfig(accept_below=0.4))
    assert res.accepted.tolist() == [False]


def test_batching_identical_and_call_count():
    n = 5
    images = make_images(n, seed=1)
    masks = np.stack([
        square_mask(),
        distractor_mask(),
        square_mask() + distractor_mask(),
        np.zeros((SIZE, SIZE), np.float32),
        partial_mask(3) + distractor_mask(),
    ])
    results = {}
    for batch in (1, 3, 7, 64):
        clf = FakeClassifier()
        seen: list[tuple[int, int]] = []
        res = refine_seeds(clf, images, masks, RefineConfig(batch=batch),
                           progress=lambda d, t, s=seen: s.append((d, t)))
        total = int(res.n_components.sum()) * 5
        assert total == 6 * 5
        assert clf.calls == math.ceil(total / batch)
        assert max(clf.batch_sizes) <= batch
        assert sum(clf.batch_sizes) == total
        assert not any(clf.grad_enabled)  # inference mode
        assert seen[-1] == (total, total) and len(seen) == clf.calls
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        results[batch] = res
    ref = results[1]
    assert ref.accepted.tolist() == [True, False, True, False, True]
    for res in results.values():
        np.testing.assert_array_equal(res.seeds, ref.seeds)
        np.testing.assert_array_equal(res.accepted, ref.accepted)
        np.testing.assert_array_equal(res.n_components, ref.n_components)
        np.testing.assert_array_equal(res.n_accepted, ref.n_accepted)
        for a, b in zip(res.scores, ref.scores):
            np.testing.assert_array_equal(a, b)


def test_blanking_writes_zero_in_every_channel():
    clf = FakeClassifier(record=True)
    images = make_images(1, channels=4)
    images[0, 2, 26, 26] = np.nan  # even non-finite values inside the region are blanked
    masks = distractor_mask()[None]
    refine_seeds(clf, images, masks, RefineConfig(radii=(0, 1, 3)))
    assert len(clf.seen) == 3
    dil = disk_dilations(masks[0] > 0.5, (0, 1, 3))
    for v, region in zip(clf.seen, dil):
        v = v.numpy()
        assert region.sum() > 0
        assert (v[:, region] == 0).all()
        np.testing.assert_array_equal(v[:, ~region], images[0][:, ~region])


def test_min_size_drops_tiny_components():
    images = make_images(1)
    m = square_mask()
    m[28, 2] = 0.9  # single-pixel speck
    m[2, 28] = 0.9
    m[3, 29] = 0.9  # two diagonal pixels: one 8-connected component of size 2
    full = refine_seeds(FakeClassifier(), images, m[None])
    assert full.n_components.tolist() == [3]
    clf = FakeClassifier()
    res = refine_seeds(clf, images, m[None], RefineConfig(min_size=2))
    assert res.n_components.tolist() == [2]
    assert clf.calls == 1 and sum(clf.batch_sizes) == 2 * 5  # the speck is never blanked and scored
    res = refine_seeds(FakeClassifier(), images, m[None], RefineConfig(min_size=3))
    assert res.n_components.tolist() == [1] and res.n_accepted.tolist() == [1]
    np.testing.assert_array_equal(res.seeds[0], square_mask() > 0.5)


def test_label_components_eight_connectivity():
    m = np.zeros((8, 8))
    m[1, 1] = m[2, 2] = m[3, 3] = 1  # diagonal chain
    m[6, 6] = 1
    labels, count = label_components(m)
    assert count == 2
    assert labels[1, 1] == labels[2, 2] == labels[3, 3] != labels[6, 6]
    labels, count = label_components(m, min_size=2)
    assert count == 1 and labels[6, 6] == 0 and labels[1, 1] == 1


def test_disk_dilations_matches_scipy():
    comp = np.zeros((24, 24), dtype=bool)
    comp[1, 2] = comp[1, 3] = comp[12, 12] = True  # near the border too
    radii = (1, 2, 3, 4, 5)
    out = disk_dilations(comp, radii)
    assert out.shape == (5, 24, 24) and out.dtype == bool
    for k, r in enumerate(radii):
        np.testing.assert_array_equal(out[k], ndimage.binary_dilation(comp, structure=disk(r).astype(bool)))
    assert (out[1:] >= out[:-1]).all()  # nested
    assert not disk_dilations(np.zeros((5, 5), bool), radii).any()


def test_bad_inputs():
    with pytest.raises(ValueError):
        refine_seeds(FakeClassifier(), make_images(1), np.zeros((2, SIZE, SIZE)))
    with pytest.raises(ValueError):
        refine_seeds(FakeClassifier(), make_images(1)[0], np.zeros((SIZE, SIZE)))
    for bad in ({"batch": 0}, {"min_size": 0}, {"radii": ()}):
        with pytest.raises(ValueError):
            RefineConfig(**bad)


def test_torch_module_classifier():
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(20 * (x[:, 0, SQ[0], SQ[1]].flatten(1).amax(1) - 0.5))

    res = refine_seeds(Tiny().eval(), make_images(2), np.stack([square_mask(), distractor_mask()]))
    assert res.accepted.tolist() == [True, False]
