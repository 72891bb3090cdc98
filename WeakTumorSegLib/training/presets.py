"""Training presets: ``paper`` (Yoo et al., section 3.2), ``default`` (CPU-friendly, the shipped
bundles' recipe) and ``tiny`` (a smoke test on phantoms). docs/options.md describes every key.

A preset is a nested dict; ``--config FILE`` (JSON) overrides any value by deep merge (an
architecture's ``kwargs`` are replaced as a whole), e.g.
``{"segmenter": {"zeta": 0.2}, "converter": {"alpha": 50}}`` for the paper's pLGG settings.
The resolved configuration is saved as ``config.json`` in the run directory and in the bundle.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError
from ..preprocessing.standardise import BRAIN_EXTRACTION
from ..stages.classifier import AUGMENTATIONS
from ..stages.final import FINAL_ARCHITECTURES, TRAINERS
from ..stages.seeds import SeedSettings

_PAPER = {
    "seed": 0,
    "channels": ["flair", "t1", "t1ce"],
    "flair_channel": "flair",
    "patch_size": 128,
    # Yoo et al. halve their 1 mm pLGG slices before padding to 128; 1.8 mm is TCGA-LGG's halved
    # 256^2 slices at their declared 0.9 mm. spacing_mm turns on the site-independent preprocessing
    # (preprocessing.standardise); inplane_scale is only read by bundles without it
    "preprocessing": {"clip_percentiles": [1.0, 99.0], "inplane_scale": 0.5, "brain_threshold": 0.0,
                      "spacing_mm": 1.8, "brain_extraction": "own", "scalp_fat": False},
    # geometry: a declaration file of the cohort's true orientation and voxel size (io.cohort);
    # annotations: a folder of reviewed Slicer exports for the final segmenter (io.annotations)
    "data": {"erosion": 0, "max_zero_fraction": 0.5, "val_fraction": 0.2, "split_seed": 0, "val_patients": None,
             "geometry": None, "annotations": None},
    "classifier": {"architecture": "vgg16_bn", "kwargs": {"width": 64, "hidden": 4096, "upsample": 2.0},
                   "epochs": 100, "batch": 32, "lr": 5e-6, "weight_decay": 0.1, "betas": [0.9, 0.999],
                   "plateau_factor": 0.1, "plateau_patience": 5, "plateau_threshold": 1e-4,
                   # the loss the plateau schedule watches: 'validation' (the validation patients'
                   # slices) or 'training' (then no training step reads the validation patients)
                   "schedule_on": "validation",
                   # 'flip': random left-right mirroring; 'site': mirroring, rotation, zoom, gamma,
                   # contrast and bias field (stages.augmentation; neither is in the paper)
                   "augment": "none",
                   # > 1: that many classifiers from different initialisations, probabilities
                   # averaged (networks.classifiers.ClassifierEnsemble; not in the paper)
                   "members": 1},
    # RISE settings are not given in the paper; these are RISE's own defaults for 224-pixel inputs.
    # centered: the mean-score control variate (stages.seeds.rise_maps): same expected map, less noise
    "rise": {"n_masks": 4000, "cells": 7, "p1": 0.5, "batch": 100, "seed": 0, "positive": 0.8, "negative": 0.2,
             "centered": True, "chunk": 64,
             # FLAIR seed gates (stages.seeds.gate_positive_seeds / extend_negative_seeds; not in the paper):
             # their quantiles over each slice's or each patient's tissue, or the lower of the two
             # (flair_gate_scope slice / volume / lower);
             # the dark tissue joins S- only where the normalised map is below negative_flair_map (null: anywhere)
             "positive_flair_quantile": None, "negative_flair_quantile": None, "flair_gate_scope": "slice",
             "negative_flair_map": None},
    # the seed method (stages.seeds): 'rise' (the paper's), 'superpixel' (Rajapaksa and Khalvati's SLIC
    # perturbation: n_segments, compactness, channel (null = FLAIR), perturbation blank/min/max, score
    # probability/logit, sampling single (the paper) or random halves (samples of them, seeded by seed)),
    # 'gradcam', or 'acam' (Wu et al.; its attention fitted in attention_steps Adam
    # steps at attention_lr). The rise section's thresholds and FLAIR gates apply to every method
    "seeds": {"method": "rise", "n_segments": 50, "compactness": 0.1, "channel": None, "perturbation": "blank",
              "score": "probability", "sampling": "single", "samples": 100, "seed": 0, "attention_steps": 300,
              "attention_lr": 0.01, "pool_segments": None},
    "gan": {"width": 64, "latent": 100, "epochs": 100, "batch": 32, "lr": 2e-4, "halve_every": 50,
            "betas": [0.5, 0.999], "real_label": 0.9, "fake_label": 0.1},
    "converter": {"epochs": 200, "batch": 32, "lr": 2e-4, "halve_every": 50, "betas": [0.5, 0.999],
                  "alpha": 10.0, "beta": 0.05, "gamma": 1.0,
                  # train U on X_C images whose negative seeds cover less than 50 % of the image
                  "negative_seed_rule": "below", "negative_seed_fraction": 0.5,
                  # skip connections of U, coarsest first (null = all five; the paper does not say)
                  "skips": None,
                  # width of the new discriminator D1 (null = the GAN's width; the paper does not say)
                  "disc_width": None},
    "segmenter": {"width": 64, "latent": 100, "epochs": 200, "batch": 32, "lr": 2e-4, "halve_every": 50,
                  "betas": [0.9, 0.999], "delta": 4.0, "epsilon": 1.0, "zeta": 0.25,
                  # 0 = the paper's fixed epochs; > 0 lengthens a stage whose subset is small
                  "min_steps": 0,
                  # Eq. 12 pools positive and negative seeds; True averages each set separately
                  "balanced_seed_loss": False},
    "refine": {"radii": [1, 2, 3, 4, 5], "accept_below": 0.5, "binarize_at": 0.5, "min_size": 1, "batch": 64},
    # Table 5 baselines, for `evaluate`: S0 trained with the seed loss only (one more segmenter
    # stage) and the residual threshold chosen on the training split (needs masks; cheap)
    "baselines": {"seed_only": True, "residual": True},
    # the final segmenter (training.final; not in the paper, so off here): trainer 'self'
    # (self-training), 'mixed' (Mlynarski et al.'s mixed supervision: batches of k masked, m empty and
    # n weak tiles, pixel weights t0 / t1, loss weight a) or 'em' (Li et al.'s EM-regularised partial
    # labels, weight lam; prior fitted on prior_pixels known pixels in prior_steps steps); grow: the
    # trusted masks grow into the fused probability above it (stages.label_refinement); members:
    # that many networks trained one after another, their maps averaged; rounds 2
    # relabels the tumour tiles with round 1's network where it agrees with the fused mask;
    # pseudo_masks false: only reviewed exports give masks (Mlynarski et al.'s setting); architecture
    # 'dcgan' (the segmenters' U-Net, latent) or 'unet2d' (the standard U-Net, levels; networks.unet2d);
    # context: the network also reads that many neighbouring slices on each side (2.5D); dice: weight of
    # a soft Dice term added to the segmentation loss of self and mixed (stages.final.soft_dice_loss)
    "final": {"trainer": None, "members": 1, "grow": None, "pseudo_masks": True, "rounds": 1, "agreement": 0.7,
              "architecture": "dcgan", "levels": 4, "context": 0, "width": 16, "latent": 100, "hidden": 64,
              "epochs": 16, "batch": 16, "lr": 1e-3, "halve_every": 8, "betas": [0.9, 0.999], "min_steps": 600,
              "augment": True, "balanced": True, "dice": 0.0, "t0": 0.7, "t1": 0.3, "a": 0.7, "k": 8, "m": 4, "n": 8,
              "lam": 1.0, "prior_steps": 600, "prior_pixels": 200000},
    # the bundle's inference section (bundle.settings.InferenceSettings); the four post-processing
    # steps are not in the paper and off here; the shipped TCGA-LGG bundles set null / 0 / 0 / 0.5
    # (until 2026-12-06 12 / 0.25 / 0.9 / 0.5; docs/options.md); final_mode: how a final segmenter
    # makes the mask (average: weighted by final_weight; extend: it grows the fused mask's lesions);
    # final_gate: which patches it reads (classifier: those C gates; tissue: all)
    "inference": {"stride": 64, "gate_threshold": 0.5, "gate_low": 0.0, "mask_threshold": 0.5, "filter_threshold": 0.2,
                  "undecided_margin": 0.1, "batch_size": 32, "scalp_margin_mm": None, "slice_smoothing": 0.0,
                  "flair_trim": 0.0, "keep_components": 0.0, "final_weight": 1.0, "final_mode": "average",
                  "final_gate": "classifier"},
}


def _merge(base: dict, override: Mapping) -> dict:
    """Deep merge; an architecture's ``kwargs`` are replaced whole (they belong to one architecture)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "kwargs":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# FLAIR seed gates (not in the paper) of the default and tiny presets: S+ keeps the bright core of
