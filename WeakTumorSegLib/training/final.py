"""Training stage 10, the final segmenter (not in Yoo et al.): one network trained on the
pipeline's own filtered masks, after the bundle of the fused pipeline is written.

The tiles and their kinds come from :mod:`.final_data`. ``final.trainer`` picks the loss:

* ``self``: self-training, the weighted cross-entropy (Mlynarski et al.'s t0 / t1 pixel weights)
  on the tiles with a full label (tumour-free slices and trusted masks);
* ``mixed``: Mlynarski et al.'s mixed supervision, a U-Net with a classification branch
  (:class:`~WeakTumorSegLib.networks.mixed.MixedUNet`); every batch holds ``k`` masked tumour
  tiles, ``m`` tiles with an empty full label and ``n`` weakly labelled tumour tiles; the
  segmentation loss reads the first two kinds, the classification loss all, weighted ``a``;
* ``em``: Li et al.'s EM-regularised partial labels (:mod:`WeakTumorSegLib.stages.partial_labels`):
  the trusted masks, the seeds and the tumour-free slices are known labels, an evidential prior on
  the channels, the healthy-variant residual and the fused map labels the rest, and the network's
  own prediction replaces the prior where the two agree within its uncertainty. The E-step uses the
  network's prediction on the batch being trained (its output before the update), not a separate
  pass over every tile after each epoch: the same rule, one forward pass cheaper, and a resumed run
  needs no stored soft labels.

With ``final.members`` above 1 the final network is an ensemble
(:class:`~WeakTumorSegLib.networks.ensemble.SegmenterEnsemble`) whose members train one after
another on the same labels, each with its own initial weights and data order. With ``final.grow``
set, the trusted masks first grow into the fused probability above it, 3D-connected, on the tumour
slices (:mod:`WeakTumorSegLib.stages.label_refinement`). With ``final.pseudo_masks`` false, only
reviewed exports give masks (Mlynarski et al.'s setting: the other patients are image-labelled).
With ``final.rounds`` 2, the round-1 network relabels every tumour tile; a tile keeps a full label
(the network's mask) where that mask and the fused pipeline's agree (2D Dice at least
``final.agreement``), and round 2 trains a new network on those labels. Every round augments its
batches with :class:`~WeakTumorSegLib.stages.augmentation.SiteAugmentation` (the labels follow the
geometry) when ``final.augment`` is true.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..bundle.load import Bundle
from ..errors import InputError
from ..io.annotations import check_export, match_annotations, read_annotations
from ..io.cohort import Case
from ..metrics import per_slice_dice
from ..networks.ensemble import SegmenterEnsemble
from ..networks.registry import build
from ..stages.augmentation import SiteAugmentation
from ..stages.final import EMPTY, FINAL_ARCHITECTURES, MASKED, TRAINERS, WEAK, mixed_loss
from ..stages.partial_labels import UNKNOWN, e_step, em_loss, fit_prior
from .checkpoint import remove_checkpoint
from .final_data import FinalTiles, collect_tiles
from .loop import recalibrate_batchnorm, train_epochs

if TYPE_CHECKING:
    from .run import TrainingRun

STAGE = "final"


def final_architecture(config: Mapping, n_channels: int) -> tuple[str, dict]:
    """``(architecture, kwargs)`` of the final network for ``config["final"]`` on ``n_channels``
    channels per slice (an ensemble of ``final.members`` such networks when it is above 1)."""
    c = config["final"]
    n_channels *= 2 * int(c.get("context", 0)) + 1
    kind = c.get("architecture", "dcgan")  # checked with the configuration (presets.resolve_config)
    kwargs = {"in_channels": n_channels, "out_channels": 1, "width": c["width"]}
    kwargs.update({"latent": c["latent"]} if kind == "dcgan" else {"levels": int(c.get("levels", 4))})
    name = FINAL_ARCHITECTURES[kind]
    arch = (f"{name}_mixed", {**kwargs, "hidden": c["hidden"]}) if c["trainer"] == "mixed" else (name, kwargs)
    members = int(c.get("members", 1))
    if members > 1:
        return "segmenter_ensemble", {"architecture": arch[0], "kwargs": arch[1], "members": members}
    return arch


def final_cases(run: TrainingRun, cases: list[Case], trained_on: set[str]) -> tuple[list[Case], dict]:
    """The patients the final segmenter learns from: those of ``cases`` in ``trained_on`` (all of
    them when none is) plus those with a reviewed export in ``data.annotations``, leaving out
    patients with neither an export nor slice labels nor a mask; and the exports by patient id."""
    folder = run.config["data"].get("annotations")
    annotations = match_annotations(read_annotations(folder), [c.id for c in cases], Path(folder)) if folder else {}
    by_id = {c.id: c for c in cases}
    for pid, annotation in annotations.items():  # every export is checked before any work starts
        check_export(annotation, by_id[pid])
    labelled = [c for c in cases if c.id in annotations or c.labels is not None or c.mask is not None]
    if any(c.id in trained_on for c in cases):
        labelled = [c for c in labelled if c.id in trained_on or c.id in annotations]
    if not labelled:
        raise InputError("no patient to learn from: none has a reviewed export, slice labels or a mask",
                         Path(folder) if folder else run.data_path)
    return labelled, annotations


def train_final(run: TrainingRun, bundle: Bundle, cases: list[Case],
                annotations: Mapping | None = None) -> tuple[nn.Module, dict] | None:
    """Stage 10 on ``cases`` with the fused pipeline of ``bundle`` (and the reviewed exports
    ``annotations``, by patient id); None when ``final.trainer`` is off. Returns the network and
    the stage's record."""
    c = (run.config.get("final") or {})
    trainer = c.get("trainer")
    if not trainer:
        return None
    if trainer not in TRAINERS:
        raise ValueError(f"final.trainer must be one of {', '.join(TRAINERS)} or null, got {trainer!r}")
    arch = final_architecture(run.config, len(run.channels))
    run.seed_stage(STAGE)
    model = build(*arch).to(run.device)
    if run.skip(STAGE):
        info = json.loads((run.stage_dir(STAGE) / "done.json").read_text())
        return run.load_weights(STAGE, STAGE, model), info
    t0 = time.perf_counter()
    annotations = dict(annotations or {})
    context = int(c.get("context", 0))
    run.log(f"{STAGE}: labelling {len(cases)} patients with the fused pipeline"
            + (f", {len(annotations)} of them with their reviewed exports" if annotations else ""))
    tiles = collect_tiles(bundle, cases, run.device, int(run.config["data"].get("erosion", 0)), trainer == "em",
                          lambda d, t: run.progress("final labels", d, t), annotations, c.get("grow"),
                          bool(c.get("pseudo_masks", True)), context)
    # the seed is recorded here because a final-only run keeps the source bundle's training record
    info = {"trainer": trainer, "rounds": int(c.get("rounds", 1)), "context": context, "patients": len(cases),
            "seed": int(run.config["seed"]), "annotated_patients": sorted(annotations),
            "labels": {"round1": label_report(run, tiles)}}
    model = train_members(run, tiles, model, c, trainer, bundle, "_round1")
    for r in range(2, int(c.get("rounds", 1)) + 1):
        tiles = relabel(run, tiles, model, float(c["agreement"]))
        info["labels"][f"round{r}"] = label_report(run, tiles)
        run.seed_stage(STAGE)
        model = train_members(run, tiles, build(*arch).to(run.device), c, trainer, bundle, f"_round{r}")
    full = np.flatnonzero(tiles.kind != WEAK)
    recalibrate_batchnorm(model, torch.from_numpy(tiles.x[full]), int(c["batch"]), run.device)
    info["architecture"] = arch[0]
    run.finish(STAGE, t0, info, {STAGE: model})
    for r in range(1, int(c.get("rounds", 1)) + 1):
        for _, tag in _parts(f"_round{r}", model):
            remove_checkpoint(run.stage_dir(STAGE) / f"checkpoint{tag}")
    return model.eval(), info


