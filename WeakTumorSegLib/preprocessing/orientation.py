"""One canonical voxel layout for every input (not in Yoo et al., whose data share one layout).

The networks see every volume in the same layout, whatever the scanner stored: arrays
``(slice, row, column)`` whose slice index runs inferior -> superior, rows patient right -> left
and columns anterior -> posterior: orientation code ``PLS`` (:mod:`WeakTumorSegLib.io.orientation`;
the true layout of the TCGA-LGG arrays, so their training data keep their layout).
:class:`Reorientation` is a permutation and flips found from the orientation code of the direction
matrix (the nearest axis for oblique directions); it is exact and its inverse puts every output
back on the input's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..io.orientation import CANONICAL, LETTERS, check_code


@dataclass(frozen=True)
class Reorientation:
    """From arrays ``(k, j, i)`` stored in orientation ``code`` to the canonical layout and back."""

    code: str

    def _plan(self) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
        target = {LETTERS[ch][0]: 2 - n for n, ch in enumerate(CANONICAL)}  # physical axis -> array axis
        perm, flip = [0, 0, 0], [False, False, False]
        for index_axis, ch in enumerate(check_code(self.code)):
            axis, sign = LETTERS[ch]
            out_axis = target[axis]
            perm[out_axis] = 2 - index_axis
            flip[out_axis] = sign != LETTERS[CANONICAL[2 - out_axis]][1]
        return tuple(perm), tuple(flip)

    @property
    def identity(self) -> bool:
        return check_code(self.code) == CANONICAL

    def to_canonical(self, a: np.ndarray) -> np.ndarray:
        """``a`` (its last three axes ``(k, j, i)``) in the canonical layout; a view where possible."""
        if self.identity:
            return a
        perm, flip = self._plan()
        lead = a.ndim - 3
        out = np.transpose(a, tuple(range(lead)) + tuple(lead + p for p in perm))
        for ax, f in enumerate(flip):
            if f:
                out = np.flip(out, axis=lead + ax)
        return np.ascontiguousarray(out)

    def to_input(self, a: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical`."""
        if self.identity:
            return a
        perm, flip = self._plan()
        lead = a.ndim - 3
        for ax, f in enumerate(flip):
            if f:
                a = np.flip(a, axis=lead + ax)
        inv = np.argsort(perm)
        return np.ascontiguousarray(np.transpose(a, tuple(range(lead)) + tuple(lead + int(p) for p in inv)))

    def spacing(self, spacing_xyz: Sequence[float]) -> tuple[float, float, float]:
        """The canonical arrays' ``(slice, row, column)`` voxel size from the input's ITK ``(x, y, z)`` spacing."""
        perm, _ = self._plan()
        kji = (float(spacing_xyz[2]), float(spacing_xyz[1]), float(spacing_xyz[0]))
        return tuple(kji[p] for p in perm)

    def spacing_xyz(self, canonical: Sequence[float]) -> tuple[float, float, float]:
        """Inverse of :meth:`spacing`: the ITK ``(x, y, z)`` voxel size of the stored layout."""
        perm, _ = self._plan()
        kji = [0.0, 0.0, 0.0]
        for out_axis, p in enumerate(perm):
            kji[p] = float(canonical[out_axis])
        return kji[2], kji[1], kji[0]
