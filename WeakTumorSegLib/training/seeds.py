"""Training stage 2, the explanation seeds (Yoo et al., section 2.1): C's outputs on the training
slices, X_C (true positives), RISE seeds S+ / S- for tumour slices, S+ empty / S- full for
tumour-free slices."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..metrics import seed_overlap
from ..stages.seeds import RiseConfig, classifier_rise, gate_positive_seeds, seeds_from_maps
from .checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from .quality import training_warnings

if TYPE_CHECKING:
    from .run import TrainingRun


def make_seeds(run: TrainingRun, classifier: nn.Module) -> dict[str, torch.Tensor]:
    """Stage 2: C's outputs ``p`` on the training slices and the seeds ``pos`` / ``neg`` (uint8):
    RISE seeds for tumour slices (checkpointed every ``rise.chunk`` slices), S+ empty and S- full
    for tumour-free slices."""
    if run.skip("seeds"):
        return run.outputs("seeds")
    t0, rc = time.perf_counter(), dict(run.config["rise"])
    chunk = int(rc.pop("chunk", 64))
    rise = RiseConfig(**rc)
    n, size = len(run.x), run.x.shape[-1]
    p = run.predict(classifier, run.x)
    tumour = torch.nonzero(run.y > 0).flatten()
    pos = torch.zeros(n, size, size, dtype=torch.uint8)
    neg = torch.ones(n, size, size, dtype=torch.uint8)  # tumour-free slices: S- everywhere
    if run.dist.main:
        ckpt = run.stage_dir("seeds") / "checkpoint"
        done = 0
        if checkpoint_exists(ckpt):
            state, extra = load_checkpoint(ckpt, {})
            done, pos, neg = int(state["done"]), extra["pos"], extra["neg"]
            run.log(f"seeds: resuming after {done}/{len(tumour)} tumour slices")
        for start in range(done, len(tumour), chunk):
            idx = tumour[start:start + chunk]
            label = "seeds (RISE)"
            run.progress(label, start, len(tumour))
            maps = classifier_rise(classifier, run.x[idx].to(run.device), rise)
            sp, sn = seeds_from_maps(maps, rise.positive, rise.negative)
            sp = gate_positive_seeds(sp, run.x[idx, run.flair].to(sp.device), rise.positive_flair_quantile)
            pos[idx], neg[idx] = sp.cpu().to(torch.uint8), sn.cpu().to(torch.uint8)
            save_checkpoint(ckpt, {}, state={"done": start + len(idx)}, tensors={"pos": pos, "neg": neg})
            run.progress(label, start + len(idx), len(tumour))
    xc = (run.y > 0) & (p > 0.5)
    info = {"tumour_slices": len(tumour), "true_positives": int(xc.sum()), "rise": rise.to_dict()}
    if run.train.mask is not None and xc.any():
        truth = run.train.mask[xc.numpy()]
        info["seed_overlap_positive"], info["seed_overlap_negative"] = seed_overlap(
            pos[xc].numpy(), neg[xc].numpy(), truth)
        run.log(f"seeds: overlap metric on X_C: positive {info['seed_overlap_positive']:.3f}, "
                 f"negative {info['seed_overlap_negative']:.3f}")
    for line in training_warnings({"seeds": info}):
        run.log("WARNING " + line)
    run.finish("seeds", t0, info, tensors={"p": p, "pos": pos, "neg": neg})
    return run.outputs("seeds")
