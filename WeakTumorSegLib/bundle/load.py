"""Loading a model bundle: its checked configuration and its networks, verified and in eval mode.

Loading never unpickles anything: weights are read with ``safetensors`` after their sha256 has
been checked against ``bundle.json``, and weight file names must be plain names inside the
bundle folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import BundleError
from ..networks.registry import build
from ..preprocessing.intensity import PreprocessConfig
from ..preprocessing.standardise import BRAIN_EXTRACTION
from ..stages.seeds import RiseConfig, SeedSettings
from .info import BUNDLE_FILE, BundleInfo, read_bundle_config, sha256_file

#: Networks an inference bundle must contain.
INFERENCE_MODELS = ("classifier", "converter", "segmenter_us", "segmenter_os")
#: Networks the seeds need besides the classifier when a bundle has them: ACAM's attention.
SEED_MODELS = ("attention",)
#: Networks inference uses when a bundle has them: the final segmenter, trained on the fused
#: pipeline's filtered masks, makes the main mask; and the seeds' networks.
OPTIONAL_INFERENCE_MODELS = ("final", *SEED_MODELS)


class Bundle(BundleInfo):
    """A loaded, verified model bundle: its configuration and its networks in eval mode."""

    def __init__(self, path: str | Path, config: Mapping, models: dict[str, nn.Module]):
        super().__init__(path, config)
        self.models = models

    @property
    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.config.get("preprocessing", {}))

    @property
    def final_context(self) -> int:
        """Neighbouring slices on each side that the final segmenter reads (0: one slice; 2.5D above)."""
        return int((self.config.get("final") or {}).get("context", 0))

    def rise(self, n_masks: int | None = None) -> RiseConfig:
        """The bundle's RISE settings (``n_masks``, when given, replaces its number of masks)."""
        return self.seeds(n_masks=n_masks).rise

    def seeds(self, method: str | None = None, n_masks: int | None = None) -> SeedSettings:
        """The bundle's seed settings (``method`` and RISE's ``n_masks``, when given, replace its own)."""
        return SeedSettings.from_config(self.config, method, n_masks)

    def to(self, device: torch.device | str) -> "Bundle":
        for m in self.models.values():
            m.to(device)
        return self

    @classmethod
    def load(cls, path: str | Path, required: Sequence[str] = INFERENCE_MODELS) -> "Bundle":
        """Read and verify a bundle folder; raise :class:`BundleError` naming the bad file."""
        root = Path(path)
        config = read_bundle_config(root)
        specs = config.get("models")
        if not isinstance(specs, dict):
            raise BundleError("'models' section missing", root / BUNDLE_FILE)
        missing = [m for m in required if m not in specs]
        if missing:
            raise BundleError(f"models missing from the bundle: {', '.join(missing)}", root / BUNDLE_FILE)
        extraction = (config.get("preprocessing") or {}).get("brain_extraction", "own")
        if extraction not in BRAIN_EXTRACTION:
            raise BundleError(f"unknown preprocessing.brain_extraction {extraction!r} (this version knows "
                              f"{', '.join(BRAIN_EXTRACTION)})", root / BUNDLE_FILE)
        if not isinstance((config.get("preprocessing") or {}).get("scalp_fat", False), bool):
            raise BundleError("preprocessing.scalp_fat must be true or false", root / BUNDLE_FILE)
        wanted = [*required, *(m for m in OPTIONAL_INFERENCE_MODELS if m in specs)]
        models = {name: load_model(root, name, spec) for name, spec in specs.items() if name in wanted}
        return cls(root, config, models)

    def load_optional(self, names: Sequence[str]) -> None:
        """Also load those of ``names`` that the bundle has (e.g. ``segmenter0`` for evaluation)."""
        specs = self.config.get("models", {})
        for name in names:
            if name in specs and name not in self.models:
                self.models[name] = load_model(self.path, name, specs[name])


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
