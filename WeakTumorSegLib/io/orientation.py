"""Orientation codes of image headers: where the column (i), row (j) and slice (k) indices of a
volume point, as three letters of LPS physical space (``PLS``: towards posterior, left and
superior), and the ITK direction matrices they stand for.

A header whose orientation is wrong (TCGA-LGG's identity affines) is corrected by declaring the
true code (:meth:`~WeakTumorSegLib.io.images.Geometry.declared`); the arrays are turned into the
canonical layout by :class:`~WeakTumorSegLib.preprocessing.orientation.Reorientation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Where the column (i), row (j) and slice (k) indices of the canonical arrays point.
CANONICAL = "PLS"
#: Letter -> (LPS physical axis, sign).
LETTERS = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}


def check_code(code: str) -> str:
    """An orientation code such as ``PLS`` (upper case), or ValueError: three letters, one of
    R/L, one of A/P and one of I/S, naming where the i, j and k indices point."""
    c = str(code).strip().upper()
    if len(c) != 3 or any(ch not in LETTERS for ch in c) or len({LETTERS[ch][0] for ch in c}) != 3:
        raise ValueError(f"orientation code {code!r} must be three letters, one each of R/L, A/P and I/S "
                         "(where the column, row and slice indices point, e.g. PLS)")
    return c


def direction_from_code(code: str) -> tuple[float, ...]:
    """The ITK direction matrix (row-major, 9 values) of an orientation code."""
    d = np.zeros((3, 3))
    for index_axis, ch in enumerate(check_code(code)):
        axis, sign = LETTERS[ch]
        d[axis, index_axis] = sign
    return tuple(float(x) for x in d.ravel())


def code_from_direction(direction: Sequence[float]) -> str:
    """The orientation code nearest to an ITK direction matrix."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    names = {(a, s): ch for ch, (a, s) in LETTERS.items()}
    used, out = set(), []
    for index_axis in range(3):
        col = np.abs(d[:, index_axis])
        for axis in np.argsort(-col):
            if axis not in used:
                used.add(int(axis))
                out.append(names[(int(axis), 1 if d[axis, index_axis] >= 0 else -1)])
                break
    return "".join(out)