# RISE's blob and dark tissue joins S- (docs/options.md, rise.*_flair_quantile)
_FLAIR_GATES = {"positive_flair_quantile": 0.9, "negative_flair_quantile": 0.7}

PRESETS: dict[str, dict] = {
    "paper": _PAPER,
    # compact widths and short schedules: the whole pipeline on about 40 patients on 2 CPU cores.
    # Every value that differs from the paper is chosen on an inner split of the training patients;
    # docs/options.md gives each one's measurement.
    "default": _merge(_PAPER, {
        # scalp_fat: the bright scalp the own brain mask keeps leaves it; over four final-network
        # seeds on three inner folds it raised the mean per-volume Dice (docs/experiments.md
        # "Scalp fat left out of the brain mask")
        "preprocessing": {"scalp_fat": True},
        # no x2 upsampling: it quadruples the cost of C and of RISE; four blocks and global max
        # pooling score a slice by its most tumour-like window (five blocks with average pooling
        # trained unreliably); three members make C steadier between trainings; 'site'
        # augmentation (mirroring, rotation, zoom, gamma, contrast, bias field) raised the inner
        # split's AUC (benchmarks/inner_augmentation.py)
        # the plateau schedule watches the training loss: no training step reads the validation patients
        "classifier": {"architecture": "compact_classifier",
                       "kwargs": {"width": 8, "blocks": 4, "upsample": 1.0, "pool": "max"},
                       "epochs": 12, "lr": 1e-3, "weight_decay": 1e-4, "plateau_patience": 2,
                       "augment": "site", "members": 3, "schedule_on": "training"},
        "rise": {"n_masks": 200, "cells": 8, "batch": 100, **_FLAIR_GATES},
        # Grad-CAM averaged over 25 SLIC superpixels of the FLAIR: the only seeds as precise as the
        # targets (S+ 0.90 inside the tumour) that cover as much of it as RISE's (0.39 against 0.38),
        # at about 1 % of RISE's cost; with today's post-processing and final segmenter, as good as
        # plain Grad-CAM over three inner folds (0.743 both) and better than RISE (0.726)
        # (docs/experiments.md "Seed methods" and "Seed methods with the whole pipeline")
        "seeds": {"method": "gradcam", "pool_segments": 25},
        "gan": {"width": 12, "epochs": 15, "halve_every": 10},
        "converter": {"epochs": 12, "halve_every": 8},
        # zeta 1: with the paper's 0.25, S0 covered about four times the tumour area on TCGA-LGG
        "segmenter": {"width": 12, "epochs": 12, "halve_every": 8, "lr": 1e-3, "balanced_seed_loss": True,
                      "min_steps": 400, "zeta": 1.0},
        # mixed supervision with every labelled pixel weighted alike (inner split, docs/experiments.md
        # "Final segmenter"); dice 1: a soft Dice term beside the cross-entropy. With cross-entropy
        # alone the network under-marked unseen tumours and only extended the fused mask's lesions;
        # with the Dice term it makes the mask alone (final_mode average, final_weight 1), which
        # scored above the fused mask and the extent rule on both inner folds (+0.105 and +0.005;
        # "A Dice term for the final network"); the component filter was the post-processing that
        # raised the Dice in every fold ("Post-processing on unseen patients");
        # gate_low 0.3: a tumour's less certain end slices keep their mask ("Hysteresis at the gate")
        "final": {"trainer": "mixed", "balanced": False, "dice": 1.0},
        "inference": {"final_weight": 1.0, "final_mode": "average", "keep_components": 0.5, "gate_low": 0.3},
    }),
    # a smoke test of the whole pipeline on small synthetic phantoms in a few minutes on 2 CPU
    # cores; not a recipe for real patients (its bundles find little or nothing on MR)
    "tiny": _merge(_PAPER, {
        # the phantoms' 1 mm voxels as they are: their small heads and tumours at full resolution
        "preprocessing": {"spacing_mm": 1.0},
        "classifier": {"architecture": "compact_classifier", "kwargs": {"width": 6, "blocks": 4, "upsample": 1.0},
                       "epochs": 10, "batch": 16, "lr": 2e-3, "weight_decay": 1e-4, "plateau_patience": 3},
        "rise": {"n_masks": 200, "cells": 12, "batch": 100, **_FLAIR_GATES},
        "gan": {"width": 6, "latent": 32, "epochs": 8, "batch": 16, "halve_every": 6},
        # four skips, alpha 50 (the paper's pLGG value), a wider D1: U changes the small phantom
        # tumours more than the tissue around them (converter.skips, converter.disc_width)
        "converter": {"epochs": 40, "batch": 16, "halve_every": 8, "lr": 1e-3, "skips": 4, "alpha": 50.0,
                      "beta": 0.2, "disc_width": 24},
        # zeta 2: keeps S0 from spreading over the unlabelled ring around small phantom tumours
        "segmenter": {"width": 6, "latent": 32, "epochs": 16, "batch": 16, "halve_every": 10, "lr": 2e-3,
                      "zeta": 2.0, "balanced_seed_loss": True, "min_steps": 150},
        # binarise S0 at 0.9 before taking components: S0's confident core, not its soft rim
        "refine": {"batch": 32, "binarize_at": 0.9},
        "baselines": {"seed_only": False},
    }),
}


