"""Unit tests of the core numerics: tiling, gating/fusion, difference score, preprocessing,
RISE seeds, network architectures, and whole-volume inference with a hand-built fake bundle.

Every expected value here is computed independently of the code under test (by hand, or by a
naive reference implementation written in the test), so each test can fail.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.networks.classifiers import Classifier, CompactClassifier, VGG16BNClassifier, inference_copy
from WeakTumorSegLib.stages.classifier import augment_batch
from WeakTumorSegLib.io.names import REASON_LOW_DIFFERENCE, REASON_UNDECIDED
from WeakTumorSegLib.stages.difference_filter import difference_scores, flag_slices, mean_in_mask
from WeakTumorSegLib.stages.fusion import fuse, fusion_weight
from WeakTumorSegLib.networks.dcgan import Discriminator, Encoder, Generator, UNet
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.networks.registry import build
from WeakTumorSegLib.preprocessing.crop import brain_bbox, plan_crop, to_input, to_working
from WeakTumorSegLib.preprocessing.intensity import normalize_channel
from WeakTumorSegLib.stages.seeds import (CPU_CHUNK, RiseConfig, classifier_rise, extend_negative_seeds,
                                          gate_positive_seeds, generate_masks, normalize_maps, rise_maps,
                                          seeds_from_maps)
from WeakTumorSegLib.preprocessing.tiling import Tiling, tile_starts

PATCH, STRIDE = 128, 64


# ============================================================================================
# 1. tiling


def identity_predictor(patches: np.ndarray) -> np.ndarray:
    """A "network" whose output map is its first input channel."""
    return patches[:, 0]


@pytest.mark.parametrize("hw", [(240, 240), (256, 256), (200, 232), (100, 90)])
def test_stitch_of_extract_is_exact_identity(hw):
    h, w = hw
    rng = np.random.default_rng(h * 1000 + w)
    x = rng.random((3, 2, h, w), dtype=np.float32) * 10 - 3  # 3 slices, 2 channels
    tiling = Tiling.plan(3, h, w, PATCH, STRIDE)
    patches = tiling.extract(x)
    assert patches.shape == (3 * tiling.per_slice, 2, PATCH, PATCH)
    assert patches.dtype == np.float32
    # slice-major order, row-major tiles within a slice; every channel extracted
    slice_of = tiling.slice_of()
    assert slice_of.tolist() == [s for s in range(3) for _ in range(tiling.per_slice)]
    padded = np.zeros((3, 2, max(h, PATCH), max(w, PATCH)), np.float32)
    padded[:, :, :h, :w] = x
    k = 0
    for s in range(3):
        for y in tiling.ys:
            for xx in tiling.xs:
                assert np.array_equal(patches[k], padded[s, :, y:y + PATCH, xx:xx + PATCH])
                k += 1
    out = tiling.stitch(identity_predictor(patches))
    assert out.shape == (3, h, w)
    assert out.dtype == np.float32
    assert np.array_equal(out, x[:, 0])


def test_small_slice_is_zero_padded():
    x = np.random.default_rng(1).random((2, 1, 100, 90), dtype=np.float32) + 1  # strictly positive
    tiling = Tiling.plan(2, 100, 90, PATCH, STRIDE)
    assert tiling.ys == (0,) and tiling.xs == (0,) and tiling.per_slice == 1
    patches = tiling.extract(x)
    assert patches.shape == (2, 1, PATCH, PATCH)
    assert np.all(patches[:, :, 100:, :] == 0) and np.all(patches[:, :, :, 90:] == 0)
    assert np.array_equal(patches[:, :, :100, :90], x)
    assert np.array_equal(tiling.stitch(patches[:, 0]), x[:, 0])


@pytest.mark.parametrize("length,expected", [(240, [0, 64, 112]), (256, [0, 64, 128]), (128, [0]),
                                             (100, [0]), (129, [0, 1]), (200, [0, 64, 72])])
def test_tile_starts_last_tile_flush(length, expected):
    assert tile_starts(length, PATCH, STRIDE) == expected


@pytest.mark.parametrize("length", [128, 129, 191, 192, 200, 240, 255, 256, 300, 517])
def test_tile_starts_cover_every_pixel(length):
    starts = tile_starts(length, PATCH, STRIDE)
    assert starts[0] == 0 and starts[-1] == length - PATCH  # flush with both edges
    assert all(0 < b - a <= STRIDE for a, b in zip(starts, starts[1:]))  # increasing, no gaps
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + PATCH] = True
    assert covered.all()


@pytest.mark.parametrize("patch,stride", [(128, 0), (0, 64), (128, -1)])
def test_tile_starts_rejects_nonpositive(patch, stride):
    with pytest.raises(ValueError):
        tile_starts(200, patch, stride)


def test_extract_rejects_wrong_shape():
    tiling = Tiling.plan(2, 200, 232, PATCH, STRIDE)
    with pytest.raises(ValueError):
        tiling.extract(np.zeros((2, 1, 200, 231), np.float32))
    with pytest.raises(ValueError):
        tiling.extract(np.zeros((3, 1, 200, 232), np.float32))


@pytest.mark.parametrize("hw", [(240, 240), (200, 232), (300, 129)])
def test_every_pixel_covered(hw):
    tiling = Tiling.plan(2, *hw, PATCH, STRIDE)
    ones = np.ones((tiling.count, PATCH, PATCH), np.float32)
    out = tiling.stitch(ones, weights=np.ones(tiling.count), fill=np.full((2, *hw), -5, np.float32))
    assert np.array_equal(out, np.ones((2, *hw), np.float32))  # no pixel took the fill value


def test_unweighted_stitch_counts_gated_patches_as_zero():
    # one slice 128 x 192: two patches at x = 0 and x = 64, overlapping on columns 64..127
    tiling = Tiling.plan(1, 128, 192, PATCH, STRIDE)
    assert tiling.xs == (0, 64) and tiling.ys == (0,)
    patches = np.stack([np.ones((PATCH, PATCH), np.float32), np.zeros((PATCH, PATCH), np.float32)])
    out = tiling.stitch(patches)[0]
    assert np.all(out[:, :64] == 1.0)
    assert np.all(out[:, 64:128] == 0.5)
    assert np.all(out[:, 128:] == 0.0)


def test_weighted_stitch_uses_fill_where_uncovered():
    tiling = Tiling.plan(2, 128, 192, PATCH, STRIDE)
    patches = np.stack([np.full((PATCH, PATCH), v, np.float32) for v in (1.0, 3.0, 2.0, 4.0)])
    fill = np.full((2, 128, 192), 7.0, np.float32)
    fill[1] = np.arange(192, dtype=np.float32)[None, :]
    # slice 0: left patch counts, right one weighted out; slice 1: no patch counts at all
    out = tiling.stitch(patches, weights=np.array([1.0, 0.0, 0.0, 0.0]), fill=fill)
    assert np.all(out[0, :, :128] == 1.0)  # the zero-weight patch does not dilute the overlap
    assert np.all(out[0, :, 128:] == 7.0)
    assert np.array_equal(out[1], fill[1])
    # without fill, uncovered pixels are 0
    out = tiling.stitch(patches, weights=np.array([1.0, 0.0, 0.0, 1.0]))
    assert np.all(out[0, :, 128:] == 0.0) and np.all(out[1, :, :64] == 0.0) and np.all(out[1, :, 64:] == 4.0)
    # weighted average in the overlap
    out = tiling.stitch(patches, weights=np.array([1.0, 3.0, 1.0, 1.0]))
    np.testing.assert_allclose(out[0, :, 64:128], (1.0 * 1 + 3.0 * 3) / 4, rtol=0, atol=1e-6)
    assert np.all(out[1, :, 64:128] == 3.0)


# ============================================================================================
# 2. gating and fusion


def random_maps(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 16, 16, generator=g), torch.rand(b, 16, 16, generator=g)


def test_fusion_weight_values():
    p = torch.tensor([0.0, 0.3, 0.5, 0.75, 1.0])
    assert torch.equal(fusion_weight(p), torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0]))


@pytest.mark.parametrize("p", [0.3, 0.0, 0.5])
def test_fuse_gates_out_low_p(p):
    m_us, m_os = random_maps(1)
    out = fuse(torch.tensor([p]), m_us + 0.5, m_os + 0.5)  # maps far from 0: a zero can only come from the gate
    assert out.shape == (1, 16, 16)
    assert torch.count_nonzero(out) == 0
    # constant maps too
    out = fuse(torch.tensor([p]), torch.full((1, 8, 8), 0.2), torch.full((1, 8, 8), 0.9))
    assert torch.count_nonzero(out) == 0


def test_fuse_p1_is_exactly_os():
    m_us, m_os = random_maps(1, seed=1)
    assert torch.equal(fuse(torch.tensor([1.0]), m_us, m_os), m_os)


def test_fuse_just_above_gate_is_us():
    m_us, m_os = random_maps(1, seed=2)
    out = fuse(torch.tensor([0.5 + 1e-6]), m_us, m_os)
    assert torch.count_nonzero(out) > 0
    torch.testing.assert_close(out, m_us, atol=1e-5, rtol=0)


def test_fuse_p075_is_even_mix():
    m_us, m_os = random_maps(1, seed=3)
    torch.testing.assert_close(fuse(torch.tensor([0.75]), m_us, m_os), 0.5 * m_os + 0.5 * m_us,
                               atol=1e-6, rtol=0)
    out = fuse(torch.tensor([0.75]), torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.9))
    torch.testing.assert_close(out, torch.full((1, 4, 4), 0.55), atol=1e-6, rtol=0)


def test_fuse_mixed_batch():
    p = torch.tensor([0.3, 0.5, 0.75, 1.0, 0.5 + 1e-6, 0.6])
    m_us, m_os = random_maps(6, seed=4)
    out = fuse(p, m_us, m_os)
    assert out.shape == (6, 16, 16)
    assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(out[1]) == 0
    torch.testing.assert_close(out[2], 0.5 * m_os[2] + 0.5 * m_us[2], atol=1e-6, rtol=0)
    assert torch.equal(out[3], m_os[3])
    torch.testing.assert_close(out[4], m_us[4], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[5], 0.2 * m_os[5] + 0.8 * m_us[5], atol=1e-6, rtol=0)
    # also with a channel axis (B, 1, H, W)
    out4 = fuse(p, m_us[:, None], m_os[:, None])
    assert out4.shape == (6, 1, 16, 16)
    torch.testing.assert_close(out4[:, 0], out, atol=0, rtol=0)


# -- end-to-end gating through segment_arrays with a hand-built bundle -----------------------

LOGIT_HI, LOGIT_LO = 10.0, -10.0
LOGIT_055 = math.log(0.55 / 0.45)
MEAN_HI, MEAN_MID = 0.55, 0.40  # classifier bands on the patch mean of (normalised) channel 0


def sigmoid32(logit: float) -> float:
    return float(torch.sigmoid(torch.tensor(logit, dtype=torch.float32)))


class FakeClassifier(Classifier):
    """logit +10 if the patch's channel-0 mean is above MEAN_HI, log(0.55/0.45) if above MEAN_MID,
    else -10. Counts the patches it was shown."""

    def __init__(self):
        super().__init__()
        self.upsample = 1.0
        self.seen = 0

    def logits_upsampled(self, xu):
        self.seen += xu.shape[0]
        m = xu[:, 0].mean(dim=(1, 2))
        return torch.where(m > MEAN_HI, torch.full_like(m, LOGIT_HI),
                           torch.where(m > MEAN_MID, torch.full_like(m, LOGIT_055), torch.full_like(m, LOGIT_LO)))


class ConstSegmenter(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), self.value, dtype=x.dtype, device=x.device)


class HalfConverter(nn.Module):
    def forward(self, x):
        return x * 0.5


class ZeroConverter(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def fake_bundle(converter: str = "half", **inference) -> Bundle:
    config = {"name": "fake", "channels": ["flair"], "flair_channel": "flair", "patch_size": PATCH,
              "preprocessing": {"inplane_scale": 1.0},
              "inference": {"stride": STRIDE, "gate_threshold": 0.5, "mask_threshold": 0.5, "filter_threshold": 0.2,
                            "undecided_margin": 0.1, "batch_size": 3, **inference}}
    models = {"classifier": FakeClassifier().eval(), "segmenter_us": ConstSegmenter(0.2),
              "segmenter_os": ConstSegmenter(0.9),
              "converter": (HalfConverter() if converter == "half" else ZeroConverter())}
    return Bundle(Path("/nonexistent/fake"), config, models)


def fake_volume() -> np.ndarray:
    """(5, 128, 192) FLAIR; the slice is tiled into a left (columns 0..127) and a right
    (64..191) patch.

    0: background only -> both patches gated out
    1: bright columns 0..63 -> left patch p ~ 1, right gated out
    2: moderately bright everywhere -> both patches p ~ 1
    3: mid-grey columns 0..63 -> left patch p = 0.55 (undecided), right gated out
    4: all zero -> no tissue, the classifier never sees it
    """
    rng = np.random.default_rng(7)
    v = np.full((5, 128, 192), 100.0, np.float32)
    v[1, :, :64] = 300 + rng.uniform(-20, 20, (128, 64))
    v[2] = 250 + rng.uniform(-20, 20, (128, 192))
    v[3, :, :64] = 200
    v[4] = 0
    return v


def expected_fused(p: float) -> float:
    return float(fuse(torch.tensor([p], dtype=torch.float32), torch.full((1, 1, 1), 0.2),
                      torch.full((1, 1, 1), 0.9))[0, 0, 0])


def test_fake_volume_hits_intended_classifier_bands():
    """Guard for the end-to-end tests: the hand-designed patches fall where intended."""
    xn = normalize_channel(fake_volume())
    left, right = xn[:, :, :128].mean(axis=(1, 2)), xn[:, :, 64:].mean(axis=(1, 2))
    assert left[0] < MEAN_MID and right[0] < MEAN_MID
    assert left[1] > MEAN_HI + 0.03 and right[1] < MEAN_MID - 0.03
    assert left[2] > MEAN_HI + 0.03 and right[2] > MEAN_HI + 0.03
    assert MEAN_MID + 0.03 < left[3] < MEAN_HI - 0.03 and right[3] < MEAN_MID - 0.03
    assert left[4] == 0 and right[4] == 0


@pytest.mark.parametrize("converter", ["half", "zero"])
def test_segment_arrays_gating_fusion_and_scores(converter):
    vol = fake_volume()
    bundle = fake_bundle(converter)
    res = segment_arrays(bundle, {"flair": vol, "t2": np.ones_like(vol)}, device="cpu")  # extra channel ignored
    z, ny, nx = vol.shape
    assert res.mask.shape == res.probability.shape == (z, ny, nx)
    assert res.mask.dtype == np.uint8

    # classifier: tissue patches only; p_tumor is the hand-set p (max over the slice's patches)
    assert bundle.models["classifier"].seen == 8
    assert res.counts["patches"] == 10 and res.counts["tissue_patches"] == 8 and res.counts["gated_patches"] == 4
    p_hi, p_lo, p_055 = sigmoid32(LOGIT_HI), sigmoid32(LOGIT_LO), sigmoid32(LOGIT_055)
    np.testing.assert_allclose(res.p_tumor, [p_lo, p_hi, p_hi, p_055, 0.0], rtol=1e-6, atol=1e-7)
    assert abs(res.p_tumor[3] - 0.55) < 1e-6
    rows = res.slice_rows()
    assert [r["p_tumor"] for r in rows] == [f"{p:.4f}" for p in (p_lo, p_hi, p_hi, p_055, 0.0)]

    # fused probabilities: gated-out patches count as zeros in the overlap average
    f_hi, f_055 = expected_fused(p_hi), expected_fused(p_055)
    assert abs(f_hi - 0.9) < 1e-3 and abs(f_055 - 0.27) < 1e-6
    prob = np.zeros((z, ny, nx), np.float32)
    prob[1, :, :64], prob[1, :, 64:128] = f_hi, f_hi / 2
    prob[2] = f_hi
    prob[3, :, :64], prob[3, :, 64:128] = f_055, f_055 / 2
    np.testing.assert_allclose(res.probability, prob, rtol=0, atol=1e-6)

    mask = np.zeros((z, ny, nx), np.uint8)
    mask[1, :, :64] = 1
    mask[2] = 1
    assert np.array_equal(res.mask, mask)
    assert res.tumor_pixels.tolist() == [0, 128 * 64, 128 * 192, 0, 0]
    assert res.counts["tumor_slices"] == 2 and res.counts["tumor_voxels"] == 128 * 64 + 128 * 192

    # Eq. 19 by hand on the normalised [0, 1] FLAIR
    xn = normalize_channel(vol).astype(np.float64)
    healthy = 0.5 * xn if converter == "half" else np.zeros_like(xn)
    d1 = np.abs(xn[1, :, :64] - healthy[1, :, :64]).mean()
    d2 = np.abs(xn[2] - healthy[2]).mean()
    np.testing.assert_allclose(res.difference_score, [1.0, d1, d2, 1.0, 1.0], rtol=1e-5, atol=1e-6)
    assert d2 < d1  # slice 2 is darker: the threshold below separates them

    # default threshold 0.2 (below both scores): only the undecided slice is flagged
    assert res.threshold == 0.2
    assert res.flagged.tolist() == [False, False, False, True, False]
    assert res.flag_reason == ["", "", "", REASON_UNDECIDED, ""]
    assert res.counts["flagged_slices"] == 1

    # threshold between the two scores: slice 2 has a low difference score
    thr = (d1 + d2) / 2
    bundle2 = fake_bundle(converter)
    res2 = segment_arrays(bundle2, {"flair": vol}, device="cpu", settings=bundle2.settings(filter_threshold=thr))
    assert res2.threshold == thr
    assert res2.flagged.tolist() == [False, False, True, True, False]
    assert res2.flag_reason == ["", "", REASON_LOW_DIFFERENCE, REASON_UNDECIDED, ""]
    assert np.array_equal(res2.mask, res.mask)

    # a tiny undecided margin no longer flags p = 0.55
    res3 = segment_arrays(fake_bundle(converter, undecided_margin=0.01), {"flair": vol}, device="cpu")
    assert res3.flag_reason == ["", "", "", "", ""]


def test_segment_arrays_all_gated_out_gives_empty_masks():
    # a gate above sigmoid(10): every patch, even the confident ones, is gated out
    vol = fake_volume()
    bundle = fake_bundle(gate_threshold=0.99999, undecided_margin=0.0)
    res = segment_arrays(bundle, {"flair": vol}, device="cpu")
    assert bundle.models["classifier"].seen == 8
    assert res.counts["gated_patches"] == 0
    assert res.mask.sum() == 0 and np.all(res.probability == 0)
    np.testing.assert_array_equal(res.difference_score, np.ones(5))
    assert not res.flagged.any() and res.flag_reason == [""] * 5
    # the same bundle with the paper's gate segments slices 1 and 2
    res = segment_arrays(fake_bundle(undecided_margin=0.0), {"flair": vol}, device="cpu")
    assert res.tumor_pixels.tolist() == [0, 128 * 64, 128 * 192, 0, 0]


# ============================================================================================
# 3. difference score and flags


def test_difference_scores_hand_computed():
    flair = np.array([[[0.1, 0.5, 0.9], [0.2, 0.4, 0.6], [0.0, 0.3, 1.0]],
                      [[0.7, 0.7, 0.7], [0.7, 0.7, 0.7], [0.7, 0.7, 0.7]]], np.float32)
    healthy = np.array([[[0.1, 0.2, 0.3], [0.4, 0.4, 0.4], [0.5, 0.5, 0.5]],
                        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], np.float32)
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 0, 1] = mask[0, 0, 2] = mask[0, 2, 0] = mask[0, 1, 1] = 1  # |.| = 0.3, 0.6, 0.5, 0.0
    scores = difference_scores(flair, healthy, mask)
    assert scores.shape == (2,)
    np.testing.assert_allclose(scores, [(0.3 + 0.6 + 0.5 + 0.0) / 4, 1.0], rtol=0, atol=1e-7)
    # mean_in_mask directly, with a non-boolean mask
    vals = np.arange(18, dtype=np.float64).reshape(2, 3, 3)
    m = np.zeros((2, 3, 3), np.int32)
    m[0, 0, 0], m[0, 2, 2], m[1, 1, 1] = 2, 1, 5
    np.testing.assert_allclose(mean_in_mask(vals, m), [(0 + 8) / 2, 13.0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(mean_in_mask(vals, np.zeros((2, 3, 3), bool)), [1.0, 1.0])


def test_flag_slices_reasons():
    tumor = np.array([0, 5, 5, 0, 5, 0])
    scores = np.array([1.0, 0.1, 0.5, 0.05, 0.1, 1.0])
    p = np.array([0.9, 0.9, 0.9, 0.55, 0.52, 0.3])
    flagged, reasons = flag_slices(tumor, scores, p, threshold=0.2, undecided_margin=0.1)
    assert flagged.dtype == bool
    assert flagged.tolist() == [False, True, False, True, True, False]
    assert reasons == ["", REASON_LOW_DIFFERENCE, "", REASON_UNDECIDED,
                       f"{REASON_LOW_DIFFERENCE};{REASON_UNDECIDED}", ""]
    assert REASON_LOW_DIFFERENCE == "low_difference_score" and REASON_UNDECIDED == "classifier_undecided"
    # margin 0 disables the undecided rule; an empty mask is never flagged for its score
    flagged, reasons = flag_slices(tumor, scores, p, threshold=2.0, undecided_margin=0.0)
    assert flagged.tolist() == [False, True, True, False, True, False]


# ============================================================================================
# 4. preprocessing


def test_normalize_channel_clips_nonzero_percentiles():
    rng = np.random.default_rng(0)
    v = np.zeros((4, 40, 40), np.float32)
    v[:, 5:35, 5:35] = rng.uniform(50, 1000, (4, 30, 30))
    v[0, 6, 6:26] = 5.0  # very dark tissue (< 1 % of the non-zero voxels): clipped up to the 1st percentile
    v[1, 7, 6:26] = 5000.0  # very bright outliers: clipped down to the 99th percentile
    nz = v != 0
    lo, hi = np.percentile(v[nz], [1.0, 99.0])
    assert lo > 5.0 and hi < 5000.0
    out = normalize_channel(v)
    assert out.shape == v.shape and out.dtype == np.float32
    assert np.all(out[~nz] == 0)  # zero background stays 0
    assert out.max() == pytest.approx(1.0, abs=1e-6)
    # affine in the clipped intensity, increasing
    c = np.clip(v[nz], lo, hi).astype(np.float64)
    slope, icpt = np.polyfit(c, out[nz].astype(np.float64), 1)
    assert slope > 0
    np.testing.assert_allclose(out[nz], slope * c + icpt, rtol=0, atol=1e-5)
    assert np.all(out[v >= hi] == out.max())  # all outliers clipped to the top
    assert np.ptp(out[nz & (v <= lo)]) == 0  # dark voxels clipped to one value
    assert np.all(out[nz & (v <= lo)] > 0)  # ... which stays above the background


def test_normalize_channel_all_zero():
    out = normalize_channel(np.zeros((3, 8, 9), np.int16))
    assert out.shape == (3, 8, 9) and out.dtype == np.float32 and not out.any()


def test_normalize_channel_signed_intensities_keep_zero_background():
    """Documented contract: zero voxels stay 0 and the output is in [0, 1], also when the
    non-zero intensities are signed (e.g. z-scored volumes): the clipped tissue is min-max scaled
    from its own lowest value, not from the background's 0."""
    v = np.zeros((2, 20, 20), np.float32)
    v[:, 5:15, 5:15] = np.random.default_rng(2).standard_normal((2, 10, 10))
    out = normalize_channel(v)
    nz = v != 0
    lo, hi = np.percentile(v[nz], [1.0, 99.0])
    assert lo < 0 < hi
    np.testing.assert_allclose(out[nz], (np.clip(v[nz], lo, hi) - lo) / (hi - lo), rtol=0, atol=1e-6)
    assert np.all(out[v == 0] == 0), f"background mapped to {np.unique(out[v == 0])}"