def _parts(tag: str, model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The networks ``model`` trains (its members, or itself) with the checkpoint and log tag of
    each in the round tagged ``tag``."""
    if isinstance(model, SegmenterEnsemble):
        return [(m, f"{tag}_member{k}") for k, m in enumerate(model.members)]
    return [(model, tag)]


def train_members(run: TrainingRun, tiles: FinalTiles, model: nn.Module, c: Mapping, trainer: str, bundle: Bundle,
                  tag: str) -> nn.Module:
    """One round: :func:`train_round` on ``model``, or on each of its members in turn, each with its
    own data order (its initial weights differ already)."""
    for k, (member, part) in enumerate(_parts(tag, model)):
        train_round(run, tiles, member, c, trainer, bundle, part, k)
    return model.eval()


def label_report(run: TrainingRun, tiles: FinalTiles) -> dict:
    """The tiles' kinds and (with masks) their quality, logged and recorded."""
    out = {**tiles.counts(), **(tiles.label_quality() or {})}
    run.log(f"{STAGE}: labels " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in out.items()))
    return out


def relabel(run: TrainingRun, tiles: FinalTiles, model: nn.Module, agreement: float) -> FinalTiles:
    """Round 2's labels: every tumour tile's full label becomes the round-1 network's mask where that
    mask and the fused pipeline's agree (2D Dice >= ``agreement``); the other tumour tiles are weak.
    A reviewer's labels stay as they are."""
    reviewed = tiles.reviewed if tiles.reviewed is not None else np.zeros(len(tiles), bool)
    tumour = np.flatnonzero(((tiles.kind == MASKED) | (tiles.kind == WEAK)) & (tiles.label == 1) & ~reviewed)
    pred = (run.predict(model, torch.from_numpy(tiles.x[tumour]))[:, 0] > 0.5).numpy()
    agree = (per_slice_dice(pred, tiles.proposal[tumour]) >= agreement) & pred.reshape(len(pred), -1).any(1)
    kind, mask = tiles.kind.copy(), tiles.mask.copy()
    kind[tumour] = np.where(agree, MASKED, WEAK)
    mask[tumour] = np.where(agree[:, None, None], pred, 0)
    return dataclasses.replace(tiles, kind=kind, mask=mask)


