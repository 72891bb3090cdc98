"""Training stage 1, the classifier C (Yoo et al., sections 2.1 and 3.2): class-balanced BCE on all
training slices; with ``classifier.members`` > 1, that many classifiers one after another, each with
its own initialisation, data order and schedule, C being their mean."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ..metrics import roc_auc, sensitivity_specificity
from ..networks.classifiers import ClassifierEnsemble
from ..stages.classifier import augment_batch, classifier_loss
from .architectures import classifier_model
from .checkpoint import remove_checkpoint, write_json, write_weights
from .loop import recalibrate_batchnorm, train_epochs

if TYPE_CHECKING:
    from .run import TrainingRun


def train_classifier(run: TrainingRun) -> nn.Module:
    """Stage 1: C on all training slices; with several members, each trained in turn (a member
    finished before a kill is kept)."""
    run.seed_stage("classifier")
    model = classifier_model(run)
    if run.skip("classifier"):
        return run.load_weights("classifier", "classifier", model)
    members = list(model.members) if isinstance(model, ClassifierEnsemble) else [model]
    sdir = run.stage_dir("classifier")
    seconds, rows = 0.0, []
    for k, member in enumerate(members):
        done = sdir / f"member{k}.json"
        if len(members) > 1 and done.is_file():  # a member finished before a kill is not retrained
            member.load_state_dict(load_file(str(sdir / f"member{k}.safetensors")))
            info = json.loads(done.read_text())
            run.log(f"classifier: member {k + 1}/{len(members)} already trained, not retrained")
        else:
            info = train_member(run, member, k, len(members))
        seconds += float(info["seconds"])
        rows.append(info["last"])
    t0 = time.perf_counter() - seconds  # the stage's time: its members' (before and after kills)
    info = {"history": rows[0]}
    if len(members) > 1:  # the stage's metrics are the ensemble's; each member's last epoch besides
        info = {"history": classifier_metrics(run, model), "members": rows}
    run.finish("classifier", t0, info, {"classifier": model})
    if len(members) > 1 and run.dist.main:  # classifier.safetensors now holds every member
        for k in range(len(members)):
            for suffix in ("safetensors", "json"):
                (sdir / f"member{k}.{suffix}").unlink(missing_ok=True)
    return model.eval()


#: what the classifier's learning-rate schedule may watch (:func:`plateau_metric`)
SCHEDULE_ON = ("validation", "training")


def classifier_metrics(run: TrainingRun, model: nn.Module) -> dict[str, float]:
    """Validation loss, AUC, sensitivity and specificity of ``model`` on the validation slices."""
    yv = run.val.label
    if len(yv) == 0:
        return {}
    p = run.predict(model, torch.from_numpy(run.val.x)).numpy()
    loss = float(F.binary_cross_entropy(torch.from_numpy(p).clamp(1e-7, 1 - 1e-7),
                                        torch.from_numpy(yv.astype(np.float32))))
    sens, spec = sensitivity_specificity(yv, p)
    return {"val_loss": loss, "val_auc": roc_auc(yv, p), "val_sensitivity": sens, "val_specificity": spec}


def plateau_metric(run: TrainingRun) -> str:
    """What the learning-rate plateau schedule watches: the validation loss with
    ``classifier.schedule_on`` "validation" (when there are validation slices), else the training
    loss. With "training" no step of the training reads the validation patients."""
    on = run.config["classifier"].get("schedule_on", "validation")
    if on not in SCHEDULE_ON:
        raise ValueError(f"classifier.schedule_on must be one of {', '.join(SCHEDULE_ON)}, got {on!r}")
    return "val_loss" if on == "validation" and len(run.val.label) else "loss"


def train_member(run: TrainingRun, model: nn.Module, member: int, members: int) -> dict:
    """Train one classifier: the stage's only one, or member ``member`` of an ensemble. Each
    member is trained as a classifier of its own would be (its own optimiser, learning-rate
    schedule, data order and augmentation draws; member 0 exactly as a single classifier);
    an ensemble's finished members are written to the stage folder so that a resumed run
    keeps them. Returns ``{"last": last epoch's row, "seconds": ...}``."""
    t0, c = time.perf_counter(), run.config["classifier"]
    ddp = run.dist.wrap(model)
    run.seed_rank("classifier", member)
    opt = torch.optim.Adam(model.parameters(), lr=c["lr"], betas=tuple(c["betas"]), weight_decay=c["weight_decay"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=c["plateau_factor"],
                                                       patience=c["plateau_patience"],
                                                       threshold=c["plateau_threshold"])
    n_pos = float(run.y.sum())
    pos_weight = torch.tensor((len(run.y) - n_pos) / max(n_pos, 1.0), device=run.device)
    augment = str(c.get("augment", "none"))

    def step(idx):
        xb, yb = augment_batch(run.x[idx], augment).to(run.device), run.y[idx].to(run.device)
        loss = classifier_loss(ddp(xb), yb, pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    def validate():
        # scored with BatchNorm statistics that lag behind the weights, the validation loss jumps
        # between epochs and the plateau schedule cut the learning rate too early (docs/experiments.md)
        if len(run.val.label):
            recalibrate_batchnorm(model, run.x, int(c["batch"]), run.device)
        return classifier_metrics(run, model)

    tag = f"_member{member}" if members > 1 else ""
    run.resumed.pop("classifier", None)  # set by train_epochs when this member resumes
    history = train_epochs(run, "classifier", {"classifier": model}, {"classifier": opt}, {"plateau": sched},
                           int(c["epochs"]), len(run.x), int(c["batch"]), step, validate,
                           plateau_on=plateau_metric(run), tag=tag, member=member)
    if not (history and len(run.val.label)):  # else the last epoch's validation already did it
        recalibrate_batchnorm(model, run.x, int(c["batch"]), run.device)
    info = {"last": history[-1] if history else {},
            "seconds": time.perf_counter() - t0 + run.resumed.pop("classifier", 0.0)}
    if members > 1 and run.dist.main:
        sdir = run.stage_dir("classifier")
        sdir.mkdir(parents=True, exist_ok=True)
        write_weights(sdir / f"member{member}.safetensors", model)
        write_json(sdir / f"member{member}.json", info)
        remove_checkpoint(sdir / f"checkpoint{tag}")
    run.dist.barrier()
    return info