def test_brain_bbox_known_box():
    s = np.zeros((3, 2, 50, 60), np.float32)
    s[0, 0, 10:20, 15:30] = 1.0
    s[2, 1, 25:31, 40:45] = 2.0
    s[1, 0, 40:45, 2:5] = 0.05  # below threshold 0.1
    assert brain_bbox(s) == (10, 45, 2, 45)
    assert brain_bbox(s, threshold=0.1) == (10, 31, 15, 45)
    assert brain_bbox(np.zeros((2, 1, 5, 5))) is None
    assert brain_bbox(s, threshold=5.0) is None


def test_working_grid_round_trip_scale_1_is_identity():
    rng = np.random.default_rng(3)
    s = np.zeros((3, 1, 70, 90), np.float32)
    s[:, :, 8:61, 11:77] = rng.random((3, 1, 53, 66), dtype=np.float32) + 0.1
    bbox = brain_bbox(s)
    assert bbox == (8, 61, 11, 77)
    crop = plan_crop(bbox, 1.0)
    work = to_working(s, crop)
    assert work.shape == (3, 1, 53, 66)
    assert np.array_equal(work, s[:, :, 8:61, 11:77])
    back = to_input(work[:, 0], crop, (70, 90))
    assert back.shape == (3, 70, 90) and back.dtype == np.float32
    assert np.array_equal(back, s[:, 0])


