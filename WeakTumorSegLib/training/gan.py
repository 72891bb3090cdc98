"""Training stage 3, the healthy-image generator (Yoo et al., section 2.2.1): a DCGAN, G against
D0, on the FLAIR channel of the tumour-free training slices."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..networks.dcgan import Discriminator, Generator
from ..stages.healthy_gan import bce_to_label, generator_adversarial_loss
from .loop import train_epochs

if TYPE_CHECKING:
    from .run import TrainingRun


def discriminator_step(disc: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       real_label: float, fake_label: float) -> float:
    """One discriminator update on a real and a generated batch of equal size (Eqs. 1 and 6).

    The two batches go through the discriminator separately, each followed by its own backward
    (half of the loss each), which equals the mean over the concatenation and works under DDP
    with BatchNorm."""
    opt.zero_grad(set_to_none=True)
    l_real = 0.5 * bce_to_label(disc(real), real_label)
    l_real.backward()
    l_fake = 0.5 * bce_to_label(disc(fake), fake_label)
    l_fake.backward()
    opt.step()
    return l_real.item() + l_fake.item()


def adversarial_optimisers(net: nn.Module, disc: nn.Module, section: dict,
                           name: str) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, dict]:
    """Adam for a network and its discriminator with the section's learning rate and betas, each
    halved every ``halve_every`` epochs (schedulers keyed ``name`` and ``d``)."""
    opt_n = torch.optim.Adam(net.parameters(), lr=section["lr"], betas=tuple(section["betas"]))
    opt_d = torch.optim.Adam(disc.parameters(), lr=section["lr"], betas=tuple(section["betas"]))
    scheds = {n: torch.optim.lr_scheduler.StepLR(o, section["halve_every"], 0.5)
              for n, o in ((name, opt_n), ("d", opt_d))}
    return opt_n, opt_d, scheds


def gan_models(run: TrainingRun) -> tuple[Generator, Discriminator]:
    """G and D0 with the configured widths, on the run's device."""
    g = run.config["gan"]
    return (Generator(g["latent"], g["width"], 1).to(run.device), Discriminator(1, g["width"]).to(run.device))


def train_gan(run: TrainingRun) -> Generator:
    """Stage 3: G against D0 on the tumour-free training slices' FLAIR."""
    run.seed_stage("gan")
    gen, disc = gan_models(run)
    if run.skip("gan"):
        return run.load_weights("gan", "generator", gen)
    t0, g = time.perf_counter(), run.config["gan"]
    real = run.x[run.y == 0][:, run.flair:run.flair + 1]
    ddp_g, ddp_d = run.dist.wrap(gen), run.dist.wrap(disc)
    run.seed_rank("gan")
    opt_g, opt_d, scheds = adversarial_optimisers(gen, disc, g, "g")

    def step(idx):
        xb = real[idx].to(run.device)
        z = torch.randn(len(xb), g["latent"], device=run.device)
        fake = ddp_g(z)
        l_d = discriminator_step(ddp_d, opt_d, xb, fake.detach(), g["real_label"], g["fake_label"])
        opt_g.zero_grad(set_to_none=True)
        l_g = generator_adversarial_loss(ddp_d(fake))
        l_g.backward()
        opt_g.step()
        return {"loss_d": l_d, "loss_g": l_g.item()}

    history = train_epochs(run, "gan", {"generator": gen, "discriminator": disc}, {"g": opt_g, "d": opt_d}, scheds,
                           int(g["epochs"]), len(real), int(g["batch"]), step)
    run.finish("gan", t0, {"tumour_free_slices": len(real), "last": history[-1] if history else {}},
                 {"generator": gen, "discriminator": disc})
    return gen.eval()
