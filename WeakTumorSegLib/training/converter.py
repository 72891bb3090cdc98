"""Training stage 4, the converter U (Yoo et al., section 2.2.2): U = encoder + G, initialised from
the trained G, learns to turn a cancerous FLAIR slice into its healthy variant against a new
discriminator D1, on the X_C images whose negative seeds pass the negative-seed rule."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..networks.dcgan import Discriminator, Generator
from ..stages.converter import converter_loss
from .architectures import build_unet
from .checkpoint import unwrap
from .gan import adversarial_optimisers, discriminator_step
from .loop import recalibrate_batchnorm, train_epochs

if TYPE_CHECKING:
    from .run import TrainingRun


def train_converter(run: TrainingRun, gen: Generator, seeds: Mapping[str, torch.Tensor]) -> nn.Module:
    """Stage 4: U (encoder + G, initialised from the trained G) against a new D1, on the X_C images
    that pass the negative-seed rule."""
    run.seed_stage("converter")
    unet = build_unet(run, "gan", 1)
    if run.skip("converter"):
        return run.load_weights("converter", "converter", unet)
    t0, c, g = time.perf_counter(), run.config["converter"], run.config["gan"]
    unet.decoder.load_state_dict(unwrap(gen).state_dict())  # U's decoder starts as the trained G
    disc = Discriminator(1, c.get("disc_width") or g["width"]).to(run.device)  # D1 (null: G's width)
    xc = ((run.y > 0) & (seeds["p"] > 0.5)).numpy()
    frac = seeds["neg"].float().mean(dim=(1, 2)).numpy()
    rule, f = c["negative_seed_rule"], float(c["negative_seed_fraction"])
    keep = xc & {"below": frac < f, "above": frac >= f, "all": np.ones_like(xc)}[rule]
    if not xc.any():
        raise InputError("the classifier found no true-positive training slice (X_C is empty); "
                         "train the classifier longer or check the slice labels", run.data_path)
    if not keep.any():
        run.log(f"converter: no X_C image passes the negative-seed rule '{rule} {f}'; using all of X_C")
        keep = xc
    sel = torch.from_numpy(np.flatnonzero(keep))
    xin = run.x[sel][:, run.flair:run.flair + 1]
    sneg = seeds["neg"][sel].float()
    real = run.x[run.y == 0][:, run.flair:run.flair + 1]
    ddp_u, ddp_d = run.dist.wrap(unet), run.dist.wrap(disc)
    run.seed_rank("converter")
    opt_u, opt_d, scheds = adversarial_optimisers(unet, disc, c, "u")
    pick = torch.Generator().manual_seed(run.seed * 1000 + 44 + 7919 * run.dist.rank)
    val = val_tumour_flair(run)

    def step(idx):
        xb, sb = xin[idx].to(run.device), sneg[idx].to(run.device)
        rb = real[torch.randint(0, len(real), (len(idx),), generator=pick)].to(run.device)
        x_hat, code = ddp_u(xb, return_code=True)
        l_d = discriminator_step(ddp_d, opt_d, rb, x_hat.detach(), g["real_label"], g["fake_label"])
        opt_u.zero_grad(set_to_none=True)
        total, parts = converter_loss(xb, x_hat, sb, ddp_d(x_hat), code, c["alpha"], c["beta"], c["gamma"])
        total.backward()
        opt_u.step()
        return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}, "loss_d1": l_d}

    def validate():
        if val is None:
            return {}
        xv, mv = val
        x_hat = run.predict(unet, xv)
        diff = (xv - x_hat).abs()[:, 0]
        brain = xv[:, 0] > 0
        inside = diff[mv].mean().item() if mv.any() else float("nan")
        outside = diff[brain & ~mv].mean().item()
        return {"val_change_inside": inside, "val_change_outside": outside,
                "val_change_ratio": inside / max(outside, 1e-8)}

    history = train_epochs(run, "converter", {"converter": unet, "discriminator": disc}, {"u": opt_u, "d": opt_d},
                           scheds, int(c["epochs"]), len(xin), int(c["batch"]), step, validate)
    recalibrate_batchnorm(unet, xin, int(c["batch"]), run.device)
    # "last": the last epoch's row; "final": the validation metrics of the weights that are kept
    run.finish("converter", t0, {"training_images": len(xin), "x_c": int(xc.sum()),
                                   "last": history[-1] if history else {}, "final": validate()},
                 {"converter": unet, "discriminator": disc})
    return unet.eval()


def val_tumour_flair(run: TrainingRun) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validation tumour slices' FLAIR and masks, when masks exist (for the converter's metric)."""
    if run.val.mask is None or not run.val.label.any():
        return None
    sel = run.val.label > 0
    return (torch.from_numpy(run.val.x[sel][:, run.flair:run.flair + 1]),
            torch.from_numpy(run.val.mask[sel].astype(bool)))


def healthy_variants(run: TrainingRun, converter: nn.Module) -> torch.Tensor:
    """x_hat for every training slice: U(FLAIR) for tumour slices, the FLAIR itself otherwise
    (Yoo et al., section 2.3: non-cancerous variants of X_NC are the images themselves)."""
    flair = run.x[:, run.flair:run.flair + 1]
    x_hat = flair.clone()
    tumour = run.y > 0
    if tumour.any():
        x_hat[tumour] = run.predict(converter, flair[tumour])
    return x_hat
