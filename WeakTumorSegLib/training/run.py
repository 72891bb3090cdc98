"""Training a bundle from slice labels, stage by stage in paper order (000 sections 2.1-2.4, 3.2).

Stages, each writing into ``<run>/stages/<stage>/`` and marked complete by ``done.json``:

1. ``classifier``  - C on all training slices, class-balanced BCE (section 3.2); with
                     ``classifier.members`` > 1, that many classifiers one after another, each with
                     its own initialisation, data order and schedule, C being their mean;
2. ``seeds``       - C's outputs, X_C (true positives), RISE seeds S+/S- for tumour slices,
                     S+ empty / S- full for tumour-free slices (section 2.1);
3. ``gan``         - DCGAN generator G and discriminator D0 on tumour-free FLAIR (2.2.1);
4. ``converter``   - U = encoder + G (initialised from G) with a new D1, on X_C images that pass
                     the negative-seed rule (2.2.2);
5. ``segmenter0``  - S0 on all slices with L_seed, L_var, L_size (2.3);
6. ``refine``      - connected components of S0 on X_C accepted by C (2.4);
7. ``segmenter_us``- S_US on X_C,r + X_NC, and 8. ``segmenter_os`` - S_OS on X_C,r only (2.4);
9. ``bundle``      - the inference bundle with the training summary and validation metrics.

Signs of a failed run are reported as warnings, logged when seen, repeated after the stage times
and kept in ``bundle.json`` under ``training.warnings`` (:func:`training_warnings`): a segmenter
that collapsed to empty masks and, when the cohort has masks, positive seeds mostly outside the
tumours or a fused model that misses the validation tumours.

Every epoch ends with an atomic checkpoint (models, optimizers, schedulers, RNG state; no
pickle), so ``--resume`` continues a killed run at the last finished epoch and never retrains a
completed stage (nor a finished member of a classifier ensemble). Per-epoch losses and
validation metrics go to ``<stage>/log.csv`` (``classifier/log_member<k>.csv`` per member).

Under ``torchrun`` each stage trains with DistributedDataParallel and a DistributedSampler;
rank 0 computes the non-training steps (RISE, refinement) and writes every file, the other
ranks wait at a barrier and read them back.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..baselines import choose_residual_threshold
from ..bundle.save import inference_architectures, save_bundle
from ..errors import InputError
from ..io.atomic import atomic_path
from ..io.cohort import discover, split_patients
from ..io.tables import write_csv
from ..metrics import per_slice_dice, roc_auc, seed_overlap, sensitivity_specificity
from ..networks.classifiers import ClassifierEnsemble
from ..networks.dcgan import Discriminator, Generator
from ..networks.registry import build
from ..preprocessing.intensity import PreprocessConfig
from ..stages.classifier import augment_batch, classifier_architecture
from ..stages.converter import converter_loss
from ..stages.fusion import fuse
from ..stages.healthy_gan import generator_adversarial_loss
from ..stages.refinement import RefineConfig, refine_seeds
from ..stages.seeds import RiseConfig, classifier_rise, extend_negative_seeds, gate_positive_seeds, seeds_from_maps
from ..stages.segmenters import segmenter_loss
from .distributed import Dist
from .checkpoint import checkpoint_exists, load_checkpoint, remove_checkpoint, save_checkpoint, unwrap
from .slices import load_slices, validate_cohort

STAGES = ("classifier", "seeds", "gan", "converter", "segmenter0", "refine", "segmenter_us", "segmenter_os",
          "segmenter_seed_only", "bundle")
#: below this share of its positive seeds covered, a segmenter is reported as collapsed
COLLAPSE_RECALL = 0.05
SEGMENTER_STAGES = ("segmenter0", "segmenter_us", "segmenter_os", "segmenter_seed_only")
#: a run whose positive seeds lie less than this much inside the tumour masks (000 section 4.1
#: seed overlap on X_C) learnt its seeds away from the tumour (working TCGA-LGG runs: 0.23-0.80,
#: phantom runs above 0.8; a failed run: 0.05)
MIN_SEED_OVERLAP = 0.15
#: a run whose fused model scores below this Dice on the validation tumour slices (patch level)
#: segments little of any tumour (working TCGA-LGG runs: 0.22-0.53, phantoms about 0.7; a failed
#: run: 0.06)
MIN_VALIDATION_DICE = 0.15

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]



def _write_csv(path: Path, rows: list[dict]) -> None:
    """Rewrite a stage's log atomically; columns are the union of the rows' keys, in order."""
    if not rows:
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp:
        write_csv([{c: row.get(c, "") for c in columns} for row in rows], columns, tmp)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Named tensors as safetensors, written atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _write_weights(path: Path, model: nn.Module) -> None:
    """A model's weights as safetensors, written atomically."""
    _write_tensors(path, unwrap(model).state_dict())


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