def test_working_grid_round_trip_scale_half_smooth_image():
    h, w = 120, 140
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    blob = np.exp(-((yy - 60) ** 2 + (xx - 75) ** 2) / (2 * 25.0 ** 2)).astype(np.float32)
    s = np.zeros((2, 1, h, w), np.float32)
    s[0, 0, 10:110, 20:130] = blob[10:110, 20:130]
    s[1, 0, 10:110, 20:130] = 0.5 * blob[10:110, 20:130]
    bbox = brain_bbox(s)
    assert bbox == (10, 110, 20, 130)
    crop = plan_crop(bbox, 0.5)
    assert (crop.height, crop.width) == (50, 55)
    work = to_working(s, crop)
    assert work.shape == (2, 1, 50, 55)
    back = to_input(work[:, 0], crop, (h, w))
    assert back.shape == (2, h, w)
    inside = np.zeros((h, w), bool)
    inside[10:110, 20:130] = True
    assert np.all(back[:, ~inside] == 0)
    err = np.abs(back[:, inside] - s[:, 0][:, inside])
    assert err.mean() < 0.02, err.mean()
    assert err.max() < 0.1, err.max()


# ============================================================================================
# 5. RISE


def square_predict(y0=8, y1=20, x0=10, x1=22):
    def predict(x):
        return x[:, 0, y0:y1, x0:x1].mean(dim=(1, 2))
    return predict


