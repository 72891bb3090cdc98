"""Training stages 5, 7 and 8, the segmenters (Yoo et al., sections 2.3 and 2.4): S0 on all training
slices with L_seed, L_var and L_size (Eqs. 12-15); after the refinement, S_US on X_C,r + X_NC and
S_OS on X_C,r alone with the refined seeds (Eq. 16); and, for Table 5, S0 with the seed loss only."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..metrics import per_slice_dice
from ..stages.seeds import extend_negative_seeds
from ..stages.segmenters import segmenter_loss
from .architectures import build_unet
from .loop import recalibrate_batchnorm, train_epochs
from .quality import training_warnings
from .seeds import gate_levels

if TYPE_CHECKING:
    from .run import TrainingRun


def segmenter_negative_seeds(run: TrainingRun, seeds: dict[str, torch.Tensor]) -> torch.Tensor:
    """S- of the segmenters: the seed method's S- plus, with ``rise.negative_flair_quantile``, the
    dark tissue of every slice (:func:`~WeakTumorSegLib.stages.seeds.extend_negative_seeds`, its level
    per slice or per patient as ``rise.flair_gate_scope`` says), limited with
    ``rise.negative_flair_map`` to where the map is low (the seeds stage's ``low``). The converter
    keeps the method's S- alone: its L_recon and its 50 % rule are defined on them, and the dark
    tissue would push nearly every image over the 50 % line."""
    neg = seeds["neg"]
    q = run.config["rise"].get("negative_flair_quantile")
    if q is None:
        return neg
    dark = extend_negative_seeds(torch.zeros_like(neg, dtype=torch.bool), run.x[:, run.flair], q, gate_levels(run, q))
    if "low" in seeds:
        dark &= seeds["low"].bool()
    out = (neg.bool() | dark).to(torch.uint8)
    if run.train.mask is not None:
        xc = run.y > 0
        if xc.any():
            truth = run.train.mask[xc.numpy()].astype(bool)
            off_tumour = float((out[xc].numpy().astype(bool) & ~truth).sum() / max(out[xc].sum().item(), 1))
            run.log(f"segmenters: S- with the dark tissue (FLAIR <= quantile {q}): negative overlap metric on "
                     f"tumour slices {off_tumour:.3f}")
    return out


def train_segmenter(run: TrainingRun, stage: str, subset: np.ndarray, pos: torch.Tensor, neg: torch.Tensor,
                    x_hat: torch.Tensor, classifier: nn.Module, seed_only: bool = False) -> nn.Module:
    """Train a segmenter on ``subset`` with Eqs. 12-16; ``seed_only`` drops L_var and L_size
    (the Table 5 baseline: S0 trained with the seed loss only)."""
    run.seed_stage(stage)
    model = build_unet(run, "segmenter", len(run.channels))
    if run.skip(stage):
        return run.load_weights(stage, stage, model)
    t0, c = time.perf_counter(), run.config["segmenter"]
    epsilon, zeta = (0.0, 0.0) if seed_only else (c["epsilon"], c["zeta"])
    sel = torch.from_numpy(np.flatnonzero(subset))
    if len(sel) == 0:
        raise InputError(f"{stage}: no training image (check the classifier and seeds)", run.data_path)
    xs, ps, ns, hs = run.x[sel], pos[sel].float(), neg[sel].float(), x_hat[sel]
    ddp = run.dist.wrap(model)
    run.seed_rank(stage)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"], betas=tuple(c["betas"]))
    epochs, halve = int(c["epochs"]), int(c["halve_every"])
    min_steps = int(c.get("min_steps") or 0)
    steps = math.ceil(len(sel) / (int(c["batch"]) * run.dist.world))
    if epochs * steps < min_steps:  # a small subset (S_OS on X_C,r) gets as many steps as S0, not fewer
        scale = math.ceil(min_steps / (epochs * steps))
        epochs, halve = epochs * scale, halve * scale
        run.log(f"{stage}: {len(sel)} images; {epochs} epochs to reach segmenter.min_steps = {min_steps}")
    sched = torch.optim.lr_scheduler.StepLR(opt, halve, 0.5)
    p_val = run.predict(classifier, torch.from_numpy(run.val.x)) if len(run.val.label) else None

    def step(idx):
        xb = xs[idx].to(run.device)
        m = ddp(xb)
        total, parts = segmenter_loss(m, ps[idx].to(run.device), ns[idx].to(run.device),
                                      xb[:, run.flair:run.flair + 1], hs[idx].to(run.device),
                                      c["delta"], epsilon, zeta,
                                      bool(c.get("balanced_seed_loss", False)))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

    def validate():
        if run.val.mask is None or p_val is None:
            return {}
        m = run.predict(model, torch.from_numpy(run.val.x))[:, 0]
        pred = ((m > 0.5) & (p_val > 0.5)[:, None, None]).numpy()  # C gates images (Yoo et al., section 2.3)
        d = per_slice_dice(pred, run.val.mask)
        tumour = run.val.label > 0
        return {"val_dice_per_slice": float(d.mean()),
                "val_dice_tumour_slices": float(d[tumour].mean()) if tumour.any() else float("nan")}

    history = train_epochs(run, stage, {stage: model}, {stage: opt}, {"step": sched}, epochs, len(sel),
                           int(c["batch"]), step, validate)
    recalibrate_batchnorm(model, xs, int(c["batch"]), run.device)
    info = {"training_images": len(sel), "positive_seed_recall": positive_seed_recall(run, model, xs, ps),
            "last": history[-1] if history else {}}
    for line in training_warnings({stage: info}):
        run.log(f"WARNING {line} (now {zeta:g})")
    run.finish(stage, t0, info, {stage: model})
    return model.eval()


def positive_seed_recall(run: TrainingRun, model: nn.Module, x: torch.Tensor, pos: torch.Tensor,
                          limit: int = 512) -> float | None:
    """Share of the positive seeds that the trained model's mask (output > 0.5) covers, on at
    most ``limit`` of its training images with positive seeds (evenly spaced); ``None`` when
    none has any. Near 0 means the segmenter collapsed to empty masks."""
    idx = np.flatnonzero(pos.flatten(1).sum(1).numpy() > 0)
    if len(idx) == 0:
        return None
    idx = torch.from_numpy(idx[np.linspace(0, len(idx) - 1, min(limit, len(idx))).astype(int)])
    m = run.predict(model, x[idx])[:, 0] > 0.5
    p = pos[idx] > 0
    return float((m & p).sum() / p.sum())