class TrainingRun:
    """One training run in ``run_dir``: data, stages, checkpoints and the final bundle."""

    def __init__(self, run_dir: str | Path, config: Mapping, data: str | Path, out: str | Path,
                 dist: Dist | None = None, resume: bool = False, log: Log = print,
                 progress: Progress | None = None):
        self.dir = Path(run_dir)
        self.config = dict(config)
        self.data_path = Path(data)
        self.out = Path(out)
        self.dist = dist or Dist()
        self.device = self.dist.device
        self.resume = resume
        self.log = log if self.dist.main else (lambda msg: None)
        self.progress = progress if (progress and self.dist.main) else (lambda *a: None)
        self.seed = int(self.config.get("seed", 0))
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = []  # signs of a failed run (training_warnings), set by the bundle stage
        self._resumed: dict[str, float] = {}  # seconds a stage ran before a resume
        self.channels = list(self.config["channels"])
        self.flair = self.channels.index(self.config.get("flair_channel", "flair"))

    # -- run directory ---------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.dir / "stages" / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "done.json").is_file()

    def _prepare_dir(self) -> None:
        """Refuse a used run directory unless resuming (every rank checks before rank 0 writes)."""
        cfg_path = self.dir / "config.json"
        used = self.dir.exists() and any(self.dir.iterdir())
        self.dist.barrier()
        if used:
            if not self.resume:
                raise InputError("run directory is not empty; pass --resume to continue it or choose another",
                                 self.dir)
            if cfg_path.is_file():
                saved = json.loads(cfg_path.read_text())
                if saved != json.loads(json.dumps(self.config, default=_json_default)):
                    raise InputError("--resume with a different configuration than the run was started with "
                                     f"(see {cfg_path})", self.dir)
        if self.dist.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_json(cfg_path, self.config)
        self.dist.barrier()

    # -- data --------------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg, dcfg = self.config, self.config["data"]
        cases = discover(self.data_path, self.channels)
        split_path = self.dir / "split.json"
        if split_path.is_file():
            split = json.loads(split_path.read_text())
            train_ids, val_ids = split["train"], split["val"]
        else:
            train_ids, val_ids = split_patients([c.id for c in cases], dcfg["val_fraction"], dcfg["split_seed"],
                                                dcfg.get("val_patients"))
            if self.dist.main:
                _write_json(split_path, {"seed": dcfg["split_seed"], "train": train_ids, "val": val_ids})
        pp = PreprocessConfig.from_dict(cfg["preprocessing"])
        self.log(f"reading {len(cases)} patients ({len(train_ids)} train / {len(val_ids)} validation)")
        slices = load_slices(cases, self.channels, pp, cfg["patch_size"], dcfg["erosion"], dcfg["max_zero_fraction"],
                             self.seed, progress=lambda d, t: self.progress("data", d, t))
        self.train = slices.select_patients(train_ids)
        self.val = slices.select_patients(val_ids)
        validate_cohort(self.train, self.data_path)
        self.log(f"training slices: {len(self.train.label)} ({int(self.train.label.sum())} with tumour); "
                 f"validation slices: {len(self.val.label)} ({int(self.val.label.sum())} with tumour)")
        self.x = torch.from_numpy(self.train.x)
        self.y = torch.from_numpy(self.train.label.astype(np.float32))

    # -- generic epoch loop ----------------------------------------------------------------------------
    def _indices(self, n: int, batch: int, epoch: int, salt: int) -> list[torch.Tensor]:
        """Shuffled mini-batches of ``range(n)`` for this rank (a DistributedSampler when distributed)."""
        if self.dist.active:
            sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=self.dist.world,
                                                          rank=self.dist.rank, shuffle=True,
                                                          seed=self.seed * 1000 + salt, drop_last=False)
            sampler.set_epoch(epoch)
            order = torch.tensor(list(iter(sampler)), dtype=torch.long)
        else:
            gen = torch.Generator().manual_seed(self.seed * 1000 + salt * 100003 + epoch)
            order = torch.randperm(n, generator=gen)
        return [order[i:i + batch] for i in range(0, len(order), batch)]

    def _epochs(self, stage: str, models: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                schedulers: dict, epochs: int, n_items: int, batch: int,
                step: Callable[[torch.Tensor], dict[str, float]],
                validate: Callable[[], dict[str, float]] | None = None,
                plateau_on: str | None = None, tag: str = "", member: int = 0) -> list[dict]:
        """Train ``models`` for ``epochs`` with per-epoch checkpoints; resume from the last one.
        ``tag`` names this part's checkpoint and log (``checkpoint<tag>``, ``log<tag>.csv``) where a
        stage trains several parts in turn; ``member`` > 0 gives the part its own data order."""
        sdir = self.stage_dir(stage)
        ckpt = sdir / f"checkpoint{tag}"
        part = f"{stage}{tag.replace('_', ' ')}"  # "classifier member1" in logs and progress
        start, history = 0, []
        if checkpoint_exists(ckpt):
            state, extra = load_checkpoint(ckpt, models, optimizers)
            start, history = int(state["epoch"]), list(state["history"])
            self._resumed[stage] = float(state.get("elapsed", 0.0))
            for name, sched in schedulers.items():
                sched.load_state_dict(state["schedulers"][name])
            torch.set_rng_state(extra["rng"])
            self.log(f"{part}: resuming after epoch {start}/{epochs}")
        salt = STAGES.index(stage) + 1 + 1000 * member
        t_stage = time.perf_counter()
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            for m in models.values():
                m.train()
            sums: dict[str, float] = {}
            batches = self._indices(n_items, batch, epoch, salt)
            label = f"{part} {epoch + 1}/{epochs}"
            self.progress(label, 0, len(batches))
            for b, idx in enumerate(batches):
                for key, value in step(idx).items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                self.progress(label, b + 1, len(batches))
            row = {"epoch": epoch + 1, **{k: v / max(len(batches), 1) for k, v in sums.items()}}
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
            if self.dist.main:
                _write_csv(sdir / f"log{tag}.csv", history)
                save_checkpoint(ckpt, models, optimizers,
                                {"epoch": epoch + 1, "history": history,
                                 "elapsed": self._resumed.get(stage, 0.0) + time.perf_counter() - t_stage,
                                 "schedulers": {n: s.state_dict() for n, s in schedulers.items()}},
                                tensors={"rng": torch.get_rng_state()})
            self.dist.barrier()
            shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
            self.log(f"{part}: epoch {epoch + 1}/{epochs}  {shown}  ({row['seconds']:.1f} s)")
        return history

    def _finish(self, stage: str, t0: float, info: Mapping, weights: Mapping[str, nn.Module] = (),
                tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write a stage's outputs and mark it done (rank 0), then drop its epoch checkpoint."""
        sdir = self.stage_dir(stage)
        seconds = time.perf_counter() - t0 + self._resumed.get(stage, 0.0)
        if self.dist.main:
            sdir.mkdir(parents=True, exist_ok=True)
            for name, model in dict(weights).items():
                _write_weights(sdir / f"{name}.safetensors", model)
            if tensors:
                _write_tensors(sdir / "outputs.safetensors", tensors)
            _write_json(sdir / "done.json", {**info, "seconds": round(seconds, 2)})
            remove_checkpoint(sdir / "checkpoint")
        self.dist.barrier()
        self.timings[stage] = seconds

    def _load_weights(self, stage: str, name: str, model: nn.Module) -> nn.Module:
        model.load_state_dict(load_file(str(self.stage_dir(stage) / f"{name}.safetensors")))
        return model.to(self.device).eval()

    def _outputs(self, stage: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.stage_dir(stage) / "outputs.safetensors"))

    def _predict(self, model: nn.Module, x: torch.Tensor, batch: int = 64, fn=None) -> torch.Tensor:
        fn = fn or model
        out = []
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                out.append(fn(x[i:i + batch].to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def _seed(self, stage: str) -> None:
        """Seed this stage's initial weights (the same on every rank)."""
        torch.manual_seed(self.seed * 1000 + STAGES.index(stage))

    def _seed_rank(self, stage: str, member: int = 0) -> None:
        """Seed the stage's sampling (noise, random picks) differently on every rank (and for
        every ``member`` of an ensemble)."""
        torch.manual_seed(self.seed * 1000 + STAGES.index(stage) + 7919 * (self.dist.rank + 1) + 104729 * member)

    def _skip(self, stage: str) -> bool:
        if self.is_done(stage):
            info = json.loads((self.stage_dir(stage) / "done.json").read_text())
            self.timings[stage] = float(info.get("seconds", 0.0))
            self.log(f"{stage}: already complete ({info.get('seconds', 0):.0f} s), not retrained")
            return True
        self.log(f"{stage}: starting")
        return False

    # -- stage 1: classifier ----------------------------------------------------------------------
    def _classifier_model(self) -> nn.Module:
        arch, kwargs = classifier_architecture(self.config["classifier"])
        return build(arch, {**kwargs, "in_channels": len(self.channels)}).to(self.device)

    def stage_classifier(self) -> nn.Module:
        self._seed("classifier")
        model = self._classifier_model()
        if self._skip("classifier"):
            return self._load_weights("classifier", "classifier", model)
        members = list(model.members) if isinstance(model, ClassifierEnsemble) else [model]
        sdir = self.stage_dir("classifier")
        seconds, rows = 0.0, []
        for k, member in enumerate(members):
            done = sdir / f"member{k}.json"
            if len(members) > 1 and done.is_file():  # a member finished before a kill is not retrained
                member.load_state_dict(load_file(str(sdir / f"member{k}.safetensors")))
                info = json.loads(done.read_text())
                self.log(f"classifier: member {k + 1}/{len(members)} already trained, not retrained")
            else:
                info = self._train_classifier(member, k, len(members))
            seconds += float(info["seconds"])
            rows.append(info["last"])
        t0 = time.perf_counter() - seconds  # the stage's time: its members' (before and after kills)
        info = {"history": rows[0]}
        if len(members) > 1:  # the stage's metrics are the ensemble's; each member's last epoch besides
            info = {"history": self._classifier_metrics(model), "members": rows}
        self._finish("classifier", t0, info, {"classifier": model})
        if len(members) > 1 and self.dist.main:  # classifier.safetensors now holds every member
            for k in range(len(members)):
                for suffix in ("safetensors", "json"):
                    (sdir / f"member{k}.{suffix}").unlink(missing_ok=True)
        return model.eval()

    def _classifier_metrics(self, model: nn.Module) -> dict[str, float]:
        """Validation loss, AUC, sensitivity and specificity of ``model`` on the validation slices."""
        yv = self.val.label
        if len(yv) == 0:
            return {}
        p = self._predict(model, torch.from_numpy(self.val.x)).numpy()
        loss = float(F.binary_cross_entropy(torch.from_numpy(p).clamp(1e-7, 1 - 1e-7),
                                            torch.from_numpy(yv.astype(np.float32))))
        sens, spec = sensitivity_specificity(yv, p)
        return {"val_loss": loss, "val_auc": roc_auc(yv, p), "val_sensitivity": sens, "val_specificity": spec}

    def _train_classifier(self, model: nn.Module, member: int, members: int) -> dict:
        """Train one classifier: the stage's only one, or member ``member`` of an ensemble. Each
        member is trained as a classifier of its own would be (its own optimiser, learning-rate
        schedule, data order and augmentation draws; member 0 exactly as a single classifier);
        an ensemble's finished members are written to the stage folder so that a resumed run
        keeps them. Returns ``{"last": last epoch's row, "seconds": ...}``."""
        t0, c = time.perf_counter(), self.config["classifier"]
        ddp = self.dist.wrap(model)
        self._seed_rank("classifier", member)
        opt = torch.optim.Adam(model.parameters(), lr=c["lr"], betas=tuple(c["betas"]), weight_decay=c["weight_decay"])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=c["plateau_factor"],
                                                           patience=c["plateau_patience"],
                                                           threshold=c["plateau_threshold"])
        n_pos = float(self.y.sum())
        pos_weight = torch.tensor((len(self.y) - n_pos) / max(n_pos, 1.0), device=self.device)
        augment = str(c.get("augment", "none"))

        def step(idx):  # class-balanced BCE (000: class weights so both classes weigh equally)
            xb, yb = augment_batch(self.x[idx], augment).to(self.device), self.y[idx].to(self.device)
            p = ddp(xb).clamp(1e-7, 1 - 1e-7)
            loss = F.binary_cross_entropy(p, yb, weight=torch.where(yb > 0, pos_weight, torch.ones_like(yb)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return {"loss": loss.item()}

        def validate():
            # BatchNorm's running statistics lag behind the weights during training; scored with
            # them, the validation loss jumps between epochs and the plateau schedule cut the
            # learning rate after 3 of 12 epochs in some runs (slice AUC 0.69-0.72 instead of
            # 0.95). Re-estimated first, the loss is that of the model as it will be used.
            if len(self.val.label):
                recalibrate_batchnorm(model, self.x, int(c["batch"]), self.device)
            return self._classifier_metrics(model)

        tag = f"_member{member}" if members > 1 else ""
        self._resumed.pop("classifier", None)  # set by _epochs when this member resumes
        history = self._epochs("classifier", {"classifier": model}, {"classifier": opt}, {"plateau": sched},
                               int(c["epochs"]), len(self.x), int(c["batch"]), step, validate,
                               plateau_on="val_loss" if len(self.val.label) else "loss", tag=tag, member=member)
        if not (history and len(self.val.label)):  # else the last epoch's validation already did it
            recalibrate_batchnorm(model, self.x, int(c["batch"]), self.device)
        info = {"last": history[-1] if history else {},
                "seconds": time.perf_counter() - t0 + self._resumed.pop("classifier", 0.0)}
        if members > 1 and self.dist.main:
            sdir = self.stage_dir("classifier")
            sdir.mkdir(parents=True, exist_ok=True)
            _write_weights(sdir / f"member{member}.safetensors", model)
            _write_json(sdir / f"member{member}.json", info)
            remove_checkpoint(sdir / f"checkpoint{tag}")
        self.dist.barrier()
        return info

    # -- stage 2: classifier outputs and RISE seeds -----------------------------------------------------
    def stage_seeds(self, classifier: nn.Module) -> dict[str, torch.Tensor]:
        if self._skip("seeds"):
            return self._outputs("seeds")
        t0, rc = time.perf_counter(), dict(self.config["rise"])
        chunk = int(rc.pop("chunk", 64))
        rise = RiseConfig(**rc)
        n, size = len(self.x), self.x.shape[-1]
        p = self._predict(classifier, self.x)
        tumour = torch.nonzero(self.y > 0).flatten()
        pos = torch.zeros(n, size, size, dtype=torch.uint8)
        neg = torch.ones(n, size, size, dtype=torch.uint8)  # tumour-free slices: S- everywhere
        if self.dist.main:
            ckpt = self.stage_dir("seeds") / "checkpoint"
            done = 0
            if checkpoint_exists(ckpt):
                state, extra = load_checkpoint(ckpt, {})
                done, pos, neg = int(state["done"]), extra["pos"], extra["neg"]
                self.log(f"seeds: resuming after {done}/{len(tumour)} tumour slices")
            for start in range(done, len(tumour), chunk):
                idx = tumour[start:start + chunk]
                label = "seeds (RISE)"
                self.progress(label, start, len(tumour))
                maps = classifier_rise(classifier, self.x[idx].to(self.device), rise)
                sp, sn = seeds_from_maps(maps, rise.positive, rise.negative)
                sp = gate_positive_seeds(sp, self.x[idx, self.flair].to(sp.device), rise.positive_flair_quantile)
                pos[idx], neg[idx] = sp.cpu().to(torch.uint8), sn.cpu().to(torch.uint8)
                save_checkpoint(ckpt, {}, state={"done": start + len(idx)}, tensors={"pos": pos, "neg": neg})
                self.progress(label, start + len(idx), len(tumour))
        xc = (self.y > 0) & (p > 0.5)
        info = {"tumour_slices": len(tumour), "true_positives": int(xc.sum()), "rise": rise.to_dict()}
        if self.train.mask is not None and xc.any():
            truth = self.train.mask[xc.numpy()]
            info["seed_overlap_positive"], info["seed_overlap_negative"] = seed_overlap(
                pos[xc].numpy(), neg[xc].numpy(), truth)
            self.log(f"seeds: overlap metric on X_C: positive {info['seed_overlap_positive']:.3f}, "
                     f"negative {info['seed_overlap_negative']:.3f}")
        for line in training_warnings({"seeds": info}):
            self.log("WARNING " + line)
        self._finish("seeds", t0, info, tensors={"p": p, "pos": pos, "neg": neg})
        return self._outputs("seeds")

    # -- stage 3: DCGAN on tumour-free FLAIR ---------------------------------------------------------------
    def _gan_models(self) -> tuple[Generator, Discriminator]:
        g = self.config["gan"]
        return (Generator(g["latent"], g["width"], 1).to(self.device), Discriminator(1, g["width"]).to(self.device))

    def stage_gan(self) -> Generator:
        self._seed("gan")
        gen, disc = self._gan_models()
        if self._skip("gan"):
            return self._load_weights("gan", "generator", gen)
        t0, g = time.perf_counter(), self.config["gan"]
        real = self.x[self.y == 0][:, self.flair:self.flair + 1]
        ddp_g, ddp_d = self.dist.wrap(gen), self.dist.wrap(disc)
        self._seed_rank("gan")
        opt_g = torch.optim.Adam(gen.parameters(), lr=g["lr"], betas=tuple(g["betas"]))
        opt_d = torch.optim.Adam(disc.parameters(), lr=g["lr"], betas=tuple(g["betas"]))
        scheds = {n: torch.optim.lr_scheduler.StepLR(o, g["halve_every"], 0.5) for n, o in (("g", opt_g), ("d", opt_d))}

        def step(idx):
            xb = real[idx].to(self.device)
            z = torch.randn(len(xb), g["latent"], device=self.device)
            fake = ddp_g(z)
            l_d = _discriminator_step(ddp_d, opt_d, xb, fake.detach(), g["real_label"], g["fake_label"])
            opt_g.zero_grad(set_to_none=True)
            l_g = generator_adversarial_loss(ddp_d(fake))
            l_g.backward()
            opt_g.step()
            return {"loss_d": l_d, "loss_g": l_g.item()}

        history = self._epochs("gan", {"generator": gen, "discriminator": disc}, {"g": opt_g, "d": opt_d}, scheds,
                               int(g["epochs"]), len(real), int(g["batch"]), step)
        self._finish("gan", t0, {"tumour_free_slices": len(real), "last": history[-1] if history else {}},
                     {"generator": gen, "discriminator": disc})
        return gen.eval()

    # -- stage 4: converter U ------------------------------------------------------------------------------
    def _unet_kwargs(self, section: str, in_channels: int) -> dict:
        """U-Net kwargs: widths from ``section`` (``gan`` for the converter, which starts as G);
        the converter's ``skips`` from ``converter.skips`` (absent or null = all)."""
        c = self.config[section]
        kwargs = {"in_channels": in_channels, "out_channels": 1, "width": c["width"], "latent": c["latent"]}
        skips = self.config["converter"].get("skips") if section == "gan" else None
        if skips is not None:
            kwargs["skips"] = int(skips)
        return kwargs

    def _unet(self, section: str, in_channels: int) -> nn.Module:
        return build("unet", self._unet_kwargs(section, in_channels)).to(self.device)

    def stage_converter(self, gen: Generator, seeds: Mapping[str, torch.Tensor]) -> nn.Module:
        self._seed("converter")
        unet = self._unet("gan", 1)
        if self._skip("converter"):
            return self._load_weights("converter", "converter", unet)
        t0, c, g = time.perf_counter(), self.config["converter"], self.config["gan"]
        unet.decoder.load_state_dict(unwrap(gen).state_dict())  # U's decoder starts as the trained G
        disc = Discriminator(1, c.get("disc_width") or g["width"]).to(self.device)  # D1 (null: G's width)
        xc = ((self.y > 0) & (seeds["p"] > 0.5)).numpy()
        frac = seeds["neg"].float().mean(dim=(1, 2)).numpy()
        rule, f = c["negative_seed_rule"], float(c["negative_seed_fraction"])
        keep = xc & {"below": frac < f, "above": frac >= f, "all": np.ones_like(xc)}[rule]
        if not xc.any():
            raise InputError("the classifier found no true-positive training slice (X_C is empty); "
                             "train the classifier longer or check the slice labels", self.data_path)
        if not keep.any():
            self.log(f"converter: no X_C image passes the negative-seed rule '{rule} {f}'; using all of X_C")
            keep = xc
        sel = torch.from_numpy(np.flatnonzero(keep))
        xin = self.x[sel][:, self.flair:self.flair + 1]
        sneg = seeds["neg"][sel].float()
        real = self.x[self.y == 0][:, self.flair:self.flair + 1]
        ddp_u, ddp_d = self.dist.wrap(unet), self.dist.wrap(disc)
        self._seed_rank("converter")
        opt_u = torch.optim.Adam(unet.parameters(), lr=c["lr"], betas=tuple(c["betas"]))
        opt_d = torch.optim.Adam(disc.parameters(), lr=c["lr"], betas=tuple(c["betas"]))
        scheds = {n: torch.optim.lr_scheduler.StepLR(o, c["halve_every"], 0.5) for n, o in (("u", opt_u), ("d", opt_d))}
        pick = torch.Generator().manual_seed(self.seed * 1000 + 44 + 7919 * self.dist.rank)
        val = self._val_tumour_flair()

        def step(idx):
            xb, sb = xin[idx].to(self.device), sneg[idx].to(self.device)
            rb = real[torch.randint(0, len(real), (len(idx),), generator=pick)].to(self.device)
            x_hat, code = ddp_u(xb, return_code=True)
            l_d = _discriminator_step(ddp_d, opt_d, rb, x_hat.detach(), g["real_label"], g["fake_label"])
            opt_u.zero_grad(set_to_none=True)
            total, parts = converter_loss(xb, x_hat, sb, ddp_d(x_hat), code, c["alpha"], c["beta"], c["gamma"])
            total.backward()
            opt_u.step()
            return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}, "loss_d1": l_d}

        def validate():
            if val is None:
                return {}
            xv, mv = val
            x_hat = self._predict(unet, xv)
            diff = (xv - x_hat).abs()[:, 0]
            brain = xv[:, 0] > 0
            inside = diff[mv].mean().item() if mv.any() else float("nan")
            outside = diff[brain & ~mv].mean().item()
            return {"val_change_inside": inside, "val_change_outside": outside,
                    "val_change_ratio": inside / max(outside, 1e-8)}

        history = self._epochs("converter", {"converter": unet, "discriminator": disc}, {"u": opt_u, "d": opt_d},
                               scheds, int(c["epochs"]), len(xin), int(c["batch"]), step, validate)
        recalibrate_batchnorm(unet, xin, int(c["batch"]), self.device)
        # "last": the last epoch's row; "final": the validation metrics of the weights that are kept
        self._finish("converter", t0, {"training_images": len(xin), "x_c": int(xc.sum()),
                                       "last": history[-1] if history else {}, "final": validate()},
                     {"converter": unet, "discriminator": disc})
        return unet.eval()

    def _val_tumour_flair(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Validation tumour slices' FLAIR and masks, when masks exist (for the converter's metric)."""
        if self.val.mask is None or not self.val.label.any():
            return None
        sel = self.val.label > 0
        return (torch.from_numpy(self.val.x[sel][:, self.flair:self.flair + 1]),
                torch.from_numpy(self.val.mask[sel].astype(bool)))

    def healthy_variants(self, converter: nn.Module) -> torch.Tensor:
        """x_hat for every training slice: U(FLAIR) for tumour slices, the FLAIR itself otherwise
        (000 section 2.3: non-cancerous variants of X_NC are the images themselves)."""
        flair = self.x[:, self.flair:self.flair + 1]
        x_hat = flair.clone()
        tumour = self.y > 0
        if tumour.any():
            x_hat[tumour] = self._predict(converter, flair[tumour])
        return x_hat

    # -- stages 5, 7, 8: segmenters ------------------------------------------------------------------------
    def segmenter_negative_seeds(self, neg: torch.Tensor) -> torch.Tensor:
        """S- of the segmenters: RISE's S- plus, with ``rise.negative_flair_quantile``, the dark
        tissue of every slice (:func:`~.seeds.extend_negative_seeds`). The converter keeps RISE's
        S- alone: its L_recon and its 50 % rule are defined on them, and the dark tissue would
        push nearly every image over the 50 % line."""
        q = self.config["rise"].get("negative_flair_quantile")
        if q is None:
            return neg
        out = extend_negative_seeds(neg.bool(), self.x[:, self.flair], q).to(torch.uint8)
        if self.train.mask is not None:
            xc = self.y > 0
            if xc.any():
                truth = self.train.mask[xc.numpy()].astype(bool)
                off_tumour = float((out[xc].numpy().astype(bool) & ~truth).sum() / max(out[xc].sum().item(), 1))
                self.log(f"segmenters: S- with the dark tissue (FLAIR <= quantile {q}): negative overlap metric on "
                         f"tumour slices {off_tumour:.3f}")
        return out

    def train_segmenter(self, stage: str, subset: np.ndarray, pos: torch.Tensor, neg: torch.Tensor,
                        x_hat: torch.Tensor, classifier: nn.Module, seed_only: bool = False) -> nn.Module:
        """Train a segmenter on ``subset`` with Eqs. 12-16; ``seed_only`` drops L_var and L_size
        (the Table 5 baseline: S0 trained with the seed loss only)."""
        self._seed(stage)
        model = self._unet("segmenter", len(self.channels))
        if self._skip(stage):
            return self._load_weights(stage, stage, model)
        t0, c = time.perf_counter(), self.config["segmenter"]
        epsilon, zeta = (0.0, 0.0) if seed_only else (c["epsilon"], c["zeta"])
        sel = torch.from_numpy(np.flatnonzero(subset))
        if len(sel) == 0:
            raise InputError(f"{stage}: no training image (check the classifier and seeds)", self.data_path)
        xs, ps, ns, hs = self.x[sel], pos[sel].float(), neg[sel].float(), x_hat[sel]
        ddp = self.dist.wrap(model)
        self._seed_rank(stage)
        opt = torch.optim.Adam(model.parameters(), lr=c["lr"], betas=tuple(c["betas"]))
        epochs, halve = int(c["epochs"]), int(c["halve_every"])
        min_steps = int(c.get("min_steps") or 0)
        steps = math.ceil(len(sel) / (int(c["batch"]) * self.dist.world))
        if epochs * steps < min_steps:  # a small subset (S_OS on X_C,r) gets as many steps as S0, not fewer
            scale = math.ceil(min_steps / (epochs * steps))
            epochs, halve = epochs * scale, halve * scale
            self.log(f"{stage}: {len(sel)} images; {epochs} epochs to reach segmenter.min_steps = {min_steps}")
        sched = torch.optim.lr_scheduler.StepLR(opt, halve, 0.5)
        p_val = self._predict(classifier, torch.from_numpy(self.val.x)) if len(self.val.label) else None

        def step(idx):
            xb = xs[idx].to(self.device)
            m = ddp(xb)
            total, parts = segmenter_loss(m, ps[idx].to(self.device), ns[idx].to(self.device),
                                          xb[:, self.flair:self.flair + 1], hs[idx].to(self.device),
                                          c["delta"], epsilon, zeta,
                                          bool(c.get("balanced_seed_loss", False)))
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            return {"loss": total.item(), **{k: v.item() for k, v in parts.items()}}

        def validate():
            if self.val.mask is None or p_val is None:
                return {}
            m = self._predict(model, torch.from_numpy(self.val.x))[:, 0]
            pred = ((m > 0.5) & (p_val > 0.5)[:, None, None]).numpy()  # C gates images (000 section 2.3)
            d = per_slice_dice(pred, self.val.mask)
            tumour = self.val.label > 0
            return {"val_dice_per_slice": float(d.mean()),
                    "val_dice_tumour_slices": float(d[tumour].mean()) if tumour.any() else float("nan")}

        history = self._epochs(stage, {stage: model}, {stage: opt}, {"step": sched}, epochs, len(sel),
                               int(c["batch"]), step, validate)
        recalibrate_batchnorm(model, xs, int(c["batch"]), self.device)
        info = {"training_images": len(sel), "positive_seed_recall": self._positive_seed_recall(model, xs, ps),
                "last": history[-1] if history else {}}
        for line in training_warnings({stage: info}):
            self.log(f"WARNING {line} (now {zeta:g})")
        self._finish(stage, t0, info, {stage: model})
        return model.eval()

    def _positive_seed_recall(self, model: nn.Module, x: torch.Tensor, pos: torch.Tensor,
                              limit: int = 512) -> float | None:
        """Share of the positive seeds that the trained model's mask (output > 0.5) covers, on at
        most ``limit`` of its training images with positive seeds (evenly spaced); ``None`` when
        none has any. Near 0 means the segmenter collapsed to empty masks."""
        idx = np.flatnonzero(pos.flatten(1).sum(1).numpy() > 0)
        if len(idx) == 0:
            return None
        idx = torch.from_numpy(idx[np.linspace(0, len(idx) - 1, min(limit, len(idx))).astype(int)])
        m = self._predict(model, x[idx])[:, 0] > 0.5
        p = pos[idx] > 0
        return float((m & p).sum() / p.sum())

    # -- stage 6: refinement ---------------------------------------------------------------------------------
    def stage_refine(self, classifier: nn.Module, s0: nn.Module, seeds: Mapping[str, torch.Tensor]) -> dict:
        if self._skip("refine"):
            return self._outputs("refine")
        t0, rc = time.perf_counter(), self.config["refine"]
        xc = ((self.y > 0) & (seeds["p"] > 0.5)).numpy()
        n, size = len(self.x), self.x.shape[-1]
        pos_r = torch.zeros(n, size, size, dtype=torch.uint8)
        xcr = torch.zeros(n, dtype=torch.bool)
        info: dict = {"x_c": int(xc.sum())}
        if self.dist.main:
            idx = np.flatnonzero(xc)
            images = self.train.x[idx]
            masks = self._predict(s0, torch.from_numpy(images))[:, 0].numpy()
            cfg = RefineConfig(radii=tuple(rc["radii"]), accept_below=rc["accept_below"],
                               binarize_at=rc["binarize_at"], min_size=rc["min_size"], batch=rc["batch"])
            result = refine_seeds(classifier, images, masks, cfg, device=self.device,
                                  progress=lambda d, t: self.progress("refine", d, t))
            # the positive-seed gate applies to the refined seeds too; an image it leaves without
            # any refined seed drops out of X_C,r (S_OS would learn an empty mask on a tumour)
            gated = gate_positive_seeds(torch.from_numpy(result.seeds), self.x[idx, self.flair],
                                        self.config["rise"].get("positive_flair_quantile"))
            pos_r[idx] = gated.to(torch.uint8)
            xcr[idx] = torch.from_numpy(result.accepted) & gated.flatten(1).any(1)
            info.update({"components": int(result.n_components.sum()), "accepted": int(result.n_accepted.sum()),
                         "x_c_r": int(xcr.sum())})
            if not result.accepted.any():
                self.log("refine: no component was accepted; falling back to S0's masks on X_C as refined seeds")
                pos_r[idx] = torch.from_numpy((masks > 0.5).astype(np.uint8))
                xcr[idx] = True
                info["fallback"] = "S0 masks on X_C"
            if self.train.mask is not None and xcr.any():
                info["refined_seed_overlap_positive"] = seed_overlap(
                    pos_r[xcr].numpy(), np.zeros_like(pos_r[xcr].numpy()), self.train.mask[xcr.numpy()])[0]
            self.log(f"refine: {info.get('accepted', 0)} of {info.get('components', 0)} components accepted; "
                     f"X_C,r has {int(xcr.sum())} of {info['x_c']} images")
        self._finish("refine", t0, info, tensors={"pos_r": pos_r, "x_c_r": xcr.to(torch.uint8)})
        return self._outputs("refine")

    # -- stage 9: bundle -------------------------------------------------------------------------------------
    def stage_bundle(self, models: Mapping[str, nn.Module]) -> Path:
        t0 = time.perf_counter()
        cfg = self.config
        c = cfg["classifier"]
        archs = inference_architectures(len(self.channels), classifier_architecture(c),
                                        unet_width=cfg["segmenter"]["width"], latent=cfg["segmenter"]["latent"])
        archs["converter"] = ("unet", self._unet_kwargs("gan", 1))
        for extra in ("segmenter0", "baseline_seed_only"):  # for evaluation (Tables 4 and 5), not inference
            archs[extra] = archs["segmenter_us"]
        metrics = self.validation_metrics(models)
        rise = {k: v for k, v in cfg["rise"].items() if k != "chunk"}
        stage_info = {s: json.loads((self.stage_dir(s) / "done.json").read_text())
                      for s in STAGES[:-1] if self.is_done(s)}
        self.warnings = training_warnings(stage_info, metrics)
        bundle_cfg = {
            "name": self.out.name,
            "description": f"Trained with preset '{cfg.get('preset')}' on {self.data_path.name} from slice labels only.",
            "channels": self.channels, "flair_channel": cfg["flair_channel"], "patch_size": cfg["patch_size"],
            "preprocessing": cfg["preprocessing"], "inference": cfg["inference"], "rise": rise,
            "training": {"preset": cfg.get("preset"), "config": cfg, "data": str(self.data_path),
                         "split": json.loads((self.dir / "split.json").read_text()),
                         "slices": {"train": len(self.train.label), "train_tumour": int(self.train.label.sum()),
                                    "val": len(self.val.label), "val_tumour": int(self.val.label.sum())},
                         "stage_seconds": {s: round(self.timings.get(s, 0.0), 1) for s in STAGES[:-1]
                                           if s in self.timings},  # stages a preset turns off are absent
                         "stages": stage_info, "world_size": self.dist.world,
                         "warnings": self.warnings},
            "metrics": metrics,
        }
        residual = self.residual_baseline(models["converter"])
        if residual:
            bundle_cfg["baselines"] = {"residual": residual}
        path = self.out
        if self.dist.main:
            save_bundle(path, bundle_cfg, {k: unwrap(m) for k, m in models.items()}, archs, overwrite=True)
            _write_json(self.stage_dir("bundle") / "done.json", {"bundle": str(path), "metrics": metrics,
                                                                 "seconds": round(time.perf_counter() - t0, 2)})
        self.dist.barrier()
        self.timings["bundle"] = time.perf_counter() - t0
        return path

    def residual_baseline(self, converter: nn.Module) -> dict | None:
        """The threshold of the residual baseline (Baur et al.; 000 Table 5) chosen on the training
        split, never on evaluated patients: per training patient, FLAIR and U(FLAIR) of its slices
        at patch size, threshold maximising the mean per-patient Dice. None without masks."""
        if self.train.mask is None or not self.config.get("baselines", {}).get("residual", True):
            return None
        flair = torch.from_numpy(self.train.x[:, self.flair:self.flair + 1])
        healthy = self._predict(converter, flair)[:, 0].numpy()
        f = flair[:, 0].numpy()
        groups = [np.flatnonzero(self.train.patient == i) for i in np.unique(self.train.patient)]
        t = choose_residual_threshold([f[g] for g in groups], [healthy[g] for g in groups],
                                      [self.train.mask[g] for g in groups])
        self.log(f"residual baseline: threshold {t:.2f} chosen on {len(groups)} training patients")
        return {"threshold": t, "median": 5,
                "chosen_on": "training split, slices at patch size, mean per-patient Dice"}

    def validation_metrics(self, models: Mapping[str, nn.Module]) -> dict:
        """Patch-level validation metrics (slices at patch size, not whole volumes): classifier
        AUC / sensitivity / specificity and gated Dice of S_US, S_OS and the fused model, per slice
        with the paper's empty-vs-empty = 1 convention."""
        if len(self.val.label) == 0:
            return {}
        xv = torch.from_numpy(self.val.x)
        y = self.val.label
        p = self._predict(models["classifier"], xv)
        sens, spec = sensitivity_specificity(y, p.numpy())
        out: dict = {"scope": "validation slices at patch size", "classifier_auc": roc_auc(y, p.numpy()),
                     "classifier_sensitivity": sens, "classifier_specificity": spec}
        if self.val.mask is None:
            return out
        m_us = self._predict(models["segmenter_us"], xv)[:, 0]
        m_os = self._predict(models["segmenter_os"], xv)[:, 0]
        gate = (p > 0.5)[:, None, None]
        for name, m in (("us", m_us), ("os", m_os), ("fused", fuse(p, m_us, m_os))):
            pred = ((m > 0.5) & gate).numpy()
            d = per_slice_dice(pred, self.val.mask)
            out[f"dice_{name}_per_slice_paper"] = float(d.mean())
            out[f"dice_{name}_tumour_slices"] = float(d[y > 0].mean()) if (y > 0).any() else float("nan")
        return out

    # -- everything ------------------------------------------------------------------------------------------
    def run(self) -> Path:
        t_all = time.perf_counter()
        self._prepare_dir()
        self.load_data()
        classifier = self.stage_classifier()
        seeds = self.stage_seeds(classifier)
        gen = self.stage_gan()
        converter = self.stage_converter(gen, seeds)
        x_hat = self.healthy_variants(converter)
        neg = self.segmenter_negative_seeds(seeds["neg"])
        s0 = self.train_segmenter("segmenter0", np.ones(len(self.x), bool), seeds["pos"], neg, x_hat, classifier)
        refined = self.stage_refine(classifier, s0, seeds)
        xcr = refined["x_c_r"].bool().numpy()
        tumour_free = (self.y == 0).numpy()
        s_us = self.train_segmenter("segmenter_us", xcr | tumour_free, refined["pos_r"], neg, x_hat,
                                    classifier)
        s_os = self.train_segmenter("segmenter_os", xcr, refined["pos_r"], neg, x_hat, classifier)
        models = {"classifier": classifier, "converter": converter, "segmenter_us": s_us, "segmenter_os": s_os,
                  "segmenter0": s0}
        if self.config.get("baselines", {}).get("seed_only", False):
            models["baseline_seed_only"] = self.train_segmenter(
                "segmenter_seed_only", np.ones(len(self.x), bool), seeds["pos"], neg, x_hat, classifier,
                seed_only=True)
        path = self.stage_bundle(models)
        self.log("stage times: " + ", ".join(f"{s} {self.timings[s]:.0f} s" for s in STAGES if s in self.timings))
        for line in self.warnings:
            self.log("WARNING " + line)
        self.log(f"bundle written to {path} ({time.perf_counter() - t_all:.0f} s this session)")
        return path


def training_warnings(stages: Mapping[str, Mapping], metrics: Mapping | None = None) -> list[str]:
    """One line per sign that a run failed, from the stages' ``done.json`` records and the
    bundle's validation ``metrics``: a segmenter that collapsed to empty masks; with masks, positive
    seeds away from the tumours and a fused model that misses the validation tumours. Empty when
    the run looks sound (a label-only cohort can only show the first)."""
    out = []
    for stage in SEGMENTER_STAGES:
        recall = (stages.get(stage) or {}).get("positive_seed_recall")
        if recall is not None and recall < COLLAPSE_RECALL:
            out.append(f"{stage}: the mask covers {100 * recall:.1f} % of the positive seeds of its training images "
                       "(the output stays below 0.5 there); the size prior may be too strong for this cohort: "
                       "lower segmenter.zeta")
    overlap = (stages.get("seeds") or {}).get("seed_overlap_positive")
    if overlap is not None and overlap < MIN_SEED_OVERLAP:
        out.append(f"seeds: only {overlap:.0%} of the positive seeds lie inside the tumour masks (expected at "
                   f"least {MIN_SEED_OVERLAP:.0%}): the classifier's explanations miss the tumours and the "
                   "segmenters learn from them; train again with another 'seed' in --config or with more patients")
    dice = (metrics or {}).get("dice_fused_tumour_slices")
    if dice is not None and math.isfinite(dice) and dice < MIN_VALIDATION_DICE:
        out.append(f"validation: the fused model's Dice on the validation tumour slices is {dice:.2f} (expected at "
                   f"least {MIN_VALIDATION_DICE:.2f}): this bundle segments little of any tumour")
    return out


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


def _bce_to(p: torch.Tensor, target: float) -> torch.Tensor:
    p = p.reshape(-1).clamp(1e-7, 1 - 1e-7)
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


def _discriminator_step(disc: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                        real_label: float, fake_label: float) -> float:
    """One discriminator update on a real and a generated batch of equal size (Eqs. 1 and 6).

    The two batches go through the discriminator separately, each followed by its own backward
    (half of the loss each), which equals the mean over the concatenation and works under DDP
    with BatchNorm."""
    opt.zero_grad(set_to_none=True)
    l_real = 0.5 * _bce_to(disc(real), real_label)
    l_real.backward()
    l_fake = 0.5 * _bce_to(disc(fake), fake_label)
    l_fake.backward()
    opt.step()
    return l_real.item() + l_fake.item()