def _steps(run: TrainingRun, c: Mapping, n_items: int, batch: int) -> tuple[int, int]:
    """Epochs and halving period, lengthened to reach ``final.min_steps`` on a small set."""
    epochs, halve = int(c["epochs"]), int(c["halve_every"])
    steps = math.ceil(n_items / (batch * run.dist.world))
    min_steps = int(c.get("min_steps") or 0)
    if epochs * steps < min_steps:
        scale = math.ceil(min_steps / (epochs * steps))
        epochs, halve = epochs * scale, halve * scale
    return epochs, halve


def em_targets(run: TrainingRun, tiles: FinalTiles, bundle: Bundle, c: Mapping) -> torch.Tensor:
    """``(N, 3, P, P)``: the partial labels (0, 1, UNKNOWN) and the prior's p0 and u for every tile."""
    partial = np.full(tiles.mask.shape, UNKNOWN, np.uint8)
    empty, masked, weak = tiles.kind == EMPTY, tiles.kind == MASKED, tiles.kind == WEAK
    partial[empty] = 0
    partial[masked] = np.where(tiles.mask[masked] > 0, 1, np.where(tiles.neg[masked] > 0, 0, UNKNOWN))
    partial[weak] = np.where(tiles.pos[weak] > 0, 1, np.where(tiles.neg[weak] > 0, 0, UNKNOWN))
    tissue = tiles.x.any(1)
    partial[~tissue] = 0
    flair = int(c.get("context", 0)) * len(bundle.channels) + bundle.channels.index(bundle.flair_channel)  # own slice
    healthy = run.predict(bundle.models["converter"], torch.from_numpy(tiles.x[:, flair:flair + 1]))[:, 0].numpy()
    feats = np.concatenate([tiles.x, np.abs(tiles.x[:, flair] - healthy)[:, None],
                            tiles.fused.astype(np.float32)[:, None]], 1)  # (N, F, P, P)
    known = (partial != UNKNOWN) & tissue
    idx = np.flatnonzero(known.reshape(-1))
    gen = np.random.default_rng(run.seed)
    idx = np.sort(gen.choice(idx, min(len(idx), int(c["prior_pixels"])), replace=False))
    flat = feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1])
    prior = fit_prior(torch.from_numpy(flat[idx]), torch.from_numpy((partial.reshape(-1)[idx] == 1).astype(np.int64)),
                      steps=int(c["prior_steps"]), seed=run.seed)
    p0, u = prior.predict(torch.from_numpy(flat))
    shape = partial.shape
    out = torch.stack([torch.from_numpy(partial.astype(np.float32)), p0.reshape(shape), u.reshape(shape)], 1)
    unknown = partial == UNKNOWN
    run.log(f"{STAGE}: EM prior on {len(idx)} known pixels; unknown pixels {unknown.mean():.3f} of all, "
            f"prior p0 > 0.5 on {float((p0.reshape(shape).numpy() > 0.5)[unknown].mean()):.3f} of them")
    return out


