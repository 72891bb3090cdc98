"""Training stage 9, the bundle: the inference networks plus S0 and the seed-loss-only baseline, the
training summary, validation metrics at patch level, the run's warnings, and the residual
baseline's threshold chosen on the training patients."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..baselines import choose_residual_threshold
from ..bundle.info import read_bundle_config
from ..bundle.load import load_model
from ..bundle.save import save_bundle
from ..metrics import per_slice_dice, roc_auc, sensitivity_specificity
from ..stages.fusion import fuse
from ..stages.seeds import SeedSettings
from ..stages.seeds.cam import attention_model
from . import PIPELINE_STAGES
from .architectures import bundle_architectures
from .checkpoint import unwrap, write_json
from .quality import training_warnings

if TYPE_CHECKING:
    from .run import TrainingRun


def write_bundle(run: TrainingRun, models: Mapping[str, nn.Module]) -> Path:
    """Stage 9: the bundle with the training summary, the validation metrics, the warnings and the
    residual baseline's threshold."""
    t0 = time.perf_counter()
    cfg = run.config
    archs = bundle_architectures(cfg, len(run.channels))
    if "attention" in models:
        archs["attention"] = attention_model(unwrap(models["classifier"]))
    metrics = validation_metrics(run, models)
    rise = {k: v for k, v in cfg["rise"].items() if k != "chunk"}
    stage_info = {s: json.loads((run.stage_dir(s) / "done.json").read_text())
                  for s in PIPELINE_STAGES if run.is_done(s)}
    run.warnings = training_warnings(stage_info, metrics)
    bundle_cfg = {
        "name": run.out.name,
        "description": f"Trained with preset '{cfg.get('preset')}' on {run.data_path.name} from slice labels only.",
        "channels": run.channels, "flair_channel": cfg["flair_channel"], "patch_size": cfg["patch_size"],
        "preprocessing": cfg["preprocessing"], "inference": cfg["inference"], "rise": rise,
        "seeds": SeedSettings.from_config(cfg).to_dict(),
        "preprocessing_stats": run.stats,
        "training": {"preset": cfg.get("preset"), "config": cfg, "data": str(run.data_path),
                     "split": json.loads((run.dir / "split.json").read_text()),
                     "slices": {"train": len(run.train.label), "train_tumour": int(run.train.label.sum()),
                                "val": len(run.val.label), "val_tumour": int(run.val.label.sum())},
                     "stage_seconds": {s: round(run.timings.get(s, 0.0), 1) for s in PIPELINE_STAGES
                                       if s in run.timings},  # stages a preset turns off are absent
                     "stages": stage_info, "world_size": run.dist.world,
                     "warnings": run.warnings},
        "metrics": metrics,
    }
    residual = residual_baseline(run, models["converter"])
    if residual:
        bundle_cfg["baselines"] = {"residual": residual}
    path = run.out
    if run.dist.main:
        save_bundle(path, bundle_cfg, {k: unwrap(m) for k, m in models.items()}, archs, overwrite=True)
        write_json(run.stage_dir("bundle") / "done.json", {"bundle": str(path), "metrics": metrics,
                                                             "seconds": round(time.perf_counter() - t0, 2)})
    run.dist.barrier()
    run.timings["bundle"] = time.perf_counter() - t0
    return path


def add_final(path: Path, model: nn.Module, architecture: tuple[str, dict], info: Mapping, seconds: float,
              dest: Path | None = None, final_weight: float | None = None,
              final_config: Mapping | None = None) -> Path:
    """The bundle at ``path`` with the final segmenter added (its record under ``final``, and
    ``final_weight`` as its ``inference.final_weight`` unless it has one), written atomically to
    ``dest`` (default: in place). ``final_config``, the ``final`` section it was trained with, replaces
    the one in ``training.config`` (a final segmenter retrained on top of another run's bundle)."""
    cfg = read_bundle_config(path)
    specs = cfg.pop("models")
    models = {name: load_model(path, name, spec) for name, spec in specs.items() if name != "final"}
    archs = {name: (spec["architecture"], spec.get("kwargs", {})) for name, spec in specs.items()}
    archs["final"] = architecture
    cfg["final"] = dict(info)
    if final_weight is not None:  # a bundle from before the final segmenter has no such setting
        cfg.setdefault("inference", {}).setdefault("final_weight", final_weight)
    cfg.setdefault("training", {}).setdefault("stage_seconds", {})["final"] = round(seconds, 1)
    if final_config is not None and isinstance(cfg["training"].get("config"), dict):
        cfg["training"]["config"]["final"] = dict(final_config)
    return save_bundle(dest or path, cfg, {**models, "final": unwrap(model)}, archs, overwrite=True,
                       weights_dtype=str(cfg.get("weights_dtype", "float32")))


def residual_baseline(run: TrainingRun, converter: nn.Module) -> dict | None:
    """The threshold of the residual baseline (Baur et al.; Yoo et al., Table 5) chosen on the training
    split, never on evaluated patients: per training patient, FLAIR and U(FLAIR) of its slices
    at patch size, threshold maximising the mean per-patient Dice. None without masks."""
    if run.train.mask is None or not run.config.get("baselines", {}).get("residual", True):
        return None
    flair = torch.from_numpy(run.train.x[:, run.flair:run.flair + 1])
    healthy = run.predict(converter, flair)[:, 0].numpy()
    f = flair[:, 0].numpy()
    groups = [np.flatnonzero(run.train.patient == i) for i in np.unique(run.train.patient)]
    t = choose_residual_threshold([f[g] for g in groups], [healthy[g] for g in groups],
                                  [run.train.mask[g] for g in groups])
    run.log(f"residual baseline: threshold {t:.2f} chosen on {len(groups)} training patients")
    return {"threshold": t, "median": 5,
            "chosen_on": "training split, slices at patch size, mean per-patient Dice"}


def validation_metrics(run: TrainingRun, models: Mapping[str, nn.Module]) -> dict:
    """Patch-level validation metrics (slices at patch size, not whole volumes): classifier
    AUC / sensitivity / specificity and gated Dice of S_US, S_OS and the fused model, per slice
    with the paper's empty-vs-empty = 1 convention."""
    if len(run.val.label) == 0:
        return {}
    xv = torch.from_numpy(run.val.x)
    y = run.val.label
    p = run.predict(models["classifier"], xv)
    sens, spec = sensitivity_specificity(y, p.numpy())
    out: dict = {"scope": "validation slices at patch size", "classifier_auc": roc_auc(y, p.numpy()),
                 "classifier_sensitivity": sens, "classifier_specificity": spec}
    if run.val.mask is None:
        return out
    m_us = run.predict(models["segmenter_us"], xv)[:, 0]
    m_os = run.predict(models["segmenter_os"], xv)[:, 0]
    gate = (p > 0.5)[:, None, None]
    for name, m in (("us", m_us), ("os", m_os), ("fused", fuse(p, m_us, m_os))):
        pred = ((m > 0.5) & gate).numpy()
        d = per_slice_dice(pred, run.val.mask)
        out[f"dice_{name}_per_slice_paper"] = float(d.mean())
        out[f"dice_{name}_tumour_slices"] = float(d[y > 0].mean()) if (y > 0).any() else float("nan")
    return out

# -- everything ------------------------------------------------------------------------------------------
