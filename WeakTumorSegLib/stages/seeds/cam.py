"""Class activation maps as seed maps: Grad-CAM, CAM and ACAM (Wu et al., "Weakly Supervised Brain
Lesion Segmentation via Attentional Representation Learning", section 2.1), in 2D.

* **Grad-CAM** (Selvaraju et al.): the classifier's last feature maps ``F_k`` weighted by the mean
  gradient of the logit over each map, ``ReLU(sum_k a_k F_k)``; any classifier. The cheap baseline
  both Wu et al. and Rajapaksa and Khalvati compare with.
* **CAM** (Zhou et al.): ``ReLU(w^T F)`` with ``w`` the weights of a linear head on pooled features
  (the compact classifier). With global max or average pooling it equals Grad-CAM up to a scale.
* **ACAM**: CAM refined by the attention along H and along W
  (:class:`~WeakTumorSegLib.networks.attention.AxisAttention`), ``C'_H(r, c) = s_H(r) C(r, c)`` and
  ``C'_W(r, c) = s_W(c) C(r, c)``, fused by their mean. The paper does not name its fusion operator;
  on phantoms the mean scored a higher Dice at half the maximum than the product ``s_H s_W C``
  (0.60-0.78 against 0.54-0.63, CAM 0.59-0.67), which keeps only the crossing of the attended rows
  and columns.

How the attention is trained is not given in the paper. Here it is fitted after the classifier,
whose weights stay fixed, as attention pooling (multiple-instance learning, Ilse et al.): the rows
(columns) of ``F`` averaged with the attention as weights go through the classifier's own head, and
binary cross-entropy against the slice labels trains the attention (:func:`fit_attention`), so it
learns to attend to the rows and columns whose features make the classifier say "tumour".

Maps are computed per ensemble member at the feature resolution (a sixteenth of the patch for four
pooling blocks), min-max normalised, averaged over members and resampled bilinearly to the patch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...networks.attention import AxisAttention
from ...networks.classifiers import Classifier, ClassifierEnsemble, CompactClassifier
from .gates import normalize_maps

#: patches per forward pass when computing class activation maps
CAM_BATCH = 64


def members(classifier: Classifier) -> list[Classifier]:
    """The members of an ensemble, or the classifier itself."""
    return list(classifier.members) if isinstance(classifier, ClassifierEnsemble) else [classifier]


def require_linear_head(classifier: Classifier) -> None:
    """Refuse classifiers without a linear head on pooled features (CAM and ACAM need one)."""
    if not all(isinstance(m, CompactClassifier) for m in members(classifier)):
        raise ValueError("CAM and ACAM seeds need a classifier whose head is one linear layer on pooled "
                         "features (compact_classifier or an ensemble of it); use 'gradcam', 'rise' or "
                         "'superpixel' with this classifier")


def _features(member: Classifier, patches: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return member.feature_maps(member.upsample_input(patches))


def _split(member: Classifier, layer: int) -> tuple[nn.Module, nn.Module]:
    """``(head_part, rest)`` of the classifier's ``features`` at the output of block ``layer``
    (-1: the last block's output, -2: the one before, ...); blocks end at each max-pooling layer."""
    layers = list(member.features)
    ends = [i + 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    if not -len(ends) <= layer <= -1:
        raise ValueError(f"layer must lie in [-{len(ends)}, -1], got {layer}")
    cut = ends[layer]
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])


def gradcam(member: Classifier, patches: torch.Tensor, layer: int = -1, elementwise: bool = False) -> torch.Tensor:
    """Grad-CAM of one classifier for ``(N, C, P, P)`` patches at the output of block ``layer``
    (:func:`_split`), ``(N, h, w)`` at that block's resolution. ``elementwise``: each activation
    weighted by its own positive gradient (LayerCAM, Jiang et al.), which keeps the detail of
    earlier blocks, instead of one weight per channel."""
    first, rest = _split(member, layer)
    with torch.inference_mode():
        f = first(member.upsample_input(patches))
    with torch.inference_mode(False), torch.enable_grad():
        f = f.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(member.logits_from_features(rest(f)).sum(), f)
    weights = grad.clamp_min(0) if elementwise else grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * f.detach()).sum(1))


def cam(member: CompactClassifier, f: torch.Tensor) -> torch.Tensor:
    """CAM ``ReLU(w^T F)`` of features ``(N, K, h, w)`` of a classifier with a linear head."""
    return F.relu(torch.einsum("k,nkhw->nhw", member.head.weight[0], f))


