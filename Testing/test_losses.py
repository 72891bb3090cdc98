"""Training losses of Yoo et al. (Eqs. 1-16) against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from WeakTumorSegLib.stages.converter import converter_loss, kl_loss, reconstruction_loss
from WeakTumorSegLib.stages.healthy_gan import discriminator_loss, generator_adversarial_loss
from WeakTumorSegLib.stages.segmenters import SegmenterLossWeights, seed_loss, segmenter_loss, size_loss, variation_loss


def t(*rows) -> torch.Tensor:
    """One image per argument, each a list of rows -> ``(B, 1, H, W)`` float64 tensor."""
    return torch.tensor([[r] for r in rows], dtype=torch.float64)


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


# ---------------------------------------------------------------------------------------------
# Discriminator / generator (Eqs. 1, 3, 6, 7)
# ---------------------------------------------------------------------------------------------

def test_discriminator_minimum_is_binary_entropy_of_smoothed_labels():
    h09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))  # binary entropy H(0.9) = H(0.1)
    best = discriminator_loss(torch.tensor([0.9, 0.9], dtype=torch.float64),
                              torch.tensor([0.1, 0.1], dtype=torch.float64))
    assert best.item() == pytest.approx(h09, abs=1e-12)
    # A more confident discriminator (1 / 0 targets) is penalised by the smoothing.
    for real, fake in [(0.99, 0.01), (0.8, 0.2), (0.9, 0.2), (0.95, 0.1)]:
        other = discriminator_loss(torch.tensor([real, real]), torch.tensor([fake, fake]))
        assert other.item() > h09


def test_discriminator_loss_hand_value_mean_over_concatenation():
    # Two equal batches: mean over 4 inputs.
    expected = (bce(0.8, 0.9) + bce(0.6, 0.9) + bce(0.3, 0.1) + bce(0.05, 0.1)) / 4
    got = discriminator_loss(torch.tensor([0.8, 0.6], dtype=torch.float64),
                             torch.tensor([0.3, 0.05], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Unequal batches: every image weighs the same (mean over the 3 inputs).
    expected = (bce(0.8, 0.9) + bce(0.6, 0.9) + bce(0.3, 0.1)) / 3
    got = discriminator_loss(torch.tensor([0.8, 0.6], dtype=torch.float64),
                             torch.tensor([0.3], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # Custom labels (unsmoothed 1 / 0).
    expected = (-math.log(0.8) - math.log(1 - 0.3)) / 2
    got = discriminator_loss(torch.tensor([0.8], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64),
                             real_label=1.0, fake_label=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_discriminator_loss_clamps_saturated_outputs():
    # p = 1 and p = 0 are clamped to 1 - 1e-7 and 1e-7 before the logarithms: a finite loss
    got = discriminator_loss(torch.tensor([1.0, 0.0], dtype=torch.float64),
                             torch.tensor([0.0, 1.0], dtype=torch.float64))
    hi, lo = 1 - 1e-7, 1e-7
    expected = (bce(hi, 0.9) + bce(lo, 0.9) + bce(lo, 0.1) + bce(hi, 0.1)) / 4
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_generator_adversarial_loss_hand_value_and_grad():
    d_fake = torch.tensor([0.5, 0.25], dtype=torch.float64, requires_grad=True)
    loss = generator_adversarial_loss(d_fake)
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2, rel=1e-12)
    loss.backward()
    # d/dp of -log(p)/2 is -1/(2p).
    assert d_fake.grad.tolist() == pytest.approx([-1 / (2 * 0.5), -1 / (2 * 0.25)])
    # a saturated D(G(z)) = 0 is clamped to 1e-7: -log(1e-7), not infinity
    assert generator_adversarial_loss(torch.tensor([0.0], dtype=torch.float64)).item() == pytest.approx(-math.log(1e-7))


# ---------------------------------------------------------------------------------------------
# Converter (Eqs. 8-10)
# ---------------------------------------------------------------------------------------------

X1 = [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
XH1 = [[0.0, 0.2, 0.9], [0.4, 0.1, 0.6]]
NEG1 = [[1, 1, 0], [0, 1, 0]]


def test_reconstruction_loss_counts_only_negative_seed_pixels():
    # Seeded |x - x_hat|: 0.1, 0.0, 0.4 -> 0.5 / 3 seeds. The 0.6 difference at (0, 2) is unseeded.
    got = reconstruction_loss(t(X1), t(XH1), t(NEG1))
    assert got.item() == pytest.approx(0.5 / 3, rel=1e-12)
    # Changing x_hat off the seeds leaves the loss unchanged.
    xh = [[0.0, 0.2, 0.0], [1.0, 0.1, 0.0]]
    assert reconstruction_loss(t(X1), t(xh), t(NEG1)).item() == pytest.approx(0.5 / 3, rel=1e-12)


def test_reconstruction_loss_image_without_seeds_contributes_zero():
    x2 = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    xh2 = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    no_seed = [[0, 0, 0], [0, 0, 0]]
    got = reconstruction_loss(t(X1, x2), t(XH1, xh2), t(NEG1, no_seed))
    assert got.item() == pytest.approx((0.5 / 3 + 0.0) / 2, rel=1e-12)
    # Layouts: (B, H, W) images with (B, 1, H, W) bool seeds.
    got2 = reconstruction_loss(t(X1, x2)[:, 0], t(XH1, xh2)[:, 0], t(NEG1, no_seed).bool())
    assert got2.item() == pytest.approx(got.item(), rel=1e-12)


def test_reconstruction_loss_gradient_only_on_seeds():
    x_hat = t(XH1).requires_grad_(True)
    reconstruction_loss(t(X1), x_hat, t(NEG1)).backward()
    g = x_hat.grad[0, 0]
    # d/dx_hat of |x - x_hat| / 3 = sign(x_hat - x) / 3 on seeds; 0 elsewhere (x == x_hat at (0,1)).
    assert g[0, 0].item() == pytest.approx(-1 / 3)
    assert g[1, 1].item() == pytest.approx(-1 / 3)
    assert g[0, 2].item() == 0.0 and g[1, 0].item() == 0.0 and g[1, 2].item() == 0.0


def test_kl_loss_hand_values():
    # mean 0, population std 1 -> 0.
    assert kl_loss(torch.tensor([[1.0, -1.0, 1.0, -1.0]])).item() == pytest.approx(0.0, abs=1e-7)
    # mu = 1, sigma = 1 -> -(0 - 1 - 1 + 1) = 1.
    assert kl_loss(torch.tensor([[2.0, 0.0, 2.0, 0.0]])).item() == pytest.approx(1.0, rel=1e-6)
    # mu = 0, sigma = 2 -> -(2 log 2 - 4 + 1) = 3 - 2 log 2 (= 2 * KL(N(0,4) || N(0,1))).
    v = 3 - 2 * math.log(2)
    assert v == pytest.approx(2 * 0.5 * (4 + 0 - 1 - math.log(4)))
    assert kl_loss(torch.tensor([[2.0, -2.0, 2.0, -2.0]])).item() == pytest.approx(v, rel=1e-6)
    # Batch mean, and the (B, latent, 1, 1) layout.
    codes = torch.tensor([[1.0, -1.0, 1.0, -1.0], [2.0, 0.0, 2.0, 0.0], [2.0, -2.0, 2.0, -2.0]])
    assert kl_loss(codes).item() == pytest.approx((0 + 1 + v) / 3, rel=1e-6)
    assert kl_loss(codes[:, :, None, None]).item() == pytest.approx((0 + 1 + v) / 3, rel=1e-6)


def test_kl_loss_off_the_minimum_and_for_a_constant_code():
    gen = torch.Generator().manual_seed(0)
    for scale, shift in [(0.5, 0.0), (1.5, 0.0), (1.0, 0.3)]:
        code = torch.randn(4, 100, generator=gen, dtype=torch.float64)
        code = (code - code.mean(1, keepdim=True)) / code.std(1, unbiased=False, keepdim=True)
        # mu = shift, sigma = scale: -(2 log sigma - sigma^2 - mu^2 + 1) > 0
        expected = -(2 * math.log(scale) - scale ** 2 - shift ** 2 + 1)
        assert kl_loss(code * scale + shift).item() == pytest.approx(expected, rel=1e-9)
    # sigma = 0 is clamped to 1e-6 before the logarithm: a large, finite loss
    assert kl_loss(torch.zeros(2, 100, dtype=torch.float64)).item() == pytest.approx(
        -(2 * math.log(1e-6) - 1e-12 + 1), rel=1e-9)


def test_kl_loss_gradient():
    # mu = 0, sigma = 2 over n = 4 elements: dL/dz_i = (2 sigma - 2 / sigma) (z_i - mu) / (n sigma) = 3 z_i / 8
    code = torch.tensor([[2.0, -2.0, 2.0, -2.0]], requires_grad=True)
    kl_loss(code).backward()
    torch.testing.assert_close(code.grad, torch.tensor([[0.75, -0.75, 0.75, -0.75]]))


def test_converter_loss_weights_parts():
    x, xh, neg = t(X1), t(XH1), t(NEG1)
    d1 = torch.tensor([0.25], dtype=torch.float64)
    code = torch.tensor([[2.0, 0.0, 2.0, 0.0]], dtype=torch.float64)
    total, parts = converter_loss(x, xh, neg, d1, code, alpha=10.0, beta=0.05, gamma=1.0)
    assert set(parts) == {"recon", "adv", "kl"}
    assert parts["recon"].item() == pytest.approx(0.5 / 3)
    assert parts["adv"].item() == pytest.approx(-math.log(0.25))
    assert parts["kl"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(10 * 0.5 / 3 + 0.05 * -math.log(0.25) + 1.0)


# ---------------------------------------------------------------------------------------------
# Segmenters (Eqs. 12-16)
# ---------------------------------------------------------------------------------------------

POS = [[1, 1, 0], [0, 0, 0]]
NEG = [[0, 0, 0], [0, 1, 1]]


def test_seed_loss_sign_of_negative_seeds():
    pos, neg = t(POS), t(NEG)
    perfect = t([[1.0, 1.0, 0.5], [0.5, 0.0, 0.0]])  # 1 on S+, 0 on S-
    assert seed_loss(perfect, pos, neg).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.full_like(perfect, 0.5)
    assert seed_loss(half, pos, neg).item() == pytest.approx(math.log(2), rel=1e-9)
    swapped = t([[0.0, 0.0, 0.5], [0.5, 1.0, 1.0]])  # 0 on S+, 1 on S-
    big = seed_loss(swapped, pos, neg).item()  # the clamp at 1e-7: -log(1e-7) ~ 16.1 on every seed
    assert big == pytest.approx(-math.log(1e-7), rel=1e-3)
    # m = 1 on the negative seeds alone costs -log(1e-7) on those two of the four seeds (Eq. 12's
    # log(m) on S- would reward it)
    m_neg_one = t([[1.0, 1.0, 0.5], [0.5, 1.0, 1.0]])
    assert seed_loss(m_neg_one, pos, neg).item() == pytest.approx(-math.log(1e-7) / 2, rel=1e-3)


def test_seed_loss_hand_value_and_images_without_seeds():
    m = t([[0.8, 0.6, 0.5], [0.5, 0.3, 0.1]])
    expected = (-math.log(0.8) - math.log(0.6) - math.log(1 - 0.3) - math.log(1 - 0.1)) / 4
    assert seed_loss(m, t(POS), t(NEG)).item() == pytest.approx(expected, rel=1e-12)
    # Second image without any seed: contributes 0, still counts in the batch mean.
    m2 = t([[0.8, 0.6, 0.5], [0.5, 0.3, 0.1]], [[0.9, 0.1, 0.2], [0.3, 0.4, 0.5]])
    empty = [[0, 0, 0], [0, 0, 0]]
    got = seed_loss(m2, t(POS, empty), t(NEG, empty))
    assert got.item() == pytest.approx(expected / 2, rel=1e-12)
    # All images without seeds: 0, no NaN.
    assert seed_loss(m2, t(empty, empty), t(empty, empty)).item() == 0.0
    # Bool seeds in the (B, H, W) layout give the same value.
    got_bool = seed_loss(m2[:, 0], t(POS, empty).bool()[:, 0], t(NEG, empty).bool())
    assert got_bool.item() == pytest.approx(got.item(), rel=1e-12)


def test_seed_loss_only_positive_or_only_negative_seeds():
    m = t([[0.8, 0.6, 0.5], [0.5, 0.3, 0.1]])
    empty = t([[0, 0, 0], [0, 0, 0]])
    # A non-cancerous image: no positive seeds, negative seeds everywhere.
    everywhere = t([[1, 1, 1], [1, 1, 1]])
    expected = -sum(math.log(1 - v) for v in (0.8, 0.6, 0.5, 0.5, 0.3, 0.1)) / 6
    assert seed_loss(m, empty, everywhere).item() == pytest.approx(expected, rel=1e-12)
    expected = (-math.log(0.8) - math.log(0.6)) / 2
    assert seed_loss(m, t(POS), empty).item() == pytest.approx(expected, rel=1e-12)


def test_variation_loss_weighting_by_one_minus_m():
    x = [[0.5, 0.2, 0.4], [0.0, 0.3, 0.1]]
    xh = [[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]  # |x - x_hat| = 0.5, 0.2, 0.4, 0, 0, 0.1
    m = [[1.0, 0.0, 0.5], [0.0, 0.2, 0.0]]
    # (1-m)|d|: 0 (m = 1 ignores the 0.5 difference), 0.2, 0.2, 0, 0, 0.1 -> 0.5 over 6 pixels.
    assert variation_loss(t(m), t(x), t(xh)).item() == pytest.approx(0.5 / 6, rel=1e-12)
    # Where m = 1 the difference is ignored: change x_hat there, same loss.
    xh_b = [[0.9, 0.0, 0.0], [0.0, 0.3, 0.0]]
    assert variation_loss(t(m), t(x), t(xh_b)).item() == pytest.approx(0.5 / 6, rel=1e-12)
    # Non-cancerous image: x_hat = x gives 0; it still counts in the batch mean.
    assert variation_loss(t(m), t(x), t(x)).item() == 0.0
    got = variation_loss(t(m, m), t(x, x), t(xh, x))
    assert got.item() == pytest.approx(0.5 / 6 / 2, rel=1e-12)
    # (B, H, W) FLAIR with (B, 1, H, W) m.
    assert variation_loss(t(m), t(x)[:, 0], t(xh)[:, 0]).item() == pytest.approx(0.5 / 6, rel=1e-12)


def test_size_loss_is_mean():
    m = t([[1.0, 0.0, 0.5], [0.0, 0.2, 0.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    assert size_loss(m).item() == pytest.approx((1.7 / 6 + 1.0) / 2, rel=1e-12)


def test_segmenter_loss_combines_parts_with_paper_weights():
    w = SegmenterLossWeights()
    assert (w.delta, w.epsilon, w.zeta) == (4.0, 1.0, 0.25)
    m = t([[0.8, 0.6, 0.5], [0.5, 0.3, 0.1]])
    x = t([[0.5, 0.2, 0.4], [0.0, 0.3, 0.1]])
    xh = t([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]])
    seed = (-math.log(0.8) - math.log(0.6) - math.log(0.7) - math.log(0.9)) / 4
    var = (0.2 * 0.5 + 0.4 * 0.2 + 0.5 * 0.4 + 0.0 + 0.0 + 0.9 * 0.1) / 6
    size = 2.8 / 6
    total, parts = segmenter_loss(m, t(POS), t(NEG), x, xh)
    assert set(parts) == {"seed", "var", "size"}
    assert parts["seed"].item() == pytest.approx(seed, rel=1e-12)
    assert parts["var"].item() == pytest.approx(var, rel=1e-12)
    assert parts["size"].item() == pytest.approx(size, rel=1e-12)
    assert total.item() == pytest.approx(4 * seed + 1 * var + 0.25 * size, rel=1e-12)
    total2, _ = segmenter_loss(m, t(POS), t(NEG), x, xh, delta=4.0, epsilon=1.0, zeta=0.2)  # pLGG
    assert total2.item() == pytest.approx(4 * seed + var + 0.2 * size, rel=1e-12)


def test_segmenter_loss_gradients_flow_to_m():
    logits = torch.zeros(2, 1, 2, 3, requires_grad=True)
    m = torch.sigmoid(logits)
    x = t([[0.5, 0.2, 0.4], [0.0, 0.3, 0.1]], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]).float()
    xh = t([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]], [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]]).float()
    empty = [[0, 0, 0], [0, 0, 0]]
    total, _ = segmenter_loss(m, t(POS, empty).float(), t(NEG, empty).float(), x, xh)
    total.backward()
    g = logits.grad
    # dL/dlogit = m (1 - m) (4 dseed/dm + dvar/dm + 0.25 dsize/dm) with m = 0.5, 2 images of 6 pixels:
    # dseed/dm = -/+ 1 / (0.5 * 4 seeds * 2 images) on S+ / S-, dvar/dm = -|x - x_hat| / 12, dsize/dm = 1 / 12
    size = 0.25 / 12
    # a positive seed is pushed up (negative gradient), a negative seed down
    assert g[0, 0, 0, 0].item() == pytest.approx(0.25 * (4 * -0.25 - 0.5 / 12 + size), rel=1e-6)
    assert g[0, 0, 1, 2].item() == pytest.approx(0.25 * (4 * 0.25 - 0.1 / 12 + size), rel=1e-6)
    # the unseeded, identical second image only feels the size loss: a small push down everywhere
    torch.testing.assert_close(g[1], torch.full_like(g[1], 0.25 * size))


def test_shape_mismatch_raises():
    m = torch.zeros(1, 1, 2, 3)
    with pytest.raises(ValueError):
        seed_loss(m, torch.zeros(1, 1, 3, 2 + 1), torch.zeros(1, 1, 2, 3))
    with pytest.raises(ValueError):
        variation_loss(m, torch.zeros(1, 4, 2, 3), torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError):
        reconstruction_loss(torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.zeros(1, 2, 3))


def test_balanced_seed_loss_weighs_both_seed_sets_equally():
    # one image, 2x3 pixels: one positive seed (m = 0.1), four negative seeds (m = 0.1), one unseeded
    m = torch.tensor([[[0.1, 0.1, 0.1], [0.1, 0.1, 0.5]]])
    pos = torch.tensor([[[1, 0, 0], [0, 0, 0]]])
    neg = torch.tensor([[[0, 1, 1], [1, 1, 0]]])
    pooled = (-math.log(0.1) + 4 * -math.log(0.9)) / 5
    balanced = (-math.log(0.1) + -math.log(0.9)) / 2
    assert seed_loss(m, pos, neg).item() == pytest.approx(pooled, rel=1e-5)
    assert seed_loss(m, pos, neg, balanced=True).item() == pytest.approx(balanced, rel=1e-5)
    # an all-zero map is cheap under the pooled form when positives are rare, not under the balanced one
    assert seed_loss(m, pos, neg, balanced=True).item() > 2 * seed_loss(m, pos, neg).item()


def test_balanced_seed_loss_with_one_seed_set_uses_it_alone():
    m = torch.full((2, 2, 3), 0.2)
    pos = torch.zeros(2, 2, 3)
    neg = torch.zeros(2, 2, 3)
    neg[0, 0, :] = 1  # image 0: negatives only; image 1: no seeds (contributes 0)
    expected = (-math.log(0.8) + 0.0) / 2
    assert seed_loss(m, pos, neg, balanced=True).item() == pytest.approx(expected, rel=1e-5)


def test_split_discriminator_step_equals_eq1():
    """Training updates D on the real and generated batches separately (DDP-friendly); the sum of
    the two half losses equals Eq. 1's mean over both batches."""
    from WeakTumorSegLib.stages.healthy_gan import bce_to_label

    d_real = torch.tensor([0.8, 0.95, 0.6])
    d_fake = torch.tensor([0.3, 0.05, 0.2])
    split = 0.5 * bce_to_label(d_real, 0.9) + 0.5 * bce_to_label(d_fake, 0.1)
    assert split.item() == pytest.approx(discriminator_loss(d_real, d_fake).item(), rel=1e-6)
