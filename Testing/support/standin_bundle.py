"""Stand-in model bundle trained on synthetic phantoms, for demos and tests.

This is **not** the weakly supervised training of Yoo et al.: phantoms come with their exact
tumour masks and tumour-free counterparts, so the four inference networks are fitted to them
directly (classifier on patch labels, S_US on eroded masks, S_OS on dilated masks, converter U
on tumour-free FLAIR). The result exercises the whole inference path - tiling, gating, fusion,
difference score, flags, seeds - with networks that find phantom tumours, and is named
``phantom-standin`` so it is never mistaken for a model of real MR.

``python Testing/support/standin_bundle.py --out DIR`` builds it (about two minutes on two CPU
cores); ``--sample DIR`` also writes a phantom patient in the layout of the real data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

if not __package__:  # run as a script: the folder above, Testing/, holds the ``support`` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.phantoms import Phantom, make_phantom, write_case
from WeakTumorSegLib.bundle.save import inference_architectures, save_bundle
from WeakTumorSegLib.bundle.settings import InferenceSettings
from WeakTumorSegLib.networks.registry import build
from WeakTumorSegLib.preprocessing.crop import brain_bbox, plan_crop, to_working
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig, normalize_channel, zero_fraction
from WeakTumorSegLib.preprocessing.tiling import Tiling

CHANNELS = ("flair", "t1", "t1ce")
PATCH = 128


def phantom_patches(ph: Phantom, channels: Sequence[str], pp: PreprocessConfig, stride: int = 64,
                    max_zero_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Preprocess a phantom like inference does and cut it into training patches.

    Returns ``x`` (n, C, P, P) inputs, ``healthy`` (n, 1, P, P) tumour-free FLAIR, ``mask``
    (n, P, P) and ``label`` (n,) - patches more than ``max_zero_fraction`` zero are dropped, as
    the paper drops such slices. The tumour and tumour-free volumes are normalised together so they
    share one intensity mapping.
    """
    z = ph.mask.shape[0]
    norm = {c: normalize_channel(np.concatenate([ph.channels[c], ph.healthy[c]]), pp.clip_percentiles)
            for c in channels}
    stack = np.stack([norm[c][:z] for c in channels], axis=1)
    healthy = norm["flair"][z:][:, None]
    crop = plan_crop(brain_bbox(stack, pp.brain_threshold), pp.inplane_scale)
    work = to_working(stack, crop)
    work_h = to_working(healthy, crop)
    work_m = to_working(ph.mask[:, None].astype(np.float32), crop)
    tiling = Tiling.plan(z, crop.height, crop.width, PATCH, stride)
    x = tiling.extract(work)
    keep = zero_fraction(x) <= max_zero_fraction
    m = tiling.extract(work_m)[:, 0] > 0.5
    return {"x": x[keep], "healthy": tiling.extract(work_h)[keep], "mask": m[keep],
            "label": m[keep].any(axis=(1, 2)).astype(np.float32)}


