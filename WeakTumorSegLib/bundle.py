"""Model bundles: a folder with ``bundle.json`` and ``.safetensors`` weights.

``bundle.json`` holds everything needed to run a trained model: format version, the input
``channels`` in order (e.g. ``["flair", "t1", "t1ce"]``), the FLAIR channel's name, patch size,
preprocessing, every network's architecture name, keyword arguments, weight file and its
sha256, inference thresholds, the method decisions taken where paper 000 is ambiguous, and the
training data summary and metrics.

Loading never unpickles anything: weights are read with ``safetensors`` after their sha256 has
been checked, and weight file names must be plain names inside the bundle folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import BundleError
from .networks import build
from .preprocess import PreprocessConfig
from .seeds import RiseConfig

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
#: Networks an inference bundle must contain.
INFERENCE_MODELS = ("classifier", "converter", "segmenter_us", "segmenter_os")
#: ``Resources/Models`` of a source checkout (also where the Slicer extension installs bundles).
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"

#: Inference settings and their defaults (section ``inference`` of bundle.json).
DEFAULT_INFERENCE = {
    "stride": 64,
    "gate_threshold": 0.5,
    "mask_threshold": 0.5,
    "filter_threshold": 0.2,
    "undecided_margin": 0.1,
    "batch_size": 32,
    # mm below the head's outer surface where masks are cleared (None/0: off; not in 000); for
    # images that are not skull-stripped, where bright scalp fat looks like FLAIR abnormality
    "scalp_margin_mm": None,
    # weight of each neighbouring slice's classifier output in the gate's average (0: off, as in
    # 000; at most 1/3; fusion.smooth_across_slices)
    "slice_smoothing": 0.0,
    # clear mask voxels whose FLAIR is below this fraction of the median FLAIR inside the volume's
    # mask (0: off, as in 000; at most 1; filtering.flair_trim)
    "flair_trim": 0.0,
    # keep the mask's 3D components of at least this fraction of the largest one's voxels and fill
    # each slice's holes (0: off, as in 000; at most 1; filtering.keep_components)
    "keep_components": 0.0,
}

#: Choices where paper 000 is ambiguous (DESIGN.md), recorded in every bundle.
METHOD_DECISIONS = {
    "negative_seed_loss": "log(1 - m) on S-",
    "variation_loss_weight": "(1 - m)",
    "seed_maps": "RISE at classifier resolution, per-image min-max, S+ > 0.8, S- < 0.2, resampled to patch",
    "rise_estimator": "rise.centered: sum_i (p_i - mean p) M_i / (N p1) (same expected map as RISE after "
                      "min-max, less noise); false gives RISE's sum_i p_i M_i / (N p1)",
    "seed_flair_gates": "rise.positive_flair_quantile: S+ and S+,r also need FLAIR above that quantile of the "
                        "image's non-zero FLAIR; rise.negative_flair_quantile: tissue at or below it joins the "
                        "segmenters' S- (the converter keeps RISE's S-) (not in 000; null = the paper's seeds)",
    "classifier_augmentation": "classifier.augment: 'flip' mirrors each training image left-right with "
                               "probability 0.5 (not in 000; 'none' = the paper)",
    "classifier_members": "classifier.members > 1: C is the mean probability of that many classifiers, each "
                          "trained on its own (initialisation, data order, schedule) (not in 000; 1 = the paper)",
    "converter_negative_seed_rule": "train U on X_C images whose negative seeds cover < 50% (direction configurable)",
    "tile_stride": 64,
    "refinement": "union of accepted components, undilated",
    "fusion": "p <= 0.5 empty; w = 2(p - 0.5); m1 = w m_OS + (1 - w) m_US; m2 = m1 > 0.5",
    "difference_score": "mean |FLAIR - U(FLAIR)| over m2 on [0,1] intensities; 1 if m2 empty",
}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_weight_path(root: Path, name: object) -> Path:
    """Resolve a weight file name, refusing anything that leaves the bundle folder."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"weight file name {name!r} is not a file name", root / BUNDLE_FILE)
    if os.path.isabs(name) or Path(name).name != name or name in (".", ".."):
        raise BundleError(f"weight file {name!r} points outside the bundle folder; only plain file names "
                          "inside it are allowed", root / BUNDLE_FILE)
    path = (root / name).resolve()
    if path.parent != root.resolve():
        raise BundleError(f"weight file {name!r} points outside the bundle folder", root / BUNDLE_FILE)
    if not name.endswith(".safetensors"):
        raise BundleError(f"weight file {name!r} is not a .safetensors file", root / BUNDLE_FILE)
    return path


def default_bundle_dir() -> Path:
    """The shipped default bundle: ``$WEAKTUMORSEG_BUNDLE`` if set, else the bundle named in
    ``Resources/Models/DEFAULT``."""
    env = os.environ.get("WEAKTUMORSEG_BUNDLE")
    if env:
        return Path(env)
    marker = MODELS_DIR / "DEFAULT"
    if not marker.exists():
        raise BundleError("no default bundle is installed; pass --bundle DIR", marker)
    return MODELS_DIR / marker.read_text().strip()