def reference_rise(predict, images: torch.Tensor, cfg: RiseConfig) -> torch.Tensor:
    """sum_i p(x * M_i) M_i / (N p1), naively, from all masks of the run materialised at once."""
    n, _, h, w = images.shape
    masks = generate_masks(cfg.n_masks, (h, w), cfg.cells, cfg.p1, cfg.seed).double()
    assert masks.shape == (cfg.n_masks, 1, h, w)
    out = torch.zeros(n, h, w, dtype=torch.float64)
    for i in range(n):
        for k in range(cfg.n_masks):
            p = float(predict(images[i:i + 1].double() * masks[k:k + 1])[0])
            out[i] += p * masks[k, 0]
    return out / (cfg.n_masks * cfg.p1)


def test_generate_masks_shape_range_reproducible():
    masks = generate_masks(20, (40, 36), 8, 0.5, seed=5)
    assert masks.shape == (20, 1, 40, 36) and masks.dtype == torch.float32
    assert 0.3 < float(masks.mean()) < 0.7  # p1 = 0.5 of the cells kept
    # p1 is the probability that a cell is kept: 0 blanks the whole image, 1 keeps all of it
    assert not generate_masks(3, (40, 36), 8, 0.0, seed=5).any()
    torch.testing.assert_close(generate_masks(3, (40, 36), 8, 1.0, seed=5), torch.ones(3, 1, 40, 36))
    assert len(torch.unique(masks[0])) > 2  # smooth, not binary
    again = generate_masks(20, (40, 36), 8, 0.5, seed=5)
    assert torch.equal(masks, again)
    other = generate_masks(20, (40, 36), 8, 0.5, seed=6)
    assert not torch.equal(masks, other)


