"""One canonical voxel orientation for every input (not in Yoo et al., whose data share one layout).

The networks see every volume in the same layout, whatever the scanner stored: arrays
``(slice, row, column)`` whose slice index runs inferior -> superior, rows patient right -> left
and columns anterior -> posterior. In ITK terms the column, row and slice indices increase
towards P, L and S: orientation code ``PLS`` (the true layout of the TCGA-LGG arrays, so their
training data keep their layout). :class:`Reorientation` is a permutation and flips found from
the direction matrix (the nearest axis for oblique directions); it is exact and its inverse puts
every output back on the input's grid.

A header whose orientation is wrong (TCGA-LGG's identity affines) is corrected by declaring the
true orientation code: :func:`direction_from_code`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Where the column (i), row (j) and slice (k) indices of the canonical arrays point.
CANONICAL = "PLS"
#: Letter -> (LPS physical axis, sign).
_LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def check_code(code: str) -> str:
    """An orientation code such as ``PLS`` (upper case), or ValueError: three letters, one of
    R/L, one of A/P and one of I/S, naming where the i, j and k indices point."""
    c = str(code).strip().upper()
    if len(c) != 3 or any(ch not in _LETTERS for ch in c) or len({_LETTERS[ch][0] for ch in c}) != 3:
        raise ValueError(f"orientation code {code!r} must be three letters, one each of R/L, A/P and I/S "
                         "(where the column, row and slice indices point, e.g. PLS)")
    return c


def direction_from_code(code: str) -> tuple[float, ...]:
    """The ITK direction matrix (row-major, 9 values) of an orientation code."""
    d = np.zeros((3, 3))
    for index_axis, ch in enumerate(check_code(code)):
        axis, sign = _LETTERS[ch]
        d[axis, index_axis] = sign
    return tuple(float(x) for x in d.ravel())


def code_from_direction(direction: Sequence[float]) -> str:
    """The orientation code nearest to an ITK direction matrix."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    names = {(a, s): ch for ch, (a, s) in _LETTERS.items()}
    used, out = set(), []
    for index_axis in range(3):
        col = np.abs(d[:, index_axis])
        for axis in np.argsort(-col):
            if axis not in used:
                used.add(int(axis))
                out.append(names[(int(axis), 1 if d[axis, index_axis] >= 0 else -1)])
                break
    return "".join(out)


@dataclass(frozen=True)
class Reorientation:
    """From arrays ``(k, j, i)`` stored in orientation ``code`` to the canonical layout and back."""

    code: str

    def _plan(self) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
        target = {_LETTERS[ch][0]: 2 - n for n, ch in enumerate(CANONICAL)}  # physical axis -> array axis
        perm, flip = [0, 0, 0], [False, False, False]
        for index_axis, ch in enumerate(check_code(self.code)):
            axis, sign = _LETTERS[ch]
            out_axis = target[axis]
            perm[out_axis] = 2 - index_axis
            flip[out_axis] = sign != _LETTERS[CANONICAL[2 - out_axis]][1]
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
