"""The final segmenter's label rules and losses against hand computations: which slices get a full
label, how trusted masks grow over the tumour slices, that weakly labelled slices never enter the
segmentation loss, Mlynarski et al.'s per-batch pixel weights, and Li et al.'s evidential prior and
E-step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from WeakTumorSegLib.stages.final import (
    EMPTY,
    EXCLUDED,
    MASKED,
    WEAK,
    mixed_loss,
    pixel_weights,
    slice_kinds,
    soft_dice_loss,
    tile_kinds,
)
from WeakTumorSegLib.stages.label_refinement import grow_labels
from WeakTumorSegLib.stages.partial_labels import UNKNOWN, e_step, em_loss, fit_prior, prior_from_evidence


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# ---------------------------------------------------------------------------------------------
# Label rules


def test_slice_kinds_follow_labels_masks_and_flags():
    labels = np.array([0, 0, 1, 1, 1, 1])
    pixels = np.array([0, 40, 30, 30, 0, 5])  # the second tumour-free slice has a (wrong) mask
    flagged = np.array([False, True, False, True, False, False])
    kinds = slice_kinds(labels, pixels, flagged)
    # tumour-free slices: an exact empty mask whatever the pipeline marked on them; unflagged
    # non-empty masks are kept; flagged or empty masks on tumour slices leave a slice label only
    assert kinds.tolist() == [EMPTY, EMPTY, MASKED, WEAK, WEAK, MASKED]


def test_slice_kinds_refuse_arrays_of_different_length():
    with pytest.raises(ValueError, match="differ in length"):
        slice_kinds(np.zeros(3), np.zeros(4), np.zeros(3, bool))


def test_tile_kinds():
    # slices: 0 empty, 1 masked, 2 weak; two tiles per slice
    kinds = np.array([EMPTY, MASKED, WEAK])
    slice_of = np.repeat(np.arange(3), 2)
    masks = np.zeros((6, 4, 4), np.uint8)
    masks[2, 1, 1] = 1  # the masked slice's mask lies in its first tile only
    tissue = np.array([0, 1, 2, 3, 4, 5])
    p = np.array([0.1, 0.2, 0.9, 0.3, 0.6, 0.8])
    kind, label = tile_kinds(kinds, slice_of, masks, tissue, p)
    assert kind.tolist() == [EMPTY, EMPTY, MASKED, MASKED, EXCLUDED, WEAK]  # the weak slice keeps its likelier tile
    assert label.tolist() == [0, 0, 1, 0, 1, 1]  # a masked slice's tile without the mask is a full empty label
    # a tile without tissue is never used
    kind, _ = tile_kinds(kinds, slice_of, masks, np.array([0, 2, 3, 4, 5]), p)
    assert kind[1] == EXCLUDED


def grow_case():
    """A tumour over slices 1-5 (a core of 0.9 with a rim of 0.3 in the fused probability); slices
    2 and 3 passed the filter with the core as mask; a bright spot of 0.6 lies apart from the tumour
    on slice 4, another on the tumour-free slice 0; slice 6 is a tumour slice the pipeline missed."""
    prob = np.zeros((7, 12, 12), np.float32)
    prob[1:6, 3:9, 3:9] = 0.3
    prob[2:4, 4:8, 4:8] = 0.9
    prob[4, 10:12, 10:12] = 0.6
    prob[0, 4:8, 4:8] = 0.8
    mask = prob > 0.5
    kinds = np.array([EMPTY, WEAK, MASKED, MASKED, WEAK, WEAK, WEAK])
    return prob, mask, kinds


def test_grown_labels_cover_the_tumour_slices_connected_to_a_trusted_mask():
    prob, mask, kinds = grow_case()
    grown, new_kinds = grow_labels(prob, mask, kinds, 0.2)
    # the rim and the weak slices 1, 4 and 5 are reached through the trusted masks; slice 6 is not
    assert new_kinds.tolist() == [EMPTY, MASKED, MASKED, MASKED, MASKED, MASKED, WEAK]
    assert grown[1:6, 3:9, 3:9].all()
    # the spot apart from the tumour, the tumour-free slice and the missed slice stay unlabelled
    assert not grown[4, 10:, 10:].any() and not grown[0].any() and not grown[6].any()
    assert grown.sum() == 5 * 36


def test_grown_labels_stop_at_the_lower_threshold():
    prob, mask, kinds = grow_case()
    grown, new_kinds = grow_labels(prob, mask, kinds, 0.5)  # above the rim: only the trusted cores
    assert (grown == (mask & (kinds == MASKED)[:, None, None])).all()
    assert new_kinds.tolist() == kinds.tolist()
    with pytest.raises(ValueError, match="shapes differ"):
        grow_labels(prob[:3], mask, kinds, 0.2)


# ---------------------------------------------------------------------------------------------
# Mixed supervision (Mlynarski et al.)


def test_pixel_weights_sum_to_t0_and_t1_over_fully_labelled_images():
    target = torch.zeros(3, 4, 4)
    target[0, :2, :2] = 1  # 4 tumour pixels in image 0
    target[2, 0, 0] = 1  # image 2 is weak: its pixels must not count
    full = torch.tensor([True, True, False])
    w = pixel_weights(target, full, 0.7, 0.3)
    assert w[:2][target[:2] > 0].sum().item() == pytest.approx(0.3)
    assert w[:2][target[:2] == 0].sum().item() == pytest.approx(0.7)
    assert w[0, 0, 0].item() == pytest.approx(0.3 / 4)
    assert w[1, 3, 3].item() == pytest.approx(0.7 / 28)
    assert (w[2] == 0).all()


def test_weak_images_never_enter_the_segmentation_loss():
    torch.manual_seed(0)
    prob = torch.rand(3, 4, 4).clamp(0.05, 0.95).requires_grad_()
    target = (torch.rand(3, 4, 4) > 0.7).float()
    full = torch.tensor([True, False, True])
    loss, _ = mixed_loss(prob, None, target, full, torch.ones(3), 0.7, 0.3, 0.7)
    loss.backward()
    assert (prob.grad[1] == 0).all() and prob.grad[0].abs().sum() > 0
    # and changing the weak image's map or "mask" changes nothing
    other = target.clone()
    other[1] = 1 - other[1]
    again, _ = mixed_loss(prob.detach(), None, other, full, torch.ones(3), 0.7, 0.3, 0.7)
    assert again.item() == pytest.approx(loss.item())


def test_mixed_loss_hand_value():
    prob = torch.tensor([[[0.8, 0.4]], [[0.3, 0.1]]], dtype=torch.float64)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]], dtype=torch.float64)
    logit = torch.tensor([0.5, -1.0], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0], dtype=torch.float64)
    full = torch.tensor([True, True])
    # one tumour pixel weighs t1; three healthy pixels share t0
    seg = 0.3 * bce(0.8, 1) + 0.7 / 3 * (bce(0.4, 0) + bce(0.3, 0) + bce(0.1, 0))
    cls = (bce(1 / (1 + math.exp(-0.5)), 1) + bce(1 / (1 + math.exp(1.0)), 0)) / 2
    loss, parts = mixed_loss(prob, logit, target, full, labels, 0.7, 0.3, 0.7)
    assert parts["seg"] == pytest.approx(seg, rel=1e-6) and parts["cls"] == pytest.approx(cls, rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * seg + 0.3 * cls, rel=1e-6)


def test_dice_term_hand_value_and_weak_images_left_out():
    prob = torch.tensor([[[0.8, 0.4]], [[0.3, 0.1]], [[0.9, 0.9]]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1.0]]], dtype=torch.float64)
    full = torch.tensor([True, True, False])  # image 2 is weak
    # batch Dice over images 0 and 1, smooth 1: 1 - (2 * 0.8 + 1) / (1.6 + 1 + 1)
    dice = 1 - (2 * 0.8 + 1) / (0.8 + 0.4 + 0.3 + 0.1 + 1 + 1)
    assert soft_dice_loss(prob, target, full).item() == pytest.approx(dice, rel=1e-9)
    seg = 0.3 * bce(0.8, 1) + 0.7 / 3 * (bce(0.4, 0) + bce(0.3, 0) + bce(0.1, 0))
    loss, parts = mixed_loss(prob, None, target, full, torch.ones(3), 0.7, 0.3, 0.7, dice=0.5)
    assert parts["seg"] == pytest.approx(seg + 0.5 * dice, rel=1e-6)
    loss.backward()
    assert (prob.grad[2] == 0).all()
    assert prob.grad[0, 0, 0] < 0  # the tumour pixel is pushed up


# ---------------------------------------------------------------------------------------------
# EM-regularised partial labels (Li et al.)


def test_uncertainty_lies_in_0_1_and_falls_as_evidence_grows():
    evidence = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 5.0], [10.0, 30.0]])
    p, u = prior_from_evidence(evidence)
    assert u[0].item() == pytest.approx(1.0) and p[0].item() == pytest.approx(0.5)
    assert ((u > 0) & (u <= 1)).all()
    assert (u[1:] < u[:-1]).all()
    assert p[2].item() == pytest.approx(6 / 7) and u[3].item() == pytest.approx(2 / 42)


def test_e_step_takes_the_network_where_it_agrees_with_the_prior():
    p0 = torch.tensor([0.9, 0.9, 0.2, 0.5])
    u = torch.tensor([0.1, 0.1, 0.05, 0.6])
    p_theta = torch.tensor([0.85, 0.4, 0.22, 0.0])
    q = e_step(p0, u, p_theta)
    # |p0 - p_theta| = 0.05 <= 0.1, 0.5 > 0.1, 0.02 <= 0.05, 0.5 <= 0.6
    assert q.tolist() == pytest.approx([0.85, 0.9, 0.22, 0.0])
    assert torch.equal(e_step(p0, u, None), p0)  # first epoch: gamma = 0


def test_em_regulariser_with_gamma_0_is_cross_entropy_to_the_prior():
    prob = torch.tensor([[[0.7, 0.2, 0.6]]], dtype=torch.float64)
    partial = torch.tensor([[[1, UNKNOWN, UNKNOWN]]], dtype=torch.float64)
    p0 = torch.tensor([[[0.0, 0.3, 0.9]]], dtype=torch.float64)
    q = e_step(p0, torch.zeros_like(p0), None)
    _, parts = em_loss(prob, partial, q, 1.0, 0.7, 0.3)
    expected = (0.3 * bce(0.2, 1) + 0.7 * bce(0.2, 0) + 0.9 * bce(0.6, 1) + 0.1 * bce(0.6, 0)) / 2
    assert parts["reg"] == pytest.approx(expected, rel=1e-9)
    assert parts["sup"] == pytest.approx(0.3 * bce(0.7, 1), rel=1e-9)  # the one known pixel is tumour: t1


def test_evidential_prior_learns_a_separable_feature():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 2, generator=gen)
    y = (x[:, 0] > 0.5).long()
    prior = fit_prior(x, y, steps=300, batch=512, lr=1e-2)
    p, u = prior.predict(torch.tensor([[0.95, 0.5], [0.05, 0.5], [0.5, 0.5]]))
    assert p[0] > 0.8 and p[1] < 0.2
    assert u[2] > u[0] and u[2] > u[1]  # least evidence at the class border
