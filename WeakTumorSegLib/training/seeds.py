"""Training stage 2, the explanation seeds (Yoo et al., section 2.1): C's outputs on the training
slices, X_C (true positives), seeds S+ / S- of the configured method (``seeds.method``) for tumour
slices, S+ empty / S- full for tumour-free slices. With ACAM, the attention is fitted here first."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..metrics import seed_overlap
from ..stages.seeds import (SeedSettings, explanation_maps, fit_attention, gate_positive_seeds, normalize_maps,
                           patient_levels, seeds_from_maps)
from ..stages.seeds.cam import untrained_attention
from .checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from .quality import training_warnings

if TYPE_CHECKING:
    from .run import TrainingRun


def seed_attention(run: TrainingRun, classifier: nn.Module) -> nn.Module | None:
    """The attention of ACAM seeds, fitted in the seeds stage (None for other methods)."""
    if SeedSettings.from_config(run.config).method != "acam":
        return None
    return run.load_weights("seeds", "attention", untrained_attention(classifier))


def gate_levels(run: TrainingRun, quantile: float | None) -> torch.Tensor | None:
    """Per training slice, the FLAIR level of a seed gate's ``quantile`` for ``rise.flair_gate_scope``,
    a volume being its patient's slices; None for the ``slice`` scope (each slice's own quantile)."""
    return patient_levels(run.x[:, run.flair], torch.from_numpy(run.train.patient), quantile,
                          run.config["rise"].get("flair_gate_scope", "slice"))


def seed_tensors(pos: torch.Tensor, neg: torch.Tensor, low: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The seeds stage's tensors; ``low`` only when ``rise.negative_flair_map`` made one."""
    return {"pos": pos, "neg": neg, **({"low": low} if low is not None else {})}


def make_seeds(run: TrainingRun, classifier: nn.Module) -> dict[str, torch.Tensor]:
    """Stage 2: C's outputs ``p`` on the training slices and the seeds ``pos`` / ``neg`` (uint8):
    seeds of ``seeds.method`` for tumour slices (checkpointed every ``rise.chunk`` slices), S+ empty
    and S- full for tumour-free slices. With ``rise.negative_flair_map`` also ``low`` (uint8), where
    the normalised map lies below it: the only place the segmenters' S- takes dark tissue."""
    if run.skip("seeds"):
        return run.outputs("seeds")
    t0 = time.perf_counter()
    chunk = int(run.config["rise"].get("chunk", 64))
    settings = SeedSettings.from_config(run.config)
    rise = settings.rise
    n, size = len(run.x), run.x.shape[-1]
    p = run.predict(classifier, run.x)
    tumour = torch.nonzero(run.y > 0).flatten()
    attention, weights, fit = None, {}, {}
    if settings.method == "acam":  # quick (features once, a few hundred steps): refitted on resume
        attention, fit = fit_attention(classifier, run.x.to(run.device), run.y, settings.attention_steps,
                                       settings.attention_lr, seed=run.seed,
                                       progress=lambda d, t: run.progress("seeds (attention)", d, t))
        weights = {"attention": attention}
        run.log(f"seeds: ACAM attention fitted, loss {fit['loss_first']:.3f} -> {fit['loss_last']:.3f}")
    pos = torch.zeros(n, size, size, dtype=torch.uint8)
    neg = torch.ones(n, size, size, dtype=torch.uint8)  # tumour-free slices: S- everywhere
    low = torch.ones(n, size, size, dtype=torch.uint8) if rise.negative_flair_map is not None else None
    levels = gate_levels(run, rise.positive_flair_quantile)
    if run.dist.main:
        ckpt = run.stage_dir("seeds") / "checkpoint"
        done = 0
        if checkpoint_exists(ckpt):
            state, extra = load_checkpoint(ckpt, {})
            done, pos, neg, low = int(state["done"]), extra["pos"], extra["neg"], extra.get("low", low)
            run.log(f"seeds: resuming after {done}/{len(tumour)} tumour slices")
        for start in range(done, len(tumour), chunk):
            idx = tumour[start:start + chunk]
            label = f"seeds ({settings.method})"
            run.progress(label, start, len(tumour))
            maps = explanation_maps(settings, classifier, run.x[idx].to(run.device), run.flair, attention)
            sp, sn = seeds_from_maps(maps, settings.positive, settings.negative)
            sp = gate_positive_seeds(sp, run.x[idx, run.flair].to(sp.device), rise.positive_flair_quantile,
                                     None if levels is None else levels[idx])
            pos[idx], neg[idx] = sp.cpu().to(torch.uint8), sn.cpu().to(torch.uint8)
            if low is not None:
                low[idx] = (normalize_maps(maps) < rise.negative_flair_map).cpu().to(torch.uint8)
            save_checkpoint(ckpt, {}, state={"done": start + len(idx)}, tensors=seed_tensors(pos, neg, low))
            run.progress(label, start + len(idx), len(tumour))
    xc = (run.y > 0) & (p > 0.5)
    info = {"tumour_slices": len(tumour), "true_positives": int(xc.sum()), "rise": rise.to_dict(),
            "seeds": settings.to_dict(), **({"attention": fit} if fit else {})}
    if run.train.mask is not None and xc.any():
        truth = run.train.mask[xc.numpy()]
        info["seed_overlap_positive"], info["seed_overlap_negative"] = seed_overlap(
            pos[xc].numpy(), neg[xc].numpy(), truth)
        run.log(f"seeds: overlap metric on X_C: positive {info['seed_overlap_positive']:.3f}, "
                 f"negative {info['seed_overlap_negative']:.3f}")
    for line in training_warnings({"seeds": info}):
        run.log("WARNING " + line)
    run.finish("seeds", t0, info, weights=weights, tensors={"p": p, **seed_tensors(pos, neg, low)})
    return run.outputs("seeds")
