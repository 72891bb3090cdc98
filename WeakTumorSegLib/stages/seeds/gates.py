"""From explanation maps to seeds (Yoo et al., section 2.1), the same for every seed method.

Each map is min-max normalised per image, and seeds are S+ = e > 0.8, S- = e < 0.2 (the paper's
"20 % of the maximum and minimum"). Tumour-free images get S+ empty and S- everywhere. The FLAIR
gates (not in the paper) keep the bright core of S+ and add dark tissue to S-; their level is a
quantile of each image's tissue or, with ``levels`` from :func:`scoped_levels`, of its patient's
(or the lower of the two).
"""

from __future__ import annotations

import torch


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(N, H, W)`` to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def seeds_from_maps(maps: torch.Tensor, positive: float = 0.8, negative: float = 0.2,
                    labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary seeds (S+, S-) from explanation maps, normalised per image first.

    Images with ``labels == 0`` get S+ empty and S- everywhere.
    """
    e = normalize_maps(maps)
    pos, neg = e > positive, e < negative
    if labels is not None:
        healthy = (labels == 0).reshape(-1, 1, 1)
        pos = pos & ~healthy
        neg = neg | healthy
    return pos, neg


def _check_quantile(quantile: float) -> None:
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"a FLAIR quantile must lie in [0, 1), got {quantile}")


def _level_of(values: torch.Tensor, quantile: float) -> torch.Tensor:
    """The value at index ``floor(quantile (n - 1))`` of the sorted non-empty 1-D ``values``."""
    k = int(quantile * (values.numel() - 1))
    return values.kthvalue(k + 1).values


def volume_levels(flair: torch.Tensor, groups: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per image of ``flair`` ``(N, H, W)``, the ``quantile`` of the non-zero FLAIR of every image in
    its group (``groups`` ``(N,)``, a patient index): a gate level that follows the patient's brain
    rather than the slice. A large tumour fills much of its slices, so a per-slice quantile falls
    inside it (its dim part joins S-, and S+ keeps only its brightest tenth); over the whole volume
    the tumour is a small share and the level stays at healthy tissue. A group without tissue gets
    +inf (nothing bright)."""
    _check_quantile(quantile)
    f = flair.reshape(len(flair), -1).float()
    g = torch.as_tensor(groups).reshape(-1)
    out = torch.full((len(f),), float("inf"))
    for k in torch.unique(g).tolist():
        rows = g == k
        tissue = f[rows][f[rows] > 0]
        if tissue.numel():
            out[rows] = _level_of(tissue, quantile).item()
    return out


def slice_levels(flair: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per image of ``flair`` ``(N, H, W)``, the ``quantile`` of its own non-zero FLAIR (the value at
    index ``floor(quantile (n - 1))`` of its sorted tissue pixels; -1 for an image without tissue)."""
    _check_quantile(quantile)
    f = flair.reshape(len(flair), -1).float()
    tissue = f > 0
    # sort with the background pushed below every tissue value
    vals = torch.where(tissue, f, torch.full_like(f, -1.0)).sort(dim=1).values
    n_tissue = tissue.sum(1)
    first = f.shape[1] - n_tissue  # index of the first tissue value in the sorted row
    k = (first + (quantile * (n_tissue - 1).clamp_min(0)).floor().long()).clamp(max=f.shape[1] - 1)
    return vals.gather(1, k[:, None])[:, 0]


GATE_SCOPES = ("slice", "volume", "lower")


def check_gate_scope(scope: str) -> None:
    """Refuse a ``rise.flair_gate_scope`` that is not one of :data:`GATE_SCOPES`."""
    if scope not in GATE_SCOPES:
        raise ValueError(f"rise.flair_gate_scope must be one of {', '.join(GATE_SCOPES)}, got {scope!r}")


def scoped_levels(flair: torch.Tensor, quantile: float, scope: str, volume: torch.Tensor) -> torch.Tensor | None:
    """The gate levels of ``rise.flair_gate_scope`` for images ``(N, H, W)`` whose volumes' levels are
    ``volume`` ``(N,)`` (:func:`volume_levels`): None for ``slice`` (each image's own quantile, the
    default of :func:`flair_above_quantile`), ``volume`` as given, ``lower`` the lower of the two (a
    pixel is bright above either level and dark only below both)."""
    check_gate_scope(scope)
    if scope == "slice":
        return None
    volume = torch.as_tensor(volume, dtype=torch.float32).reshape(-1)
    return volume if scope == "volume" else torch.minimum(slice_levels(flair, quantile), volume)


def patient_levels(flair: torch.Tensor, patients: torch.Tensor, quantile: float | None,
                   scope: str) -> torch.Tensor | None:
    """:func:`scoped_levels` for slices ``(N, H, W)`` whose volumes are their patients' slices
    (``patients`` ``(N,)``); None for the ``slice`` scope or without a gate (``quantile`` None)."""
    if quantile is None or scope == "slice":
        return None
    return scoped_levels(flair, quantile, scope, volume_levels(flair, patients, quantile))


def flair_above_quantile(flair: torch.Tensor, quantile: float,
                         levels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bright, tissue)`` for FLAIR images ``(N, H, W)``: ``tissue`` is FLAIR > 0 and ``bright``
    the tissue above the image's entry of ``levels`` ``(N,)``, by default the ``quantile`` of its own
    tissue (:func:`slice_levels`; :func:`volume_levels` gives its patient's)."""
    _check_quantile(quantile)
    f = flair.reshape(len(flair), -1).float()
    tissue = f > 0
    level = slice_levels(flair, quantile) if levels is None else torch.as_tensor(levels, dtype=f.dtype)
    bright = (f > level.reshape(-1, 1)) & tissue
    return bright.reshape(flair.shape), tissue.reshape(flair.shape)


def gate_positive_seeds(pos: torch.Tensor, flair: torch.Tensor, quantile: float | None,
                        levels: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the positive seeds ``(N, H, W)`` where FLAIR ``(N, H, W)`` exceeds the ``quantile``
    of that image's non-zero FLAIR pixels, or of its patient's with ``levels`` (``None``: ``pos``
    unchanged).

    Not in the paper: an option for cohorts whose target is the FLAIR abnormality (glioma, oedema),
    which is hyperintense by definition. RISE's blob of high saliency is about as large as a
    mask cell and spills over the tumour border; the intensity gate keeps its bright core.
    On 100 TCGA-LGG tumour slices (8 cells, 200 masks) the share of S+ pixels inside the
    tumour rose from 0.22 to 0.61 with ``quantile=0.9``. Images without non-zero FLAIR keep
    no positive seed. Training applies it to S+ and to the refined seeds S+,r.
    """
    if quantile is None:
        return pos
    return pos & flair_above_quantile(flair, quantile, levels)[0].to(pos.device)


def extend_negative_seeds(neg: torch.Tensor, flair: torch.Tensor, quantile: float | None,
                          levels: torch.Tensor | None = None) -> torch.Tensor:
    """Add to the negative seeds ``(N, H, W)`` the tissue whose FLAIR is at or below the
    ``quantile`` of that image's non-zero FLAIR, or of its patient's with ``levels`` (``None``:
    ``neg`` unchanged).

    Not in the paper; the counterpart of :func:`gate_positive_seeds`: tissue darker than most of the
    slice is not FLAIR abnormality. RISE leaves a wide undecided ring (0.2 <= e <= 0.8) around
    its blob that no seed constrains, and the segmenters fill it. Training applies it to the
    segmenters' S- only (the converter's L_recon stays on RISE's S-).
    """
    if quantile is None:
        return neg
    bright, tissue = flair_above_quantile(flair, quantile, levels)
    return neg | (tissue & ~bright).to(neg.device)
