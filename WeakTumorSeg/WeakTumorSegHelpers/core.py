"""Where the module's files are, and the torch-free part of the core library that the module shares.

The core library (``WeakTumorSegLib``) lies beside the module once the extension is installed, or one
folder up in a source checkout. Importing this module finds it (:func:`coreRoot`), puts its folder on
``sys.path`` and imports from it, once: the bundle reader and the default-bundle rule
(``WeakTumorSegLib.bundle.info``), the inference settings' limits (``WeakTumorSegLib.bundle.settings``)
and the names of the outputs (``WeakTumorSegLib.io.names``). None of these imports PyTorch, so the module
shows bundles and settings before PyTorch is installed. Without the core, importing this module raises
:class:`SegmentationError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

#: Folder of the Slicer module (``WeakTumorSeg/``).
MODULE_DIR = Path(__file__).resolve().parents[1]


class SegmentationError(RuntimeError):
    """A segmentation or export could not be done; ``str(error)`` is one readable line."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def coreRoot() -> Path:
    """Folder that holds ``WeakTumorSegLib``: the module's folder once installed, the checkout root
    in a source tree."""
    for folder in (MODULE_DIR, MODULE_DIR.parent):
        if (folder / "WeakTumorSegLib" / "__init__.py").is_file():
            return folder
    raise SegmentationError(f"WeakTumorSegLib was not found next to the module ({MODULE_DIR}); reinstall the extension")


def _putCoreOnPath() -> str:
    root = str(coreRoot())
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


_CORE_ROOT = _putCoreOnPath()
try:
    from WeakTumorSegLib.bundle.info import MODELS_DIR, BundleInfo, default_bundle_dir
    from WeakTumorSegLib.errors import WeakTumorSegError
    from WeakTumorSegLib.bundle.settings import MAX_SCALP_MARGIN_MM, InferenceSettings
    from WeakTumorSegLib.io.names import (
        NEGATIVE_SEEDS_SEGMENT,
        POSITIVE_SEEDS_SEGMENT,
        SLICE_COLUMNS,
        TUMOR_SEGMENT,
        segment_outputs,
    )
except ImportError as exc:
    raise SegmentationError(f"WeakTumorSegLib in {_CORE_ROOT} could not be imported ({exc}); "
                            "reinstall the extension") from exc

__all__ = ["MAX_SCALP_MARGIN_MM", "MODELS_DIR", "MODULE_DIR", "NEGATIVE_SEEDS_SEGMENT",
           "POSITIVE_SEEDS_SEGMENT", "SEED_SEGMENTS", "SLICE_COLUMNS", "TUMOR_SEGMENT", "BundleInfo",
           "InferenceSettings", "SegmentationError", "coreRoot", "defaultBundleOrEmpty", "defaultBundlePath",
           "defaultBundleSettings", "pythonExecutable",
           "readBundle", "safeFileStem", "sampleDataFolders", "segment_outputs", "segmentationErrors"]

#: The seed segments of the core's segmentation file (drawn as outlines).
SEED_SEGMENTS = (POSITIVE_SEEDS_SEGMENT, NEGATIVE_SEEDS_SEGMENT)


@contextlib.contextmanager
def segmentationErrors() -> Iterator[None]:
    """Turn the core's one-line errors (``WeakTumorSegError``: ``"<path>: <problem>"``) into
    :class:`SegmentationError`."""
    try:
        yield
    except WeakTumorSegError as exc:
        raise SegmentationError(str(exc)) from None


def readBundle(path: str | os.PathLike) -> BundleInfo:
    """Read a bundle folder's ``bundle.json`` with the core's reader, its inference settings checked too;
    raise :class:`SegmentationError` when it is not a usable bundle."""
    with segmentationErrors():
        bundle = BundleInfo.read(path)
        bundle.settings()  # a setting the core would refuse makes the bundle unusable now, not at Segment
    return bundle


def defaultBundlePath() -> Path:
    """The default bundle, by the core's rule: ``$WEAKTUMORSEG_BUNDLE`` if set, else the bundle named in
    ``Resources/Models/DEFAULT``."""
    with segmentationErrors():
        return default_bundle_dir()


def defaultBundleOrEmpty() -> Path:
    """:func:`defaultBundlePath`, or an empty path when there is no default bundle."""
    try:
        return defaultBundlePath()
    except SegmentationError:
        return Path()


def defaultBundleSettings() -> InferenceSettings:
    """The default bundle's inference settings (the core's defaults without a usable default bundle)."""
    try:
        return readBundle(defaultBundlePath()).settings()
    except SegmentationError:
        return InferenceSettings()


def sampleDataFolders() -> list[Path]:
    """Sample patient folders shipped in ``Resources/SampleData`` (``<id>/<id>_<channel>.nii.gz``), real
    patients first (the synthetic ``PHANTOM_*`` sample is for the phantom stand-in bundle)."""
    root = MODELS_DIR.parent / "SampleData"
    folders = [p for p in root.glob("*/") if p.is_dir() and any(p.glob(f"{p.name}_*.nii*"))]
    return sorted(folders, key=lambda p: (p.name.startswith("PHANTOM_"), p.name))


def pythonExecutable() -> str:
    """Python interpreter that runs the core: Slicer's ``PythonSlicer`` inside Slicer, else this one."""
    exe = Path(sys.executable)
    if exe.name.lower().startswith("python"):
        return str(exe)
    for candidate in (exe.with_name("PythonSlicer"), exe.with_name("PythonSlicer.exe")):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("PythonSlicer") or str(exe)


def safeFileStem(name: str) -> str:
    """A file-name stem made from a node name (letters, digits, ``-``, ``_``, ``.``)."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._")
    return stem or "volume"
