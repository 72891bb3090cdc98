"""Metrics against hand computations (both Dice conventions, always labelled; docs/evaluation.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from WeakTumorSegLib.metrics import (dice, mean_interval, per_slice_dice, roc_auc, seed_overlap,
                                     sensitivity_specificity, voxels_away)


def test_auc_hand_values_and_ties():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc([0, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(0.0)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_sensitivity_specificity():
    sens, spec = sensitivity_specificity([1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.1, 0.2])
    assert sens == pytest.approx(0.5) and spec == pytest.approx(2 / 3)


def test_dice_conventions():
    a = np.zeros((3, 2, 2), bool)
    b = np.zeros((3, 2, 2), bool)
    a[0, 0, 0] = b[0, 0, 0] = True  # slice 0: perfect
    a[1, 0, 0] = True  # slice 1: prediction only -> 0; slice 2: both empty -> 1 (paper)
    np.testing.assert_allclose(per_slice_dice(a, b), [1.0, 0.0, 1.0])
    assert dice(a, b) == pytest.approx(2 * 1 / 3)  # one 3D Dice over the volume
    assert dice(np.zeros(4), np.zeros(4)) == 1.0


def test_seed_overlap():
    truth = np.array([[1, 1, 0, 0]], bool)
    pos = np.array([[1, 0, 1, 0]], bool)  # half inside the tumour
    neg = np.array([[0, 0, 1, 1]], bool)  # all outside
    assert seed_overlap(pos, neg, truth) == (pytest.approx(0.5), pytest.approx(1.0))


def test_voxels_away_counts_only_the_lesions_that_miss_every_tumour():
    truth = np.zeros((4, 8, 8), bool)
    truth[1:3, 1:3, 1:3] = True
    mask = np.zeros_like(truth)
    mask[1:3, 1:4, 1:4] = True  # the tumour and a rim around it: an outline error
    assert voxels_away(mask, truth) == 0
    mask[0:2, 6:8, 6:8] = True  # a separate lesion of 8 voxels: a detection error
    mask[3, 0, 7] = True  # and a lone voxel touching nothing
    assert voxels_away(mask, truth) == 9
    assert voxels_away(mask, np.zeros_like(truth)) == int(mask.sum())
    assert voxels_away(np.zeros_like(truth), truth) == 0


def test_mean_interval_tells_how_far_a_few_patients_mean_can_be_trusted():
    ten = np.linspace(0.0, 0.9, 10)  # 10 patients' Dice, as spread as the validation patients'
    low, high = mean_interval(ten)
    assert low < ten.mean() < high and high - low > 0.2  # 10 such patients cannot tell 0.05 apart
    assert mean_interval(ten) == (low, high)  # seeded: the same report every time
    forty = np.repeat(ten, 4)  # the same spread over 40 patients: about half as wide
    low40, high40 = mean_interval(forty)
    assert low40 < ten.mean() < high40 and high40 - low40 < 0.6 * (high - low)
    assert mean_interval([0.7] * 10) == pytest.approx((0.7, 0.7))
    assert all(np.isnan(mean_interval([0.5])))
