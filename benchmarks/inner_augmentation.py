"""The experiment behind ``classifier.augment``: the classifier trained with ``flip`` and with
``site`` augmentation (:mod:`WeakTumorSegLib.stages.augmentation`) on an inner split of the training
patients, scored on the inner validation slices as they are and as another site might give them
(rotated by 10 degrees, gamma 0.75, a 15 % left-to-right bias field).

    python benchmarks/inner_augmentation.py --data lgg40 --out /tmp/inner-aug [--channels flair]

``lgg40`` holds only a shipped bundle's 40 training patients (docs/evaluation.md shows how to make
it; a ``geometry.json`` declares their geometry); the inner split is the one docs/evaluation.md
names (``val_fraction`` 0.25, ``seed`` 1). Prints and writes ``<out>/inner_augmentation.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import set_threads

from WeakTumorSegLib.metrics import roc_auc
from WeakTumorSegLib.training.classifier import train_classifier
from WeakTumorSegLib.training.presets import resolve_config
from WeakTumorSegLib.training.run import TrainingRun


def other_site(x: torch.Tensor) -> torch.Tensor:
    """A fixed shift of the inner validation slices: 10 degrees, gamma 0.75, a 15 % bias field."""
    b, c, h, w = x.shape
    a = math.radians(10.0)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).expand(b, 2, 3)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    field = torch.linspace(0.85, 1.15, w).expand(h, w)
    return (out.clamp(0, 1) ** 0.75 * field).clamp(0, 1) * (out > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--channels", default="flair,t1,t1ce")
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    results = {}
    for mode in ("flip", "site"):
        config = resolve_config("default", overrides={
            "seed": 1, "channels": args.channels.split(","), "data": {"val_fraction": 0.25},
            "classifier": {"augment": mode, "members": args.members}})
        run = TrainingRun(args.out / mode, config, args.data, args.out / f"{mode}-bundle", log=lambda m: None)
        run.prepare_dir()
        run.load_data()
        model = train_classifier(run)
        xv = torch.from_numpy(run.val.x)
        y = run.val.label
        results[mode] = {"inner_val_auc": roc_auc(y, run.predict(model, xv).numpy()),
                         "inner_val_auc_other_site": roc_auc(y, run.predict(model, other_site(xv)).numpy()),
                         "inner_val_slices": len(y), "channels": config["channels"]}
        print(mode, json.dumps(results[mode]), flush=True)
    (args.out / "inner_augmentation.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
