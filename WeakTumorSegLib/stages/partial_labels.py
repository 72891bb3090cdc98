"""Expectation-maximisation regularised partial labels (Li et al., "Expectation-Maximization
Regularized Deep Learning for Weakly Supervised Tumor Segmentation for Glioblastoma", sections 2.2
and 2.3), the ``em`` trainer of the final segmenter.

Some pixels carry a known label (a trusted mask, positive and negative seeds, tumour-free slices),
the others none. A per-pixel prior gives the unlabelled pixels a soft label p0 with an uncertainty
u: an evidential classifier (Sensoy et al.'s evidential deep learning: a two-hidden-layer network
whose ReLU outputs are the evidence of a Beta distribution) on per-pixel features, here the
channels, the healthy-variant residual |FLAIR - U(FLAIR)| and the fused map. Each epoch
(:func:`e_step`), the network's own prediction replaces the prior wherever the two agree within the
prior's uncertainty (gamma = 1 where |p0 - p_theta| <= u; the paper leaves the distance open and
the absolute difference is used); the M-step loss (:func:`em_loss`) is the cross-entropy on the
known pixels plus lambda times the cross-entropy against q = (1 - gamma) p0 + gamma p_theta on the
others. In the first epoch gamma = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .final import EPS, label_weights, weighted_cross_entropy

#: label value of an unknown pixel in a partial label map
UNKNOWN = 255
#: the least width of the evidential prior's hidden layers
MIN_HIDDEN = 16


class EvidentialPrior(nn.Module):
    """Per-pixel evidential classifier: ``features`` ``(V, F)`` -> evidence ``(V, 2)`` (ReLU), two
    hidden layers. Li et al. make them as wide as the features (11 in their work); with the 3-6
    features here such narrow ReLU layers often die at the start, so they are at least
    :data:`MIN_HIDDEN` wide."""

    def __init__(self, n_features: int):
        super().__init__()
        h = max(n_features, MIN_HIDDEN)
        self.net = nn.Sequential(nn.Linear(n_features, h), nn.ReLU(True), nn.Linear(h, h), nn.ReLU(True),
                                 nn.Linear(h, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.net(features))

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p0, u)``: the tumour probability a1 / (a0 + a1) and the uncertainty 2 / (a0 + a1)."""
        return prior_from_evidence(self(features))


def prior_from_evidence(evidence: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, u)`` of Beta(a1, a0) with a = evidence + 1: p = a1 / (a0 + a1), u = 2 / (a0 + a1) in (0, 1]."""
    alpha = evidence + 1.0
    s = alpha.sum(-1)
    return alpha[..., 1] / s, 2.0 / s


def edl_loss(evidence: torch.Tensor, label: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Sensoy et al.'s expected squared error plus ``kl_weight`` times the KL divergence of the
    misleading evidence's Dirichlet from the uniform one, averaged over the pixels."""
    y = F.one_hot(label.long(), 2).float()
    alpha = evidence + 1.0
    s = alpha.sum(-1, keepdim=True)
    p = alpha / s
    mse = ((y - p) ** 2 + p * (1 - p) / (s + 1)).sum(-1)
    a_t = y + (1 - y) * alpha  # evidence of the wrong class only
    s_t = a_t.sum(-1)
    kl = (torch.lgamma(s_t) - torch.lgamma(torch.tensor(2.0)) - torch.lgamma(a_t).sum(-1)
          + ((a_t - 1) * (torch.digamma(a_t) - torch.digamma(s_t)[:, None])).sum(-1))
    return (mse + kl_weight * kl).mean()


def fit_prior(features: torch.Tensor, labels: torch.Tensor, steps: int = 600, batch: int = 8192,
              lr: float = 1e-3, seed: int = 0) -> EvidentialPrior:
    """The evidential prior trained on known pixels ``features`` ``(V, F)`` with labels ``(V,)`` in
    {0, 1}: class-balanced batches, Adam, the KL term's weight rising to 1 over the first tenth of
    the steps (Sensoy et al.'s annealing)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    prior = EvidentialPrior(features.shape[1])
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    groups = [torch.nonzero(labels == c)[:, 0] for c in (0, 1)]
    groups = [g for g in groups if len(g)]
    half = max(batch // max(len(groups), 1), 1)
    for step in range(steps):
        idx = torch.cat([g[torch.randint(len(g), (half,), generator=gen)] for g in groups])
        loss = edl_loss(prior(features[idx]), labels[idx], min(1.0, step / max(steps / 10, 1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return prior.eval()


def e_step(p0: torch.Tensor, u: torch.Tensor, p_theta: torch.Tensor | None) -> torch.Tensor:
    """q = (1 - gamma) p0 + gamma p_theta with gamma = 1 where |p0 - p_theta| <= u; q = p0 before the
    network has predicted (``p_theta`` None, the first epoch)."""
    if p_theta is None:
        return p0.clone()
    gamma = ((p0 - p_theta).abs() <= u).float()
    return (1 - gamma) * p0 + gamma * p_theta


def em_loss(prob: torch.Tensor, partial: torch.Tensor, q: torch.Tensor, lam: float, t0: float,
            t1: float, balanced: bool = True) -> tuple[torch.Tensor, dict]:
    """J = J_sup + lambda J_reg: the cross-entropy on the known pixels of ``partial`` (0, 1 or
    :data:`UNKNOWN`), weighted like Mlynarski et al.'s (known healthy pixels t0, tumour t1 in all;
    with ``balanced`` false every known pixel alike), and
    the mean cross-entropy of ``prob`` against the soft labels ``q`` on the unknown ones."""
    known = partial != UNKNOWN
    target = (partial == 1).to(prob.dtype)
    sup = weighted_cross_entropy(prob, target, label_weights(target, known, t0, t1, balanced))
    unknown = ~known
    p = prob.clamp(EPS, 1 - EPS)
    if unknown.any():
        qu = q[unknown]
        reg = -(qu * p[unknown].log() + (1 - qu) * (1 - p[unknown]).log()).mean()
    else:
        reg = prob.sum() * 0
    return sup + lam * reg, {"sup": sup.item(), "reg": reg.item()}
