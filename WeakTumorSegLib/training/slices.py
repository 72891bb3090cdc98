"""Training slices (Yoo et al., section 3.1), made with inference's own preprocessing.

Per patient: the standardisation of inference (canonical orientation, the bundle's in-plane
spacing, brain extraction, normalisation inside the brain), then one random crop/pad per volume
to the network's patch size ("randomly cropping and padding ... to fixed patches of size 128").
Slices more than half zero in every channel are dropped, as in the paper. The paper's further
rule for BraTS (drop the first and last 30 slices of 155) is specific to that geometry and is
not applied here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.cohort import (
    Case,
    canonical_slice_labels,
    case_folder,
    check_channel_names,
    labels_from_mask,
    read_mask,
    slice_labels,
)
from ..io.images import read_channels
from ..preprocessing.intensity import PreprocessConfig, zero_fraction
from ..io.orientation import code_from_direction
from ..preprocessing.standardise import standardise


@dataclass
class SliceSet:
    """Training slices at the network's patch size.

    ``x`` float32 ``(N, C, P, P)`` preprocessed like inference; ``label`` uint8 ``(N,)``;
    ``mask`` uint8 ``(N, P, P)`` ground truth, for evaluation only, when every case has a mask
    (else None); ``patient`` int32 ``(N,)`` index into ``patients``; ``slice_index`` int32
    ``(N,)`` the slice's index in its source volume.
    """

    x: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None
    patient: np.ndarray
    slice_index: np.ndarray
    patients: list[str]
    channels: list[str] = field(default_factory=list)
    #: per patient, :func:`~WeakTumorSegLib.preprocessing.standardise.volume_stats`
    stats: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, idx) -> "SliceSet":
        """The slices at ``idx`` (integer indices or a boolean mask); same patient list."""
        idx = np.asarray(idx)
        if idx.dtype != bool:
            idx = idx.astype(np.int64).reshape(-1)
        return SliceSet(self.x[idx], self.label[idx], None if self.mask is None else self.mask[idx],
                        self.patient[idx], self.slice_index[idx], list(self.patients), list(self.channels))

    def select_patients(self, ids: Sequence[str]) -> "SliceSet":
        """The slices of the given patients (ids must be in ``patients``)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self.patients]
        if unknown:
            raise ValueError(f"patients not in this slice set: {', '.join(map(str, unknown))}")
        wanted = np.asarray([self.patients.index(i) for i in ids], dtype=np.int32)
        return self.subset(np.isin(self.patient, wanted))

    def summary(self) -> dict:
        """Counts for logs and the bundle's training-data section."""
        return {"patients": len(set(self.patient.tolist())), "slices": len(self),
                "tumor_slices": int(self.label.sum()), "channels": list(self.channels),
                "patch_size": int(self.x.shape[-1]) if self.x.ndim == 4 else 0}


ProgressFn = Callable[[int, int], None]


def _channel_path(case: Case, name: str) -> Path:
    if name in case.channels:
        return Path(case.channels[name])
    for key, path in case.channels.items():
        if key.lower() == name.lower():
            return Path(path)
    raise InputError(f"patient '{case.id}' has no '{name}' channel (it has: {', '.join(case.channels)})",
                     case_folder(case))