def make_dataset(n_cases: int, seed: int, pp: PreprocessConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(n_cases):
        hw = int(rng.integers(140, 200))
        ph = make_phantom(shape=(int(rng.integers(16, 24)), hw, int(rng.integers(140, 200))), channels=CHANNELS,
                          n_tumors=int(rng.integers(1, 3)), seed=seed * 1000 + i)
        parts.append(phantom_patches(ph, CHANNELS, pp))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _dice_bce(logits_or_prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits_or_prob.clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(p, target)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return bce + dice.mean()


def _fit(model: torch.nn.Module, loss_fn, tensors: Sequence[torch.Tensor], epochs: int, batch: int, lr: float,
         seed: int, label: str, log) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(tensors[0])
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            loss = loss_fn(model, *(t[idx] for t in tensors))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log(f"{label}: epoch {epoch + 1}/{epochs} loss {total / n:.4f}")
    model.eval()


def train_standin(out: str | Path, n_cases: int = 10, epochs: int = 6, seed: int = 0, width: int = 8,
                  overwrite: bool = False, log=print) -> Path:
    """Train the stand-in networks on ``n_cases`` phantoms and write the bundle to ``out``."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    pp = PreprocessConfig(inplane_scale=1.0, brain_threshold=0.0)
    data = make_dataset(n_cases, seed, pp)
    x = torch.from_numpy(data["x"])
    y = torch.from_numpy(data["label"])
    h = torch.from_numpy(data["healthy"])
    log(f"{len(x)} patches, {int(y.sum())} with tumour")
    struct = ndimage.generate_binary_structure(2, 1)
    m_np = data["mask"]
    eroded = np.stack([ndimage.binary_erosion(a, struct, 1) for a in m_np]).astype(np.float32)
    dilated = np.stack([ndimage.binary_dilation(a, struct, 2) for a in m_np]).astype(np.float32)
    eroded, dilated = torch.from_numpy(eroded)[:, None], torch.from_numpy(dilated)[:, None]

    classifier = ("compact_classifier", {"width": width, "blocks": 4, "upsample": 1.0})
    archs = inference_architectures(len(CHANNELS), classifier, unet_width=width, latent=32)
    models = {k: build(a, kw) for k, (a, kw) in archs.items()}
    pos_weight = (len(y) - y.sum()) / y.sum().clamp_min(1)

    def cls_loss(model, xb, yb):
        return F.binary_cross_entropy_with_logits(model.logits(xb), yb, pos_weight=pos_weight)

    _fit(models["classifier"], cls_loss, (x, y), epochs, 32, 2e-3, seed, "classifier", log)
    _fit(models["converter"], lambda mdl, xb, hb: F.l1_loss(mdl(xb[:, :1]), hb), (x, h), epochs, 32, 2e-3,
         seed + 1, "converter", log)
    _fit(models["segmenter_us"], lambda mdl, xb, tb: _dice_bce(mdl(xb), tb), (x, eroded), epochs, 32, 2e-3,
         seed + 2, "segmenter_us", log)
    tumour = y > 0
    _fit(models["segmenter_os"], lambda mdl, xb, tb: _dice_bce(mdl(xb), tb), (x[tumour], dilated[tumour]),
         epochs * 2, 32, 2e-3, seed + 3, "segmenter_os", log)

    config = {
        "name": "phantom-standin",
        "description": ("STAND-IN trained on synthetic phantoms with their known masks (not weakly supervised, "
                        "not for real MR). Exercises the inference path until a bundle trained on patients ships."),
        "channels": list(CHANNELS),
        "flair_channel": "flair",
        "patch_size": PATCH,
        "preprocessing": pp.to_dict(),
        "inference": InferenceSettings().section(),
        "rise": {"n_masks": 500, "cells": 8, "p1": 0.5, "batch": 100, "seed": 0, "positive": 0.8, "negative": 0.2},
        "training": {"recipe": "Testing/support/standin_bundle.py train_standin", "supervision": "phantom voxel masks",
                     "phantom_cases": n_cases, "patches": len(x), "tumour_patches": int(y.sum()), "epochs": epochs,
                     "seed": seed, "seconds": round(time.perf_counter() - t0, 1)},
    }
    path = save_bundle(out, config, models, archs, overwrite=overwrite)
    log(f"bundle written to {path} in {time.perf_counter() - t0:.0f} s")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python Testing/support/standin_bundle.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--sample", type=Path, default=None,
                    help="also write a phantom patient (layout of the real data) into this folder")
    args = ap.parse_args(argv)
    train_standin(args.out, args.cases, args.epochs, args.seed, overwrite=args.overwrite)
    if args.sample is not None:
        ph = make_phantom(shape=(24, 176, 160), channels=CHANNELS, n_tumors=1, seed=20260)
        write_case(ph, args.sample, args.sample.name, spacing=(0.9, 0.9, 3.0))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