def resolve_config(preset: str = "default", config_file: str | Path | None = None,
                   overrides: Mapping | None = None) -> dict:
    """The preset merged with a JSON config (a file, or the object itself as text starting with
    ``{``) and explicit overrides (in that order)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    config["preset"] = preset
    where = _config_name(config_file)
    if config_file is not None:
        extra = _read_config(config_file)
        if not isinstance(extra, dict):
            raise InputError("a config must hold a JSON object", where)
        unknown = sorted(set(extra) - set(config))
        if unknown:
            raise InputError(f"unknown configuration keys: {', '.join(unknown)}", where)
        config = _merge(config, extra)
    if overrides:
        config = _merge(config, overrides)
    members = config["classifier"].get("members", 1)
    if not _whole_number(members):
        raise InputError(f"classifier.members must be a whole number of at least 1, got {members!r}", where)
    augment = config["classifier"].get("augment", "none")
    if augment not in AUGMENTATIONS:
        raise InputError(f"classifier.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}",
                         where)
    try:
        SeedSettings.from_config(config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"invalid seeds or rise settings: {exc}", where) from None
    if config["seeds"].get("method") == "acam" and config["classifier"]["architecture"] != "compact_classifier":
        raise InputError("seeds.method 'acam' needs classifier.architecture 'compact_classifier' (a linear head on "
                         "pooled features); use 'gradcam', 'rise' or 'superpixel'", where)
    _check_final(config.get("final") or {}, where)
    extraction = config["preprocessing"]["brain_extraction"]  # every preset sets it
    if extraction not in BRAIN_EXTRACTION:
        raise InputError(f"preprocessing.brain_extraction must be one of {', '.join(BRAIN_EXTRACTION)}, "
                         f"got {extraction!r}", where)
    if not isinstance(config["preprocessing"].get("scalp_fat"), bool):
        raise InputError(f"preprocessing.scalp_fat must be true or false, got "
                         f"{config['preprocessing'].get('scalp_fat')!r}", where)
    disc_width = config["converter"].get("disc_width")
    if disc_width is not None and not _whole_number(disc_width):
        raise InputError(f"converter.disc_width must be null or a whole number of at least 1, got {disc_width!r}",
                         where)
    return config


def _inline(config: str | Path | None) -> bool:
    """Whether ``--config`` holds the JSON object itself rather than a file's path."""
    return isinstance(config, str) and config.lstrip().startswith("{")