class Bundle:
    """A loaded, verified model bundle: its configuration and its networks in eval mode."""

    def __init__(self, path: Path, config: dict, models: dict[str, nn.Module]):
        self.path = path
        self.config = config
        self.models = models

    # -- configuration views -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.name))

    @property
    def channels(self) -> list[str]:
        return list(self.config["channels"])

    @property
    def flair_channel(self) -> str:
        return str(self.config.get("flair_channel", "flair"))

    @property
    def patch_size(self) -> int:
        return int(self.config.get("patch_size", 128))

    @property
    def training_warnings(self) -> list[str]:
        """Signs that the training run failed, as recorded by ``train`` in ``training.warnings``
        (empty for a sound run or a bundle without that record)."""
        return [str(w) for w in (self.config.get("training") or {}).get("warnings") or []]

    @property
    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.config.get("preprocessing", {}))

    @property
    def inference(self) -> dict:
        return {**DEFAULT_INFERENCE, **self.config.get("inference", {})}

    @property
    def rise(self) -> RiseConfig:
        return RiseConfig(**self.config.get("rise", {}))

    def to(self, device: torch.device | str) -> "Bundle":
        for m in self.models.values():
            m.to(device)
        return self

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, required: Sequence[str] = INFERENCE_MODELS) -> "Bundle":
        """Read and verify a bundle folder; raise :class:`BundleError` naming the bad file."""
        root = Path(path)
        cfg_path = root / BUNDLE_FILE
        if not root.is_dir():
            raise BundleError("bundle folder not found", root)
        if not cfg_path.is_file():
            raise BundleError(f"not a model bundle (no {BUNDLE_FILE})", root)
        try:
            config = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"invalid JSON ({exc})", cfg_path) from None
        if not isinstance(config, dict):
            raise BundleError("must hold a JSON object", cfg_path)
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"format_version {version!r} is not supported (this version reads {FORMAT_VERSION})",
                              cfg_path)
        channels = config.get("channels")
        if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
            raise BundleError("'channels' must be a non-empty list of channel names", cfg_path)
        specs = config.get("models")
        if not isinstance(specs, dict):
            raise BundleError("'models' section missing", cfg_path)
        missing = [m for m in required if m not in specs]
        if missing:
            raise BundleError(f"models missing from the bundle: {', '.join(missing)}", cfg_path)
        models = {name: load_model(root, name, spec) for name, spec in specs.items() if name in required}
        return cls(root, config, models)


def load_model(root: Path, name: str, spec: Mapping) -> nn.Module:
    """Build one network of a bundle and load its verified weights."""
    cfg_path = root / BUNDLE_FILE
    if not isinstance(spec, Mapping) or "architecture" not in spec or "weights" not in spec:
        raise BundleError(f"model '{name}' needs 'architecture' and 'weights'", cfg_path)
    wpath = _safe_weight_path(root, spec["weights"])
    if not wpath.is_file():
        raise BundleError(f"weight file of model '{name}' is missing", wpath)
    expected = spec.get("sha256")
    if not expected:
        raise BundleError(f"model '{name}' has no sha256 for its weight file", cfg_path)
    actual = sha256_file(wpath)
    if actual != expected:
        raise BundleError(f"weight file is altered or truncated (sha256 {actual[:12]}... does not match "
                          f"{str(expected)[:12]}... recorded in {BUNDLE_FILE})", wpath)
    try:
        model = build(spec["architecture"], spec.get("kwargs", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"model '{name}': cannot build architecture ({exc})", cfg_path) from None
    try:
        state = load_file(str(wpath))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise BundleError(f"weights do not fit model '{name}' ({str(exc).splitlines()[0][:200]})", wpath) from None
    return model.eval()


#: Storage types ``pack_bundle`` accepts for floating-point weights.
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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
    """Copy a bundle keeping only ``models`` (default: all; the inference models are always
    kept) with weights stored as ``weights_dtype``: how a trained bundle is made small enough to
    ship. Every source weight file is verified (sha256) before it is copied; the configuration,
    metrics and training summary are kept, with ``packed_from`` recording the source's name
    and the models left out."""
    root = Path(src)
    bundle = Bundle.load(root)  # checks the JSON, loads and verifies the inference models
    config, specs = bundle.config, bundle.config["models"]
    keep = list(specs) if models is None else list(dict.fromkeys([*INFERENCE_MODELS, *models]))
    unknown = [m for m in keep if m not in specs]
    if unknown:
        raise BundleError(f"models not in the bundle: {', '.join(unknown)} (it has {', '.join(specs)})",
                          root / BUNDLE_FILE)
    loaded = {name: bundle.models.get(name) or load_model(root, name, specs[name]) for name in keep}
    archs = {name: (specs[name]["architecture"], specs[name].get("kwargs", {})) for name in keep}
    cfg = {k: v for k, v in config.items() if k != "models"}
    cfg["packed_from"] = {"name": str(config.get("name", root.name)),
                          "weights_dtype": str(config.get("weights_dtype", "float32")),
                          "models_left_out": [m for m in specs if m not in keep]}
    return save_bundle(dst, cfg, loaded, archs, overwrite=overwrite, weights_dtype=weights_dtype)


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
