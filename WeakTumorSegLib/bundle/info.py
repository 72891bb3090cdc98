"""What a model bundle says about itself, read from its ``bundle.json`` without PyTorch.

A bundle is a folder with ``bundle.json`` and one ``.safetensors`` file per network. This module
reads and checks the JSON (format version, channels, the FLAIR channel, the inference settings)
and knows where the shipped bundles are and which one is the default. It imports neither torch
nor numpy: the Slicer module uses it to show a bundle's name, channels and settings before
PyTorch is installed, and :class:`~WeakTumorSegLib.bundle.load.Bundle` builds on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import BundleError
from .settings import InferenceSettings

FORMAT_VERSION = 1
BUNDLE_FILE = "bundle.json"
#: ``Resources/Models`` of a source checkout (in the Slicer extension, beside the installed core).
MODELS_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"
#: The file in :data:`MODELS_DIR` that names the default bundle.
DEFAULT_MARKER = "DEFAULT"
#: Storage types of floating-point weights that ``pack`` and ``save_bundle`` accept (torch dtype names).
WEIGHT_DTYPE_NAMES = ("float32", "float16", "bfloat16")
#: The environment variable that, when set, names the default bundle folder instead.
BUNDLE_ENV = "WEAKTUMORSEG_BUNDLE"


def default_bundle_dir() -> Path:
    """The default bundle: ``$WEAKTUMORSEG_BUNDLE`` if set, else the bundle named in
    ``Resources/Models/DEFAULT``; used by every command and the Slicer module."""
    env = os.environ.get(BUNDLE_ENV)
    if env:
        return Path(env)
    marker = MODELS_DIR / DEFAULT_MARKER
    if not marker.is_file():
        raise BundleError("no default bundle is installed; pass --bundle DIR", marker)
    return MODELS_DIR / marker.read_text().strip()


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256 as hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_bundle_config(path: str | Path) -> dict:
    """The checked contents of ``<path>/bundle.json``; :class:`BundleError` naming the file otherwise."""
    root = Path(path)
    cfg_path = root / BUNDLE_FILE
    if not str(path) or not root.is_dir():
        raise BundleError("bundle folder not found", root)
    if not cfg_path.is_file():
        raise BundleError(f"not a model bundle (no {BUNDLE_FILE})", root)
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"invalid JSON ({exc})", cfg_path) from None
    except OSError as exc:
        raise BundleError(f"cannot be read ({exc.strerror or exc})", cfg_path) from None
    if not isinstance(config, dict):
        raise BundleError("must hold a JSON object", cfg_path)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"format_version {version!r} is not supported (this version reads {FORMAT_VERSION})",
                          cfg_path)
    channels = config.get("channels")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
        raise BundleError("'channels' must be a non-empty list of channel names", cfg_path)
    flair = config.get("flair_channel", "flair")
    if flair not in channels:
        raise BundleError(f"flair_channel {flair!r} is not one of the channels ({', '.join(channels)})", cfg_path)
    return config


class BundleInfo:
    """A bundle's configuration (``bundle.json``) and the views of it that the code uses."""

    def __init__(self, path: str | Path, config: Mapping):
        self.path = Path(path)
        self.config = dict(config)

    @classmethod
    def read(cls, path: str | Path) -> "BundleInfo":
        """Read and check ``<path>/bundle.json`` (no weights are touched)."""
        return cls(path, read_bundle_config(path))

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.path.name))

    @property
    def description(self) -> str:
        return str(self.config.get("description") or "")

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

    def settings(self, **overrides: float | str | None) -> InferenceSettings:
        """The inference settings: the bundle's, with the given overrides (None: the bundle's)."""
        return InferenceSettings.resolve(self.config.get("inference"), overrides, self.path)