def _config_name(config: str | Path | None) -> str | Path | None:
    """How errors name a ``--config`` value: the file, or ``--config`` for an inline object."""
    return None if config is None else "--config" if _inline(config) else Path(config)


def _read_config(config: str | Path) -> object:
    """The JSON that ``--config`` holds (inline or in a file)."""
    where = _config_name(config)
    try:
        return json.loads(config if _inline(config) else where.read_text())
    except FileNotFoundError:
        raise InputError("config file not found", where) from None
    except OSError as exc:  # a folder, no permission
        raise InputError(f"cannot read the config file ({exc.strerror})", where) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON ({exc})", where) from None


def final_only_config(bundle_config: Mapping, preset: str = "default", config_file: str | Path | None = None,
                      where: Path | None = None) -> dict:
    """The configuration of a run that trains only the final segmenter on top of a bundle: the
    bundle's training configuration with the ``final`` section of ``preset`` (and its
    ``inference.final_weight`` when the bundle has none), then the ``final`` and ``seed`` keys of
    ``config_file``."""
    base = (bundle_config.get("training") or {}).get("config")
    if not isinstance(base, Mapping):
        raise InputError("the bundle records no training configuration, so the final segmenter cannot be "
                         "trained on top of it", where)
    config = copy.deepcopy(dict(base))
    # the bundle's geometry declaration and exports belong to its own training cohort: the new run's
    # come from its command line (or a geometry.json beside its data)
    config["data"] = {**config.get("data", {}), "geometry": None, "annotations": None}
    preset_config = resolve_config(preset)
    config["final"] = copy.deepcopy(preset_config["final"])
    # a bundle from before the final segmenter has no final_weight: the preset's
    config.setdefault("inference", {}).setdefault("final_weight", preset_config["inference"]["final_weight"])
    if config_file is not None:
        extra = resolve_config(preset, config_file)
        config["final"], config["seed"] = extra["final"], extra["seed"]
    if not config["final"].get("trainer"):
        raise InputError("final.trainer is null: set it (self, mixed or em) in --config",
                         _config_name(config_file) or where)
    return config


