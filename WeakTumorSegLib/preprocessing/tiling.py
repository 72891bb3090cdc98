"""Tiling whole slices into fixed-size patches and stitching patch maps back (Yoo et al., section 3).

The networks see 128x128 patches; at inference the paper splits each whole slice into
patches, runs them and averages the probability maps where patches overlap. The stride is not
given in the paper; the bundle sets it (64 for 128 patches: every interior pixel is covered by
up to four patches). The last patch of each row/column is placed flush with the edge; slices
smaller than the patch are zero-padded at the bottom/right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def tile_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets along one axis: ``0, stride, ...`` plus a last one flush with the edge."""
    if stride <= 0 or patch <= 0:
        raise ValueError("patch and stride must be positive")
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


@dataclass(frozen=True)
class Tiling:
    """Patch layout of a ``(slices, height, width)`` stack: one patch per (slice, y, x) start."""

    slices: int
    height: int
    width: int
    patch: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def plan(cls, slices: int, height: int, width: int, patch: int, stride: int) -> "Tiling":
        return cls(slices, height, width, patch, tuple(tile_starts(height, patch, stride)),
                   tuple(tile_starts(width, patch, stride)))

    @property
    def per_slice(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def count(self) -> int:
        return self.slices * self.per_slice

    def slice_of(self) -> np.ndarray:
        """Slice index of every patch, in the order :meth:`extract` returns them."""
        return np.repeat(np.arange(self.slices), self.per_slice)

    def neighbours(self, index: np.ndarray, context: int) -> np.ndarray:
        """``(len(index), 2 context + 1)``: for each patch in ``index``, the patches at the same place
        on the slices ``context`` below to ``context`` above its own (the nearest slice of the
        volume beyond its ends), in slice order; the middle column is ``index`` itself."""
        index = np.asarray(index, dtype=np.int64)
        s, place = np.divmod(index, self.per_slice)
        offsets = np.arange(-int(context), int(context) + 1)
        return np.clip(s[:, None] + offsets, 0, self.slices - 1) * self.per_slice + place[:, None]

    def with_neighbours(self, patches: np.ndarray, index: np.ndarray, context: int) -> np.ndarray:
        """The ``(len(index), C (2 context + 1), P, P)`` input of a 2.5D network: the channels of each
        patch's :meth:`neighbours`, slice by slice (lowest slice first), from ``(count, C, P, P)``
        ``patches``. ``context`` 0 gives ``patches[index]``."""
        if not context:
            return patches[index]
        n = len(index)
        return patches[self.neighbours(index, context)].reshape(n, -1, *patches.shape[-2:])

    def _padded_hw(self) -> tuple[int, int]:
        return max(self.height, self.patch), max(self.width, self.patch)

    def extract(self, stack: np.ndarray) -> np.ndarray:
        """``(slices, C, H, W)`` -> ``(slices * per_slice, C, patch, patch)``, slice-major."""
        z, c, h, w = stack.shape
        if (z, h, w) != (self.slices, self.height, self.width):
            raise ValueError(f"stack shape {stack.shape} does not match tiling {self}")
        ph, pw = self._padded_hw()
        if (ph, pw) != (h, w):
            padded = np.zeros((z, c, ph, pw), dtype=stack.dtype)
            padded[:, :, :h, :w] = stack
            stack = padded
        p = self.patch
        out = np.empty((z, self.per_slice, c, p, p), dtype=stack.dtype)
        t = 0
        for y in self.ys:
            for x in self.xs:
                out[:, t] = stack[:, :, y:y + p, x:x + p]
                t += 1
        return out.reshape(z * self.per_slice, c, p, p)

    def stitch(self, patches: np.ndarray, weights: np.ndarray | None = None,
               fill: np.ndarray | None = None) -> np.ndarray:
        """Average ``(count, patch, patch)`` maps into a ``(slices, H, W)`` map.

        Without ``weights`` every patch counts in the average, including patches whose map is
        all zero (a patch the classifier gates out contributes an empty map, as in the paper).
        With ``weights`` (one per patch, e.g. 0/1) the average is weighted, and pixels no patch
        with a positive weight covers take their value from ``fill`` (``(slices, H, W)``, zero
        if omitted). Accumulation is in float64, so stitching identical overlapping values
        returns them exactly.
        """
        p = self.patch
        patches = patches.reshape(self.slices, self.per_slice, p, p)
        w = (np.ones((self.slices, self.per_slice)) if weights is None
             else np.asarray(weights, dtype=np.float64).reshape(self.slices, self.per_slice))
        ph, pw = self._padded_hw()
        total = np.zeros((self.slices, ph, pw), dtype=np.float64)
        count = np.zeros((self.slices, ph, pw), dtype=np.float64)
        t = 0
        for y in self.ys:
            for x in self.xs:
                wt = w[:, t, None, None]
                total[:, y:y + p, x:x + p] += wt * patches[:, t]
                count[:, y:y + p, x:x + p] += wt
                t += 1
        covered = count > 0
        out = np.divide(total, count, out=np.zeros_like(total), where=covered)
        out = out[:, : self.height, : self.width]
        if fill is not None:
            out = np.where(covered[:, : self.height, : self.width], out, fill)
        return out.astype(np.float32)