@pytest.mark.parametrize("batch", [50, 16])
def test_rise_maps_matches_reference_formula(batch):
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = RiseConfig(n_masks=50, cells=4, p1=0.5, batch=batch, seed=11)
    predict = square_predict()
    calls = []
    maps = rise_maps(predict, images, cfg, progress=calls.append)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    ref = reference_rise(predict, images, cfg)
    torch.testing.assert_close(maps.double(), ref, atol=1e-5, rtol=0)
    assert calls == ([50] if batch == 50 else [16, 32, 48, 50])


def test_rise_maps_independent_of_batch_size():
    """The mask batch size is a memory knob: N masks in batches of 16 (50 is not a multiple of
    16) must give the same saliency as one batch of 50, for the same seed."""
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    predict = square_predict()
    one = rise_maps(predict, images, RiseConfig(n_masks=50, cells=4, batch=50, seed=3))
    batched = rise_maps(predict, images, RiseConfig(n_masks=50, cells=4, batch=16, seed=3))
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=0)


def test_rise_maps_same_on_worker_threads_and_thread_count_restored():
    """On a CPU with several torch threads the masked chunks run on worker threads: the maps
    equal the single-threaded ones, every chunk reaches the model in one piece of at most
    CPU_CHUNK images, and the caller's thread count is back afterwards, also when the model
    fails half-way."""
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(4))
    cfg = RiseConfig(n_masks=70, cells=4, batch=40, seed=2)
    base = square_predict()
    sizes = []

    def predict(x):
        sizes.append(len(x))
        return base(x)

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = rise_maps(predict, images, cfg)
        torch.set_num_threads(2)
        sizes.clear()
        threaded = rise_maps(predict, images, cfg)
        assert torch.get_num_threads() == 2
        assert max(sizes) == CPU_CHUNK and sum(sizes) == 3 * 70
        torch.testing.assert_close(threaded, single, atol=1e-6, rtol=0)

        def failing(x):
            raise RuntimeError("model failed")
        with pytest.raises(RuntimeError, match="model failed"):
            rise_maps(failing, images, cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_centered_rise_is_the_formula_minus_mean_score_times_coverage():
    """centered=True: sum_i (p_i - mean p) M_i / (N p1), from the same masks."""
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    cfg = RiseConfig(n_masks=40, cells=4, batch=16, seed=9, centered=True)
    predict = square_predict()
    maps = rise_maps(predict, images, cfg)
    masks = generate_masks(cfg.n_masks, (32, 32), cfg.cells, cfg.p1, cfg.seed).double()[:, 0]
    for i in range(2):
        p = torch.stack([predict(images[i:i + 1].double() * masks[k][None, None])[0] for k in range(40)]).double()
        ref = ((p - p.mean())[:, None, None] * masks).sum(0) / (40 * cfg.p1)
        torch.testing.assert_close(maps[i].double(), ref, atol=1e-5, rtol=0)


def test_centered_rise_gives_cleaner_seeds_with_few_masks():
    """The control variate removes the noise of uneven mask coverage: with 100 masks the
    positive seeds of the centred map fall inside the decisive square far more often."""
    img = torch.zeros(1, 1, 64, 64)
    img[..., 24:32, 28:36] = 1.0
    inside = torch.zeros(1, 64, 64, dtype=torch.bool)
    inside[:, 24:32, 28:36] = True
    predict = square_predict(24, 32, 28, 36)
    overlap = {}
    for centered in (False, True):
        maps = rise_maps(predict, img, RiseConfig(n_masks=100, cells=8, batch=100, seed=0, centered=centered))
        pos, _ = seeds_from_maps(maps)
        overlap[centered] = float((pos & inside).sum() / pos.sum())
    assert overlap[True] > 0.75 and overlap[True] > overlap[False] + 0.2, overlap  # 0.82 vs 0.54


def test_rise_localises_the_decisive_square():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 20:36, 24:40] = 1.0
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[20:36, 24:40] = True
    maps = rise_maps(square_predict(20, 36, 24, 40), img, RiseConfig(n_masks=600, cells=8, batch=200, seed=0))
    e = normalize_maps(maps)[0]
    assert float(e.min()) == 0.0 and float(e.max()) == pytest.approx(1.0)
    assert inside.flatten()[int(e.argmax())]
    assert float(e[inside].mean()) > float(e[~inside].mean()) + 0.3
    pos, neg = seeds_from_maps(maps)
    assert pos.shape == neg.shape == (1, 64, 64)
    assert pos[0].sum() > 0 and not (pos[0] & ~inside).any()  # S+ inside the square
    assert neg[0].sum() > 0 and (neg[0] & ~inside).sum() >= 0.95 * neg[0].sum()  # S- mostly outside


