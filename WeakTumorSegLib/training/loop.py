"""The training loop every stage shares: shuffled mini-batches, epochs with a checkpoint after
each, resume from the last checkpoint, per-epoch logs, and BatchNorm recalibration.

Every epoch ends with an atomic checkpoint (models, optimizers, schedulers, RNG state; no
pickle), so ``--resume`` continues a killed run at the last finished epoch. Per-epoch losses and
validation metrics go to ``<stage>/log.csv`` (``classifier/log_member<k>.csv`` per member).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import STAGES
from .checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint, write_log

if TYPE_CHECKING:
    from .run import TrainingRun


def batches(run: TrainingRun, n: int, batch: int, epoch: int, salt: int) -> list[torch.Tensor]:
    """Shuffled mini-batches of ``range(n)`` for this rank (a DistributedSampler when distributed)."""
    if run.dist.active:
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=run.dist.world,
                                                      rank=run.dist.rank, shuffle=True,
                                                      seed=run.seed * 1000 + salt, drop_last=False)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), dtype=torch.long)
    else:
        gen = torch.Generator().manual_seed(run.seed * 1000 + salt * 100003 + epoch)
        order = torch.randperm(n, generator=gen)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def train_epochs(run: TrainingRun, stage: str, models: dict[str, nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], schedulers: dict, epochs: int, n_items: int, batch: int,
                 step: Callable[[torch.Tensor], dict[str, float]],
                 validate: Callable[[], dict[str, float]] | None = None,
                 plateau_on: str | None = None, tag: str = "", member: int = 0) -> list[dict]:
    """Train ``models`` for ``epochs`` with per-epoch checkpoints; resume from the last one.
    ``tag`` names this part's checkpoint and log (``checkpoint<tag>``, ``log<tag>.csv``) where a
    stage trains several parts in turn; ``member`` > 0 gives the part its own data order."""
    sdir = run.stage_dir(stage)
    ckpt = sdir / f"checkpoint{tag}"
    part = f"{stage}{tag.replace('_', ' ')}"  # "classifier member1" in logs and progress
    start, history = 0, []
    if checkpoint_exists(ckpt):
        state, extra = load_checkpoint(ckpt, models, optimizers)
        start, history = int(state["epoch"]), list(state["history"])
        run.resumed[stage] = float(state.get("elapsed", 0.0))
        for name, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        torch.set_rng_state(extra["rng"])
        run.log(f"{part}: resuming after epoch {start}/{epochs}")
    salt = STAGES.index(stage) + 1 + 1000 * member
    t_stage = time.perf_counter()
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        for m in models.values():
            m.train()
        sums: dict[str, float] = {}
        chunks = batches(run, n_items, batch, epoch, salt)
        label = f"{part} {epoch + 1}/{epochs}"
        run.progress(label, 0, len(chunks))
        for b, idx in enumerate(chunks):
            for key, value in step(idx).items():
                sums[key] = sums.get(key, 0.0) + float(value)
            run.progress(label, b + 1, len(chunks))
        row = {"epoch": epoch + 1, **{k: v / max(len(chunks), 1) for k, v in sums.items()}}
        for m in models.values():
            m.eval()
        if validate is not None:
            with torch.no_grad():
                row.update(validate())
        for name, sched in schedulers.items():
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(row.get(plateau_on, row.get("loss", 0.0)))
            else:
                sched.step()
        row["lr"] = next(iter(optimizers.values())).param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        if run.dist.main:
            write_log(sdir / f"log{tag}.csv", history)
            save_checkpoint(ckpt, models, optimizers,
                            {"epoch": epoch + 1, "history": history,
                             "elapsed": run.resumed.get(stage, 0.0) + time.perf_counter() - t_stage,
                             "schedulers": {n: s.state_dict() for n, s in schedulers.items()}},
                            tensors={"rng": torch.get_rng_state()})
        run.dist.barrier()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
        run.log(f"{part}: epoch {epoch + 1}/{epochs}  {shown}  ({row['seconds']:.1f} s)")
    return history


def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> None:
    """Re-estimate every BatchNorm layer's running statistics over ``x`` (a plain average over
    the training data, weights unchanged), then switch to eval mode.

    Running statistics gathered with momentum over a few hundred small batches lag behind the
    final weights, so a model can score well in training mode and badly in eval mode; one pass
    over the training data fixes that. Applied at the end of every stage."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or len(x) == 0:
        model.eval()
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch].to(device))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