def acam(member: CompactClassifier, attention: AxisAttention, index: int, f: torch.Tensor) -> torch.Tensor:
    """ACAM ``(s_H(r) + s_W(c)) CAM(r, c) / 2`` of features ``(N, K, h, w)``; ``index``: the member's attention."""
    s_h, s_w = attention(f, index)
    return cam(member, f) * (s_h[:, :, None] + s_w[:, None, :]) / 2


def class_maps(classifier: Classifier, patches: torch.Tensor, method: str, attention: AxisAttention | None = None,
               progress: Callable[[int], None] | None = None, layer: int = -1,
               elementwise: bool = False) -> torch.Tensor:
    """``method`` ('gradcam', 'cam' or 'acam') maps ``(N, P, P)`` in [0, 1] for ``(N, C, P, P)`` patches:
    per member at the feature resolution, min-max normalised, averaged, resampled to P.
    ``progress(k)`` after each batch with the number of patches done."""
    if method in ("cam", "acam"):
        require_linear_head(classifier)
    if method == "acam" and attention is None:
        raise ValueError("ACAM seeds need the classifier's attention (a bundle trained with seeds.method 'acam')")
    was_training = classifier.training
    classifier.eval()
    out = []
    try:
        for start in range(0, len(patches), CAM_BATCH):
            x = patches[start:start + CAM_BATCH]
            maps = []
            for i, member in enumerate(members(classifier)):
                if method == "gradcam":
                    m = gradcam(member, x, layer, elementwise)
                else:
                    with torch.inference_mode():
                        f = _features(member, x)
                        m = cam(member, f) if method == "cam" else acam(member, attention, i, f)
                maps.append(normalize_maps(m))
            mean = torch.stack(maps).mean(0)
            size = patches.shape[-2:]
            out.append(F.interpolate(mean[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
            if progress:
                progress(start + len(x))
    finally:
        classifier.train(was_training)
    if not out:
        return torch.zeros(0, *patches.shape[-2:])
    return normalize_maps(torch.cat(out))


def attention_pooling_loss(member: CompactClassifier, attention: AxisAttention, index: int, f: torch.Tensor,
                           y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the classifier's head on the attention-pooled rows and columns of
    ``f`` ``(B, K, h, w)`` against the slice labels ``y`` (the attention's training loss)."""
    s_h, s_w = attention(f, index)
    rows = (f.mean(dim=3) * s_h[:, None, :]).sum(2)  # (B, K)
    cols = (f.mean(dim=2) * s_w[:, None, :]).sum(2)
    loss = 0.0
    for pooled in (rows, cols):
        loss = loss + F.binary_cross_entropy_with_logits(member.head(pooled)[:, 0], y)
    return loss / 2


def fit_attention(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 0.01,
                  batch: int = 256, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None) -> tuple[AxisAttention, dict]:
    """Train the attention of every member on patches ``x`` ``(N, C, P, P)`` with slice labels ``y``,
    the classifier fixed (Adam, ``steps`` steps of ``batch`` random patches). Returns the attention
    (eval mode) and ``{"loss_first", "loss_last"}``."""
    require_linear_head(classifier)
    classifier.eval()
    group = members(classifier)
    feats = [torch.cat([_features(m, x[i:i + CAM_BATCH]) for i in range(0, len(x), CAM_BATCH)]) for m in group]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, the caller's random state untouched
        torch.manual_seed(seed)
        attention = AxisAttention(feats[0].shape[1], len(group)).to(x.device)
    opt = torch.optim.Adam(attention.parameters(), lr=lr)
    y = y.float().to(x.device)
    for p in classifier.parameters():
        p.requires_grad_(False)
    history = []
    try:
        for step in range(steps):
            idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen).to(x.device)
            loss = sum(attention_pooling_loss(m, attention, i, feats[i][idx].clone(), y[idx])
                       for i, m in enumerate(group)) / len(group)
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(float(loss.detach()))
            if progress and (step + 1) % 50 == 0:
                progress(step + 1, steps)
    finally:
        for p in classifier.parameters():
            p.requires_grad_(True)
    attention.eval()
    return attention, {"loss_first": history[0] if history else None, "loss_last": history[-1] if history else None}


def attention_model(classifier: Classifier) -> tuple[str, dict]:
    """``(architecture, kwargs)`` of the attention a classifier's ACAM needs (for the bundle)."""
    group = members(classifier)
    return "axis_attention", {"channels": int(group[0].head.in_features), "members": len(group)}


def untrained_attention(classifier: Classifier) -> nn.Module:
    """An attention of the right shape for ``classifier`` (to load weights into)."""
    _, kwargs = attention_model(classifier)
    return AxisAttention(**kwargs)