def test_seeds_from_maps_labels():
    maps = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    pos, neg = seeds_from_maps(maps, labels=torch.tensor([0, 1, 0]))
    assert not pos[0].any() and not pos[2].any()
    assert neg[0].all() and neg[2].all()
    e = (maps[1] - maps[1].min()) / (maps[1].max() - maps[1].min())
    assert torch.equal(pos[1], e > 0.8) and torch.equal(neg[1], e < 0.2)
    assert pos[1].any() and neg[1].any()
    # a constant map normalises to 0
    assert torch.equal(normalize_maps(torch.full((1, 4, 4), 3.0)), torch.zeros(1, 4, 4))


def test_gate_positive_seeds_keeps_bright_tissue_only():
    # FLAIR: background 0, tissue 1..8 in the top two rows; q=0.5 of the tissue is 4.5 -> keep 5..8
    flair = torch.zeros(2, 4, 4)
    flair[:, :2] = torch.arange(1, 9, dtype=torch.float32).reshape(2, 4)
    pos = torch.ones(2, 4, 4, dtype=torch.bool)
    pos[1, 1, 0] = False  # a pixel that is bright but not a seed stays off
    gated = gate_positive_seeds(pos, flair, 0.5)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[:, 1] = True
    expected[1, 1, 0] = False
    assert torch.equal(gated, expected)
    # quantile 0 keeps every tissue pixel but the darkest; background never becomes a seed
    assert int(gate_positive_seeds(pos[:1], flair[:1], 0.0).sum()) == 7
    assert torch.equal(gate_positive_seeds(pos, flair, None), pos)  # off: the paper's seeds
    assert not gate_positive_seeds(pos, torch.zeros(2, 4, 4), 0.5).any()  # no tissue, no seed
    with pytest.raises(ValueError):
        gate_positive_seeds(pos, flair, 1.0)
    # the negative counterpart: tissue at or below the quantile joins S-, background does not
    neg = torch.zeros(2, 4, 4, dtype=torch.bool)
    neg[0, 3, 3] = True  # an existing negative seed stays
    ext = extend_negative_seeds(neg, flair, 0.5)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[:, 0] = True
    expected[0, 3, 3] = True
    assert torch.equal(ext, expected)
    assert torch.equal(extend_negative_seeds(neg, flair, None), neg)


