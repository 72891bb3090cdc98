"""Writing model bundles: ``train`` saves one, ``pack`` copies one with smaller weights.

Every bundle records, besides its networks, the choices taken where Yoo et al. are ambiguous
(:data:`METHOD_DECISIONS`, also in docs/method.md), so that a bundle says how it was made.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import BundleError
from .info import BUNDLE_FILE, FORMAT_VERSION, WEIGHT_DTYPE_NAMES, sha256_file
from .load import INFERENCE_MODELS, SEED_MODELS, Bundle, load_model

#: Choices taken where Yoo et al. are ambiguous or silent, recorded in every bundle.
METHOD_DECISIONS = {
    "negative_seed_loss": "log(1 - m) on S-",
    "variation_loss_weight": "(1 - m)",
    "seed_maps": "RISE at classifier resolution, per-image min-max, S+ > 0.8, S- < 0.2, resampled to patch",
    "rise_estimator": "rise.centered: sum_i (p_i - mean p) M_i / (N p1) (same expected map as RISE after "
                      "min-max, less noise); false gives RISE's sum_i p_i M_i / (N p1)",
    "seed_flair_gates": "rise.positive_flair_quantile: S+ and S+,r also need FLAIR above that quantile of the "
                        "image's non-zero FLAIR; rise.negative_flair_quantile: tissue at or below it joins the "
                        "segmenters' S- (the converter keeps RISE's S-) (not in the paper; null = the paper's seeds); "
                        "rise.flair_gate_scope: the quantiles of each slice's or each patient's tissue; "
                        "rise.negative_flair_map: that tissue only where the normalised map is below it",
    "classifier_augmentation": "classifier.augment: 'flip' mirrors each training image left-right with "
                               "probability 0.5; 'site' adds rotation, zoom, gamma, contrast and bias field "
                               "(not in the paper; 'none' = the paper)",
    "preprocessing": "with preprocessing.spacing_mm: canonical orientation (PLS), in-plane resampling to spacing_mm, "
                     "brain extraction from FLAIR (or the non-background of a skull-stripped input), clipping and "
                     "scaling inside the brain, zero outside (not in the paper, whose images were skull-stripped)",
    "classifier_members": "classifier.members > 1: C is the mean probability of that many classifiers, each "
                          "trained on its own (initialisation, data order, schedule) (not in the paper; 1 = the paper)",
    "converter_negative_seed_rule": "train U on X_C images whose negative seeds cover < 50% (direction configurable)",
    "tile_stride": 64,
    "refinement": "union of accepted components, undilated",
    "fusion": "p <= 0.5 empty; w = 2(p - 0.5); m1 = w m_OS + (1 - w) m_US; m2 = m1 > 0.5",
    "difference_score": "mean |FLAIR - U(FLAIR)| over m2 on [0,1] intensities; 1 if m2 empty",
    "final_segmenter": "with final.trainer: one more network trained on the training patients' tiles labelled by the "
                       "fused pipeline (tumour-free slices empty, unflagged fused masks as masks, other tumour slices "
                       "weak); it makes the main mask on the patches C gates in; the fused mask keeps the difference "
                       "score and flags (not in the paper)",
}

#: Storage types ``pack_bundle`` accepts for floating-point weights.
WEIGHT_DTYPES = {name: getattr(torch, name) for name in WEIGHT_DTYPE_NAMES}


def save_bundle(path: str | Path, config: Mapping, models: Mapping[str, nn.Module],
                architectures: Mapping[str, tuple[str, Mapping]], overwrite: bool = False,
                weights_dtype: str = "float32") -> Path:
    """Write a bundle folder atomically: weights as ``<model>.safetensors``, ``bundle.json``
    with their sha256. ``architectures`` maps each model name to ``(architecture, kwargs)``.

    ``weights_dtype`` (a key of :data:`WEIGHT_DTYPES`) is the storage type of floating-point
    tensors; loading casts them back to the model's float32 (``load_state_dict`` copies), so
    ``float16`` halves the files at a cost of about 1e-3 relative error per weight. Integer
    buffers (BatchNorm's batch counter) are stored unchanged.

    The folder is assembled under a temporary name beside ``path`` and renamed into place.
    """
    if weights_dtype not in WEIGHT_DTYPES:
        raise BundleError(f"weights dtype {weights_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}", Path(path))
    store = WEIGHT_DTYPES[weights_dtype]
    root = Path(path)
    if root.exists() and not overwrite:
        raise BundleError("bundle folder already exists", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        cfg = json.loads(json.dumps(dict(config)))  # deep copy, JSON-clean
        cfg["format_version"] = FORMAT_VERSION
        cfg.setdefault("method", METHOD_DECISIONS)
        cfg["weights_dtype"] = weights_dtype
        specs = {}
        for name, model in models.items():
            arch, kwargs = architectures[name]
            fname = f"{name}.safetensors"
            state = {k: (v.to(store) if v.is_floating_point() else v).detach().cpu().contiguous()
                     for k, v in model.state_dict().items()}
            save_file(state, str(tmp / fname))
            specs[name] = {"architecture": arch, "kwargs": dict(kwargs), "weights": fname,
                           "sha256": sha256_file(tmp / fname)}
        cfg["models"] = specs
        (tmp / BUNDLE_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        if root.exists():
            old = root.with_name(f".{root.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def pack_bundle(src: str | Path, dst: str | Path, models: Sequence[str] | None = None,
                weights_dtype: str = "float16", overwrite: bool = False) -> Path:
    """Copy a bundle keeping only ``models`` (default: all; the inference models are always kept,
    with ACAM's attention, and the final segmenter when the bundle's mask uses it) with weights
    stored as ``weights_dtype``: how a trained bundle is made small enough to ship. Every source
    weight file is verified (sha256) before it is copied; the configuration, metrics and training
    summary are kept, with ``packed_from`` recording the source's name and the models left out."""
    root = Path(src)
    bundle = Bundle.load(root)  # checks the JSON, loads and verifies the inference models
    config, specs = bundle.config, bundle.config["models"]
    seeds = [m for m in SEED_MODELS if m in specs]  # they go with the classifier
    final = ["final"] if "final" in specs and bundle.settings().final_weight > 0 else []  # it makes the mask
    keep = list(specs) if models is None else list(dict.fromkeys([*INFERENCE_MODELS, *seeds, *final, *models]))
    unknown = [m for m in keep if m not in specs]
    if unknown:
        raise BundleError(f"models not in the bundle: {', '.join(unknown)} (it has {', '.join(specs)})",
                          root / BUNDLE_FILE)
    loaded = {name: bundle.models.get(name) or load_model(root, name, specs[name]) for name in keep}
    archs = {name: (specs[name]["architecture"], specs[name].get("kwargs", {})) for name in keep}
    cfg = {k: v for k, v in config.items() if k != "models"}
    if isinstance(cfg.get("training"), Mapping):
        cfg["training"] = _without_paths(cfg["training"])
    cfg["packed_from"] = {"name": str(config.get("name", root.name)),
                          "weights_dtype": str(config.get("weights_dtype", "float32")),
                          "models_left_out": [m for m in specs if m not in keep]}
    return save_bundle(dst, cfg, loaded, archs, overwrite=overwrite, weights_dtype=weights_dtype)


def _without_paths(training: Mapping) -> dict:
    """The training record with the packing machine's paths (the data folder, the geometry
    declaration, the exports) reduced to their names: a shipped bundle names its inputs, the
    model card says where they come from."""
    out = copy.deepcopy(dict(training))
    if out.get("data"):
        out["data"] = Path(out["data"]).name
    data = (out.get("config") or {}).get("data")
    if isinstance(data, dict):
        for key in ("geometry", "annotations"):
            if data.get(key):
                data[key] = Path(data[key]).name
    return out


def inference_architectures(n_channels: int, classifier: tuple[str, Mapping] = ("compact_classifier", {}),
                            unet_width: int = 64, latent: int = 100) -> dict[str, tuple[str, dict]]:
    """Architecture specs of the four inference networks for ``n_channels`` inputs: the
    classifier on all channels, the converter U on FLAIR only, S_US and S_OS on all channels."""
    arch, kwargs = classifier
    unet = {"width": unet_width, "latent": latent}
    return {
        "classifier": (arch, {**kwargs, "in_channels": n_channels}),
        "converter": ("unet", {"in_channels": 1, "out_channels": 1, **unet}),
        "segmenter_us": ("unet", {"in_channels": n_channels, "out_channels": 1, **unet}),
        "segmenter_os": ("unet", {"in_channels": n_channels, "out_channels": 1, **unet}),
    }
