"""Training presets: ``paper`` (000 section 3.2), ``default`` (CPU-friendly) and ``tiny`` (smoke run).

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

from ..stages.classifier import AUGMENTATIONS
from ..errors import InputError

_PAPER = {
    "seed": 0,
    "channels": ["flair", "t1", "t1ce"],
    "flair_channel": "flair",
    "patch_size": 128,
    # 000 halves 240^2 pLGG slices before padding to 128; the 256^2 TCGA-LGG slices want the same
    "preprocessing": {"clip_percentiles": [1.0, 99.0], "inplane_scale": 0.5, "brain_threshold": 0.0},
    "data": {"erosion": 0, "max_zero_fraction": 0.5, "val_fraction": 0.2, "split_seed": 0, "val_patients": None},
    "classifier": {"architecture": "vgg16_bn", "kwargs": {"width": 64, "hidden": 4096, "upsample": 2.0},
                   "epochs": 100, "batch": 32, "lr": 5e-6, "weight_decay": 0.1, "betas": [0.9, 0.999],
                   "plateau_factor": 0.1, "plateau_patience": 5, "plateau_threshold": 1e-4,
                   # 'flip': random left-right mirroring (not in 000)
                   "augment": "none",
                   # > 1: that many classifiers from different initialisations, probabilities
                   # averaged (classifier.ClassifierEnsemble; not in 000)
                   "members": 1},
    # RISE settings are not given in 000; these are RISE's own defaults for 224-pixel inputs.
    # centered: the mean-score control variate (seeds.rise_maps), same expected map, far less noise
    "rise": {"n_masks": 4000, "cells": 7, "p1": 0.5, "batch": 100, "seed": 0, "positive": 0.8, "negative": 0.2,
             "centered": True, "chunk": 64,
             # FLAIR seed gates (seeds.gate_positive_seeds / extend_negative_seeds; not in 000; None = off)
             "positive_flair_quantile": None, "negative_flair_quantile": None},
    "gan": {"width": 64, "latent": 100, "epochs": 100, "batch": 32, "lr": 2e-4, "halve_every": 50,
            "betas": [0.5, 0.999], "real_label": 0.9, "fake_label": 0.1},
    "converter": {"epochs": 200, "batch": 32, "lr": 2e-4, "halve_every": 50, "betas": [0.5, 0.999],
                  "alpha": 10.0, "beta": 0.05, "gamma": 1.0,
                  # train U on X_C images whose negative seeds cover less than 50 % of the image
                  "negative_seed_rule": "below", "negative_seed_fraction": 0.5,
                  # skip connections of U, coarsest first (null = all five; 000 does not say)
                  "skips": None,
                  # width of the new discriminator D1 (null = the GAN's width; 000 does not say)
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
    "inference": {"stride": 64, "gate_threshold": 0.5, "mask_threshold": 0.5, "filter_threshold": 0.2,
                  "undecided_margin": 0.1, "batch_size": 32,
                  # clear masks this many mm below the head's surface (inference.py; not in 000; None =
                  # off): for cohorts that are not skull-stripped, e.g. 12 as in the shipped TCGA-LGG bundles
                  "scalp_margin_mm": None,
                  # weight of each neighbouring slice in the classifier gate (fusion.smooth_across_slices;
                  # not in 000; 0 = off; 0.25 in the shipped TCGA-LGG bundles)
                  "slice_smoothing": 0.0,
                  # mask voxels darker on FLAIR than this fraction of the mask's median FLAIR are
                  # cleared (filtering.flair_trim; not in 000; 0 = off; 0.9 in the shipped TCGA-LGG bundles)
                  "flair_trim": 0.0,
                  # a mask keeps its 3D components of at least this fraction of the largest one's voxels,
                  # holes filled per slice (filtering.keep_components; not in 000; 0 = off; 0.5 in the
                  # shipped TCGA-LGG bundles)
                  "keep_components": 0.0},
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


# FLAIR seed gates (not in 000) of the default and tiny presets: S+ keeps the bright core of RISE's
# blob (on TCGA-LGG the share of S+ inside the tumour rose from 0.39 to 0.71) and dark tissue joins S-
_FLAIR_GATES = {"positive_flair_quantile": 0.9, "negative_flair_quantile": 0.7}

PRESETS: dict[str, dict] = {
    "paper": _PAPER,
    # compact widths and short schedules: the whole pipeline on ~40 patients on 2 CPU cores
    "default": _merge(_PAPER, {
        # no x2 upsampling (the paper preset keeps it): it quadruples the cost of C and of RISE.
        # Four blocks and global max pooling: each output sees a local window (about half the
        # slice) and the slice's score is its most tumour-like one. With five blocks and average
        # pooling every output sees the whole slice, and 2 of 3 members trained on 30 of the 40
        # TCGA-LGG training patients scored slice AUC 0.63 / 0.76 on the other 10 (the third 0.96);
        # the same three initialisations gave 0.97 / 0.98 / 0.95 this way (0.97 / 0.97 / 0.92 when
        # repeated in a whole training with two threads; README)
        "classifier": {"architecture": "compact_classifier",
                       "kwargs": {"width": 8, "blocks": 4, "upsample": 1.0, "pool": "max"},
                       "epochs": 12, "lr": 1e-3, "weight_decay": 1e-4, "plateau_patience": 2,
                       # left-right mirroring: 30 of the 40 TCGA-LGG training patients trained, the
                       # other 10 scored: slice AUC 0.955 / 0.956 / 0.955 over three seeds against
                       # 0.946 / 0.956 / 0.947 / 0.922 without, fewer tumour slices gated out
                       "augment": "flip",
                       # three members: on the same split 4 of 7 initialisations ended at slice AUC
                       # 0.69-0.76 instead of ~0.95; averaged, one poor member of three cost nothing
                       # (per-volume Dice in front of fixed segmenters 0.72 against 0.68-0.70 for one
                       # good classifier alone) and two of three still gave 0.68 (README)
                       "members": 3},
        "rise": {"n_masks": 200, "cells": 8, "batch": 100, **_FLAIR_GATES},
        "gan": {"width": 12, "epochs": 15, "halve_every": 10},
        "converter": {"epochs": 12, "halve_every": 8},
        # zeta 1: with 0.25 S0 covered ~4x the tumour area on TCGA-LGG (the paper varies zeta by data set)
        "segmenter": {"width": 12, "epochs": 12, "halve_every": 8, "lr": 1e-3, "balanced_seed_loss": True,
                      "min_steps": 400, "zeta": 1.0},
    }),
    # a smoke run in a few minutes on 2 CPU cores
    "tiny": _merge(_PAPER, {
        "classifier": {"architecture": "compact_classifier", "kwargs": {"width": 6, "blocks": 4, "upsample": 1.0},
                       "epochs": 10, "batch": 16, "lr": 2e-3, "weight_decay": 1e-4, "plateau_patience": 3},
        # FLAIR seed gates: on phantoms fused Dice 0.70-0.73 -> 0.88-0.90 on unseen tumour slices
        # (without them the masks spread over the undecided ring, 1.3-1.8 times too large)
        "rise": {"n_masks": 200, "cells": 12, "batch": 100, **_FLAIR_GATES},
        "gan": {"width": 6, "latent": 32, "epochs": 8, "batch": 16, "halve_every": 6},
        # no 64-pixel skip: U cannot copy the small phantom tumours through at full detail (change
        # inside / outside the tumour 2.8-3.2 against 2.0-2.6 with all five; fused Dice 0.79 vs 0.77);
        # alpha 50, 000's pLGG value: tighter reconstruction off the tumour (ratio 2.9 -> 3.2).
        # D1 four times G's width, beta 0.2 and 40 epochs: a D1 as thin as G (6) tells x_hat from real
        # images by its blur rather than by the tumour; the ratio rose in each of 8 seed / cohort
        # pairs, 2.71-3.25 -> 2.92-3.54 (medians 2.94 -> 3.2; README, converter.disc_width)
        "converter": {"epochs": 40, "batch": 16, "halve_every": 8, "lr": 1e-3, "skips": 4, "alpha": 50.0,
                      "beta": 0.2, "disc_width": 24},
        # zeta: the size prior is data-dependent (000 uses 0.25 / 0.2); 2.0 keeps S0 from spreading
        # from the seeds over the unlabelled ring around the tumour on small phantom tumours
        "segmenter": {"width": 6, "latent": 32, "epochs": 16, "batch": 16, "halve_every": 10, "lr": 2e-3,
                      "zeta": 2.0, "balanced_seed_loss": True, "min_steps": 150},
        # binarise S0 at 0.9 before taking components: S0's confident core, not its soft rim
        "refine": {"batch": 32, "binarize_at": 0.9},
        "baselines": {"seed_only": False},
    }),
}


def resolve_config(preset: str = "default", config_file: str | Path | None = None,
                   overrides: Mapping | None = None) -> dict:
    """The preset merged with a JSON config file and explicit overrides (in that order)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    config["preset"] = preset
    if config_file is not None:
        path = Path(config_file)
        try:
            extra = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError("config file not found", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"invalid JSON ({exc})", path) from None
        if not isinstance(extra, dict):
            raise InputError("a config file must hold a JSON object", path)
        unknown = sorted(set(extra) - set(config))
        if unknown:
            raise InputError(f"unknown configuration keys: {', '.join(unknown)}", path)
        config = _merge(config, extra)
    if overrides:
        config = _merge(config, overrides)
    members = config["classifier"].get("members", 1)
    if not _whole_number(members):
        raise InputError(f"classifier.members must be a whole number of at least 1, got {members!r}", config_file)
    augment = config["classifier"].get("augment", "none")
    if augment not in AUGMENTATIONS:
        raise InputError(f"classifier.augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}",
                         config_file)
    disc_width = config["converter"].get("disc_width")
    if disc_width is not None and not _whole_number(disc_width):
        raise InputError(f"converter.disc_width must be null or a whole number of at least 1, got {disc_width!r}",
                         config_file)
    return config


def _whole_number(value) -> bool:
    """A JSON integer >= 1 (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
