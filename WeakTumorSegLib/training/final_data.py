"""The final segmenter's training tiles: every training patient run through the bundle's own
inference, its slices labelled by :func:`~WeakTumorSegLib.stages.final.slice_kinds`.

Per patient, :func:`~WeakTumorSegLib.inference.pipeline.segment_arrays` gives the fused mask after
the bundle's post-processing, the difference-score flags and (for the ``em`` trainer) the seeds
and the fused probability; the volume is then standardised and tiled exactly as inference tiles
it, so the final network learns on the patches it will see. Slice labels come from the cohort, as
for every other stage; masks, when the cohort has them, are kept only to report how good the
labels are (never to train or choose). A patient with a reviewed export from the Slicer module
(:mod:`WeakTumorSegLib.io.annotations`) is labelled by it instead (:func:`annotated_kinds`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..bundle.load import Bundle
from ..errors import InputError
from ..io.annotations import Annotation, check_export
from ..io.cohort import Case, canonical_slice_labels, read_mask, slice_labels
from ..io.images import read_channels
from ..inference.pipeline import classify, prepare, segment_arrays
from ..metrics import dice_from_counts
from ..preprocessing.orientation import Reorientation
from ..stages.final import EMPTY, EXCLUDED, KIND_NAMES, MASKED, WEAK, slice_kinds, tile_kinds
from ..stages.label_refinement import grow_labels


@dataclass
class FinalTiles:
    """Training tiles of the final segmenter; arrays are indexed by tile."""

    x: np.ndarray  #: (N, C, P, P) float32, preprocessed like inference (C: channels x slices with a context)
    kind: np.ndarray  #: (N,) uint8, EMPTY / MASKED / WEAK / EXCLUDED
    label: np.ndarray  #: (N,) uint8 image label (tumour in the tile)
    mask: np.ndarray  #: (N, P, P) uint8, the full label of EMPTY and MASKED tiles (zeros elsewhere)
    proposal: np.ndarray  #: (N, P, P) uint8, the fused pipeline's mask on every tile, flagged or not
    patient: np.ndarray  #: (N,) int32 index into ``patients``
    slice_index: np.ndarray  #: (N,) int32, the tile's axial slice in the canonical layout
    patients: list[str]
    fused: np.ndarray | None = None  #: (N, P, P) float16 fused probability (``em``)
    pos: np.ndarray | None = None  #: (N, P, P) uint8 positive seeds (``em``)
    neg: np.ndarray | None = None  #: (N, P, P) uint8 negative seeds (``em``)
    truth: np.ndarray | None = None  #: (N, P, P) uint8 true masks, for the label report only
    reviewed: np.ndarray | None = None  #: (N,) bool, labelled by a reviewer's export (None: no tile is)

    def __len__(self) -> int:
        return len(self.kind)

    def counts(self) -> dict:
        """How many tiles of each kind, and of tumour slices with a full label."""
        out = {KIND_NAMES[k]: int((self.kind == k).sum()) for k in KIND_NAMES}
        out["tumour_tiles_with_mask"] = int(((self.kind == MASKED) & (self.label == 1)).sum())
        return out

    def label_quality(self) -> dict | None:
        """The labels against the true masks (None without them): the 2D Dice of the masked tumour
        tiles' labels (pooled over tiles), and the share of true tumour tiles that carry a mask."""
        if self.truth is None:
            return None
        sel = (self.kind == MASKED) & (self.label == 1)
        m, t = self.mask[sel].astype(bool), self.truth[sel].astype(bool)
        true_tumour = self.truth.reshape(len(self), -1).any(1) & (self.kind != EXCLUDED)
        return {"dice_masked_tiles": float(dice_from_counts(m.sum(), (m & t).sum(), t.sum())),
                "true_tumour_tiles": int(true_tumour.sum()),
                "true_tumour_tiles_with_mask": int((true_tumour & sel).sum())}


def _tiles_of(vol, volume_map: np.ndarray, dtype) -> np.ndarray:
    """An input-grid ``(slice, row, column)`` map as the volume's tiles ``(N, P, P)``."""
    return _tile(vol, vol.std.working(volume_map)).astype(dtype)


def _tile(vol, working_map: np.ndarray) -> np.ndarray:
    """A working-grid ``(slice, row, column)`` map as the volume's tiles ``(N, P, P)``."""
    return vol.tiling.extract(working_map[:, None])[:, 0]


