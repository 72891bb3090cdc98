"""What one volume's inference produces (:func:`~WeakTumorSegLib.inference.pipeline.segment_arrays`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..bundle.settings import InferenceSettings


@dataclass
class SegmentationResult:
    """Everything one volume's inference produces; arrays are ``(slice, row, column)`` on the
    input grid; per-slice values (``p_tumor``, the difference score, the flags, the slice table) are
    over the axial slices of the canonical layout, which are the input's own slices, inferior first,
    for a volume stored axially."""

    #: the tumour mask (uint8), made by ``network``
    mask: np.ndarray
    #: ``network``'s probability after the scalp margin and the FLAIR trim, before the component filter
    probability: np.ndarray
    #: per slice, the largest classifier output over its patches (after slice smoothing)
    p_tumor: np.ndarray
    #: per slice, the difference score of the fused mask (Eq. 19; 1 for an empty mask)
    difference_score: np.ndarray
    flagged: np.ndarray
    flag_reason: list[str]
    #: the settings the volume was segmented with
    settings: InferenceSettings
    positive_seeds: np.ndarray | None = None
    negative_seeds: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    #: ``extra`` segmenters: binary masks and probabilities, gated and post-processed like ``mask``
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)
    extra_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    #: with ``extra`` containing ``"healthy"``: the converter's healthy FLAIR on the normalised
    #: [0, 1] FLAIR scale, equal to the normalised FLAIR wherever the converter did not run
    #: (background patches, outside the brain box)
    healthy: np.ndarray | None = None
    #: with ``"healthy"``: the normalised [0, 1] FLAIR the converter saw
    flair: np.ndarray | None = None
    #: how the input was read: ``orientation``, ``skull_stripped`` and the standardised volume's ``stats``
    preprocessing: dict = field(default_factory=dict)
    #: the input is unlike the training data, or the empty mask may be a miss (:mod:`.checks`)
    warnings: list[str] = field(default_factory=list)
    #: tumour pixels per axial slice of the canonical layout (None: ``mask``'s own slices)
    slice_pixels: np.ndarray | None = None
    #: the network that made ``mask``: ``final`` (the final segmenter) or ``fused`` (S_US and S_OS)
    network: str = "fused"

    @property
    def threshold(self) -> float:
        """The difference-score threshold the slices were flagged with."""
        return self.settings.filter_threshold

    @property
    def tumor_pixels(self) -> np.ndarray:
        """Tumour pixels per axial slice (the slices of ``p_tumor`` and the slice table)."""
        if self.slice_pixels is not None:
            return self.slice_pixels
        return self.mask.sum(axis=(1, 2)).astype(np.int64)

    def slice_rows(self) -> list[dict]:
        """One row per axial slice, keyed by :data:`~WeakTumorSegLib.io.names.SLICE_COLUMNS`."""
        px = self.tumor_pixels
        return [{"slice": k, "p_tumor": f"{self.p_tumor[k]:.4f}",
                 "difference_score": f"{self.difference_score[k]:.4f}",
                 "flagged": int(self.flagged[k]), "flag_reason": self.flag_reason[k], "tumor_pixels": int(px[k])}
                for k in range(len(px))]
