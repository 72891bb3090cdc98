"""Training stage 6, seed refinement (Yoo et al., section 2.4): S0's masks on the true positives
X_C are split into connected components; those C no longer sees as tumour once blanked become
the refined positive seeds S+,r, and their images X_C,r."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..metrics import seed_overlap
from ..stages.refinement import RefineConfig, refine_seeds
from ..stages.seeds import gate_positive_seeds
from .seeds import gate_levels

if TYPE_CHECKING:
    from .run import TrainingRun


def refine(run: TrainingRun, classifier: nn.Module, s0: nn.Module, seeds: Mapping[str, torch.Tensor]) -> dict:
    """Stage 6: the refined positive seeds ``pos_r`` and the membership of X_C,r (``x_c_r``) from
    S0's masks on X_C, each component tested by blanking it for C."""
    if run.skip("refine"):
        return run.outputs("refine")
    t0, rc = time.perf_counter(), run.config["refine"]
    xc = ((run.y > 0) & (seeds["p"] > 0.5)).numpy()
    n, size = len(run.x), run.x.shape[-1]
    pos_r = torch.zeros(n, size, size, dtype=torch.uint8)
    xcr = torch.zeros(n, dtype=torch.bool)
    info: dict = {"x_c": int(xc.sum())}
    if run.dist.main:
        idx = np.flatnonzero(xc)
        images = run.train.x[idx]
        masks = run.predict(s0, torch.from_numpy(images))[:, 0].numpy()
        cfg = RefineConfig(radii=tuple(rc["radii"]), accept_below=rc["accept_below"],
                           binarize_at=rc["binarize_at"], min_size=rc["min_size"], batch=rc["batch"])
        result = refine_seeds(classifier, images, masks, cfg, device=run.device,
                              progress=lambda d, t: run.progress("refine", d, t))
        # the positive-seed gate applies to the refined seeds too; an image it leaves without
        # any refined seed drops out of X_C,r (S_OS would learn an empty mask on a tumour)
        q = run.config["rise"].get("positive_flair_quantile")
        levels = gate_levels(run, q)
        gated = gate_positive_seeds(torch.from_numpy(result.seeds), run.x[idx, run.flair], q,
                                    None if levels is None else levels[idx])
        pos_r[idx] = gated.to(torch.uint8)
        xcr[idx] = torch.from_numpy(result.accepted) & gated.flatten(1).any(1)
        info.update({"components": int(result.n_components.sum()), "accepted": int(result.n_accepted.sum()),
                     "x_c_r": int(xcr.sum())})
        if not result.accepted.any():
            run.log("refine: no component was accepted; falling back to S0's masks on X_C as refined seeds")
            pos_r[idx] = torch.from_numpy((masks > 0.5).astype(np.uint8))
            xcr[idx] = True
            info["fallback"] = "S0 masks on X_C"
        if run.train.mask is not None and xcr.any():
            info["refined_seed_overlap_positive"] = seed_overlap(
                pos_r[xcr].numpy(), np.zeros_like(pos_r[xcr].numpy()), run.train.mask[xcr.numpy()])[0]
        run.log(f"refine: {info.get('accepted', 0)} of {info.get('components', 0)} components accepted; "
                 f"X_C,r has {int(xcr.sum())} of {info['x_c']} images")
    run.finish("refine", t0, info, tensors={"pos_r": pos_r, "x_c_r": xcr.to(torch.uint8)})
    return run.outputs("refine")