def _place(size: int, patch: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """``(source start, target start, length)`` of one axis's random crop (size > patch) or
    random zero-pad offset (size <= patch)."""
    if size > patch:
        return int(rng.integers(0, size - patch + 1)), 0, patch
    return 0, int(rng.integers(0, patch - size + 1)), size


def _crop_pad(a: np.ndarray, py: tuple[int, int, int], px: tuple[int, int, int], patch: int) -> np.ndarray:
    out = np.zeros(a.shape[:-2] + (patch, patch), dtype=a.dtype)
    (sy, ty, ly), (sx, tx, lx) = py, px
    out[..., ty:ty + ly, tx:tx + lx] = a[..., sy:sy + ly, sx:sx + lx]
    return out


def stat_ranges(stats: Sequence[Mapping[str, float]]) -> dict[str, list[float]]:
    """``{statistic: [lowest, highest]}`` over volumes' :func:`~WeakTumorSegLib.preprocessing.standardise.volume_stats`
    (the bundle's ``preprocessing_stats``, which :mod:`WeakTumorSegLib.inference.checks` compares inputs with)."""
    keys = sorted({k for st in stats for k in st})
    return {k: [min(st[k] for st in stats if k in st), max(st[k] for st in stats if k in st)] for k in keys}


def load_slices(cases: Sequence[Case], channels: Sequence[str], pp: PreprocessConfig, patch: int = 128,
                erosion: int = 0, max_zero_fraction: float = 0.5, seed: int = 0,
                progress: ProgressFn | None = None, flair: str | None = None) -> SliceSet:
    """Read, preprocess and cut every case into axial training slices of ``patch x patch``.

    Per case: ``read_channels`` (geometry checked), the case's declared geometry, and
    :func:`~WeakTumorSegLib.preprocessing.standardise.standardise` (exactly inference's
    preprocessing; ``flair``, default the first channel, is the channel brain extraction uses),
    then one random crop/pad of the working slices to ``patch x patch`` per volume (the same offset
    for all its slices; ``np.random.default_rng([seed, case index])``): zero padding at a random
    offset along an axis no longer than ``patch``, a random crop along a longer one.

    Labels come from :func:`slice_labels` (one per source slice). When the case has a mask it
    goes through the same crop and resampling (``to_working`` of the float mask, > 0.5); a
    slice whose source mask has tumour but whose patch mask has none (the crop cut it away, or
    it is too small to survive the in-plane resampling) gets label 0, so labels describe the
    patch the networks see. Without a mask the labels stay as given; a crop that cuts tumour
    away cannot be detected then (none happens while the working size fits in ``patch``).

    Slices where the fraction of pixels zero in every channel exceeds ``max_zero_fraction`` are
    dropped (as in the paper). ``progress(done, total)`` is called after each case.
    """
    names = check_channel_names(channels)
    flair = flair or names[0]
    stats: dict[str, dict] = {}
    if patch < 1:
        raise ValueError("patch must be >= 1")
    cases = list(cases)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("patient ids repeat in the case list")
    with_masks = bool(cases) and all(c.mask is not None for c in cases)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "label", "mask", "patient", "slice_index")}
    for ci, case in enumerate(cases):
        paths = {n: _channel_path(case, n) for n in names}
        volume = read_channels(paths)
        geometry = case.geometry(volume.geometry)
        std = standardise(volume.channels, names, pp, flair, geometry.spacing, code_from_direction(geometry.direction))
        labels = None
        mask = None
        if case.mask is not None:
            mask = read_mask(Path(case.mask), volume.geometry, f"channel '{names[0]}' ({paths[names[0]]})")
        if std is not None:  # an all-background volume contributes no slices
            work = std.work
            if case.labels is not None:
                labels = canonical_slice_labels(slice_labels(case, volume.channels[names[0]].shape[0], erosion),
                                               std.reorientation.code, case.labels)
            else:
                labels = labels_from_mask(std.reorientation.to_canonical(mask), erosion)
            stats[case.id] = std.stats
            rng = np.random.default_rng([seed, ci])
            py, px = _place(work.shape[2], patch, rng), _place(work.shape[3], patch, rng)
            x = _crop_pad(work, py, px, patch)
            lab = labels.copy()
            m = None
            if mask is not None:
                m = _crop_pad(std.working(mask), py, px, patch) > 0.5
                lost = std.reorientation.to_canonical(mask).any(axis=(1, 2)) & ~m.any(axis=(1, 2))
                lab[lost] = 0
            # the share of background is the input's, in the head's box (the paper's rule for its slices;
            # the part outside the brain and the padding of a small brain box would count as background)
            keep = np.flatnonzero((std.background if std.background is not None else zero_fraction(x))
                                  <= max_zero_fraction)
            parts["x"].append(x[keep].astype(np.float32, copy=False))
            parts["label"].append(lab[keep].astype(np.uint8))
            if with_masks:
                parts["mask"].append(m[keep].astype(np.uint8))
            parts["patient"].append(np.full(keep.size, ci, dtype=np.int32))
            parts["slice_index"].append(keep.astype(np.int32))
        if progress is not None:
            progress(ci + 1, len(cases))

    def cat(key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(shape, dtype=dtype)

    return SliceSet(
        x=cat("x", (0, len(names), patch, patch), np.float32),
        label=cat("label", (0,), np.uint8),
        mask=cat("mask", (0, patch, patch), np.uint8) if with_masks else None,
        patient=cat("patient", (0,), np.int32),
        slice_index=cat("slice_index", (0,), np.int32),
        patients=ids,
        channels=names,
        stats=stats,
    )


def validate_cohort(slices: SliceSet, data_path: str | Path) -> None:
    """Refuse a cohort the method cannot train on: it needs tumour and tumour-free slices."""
    if len(slices) == 0:
        raise InputError("the cohort has no usable slices (all were dropped as mostly background)", data_path)
    if not (slices.label == 0).any():
        raise InputError("the cohort has no tumour-free slices; the classifier and generator need both kinds",
                         data_path)
    if not (slices.label == 1).any():
        raise InputError("the cohort has no tumour slices; the classifier and generator need both kinds",
                         data_path)
