"""Brain extraction with the networks of deepbet (Fisch et al., "deepbet: Fast brain extraction of
T1-weighted MRI using Convolutional Neural Networks"; not in Yoo et al.), the alternative to the
own method of :mod:`.brain` (``preprocessing.brain_extraction`` ``deepbet``).

deepbet ships two TorchScript 3D U-Nets inside its package (MIT licence; nothing is downloaded):
one finds the brain's box on a 128^3 copy of the volume, the other segments the brain in that box
(plus a 10 % margin on each side) resampled to 256^3. Both take the volume's voxel grid as it is,
whatever its spacing, with intensities scaled between the 0.5th and 99.5th percentiles. The
package's own code (and its GUI dependencies) is not imported: only its weight files are read,
from the installed distribution, and run here as in ``deepbet.bet.BrainExtraction.run_model``,
followed by the same post-processing (the largest connected component, holes filled).

Though trained on T1-weighted images of healthy adults, on FLAIR alone it keeps the tumour as the
own method does and leaves out the scalp that the own method keeps at the vertex and the skull
base (docs/experiments.md).
"""

from __future__ import annotations

import functools
import warnings
from importlib import metadata

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import WeakTumorSegError
from .brain import largest_component

#: The version whose weight files were measured (docs/experiments.md); the ``deepbet`` extra of
#: pyproject.toml pins it.
DEEPBET_VERSION = "1.0.2"
_FILES = {"box": "data/models/bbox_model.pt", "brain": "data/models/model.pt"}


class DeepbetMissing(WeakTumorSegError):
    """The deepbet package (its weight files) is not installed."""


@functools.lru_cache(maxsize=None)
def _network(which: str) -> torch.jit.ScriptModule:
    try:
        files = {str(f).replace("\\", "/"): f for f in (metadata.distribution("deepbet").files or [])}
    except metadata.PackageNotFoundError:
        files = {}
    entry = files.get(_FILES[which])
    if entry is None or not entry.locate().is_file():
        raise DeepbetMissing(f"brain extraction 'deepbet' needs the deepbet package's weights "
                             f"({_FILES[which]}): pip install deepbet=={DEEPBET_VERSION} "
                             f"(or the extra: pip install 'WeakTumorSegLib[deepbet]')")
    with warnings.catch_warnings():  # TorchScript is deprecated in favour of torch.export; deepbet ships it
        warnings.simplefilter("ignore", DeprecationWarning)
        net = torch.jit.load(str(entry.locate()), map_location="cpu")  # a file of the installed package
    return net.eval()


def _scaled(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    x = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0.0, 1.0)
    x = (x - x.mean()) / x.std().clamp_min(1e-6)
    return 0.226 * x + 0.449


def _box(small: np.ndarray, shape: tuple[int, ...], margin: float = 0.1) -> tuple[slice, ...] | None:
    """The brain's box on the full grid from its mask on the small grid, ``margin`` of its size
    added on each side (as deepbet's ``get_bbox_with_margin``)."""
    box = []
    for axis in range(3):
        profile = small.mean(axis=tuple(a for a in range(3) if a != axis))
        r = np.flatnonzero(profile > 0.02)
        if not r.size:
            return None
        scale = shape[axis] / small.shape[axis]
        centre = round((r.max() + 1 + r.min()) / 2 * scale)
        size = round((r.max() + 1 - r.min()) * scale * (1 + 2 * margin))
        box.append(slice(max(0, int(centre - size / 2)), min(shape[axis], int(centre + size / 2))))
    return tuple(box)


def _resize(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(x[None, None], shape, mode="nearest-exact")[0, 0]


def deepbet_mask(flair: np.ndarray, spacing: float | None = None) -> np.ndarray:
    """The brain of a canonical ``(slice, row, column)`` FLAIR (:mod:`.orientation`; bool, same
    shape). ``spacing`` is unused (deepbet resamples every volume to fixed grids); it keeps the
    signature of :func:`.brain.brain_mask`."""
    # canonical (inferior->superior, right->left, anterior->posterior) to deepbet's RAS voxel axes
    ras = np.ascontiguousarray(np.asarray(flair, dtype=np.float32).transpose(1, 2, 0)[::-1, ::-1, :])
    x = torch.nan_to_num(torch.from_numpy(ras))
    shape = tuple(x.shape)
    small = _resize(x, (128, 128, 128))
    low, high = small.quantile(0.005), small.quantile(0.995)
    with torch.inference_mode():
        p_small = _network("box")(_scaled(small, low, high)[None, None])[0, 1]
    box = _box(largest_component(p_small.numpy() > 0.5), shape)
    if box is None:
        return np.zeros(flair.shape, dtype=bool)
    with torch.inference_mode():
        p = _network("brain")(_scaled(_resize(x[box], (256, 256, 256)), low, high)[None, None])[0, 1]
    mask = np.zeros(shape, dtype=bool)
    mask[box] = _resize(p, tuple(x[box].shape)).numpy() > 0.5
    mask = ndi.binary_fill_holes(largest_component(mask))
    return np.ascontiguousarray(mask[::-1, ::-1, :].transpose(2, 0, 1))