def test_gate_raises_seed_precision_on_a_blurry_map():
    # RISE-like blob larger than the tumour: the bright core of FLAIR is the tumour
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    tumour = ((yy - 30) ** 2 + (xx - 34) ** 2) < 36
    brain = ((yy - 32) ** 2 / 900 + (xx - 32) ** 2 / 700) < 1
    flair = (0.4 * brain + 0.5 * tumour).float()[None]
    blob = torch.exp(-(((yy - 30) ** 2 + (xx - 34) ** 2) / (2 * 16.0 ** 2)))[None]
    pos, _ = seeds_from_maps(blob)
    before = float((pos & tumour).sum() / pos.sum())
    gated = gate_positive_seeds(pos, flair, 0.9)
    after = float((gated & tumour).sum() / gated.sum())
    assert before < 0.5 and after == 1.0


def test_flip_augmentation_mirrors_whole_images():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    assert augment_batch(x, "none") is x
    seen = set()
    for seed in range(20):
        out = augment_batch(x, "flip", torch.Generator().manual_seed(seed))
        for k in range(2):
            if torch.equal(out[k], x[k]):
                seen.add("same")
            else:
                assert torch.equal(out[k], x[k].flip(-1))  # every channel mirrored together
                seen.add("flipped")
    assert seen == {"same", "flipped"}
    with pytest.raises(ValueError):
        augment_batch(x, "rotate")


class SquareClassifier(Classifier):
    """Probability = mean of channel 0 over a square of the (x2 upsampled) input."""

    def __init__(self):
        super().__init__()
        self.upsample = 2.0

    def logits_upsampled(self, xu):
        p = xu[:, 0, 16:32, 24:40].mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.log(p / (1 - p))


def test_classifier_rise_at_upsampled_resolution():
    clf = SquareClassifier()
    patches = torch.zeros(2, 1, 32, 32)
    patches[:, :, 8:16, 12:20] = 1.0  # the square at patch resolution
    patches[1] *= 0.8
    cfg = RiseConfig(n_masks=200, cells=8, batch=64, seed=1)
    xu = clf.upsample_input(patches)
    assert xu.shape == (2, 1, 64, 64)
    maps = classifier_rise(clf, patches, cfg)
    assert maps.shape == (2, 32, 32)
    full = rise_maps(clf.forward_upsampled, xu, cfg)
    expected = full.reshape(2, 32, 2, 32, 2).mean(dim=(2, 4))  # 2x2 area average, by hand
    torch.testing.assert_close(maps, expected, atol=1e-6, rtol=0)
    for k in range(2):
        am = int(maps[k].argmax())
        assert 8 <= am // 32 < 16 and 12 <= am % 32 < 20


@pytest.mark.parametrize("arch", ["compact", "vgg"])
def test_inference_copy_folds_batchnorm_and_keeps_outputs(arch):
    """RISE runs a folded, channels-last copy of the classifier: same probabilities (1e-5), the
    BatchNorm layers gone from the copy, and the caller's model untouched."""
    torch.manual_seed(0)
    clf = (CompactClassifier(in_channels=3, width=4, blocks=3, upsample=1.0) if arch == "compact"
           else VGG16BNClassifier(in_channels=3, width=2, hidden=8, upsample=1.0))
    x = torch.rand(6, 3, 64, 64)
    clf.train()
    for _ in range(3):  # non-trivial running statistics
        clf(x * 2 + 0.5)
    clf.eval()
    with torch.no_grad():
        before = clf(x)
    fast = inference_copy(clf)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in clf.modules()) > 0
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), before, atol=1e-5, rtol=0)
        torch.testing.assert_close(clf(x), before, atol=0, rtol=0)
    assert clf.features[0].weight.is_contiguous()
    clf.train()  # a model in training mode keeps its BatchNorm (batch statistics)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in inference_copy(clf).modules())