def annotated_kinds(annotation: Annotation, case: Case, code: str, erosion: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kinds per canonical slice, mask on the input grid)`` of a reviewed export: ``kept`` and
    ``corrected`` slices are full labels (masked or empty), ``excluded`` ones are never used, and
    ``flagged`` ones are weak where the cohort labels them tumour, empty where it labels them
    tumour-free, unused where it has no labels. An export on another grid than its image, or with
    another slice count, is refused naming the file."""
    mask = check_export(annotation, case)
    n = mask.shape[0]
    canon = lambda a: canonical_slice_labels(a, code, annotation.manifest)  # noqa: E731
    full, excluded = canon(annotation.full()), canon(annotation.excluded())
    pixels = Reorientation(code).to_canonical(mask).sum(axis=(1, 2))
    try:
        labels = canon(slice_labels(case, n, erosion))
        weak = np.where(labels > 0, WEAK, EMPTY)
    except InputError:  # no labels in the cohort: a flagged slice's label is unknown
        weak = np.full(n, EXCLUDED)
    kinds = np.where(excluded, EXCLUDED, np.where(full, np.where(pixels > 0, MASKED, EMPTY), weak))
    return kinds.astype(np.uint8), mask


def case_tiles(bundle: Bundle, case: Case, device: torch.device, erosion: int, with_em: bool,
               annotation: Annotation | None = None, grow: float | None = None, pseudo_masks: bool = True,
               context: int = 0) -> dict:
    """One patient's tiles, kinds and labels (see the module docstring); with ``annotation`` the
    reviewed export gives them instead of the fused pipeline (:func:`annotated_kinds`). With
    ``grow``, the pipeline's trusted masks grow into its probability above ``grow``
    (:func:`~WeakTumorSegLib.stages.label_refinement.grow_labels`); a reviewer's never do. Without
    ``pseudo_masks``, a patient without an export gives slice labels only (its tumour slices weak,
    as Mlynarski et al.'s image-labelled scans). With ``context``, a tile's input holds the channels
    of that many neighbouring slices on each side (2.5D, as inference gives them)."""
    volume = read_channels({c: case.channels[c] for c in bundle.channels})
    geometry = case.geometry(volume.geometry)
    settings = bundle.settings(final_weight=0.0)  # the fused pipeline labels, even when the bundle has a final network
    res = segment_arrays(bundle, volume.channels, device, settings, seeds=bundle.seeds() if with_em else None,
                         geometry=geometry)
    vol = prepare(bundle, volume.channels, settings, geometry)
    if vol is None:
        return {}
    code = res.preprocessing.get("orientation") or "PLS"
    if annotation is None:
        first = volume.channels[bundle.channels[0]]
        labels = canonical_slice_labels(slice_labels(case, first.shape[0], erosion), code, case.labels)
        kinds, given = slice_kinds(labels, res.tumor_pixels, res.flagged), res.mask
        if not pseudo_masks:
            kinds = np.where(kinds == MASKED, WEAK, kinds).astype(np.uint8)
    else:
        kinds, given = annotated_kinds(annotation, case, code, erosion)
    given_w = vol.std.working(given.astype(np.float32)) > 0.5
    proposal = mask = _tile(vol, given_w)
    if grow is not None and annotation is None:
        grown, kinds = grow_labels(vol.std.working(res.probability), given_w, kinds, grow)
        mask = _tile(vol, grown)
    with torch.inference_mode():
        p = classify(bundle.models["classifier"], vol, settings, device, lambda *a: None)
    kind, label = tile_kinds(kinds, vol.tiling.slice_of(), mask, vol.tissue, p)
    keep = np.flatnonzero(kind != EXCLUDED)
    out = {"x": vol.tiling.with_neighbours(vol.patches, keep, context), "kind": kind[keep], "label": label[keep],
           "mask": (mask[keep] & (kind[keep] == MASKED)[:, None, None]).astype(np.uint8),
           "proposal": proposal[keep].astype(np.uint8), "reviewed": np.full(len(keep), annotation is not None),
           "slice_index": vol.tiling.slice_of()[keep].astype(np.int32)}
    if with_em:
        out["fused"] = _tiles_of(vol, res.probability, np.float16)[keep]
        out["pos"] = (_tiles_of(vol, res.positive_seeds, np.float32)[keep] > 0.5).astype(np.uint8)
        out["neg"] = (_tiles_of(vol, res.negative_seeds, np.float32)[keep] > 0.5).astype(np.uint8)
    if case.mask is not None:
        truth = read_mask(case.mask, volume.geometry)
        out["truth"] = (_tiles_of(vol, truth.astype(np.float32), np.float32)[keep] > 0.5).astype(np.uint8)
    return out


def collect_tiles(bundle: Bundle, cases: Sequence[Case], device: torch.device, erosion: int = 0,
                  with_em: bool = False, progress: Callable[[int, int], None] | None = None,
                  annotations: Mapping[str, Annotation] | None = None, grow: float | None = None,
                  pseudo_masks: bool = True, context: int = 0) -> FinalTiles:
    """:func:`case_tiles` of every case (with its reviewed export from ``annotations``, keyed by
    patient id, where it has one, the pipeline's masks grown above ``grow``, or none of its masks
    without ``pseudo_masks``, each tile with ``context`` neighbouring slices), concatenated."""
    parts, ids = [], []
    for i, case in enumerate(cases):
        part = case_tiles(bundle, case, device, erosion, with_em, (annotations or {}).get(case.id), grow, pseudo_masks,
                          context)
        if part:
            part["patient"] = np.full(len(part["kind"]), len(ids), np.int32)
            parts.append(part)
            ids.append(case.id)
        if progress:
            progress(i + 1, len(cases))
    def cat(key):
        if parts and all(key in p for p in parts):
            return np.concatenate([p[key] for p in parts])
        return None

    if not parts:
        raise ValueError("no training tiles: every volume was empty")
    tiles = FinalTiles(*(cat(k) for k in ("x", "kind", "label", "mask", "proposal", "patient", "slice_index")), ids,
                       *(cat(k) for k in ("fused", "pos", "neg", "truth", "reviewed")))
    if not (tiles.kind == MASKED).any() and not (tiles.kind == EMPTY).any():
        raise ValueError("no tile has a full label (no tumour-free slice and no trusted mask)")
    return tiles
