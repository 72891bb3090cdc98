"""A training run: its directory, its data, the resume rules, and the stages in the paper's order.

:class:`TrainingRun` is the small interface every stage module works through: ``skip(stage)``
(True when the stage finished before, so a resumed run never retrains it), ``seed_stage`` /
``seed_rank`` (each stage's random numbers), ``train_epochs`` of :mod:`.loop` (epochs with a
checkpoint after each), ``predict``, and ``finish(stage, ...)``, which writes the stage's weights,
tensors and ``done.json`` (rank 0) and drops its checkpoint. The stages themselves are functions
in :mod:`.classifier`, :mod:`.seeds`, :mod:`.gan`, :mod:`.converter`, :mod:`.segmenters`,
:mod:`.refinement`, :mod:`.bundle` and :mod:`.final`; :meth:`TrainingRun.run` calls them in order.

Under ``torchrun`` each stage trains with DistributedDataParallel and a DistributedSampler;
rank 0 computes the non-training steps (RISE, refinement) and writes every file, the other
ranks wait at a barrier and read them back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from ..io.cohort import discover, split_patients
from ..preprocessing.intensity import PreprocessConfig
from . import STAGES
from ..bundle.load import Bundle
from .bundle import add_final, write_bundle
from .checkpoint import json_default, remove_checkpoint, write_json, write_tensors, write_weights
from .classifier import train_classifier
from .converter import healthy_variants, train_converter
from .final import final_architecture, final_cases, train_final
from .distributed import Dist
from .gan import train_gan
from .refinement import refine
from .seeds import make_seeds, seed_attention
from .segmenters import segmenter_negative_seeds, train_segmenter
from .slices import load_slices, stat_ranges, validate_cohort

Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]


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
        self.stats: dict[str, list[float]] = {}  # ranges of the training volumes' statistics (load_data)
        self.warnings: list[str] = []  # signs of a failed run (training_warnings), set by the bundle stage
        self.resumed: dict[str, float] = {}  # seconds a stage ran before a resume
        self.channels = list(self.config["channels"])
        self.flair = self.channels.index(self.config.get("flair_channel", "flair"))

    # -- run directory ---------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.dir / "stages" / stage

    def is_done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "done.json").is_file()

    def prepare_dir(self) -> None:
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
                if saved != json.loads(json.dumps(self.config, default=json_default)):
                    raise InputError("--resume with a different configuration than the run was started with "
                                     f"(see {cfg_path})", self.dir)
        if self.dist.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            write_json(cfg_path, self.config)
        self.dist.barrier()

    # -- data --------------------------------------------------------------------------------------
    def load_data(self) -> None:
        cfg, dcfg = self.config, self.config["data"]
        cases = discover(self.data_path, self.channels, dcfg.get("geometry"))
        split_path = self.dir / "split.json"
        if split_path.is_file():
            split = json.loads(split_path.read_text())
            train_ids, val_ids = split["train"], split["val"]
        else:
            train_ids, val_ids = split_patients([c.id for c in cases], dcfg["val_fraction"], dcfg["split_seed"],
                                                dcfg.get("val_patients"))
            if self.dist.main:
                write_json(split_path, {"seed": dcfg["split_seed"], "train": train_ids, "val": val_ids})
        pp = PreprocessConfig.from_dict(cfg["preprocessing"])
        self.log(f"reading {len(cases)} patients ({len(train_ids)} train / {len(val_ids)} validation)")
        slices = load_slices(cases, self.channels, pp, cfg["patch_size"], dcfg["erosion"], dcfg["max_zero_fraction"],
                             self.seed, progress=lambda d, t: self.progress("data", d, t),
                             flair=cfg["flair_channel"])
        self.stats = stat_ranges([slices.stats[i] for i in train_ids if slices.stats.get(i)])
        self.cases, self.train_ids = cases, list(train_ids)
        self.train = slices.select_patients(train_ids)
        self.val = slices.select_patients(val_ids)
        validate_cohort(self.train, self.data_path)
        self.log(f"training slices: {len(self.train.label)} ({int(self.train.label.sum())} with tumour); "
                 f"validation slices: {len(self.val.label)} ({int(self.val.label.sum())} with tumour)")
        self.x = torch.from_numpy(self.train.x)
        self.y = torch.from_numpy(self.train.label.astype(np.float32))

    def finish(self, stage: str, t0: float, info: Mapping, weights: Mapping[str, nn.Module] = (),
                tensors: Mapping[str, torch.Tensor] | None = None) -> None:
        """Write a stage's outputs and mark it done (rank 0), then drop its epoch checkpoint."""
        sdir = self.stage_dir(stage)
        seconds = time.perf_counter() - t0 + self.resumed.get(stage, 0.0)
        if self.dist.main:
            sdir.mkdir(parents=True, exist_ok=True)
            for name, model in dict(weights).items():
                write_weights(sdir / f"{name}.safetensors", model)
            if tensors:
                write_tensors(sdir / "outputs.safetensors", tensors)
            write_json(sdir / "done.json", {**info, "seconds": round(seconds, 2)})
            remove_checkpoint(sdir / "checkpoint")
        self.dist.barrier()
        self.timings[stage] = seconds

    def load_weights(self, stage: str, name: str, model: nn.Module) -> nn.Module:
        """A finished stage's weights loaded into ``model`` (on the run's device, in eval mode)."""
        model.load_state_dict(load_file(str(self.stage_dir(stage) / f"{name}.safetensors")))
        return model.to(self.device).eval()

    def outputs(self, stage: str) -> dict[str, torch.Tensor]:
        """The tensors a finished stage wrote (``outputs.safetensors``)."""
        return load_file(str(self.stage_dir(stage) / "outputs.safetensors"))

    def predict(self, model: nn.Module, x: torch.Tensor, batch: int = 64, fn=None) -> torch.Tensor:
        """``model`` (or ``fn``) on ``x`` in batches on the run's device, in eval mode, on the CPU."""
        fn = fn or model
        out = []
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch):
                out.append(fn(x[i:i + batch].to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def seed_stage(self, stage: str) -> None:
        """Seed this stage's initial weights (the same on every rank)."""
        torch.manual_seed(self.seed * 1000 + STAGES.index(stage))

    def seed_rank(self, stage: str, member: int = 0) -> None:
        """Seed the stage's sampling (noise, random picks) differently on every rank (and for
        every ``member`` of an ensemble)."""
        torch.manual_seed(self.seed * 1000 + STAGES.index(stage) + 7919 * (self.dist.rank + 1) + 104729 * member)

    def skip(self, stage: str) -> bool:
        """True (with the stage's recorded time) when ``stage`` finished before; logs either way."""
        if self.is_done(stage):
            info = json.loads((self.stage_dir(stage) / "done.json").read_text())
            self.timings[stage] = float(info.get("seconds", 0.0))
            self.log(f"{stage}: already complete ({info.get('seconds', 0):.0f} s), not retrained")
            return True
        self.log(f"{stage}: starting")
        return False

    def run_final(self, source: Path) -> Path:
        """Only the final segmenter, on top of the bundle at ``source`` (its fused pipeline labels the
        patients of ``data`` that it trained on, or every patient when it trained on none of them;
        reviewed exports in ``data.annotations`` label their own patients); writes ``source`` with the
        final segmenter to ``out``."""
        self.prepare_dir()
        bundle = Bundle.load(source)
        cases = discover(self.data_path, self.channels, self.config["data"].get("geometry"))
        trained_on = set(((bundle.config.get("training") or {}).get("split") or {}).get("train") or ())
        chosen, annotations = final_cases(self, cases, trained_on)
        which = "the bundle's training patients" if trained_on & {c.id for c in cases} else "all of them"
        self.log(f"final segmenter on {len(chosen)} of {len(cases)} patients ({which}"
                 f"{' and the annotated ones' if annotations else ''})")
        model, info = train_final(self, bundle, chosen, annotations)
        if self.dist.main:
            add_final(Path(source), model, final_architecture(self.config, len(self.channels)), info,
                      self.timings.get("final", 0.0), dest=self.out,
                      final_weight=self.config["inference"].get("final_weight"), final_config=self.config["final"])
        self.dist.barrier()
        return self.out

    # -- everything ------------------------------------------------------------------------------------------
    def run(self) -> Path:
        """Every stage in order (finished ones are loaded, not retrained); returns the bundle's path."""
        t_all = time.perf_counter()
        self.prepare_dir()
        self.load_data()
        classifier = train_classifier(self)
        seeds = make_seeds(self, classifier)
        gen = train_gan(self)
        converter = train_converter(self, gen, seeds)
        x_hat = healthy_variants(self, converter)
        neg = segmenter_negative_seeds(self, seeds)
        s0 = train_segmenter(self, "segmenter0", np.ones(len(self.x), bool), seeds["pos"], neg, x_hat, classifier)
        refined = refine(self, classifier, s0, seeds)
        xcr = refined["x_c_r"].bool().numpy()
        tumour_free = (self.y == 0).numpy()
        s_us = train_segmenter(self, "segmenter_us", xcr | tumour_free, refined["pos_r"], neg, x_hat, classifier)
        s_os = train_segmenter(self, "segmenter_os", xcr, refined["pos_r"], neg, x_hat, classifier)
        models = {"classifier": classifier, "converter": converter, "segmenter_us": s_us, "segmenter_os": s_os,
                  "segmenter0": s0}
        attention = seed_attention(self, classifier)
        if attention is not None:
            models["attention"] = attention
        if self.config.get("baselines", {}).get("seed_only", False):
            models["baseline_seed_only"] = train_segmenter(
                self, "segmenter_seed_only", np.ones(len(self.x), bool), seeds["pos"], neg, x_hat, classifier,
                seed_only=True)
        path = write_bundle(self, models)
        if (self.config.get("final") or {}).get("trainer"):
            final = train_final(self, Bundle.load(path), *final_cases(self, self.cases, set(self.train_ids)))
            if final is not None and self.dist.main:
                add_final(path, final[0], final_architecture(self.config, len(self.channels)), final[1],
                          self.timings.get("final", 0.0))
            self.dist.barrier()
        self.log("stage times: " + ", ".join(f"{s} {self.timings[s]:.0f} s" for s in STAGES if s in self.timings))
        for line in self.warnings:
            self.log("WARNING " + line)
        self.log(f"bundle written to {path} ({time.perf_counter() - t_all:.0f} s this session)")
        return path