def train_round(run: TrainingRun, tiles: FinalTiles, model: nn.Module, c: Mapping, trainer: str, bundle: Bundle,
                tag: str, member: int = 0) -> nn.Module:
    """One round of the final network's training with ``trainer`` (module docstring); ``member``
    > 0 gives an ensemble member its own data order and augmentation."""
    x = torch.from_numpy(tiles.x)
    masks = torch.from_numpy(tiles.mask.astype(np.float32))
    labels = torch.from_numpy(tiles.label.astype(np.float32))
    t0w, t1w, a = float(c["t0"]), float(c["t1"]), float(c["a"])
    balanced, dice = bool(c.get("balanced", True)), float(c.get("dice", 0.0))
    full = torch.from_numpy((tiles.kind == EMPTY) | (tiles.kind == MASKED))
    if trainer == "mixed":
        pool = np.flatnonzero((tiles.kind == MASKED) & (tiles.label == 1))
        empties = np.flatnonzero(((tiles.kind == MASKED) & (tiles.label == 0)) | (tiles.kind == EMPTY))
        weak = np.flatnonzero(tiles.kind == WEAK)
        batch = int(c["k"])
    elif trainer == "self":
        pool, batch = np.flatnonzero(full.numpy()), int(c["batch"])
    else:
        pool, batch = np.arange(len(tiles)), int(c["batch"])
        targets = em_targets(run, tiles, bundle, c)
    if len(pool) == 0:
        raise ValueError(f"{STAGE}: no tile to train on with trainer '{trainer}'")
    epochs, halve = _steps(run, c, len(pool), batch)
    ddp = run.dist.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=float(c["lr"]), betas=tuple(c["betas"]))
    sched = torch.optim.lr_scheduler.StepLR(opt, halve, 0.5)
    aug = SiteAugmentation() if c.get("augment", True) else None
    per_slice = len(bundle.channels)  # with a context, each slice's channels get the same intensity change
    run.seed_rank(STAGE, member)
    gen = torch.Generator().manual_seed(run.seed * 7919 + len(tag) + 104729 * member)

    def draw(idx: torch.Tensor) -> torch.Tensor:
        ids = pool[idx.numpy()]
        if trainer == "mixed":
            extra = [src[torch.randint(len(src), (int(c[key]),), generator=gen).numpy()]
                     for src, key in ((empties, "m"), (weak, "n")) if len(src)]
            ids = np.concatenate([ids, *extra])
        return torch.from_numpy(ids)

    def step(idx: torch.Tensor) -> dict:
        ids = draw(idx)
        xb = x[ids]
        maps = targets[ids] if trainer == "em" else masks[ids][:, None]
        if aug is not None:
            xb, maps = aug(xb, gen, maps, per_slice)
        xb, maps = xb.to(run.device), maps.to(run.device)
        if trainer == "mixed":
            prob, logit = ddp(xb, with_logit=True)
            loss, parts = mixed_loss(prob[:, 0], logit, maps[:, 0], full[ids].to(run.device),
                                     labels[ids].to(run.device), t0w, t1w, a, balanced, dice)
        elif trainer == "self":
            prob = ddp(xb)
            loss, parts = mixed_loss(prob[:, 0], None, maps[:, 0], full[ids].to(run.device), labels[ids], t0w, t1w, a,
                                     balanced, dice)
        else:
            prob = ddp(xb)
            p_theta = prob[:, 0].detach() if sched.last_epoch >= 1 else None  # gamma = 0 in the first epoch
            q = e_step(maps[:, 1], maps[:, 2], p_theta)
            loss, parts = em_loss(prob[:, 0], maps[:, 0].round(), q, float(c["lam"]), t0w, t1w, balanced)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), **parts}

    train_epochs(run, STAGE, {STAGE: model}, {STAGE: opt}, {"step": sched}, epochs, len(pool), batch, step,
                 None if c.get("context") else validation(run, model, bundle), tag=tag, member=member)
    return model.eval()


def validation(run: TrainingRun, model: nn.Module, bundle: Bundle):
    """Per-epoch figures on the run's validation slices, gated by C (for the log only; nothing is
    chosen on them)."""
    val = getattr(run, "val", None)
    if val is None or val.mask is None or len(val.label) == 0:
        return None
    p_val = run.predict(bundle.models["classifier"], torch.from_numpy(val.x))

    def validate() -> dict:
        m = run.predict(model, torch.from_numpy(val.x))[:, 0]
        pred = ((m > 0.5) & (p_val > 0.5)[:, None, None]).numpy()
        d = per_slice_dice(pred, val.mask)
        return {"val_dice_tumour_slices": float(d[val.label > 0].mean()) if (val.label > 0).any() else float("nan")}

    return validate