def _check_final(final: Mapping, config_file: str | Path | None) -> None:
    """Refuse a ``final`` section whose trainer, members, architecture, levels, context, grow or dice is invalid."""
    trainer = final.get("trainer")
    if trainer is not None and trainer not in TRAINERS:
        raise InputError(f"final.trainer must be null or one of {', '.join(TRAINERS)}, got {trainer!r}", config_file)
    members = final.get("members", 1)
    if not _whole_number(members):
        raise InputError(f"final.members must be a whole number of at least 1, got {members!r}", config_file)
    arch = final.get("architecture", "dcgan")
    if arch not in FINAL_ARCHITECTURES:
        raise InputError(f"final.architecture must be one of {', '.join(FINAL_ARCHITECTURES)}, got {arch!r}",
                         config_file)
    levels = final.get("levels", 4)
    if not _whole_number(levels) or not 1 <= levels <= 7:
        raise InputError(f"final.levels must be a whole number from 1 to 7, got {levels!r}", config_file)
    context = final.get("context", 0)
    if isinstance(context, bool) or not isinstance(context, int) or not 0 <= context <= 3:
        raise InputError(f"final.context must be a whole number from 0 to 3, got {context!r}", config_file)
    grow = final.get("grow")
    if grow is not None and (isinstance(grow, bool) or not isinstance(grow, (int, float)) or not 0 < grow < 1):
        raise InputError(f"final.grow must be null or a probability between 0 and 1, got {grow!r}", config_file)
    dice = final.get("dice", 0.0)
    if isinstance(dice, bool) or not isinstance(dice, (int, float)) or not dice >= 0:
        raise InputError(f"final.dice must be a number of at least 0, got {dice!r}", config_file)
    if dice > 0 and trainer == "em":
        raise InputError("final.dice applies to the self and mixed trainers; the em trainer has its own loss",
                         config_file)


def _whole_number(value) -> bool:
    """A JSON integer >= 1 (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