# ============================================================================================
# 6. architectures


def test_unet_shapes_and_batch_independence():
    torch.manual_seed(0)
    net = UNet(in_channels=3, width=4, latent=16)
    x = torch.rand(2, 3, 128, 128)
    y = net(x).detach()
    assert y.shape == (2, 1, 128, 128)
    net.eval()
    with torch.no_grad():
        m, code = net.forward_with_code(x)
        assert code.shape == (2, 16)
        assert torch.equal(m, net(x))
        assert torch.equal(code, net.encoder(x))
        # in eval mode a patch's map does not depend on the other patches of its batch
        torch.testing.assert_close(net(x[1:]), m[1:], atol=1e-6, rtol=0)


def test_unet_without_fine_skips_ignores_fine_encoder_detail():
    """``skips=k`` keeps the k coarsest skip connections: a change of the input that the encoder
    sees only at the finest level no longer reaches the output directly."""
    torch.manual_seed(0)
    full, four = UNet(1, width=4, latent=8), UNet(1, width=4, latent=8, skips=4)
    assert len(full.skips) == 5 and len(four.skips) == 4
    four.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith("skips.4.")})
    assert not any(k.startswith("skips.4.") for k in four.state_dict())
    full.eval(), four.eval()
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        # the coarse path is shared: with the finest skip's contribution removed by hand, the outputs agree
        feats = full.encoder.features(x)
        h = feats[-1]
        skips = list(reversed(feats[:-1]))
        for i, block in enumerate(full.decoder.blocks[:-1]):
            h = block(h)
            if i < 4:
                h = full.skips[i](skips[i], h)
        torch.testing.assert_close(four(x), full.decoder.blocks[-1](h))
        assert not torch.equal(four(x), full(x))
    with pytest.raises(ValueError):
        UNet(1, width=4, latent=8, skips=6)


def test_generator_weights_load_into_unet_decoder():
    torch.manual_seed(1)
    g = Generator(latent=16, width=4)
    z = torch.randn(2, 16)
    assert g(z).shape == (2, 1, 128, 128)
    unet = UNet(in_channels=3, width=4, latent=16)
    result = unet.decoder.load_state_dict(g.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    g.eval(), unet.eval()
    with torch.no_grad():
        assert torch.equal(unet.decoder(z), g(z))
    with pytest.raises(RuntimeError):  # a differently sized generator does not fit
        UNet(in_channels=3, width=8, latent=16).decoder.load_state_dict(g.state_dict(), strict=True)


def test_discriminator_and_encoder_shapes():
    torch.manual_seed(2)
    d = Discriminator(in_channels=2, width=4)
    with torch.no_grad():
        out = d(torch.rand(3, 2, 128, 128))
    assert out.shape == (3,)
    e = Encoder(in_channels=1, width=4, latent=16)
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        assert e(x).shape == (2, 16)
        feats = e.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 4, 64, 64), (2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8),
                                               (2, 64, 4, 4), (2, 16, 1, 1)]


@pytest.mark.parametrize("make", [lambda: VGG16BNClassifier(in_channels=4, width=4, hidden=32),
                                  lambda: CompactClassifier(in_channels=4, width=4, blocks=3)],
                         ids=["vgg16_bn", "compact"])
def test_classifiers_shape_upsample_and_batch_independence(make):
    torch.manual_seed(3)
    clf = make().eval()
    x = torch.rand(2, 4, 128, 128)
    with torch.no_grad():
        p = clf(x)
        assert p.shape == (2,)
        torch.testing.assert_close(clf(x[1:]), p[1:], atol=1e-6, rtol=0)  # one patch, one probability
        xu = clf.upsample_input(x)
        assert xu.shape == (2, 4, 256, 256)
        torch.testing.assert_close(clf.forward_upsampled(xu), p, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.sigmoid(clf.logits(x)), p, atol=1e-6, rtol=0)


def test_compact_classifier_rejects_bad_pool():
    with pytest.raises(ValueError):
        CompactClassifier(pool="median")


def test_registry():
    net = build("unet", {"in_channels": 2, "width": 4, "latent": 8})
    assert isinstance(net, UNet)
    assert isinstance(build("compact_classifier", {"in_channels": 3, "width": 4}), CompactClassifier)
    assert isinstance(build("dcgan_discriminator"), Discriminator)
    with pytest.raises(KeyError):
        build("resnet50")
    with pytest.raises(TypeError):
        build("unet", {"no_such_argument": 1})


# ============================================================================================
# 7. CUDA vs CPU


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segment_arrays_cuda_matches_cpu():
    vol = fake_volume()
    cpu = segment_arrays(fake_bundle(), {"flair": vol}, device="cpu")
    gpu = segment_arrays(fake_bundle().to("cuda"), {"flair": vol}, device="cuda")
    assert np.array_equal(gpu.mask, cpu.mask)
    assert cpu.mask.sum() > 0
    np.testing.assert_allclose(gpu.probability, cpu.probability, rtol=0, atol=1e-4)
    np.testing.assert_allclose(gpu.p_tumor, cpu.p_tumor, rtol=0, atol=1e-4)
    np.testing.assert_allclose(gpu.difference_score, cpu.difference_score, rtol=0, atol=1e-4)
    assert gpu.flag_reason == cpu.flag_reason
