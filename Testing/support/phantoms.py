"""Synthetic brain-like MR phantoms with known tumour masks.

These phantoms stand in for real multi-channel MR data in tests and demos. A phantom
is a small 3D volume per channel (FLAIR, T1, T1ce, ...) showing an ellipsoid-ish
brain with a grey/white-matter-like texture, ventricles and sulci, a dark CSF-like gap,
a bright skull/scalp ring and a background of exactly zero. Irregular tumour blobs
with an exactly known mask are blended in with MR-like contrasts (hyperintense in
FLAIR, mildly hypointense in T1, rim-enhancing in T1ce), and small bright
"distractor" blobs (vessel-like, bright in T1/T1ce) are scattered through tumour and
tumour-free slices alike so that "bright spot" alone does not identify a tumour.

Every phantom also carries its tumour-free ("healthy") counterpart: the same
anatomy, texture and noise realisation with only the tumour contribution removed,
which makes it a ground truth for methods that synthesise healthy images.

Arrays use the SimpleITK array order ``(Z, Y, X)`` (slice, row, column).
:func:`write_case` writes a phantom in the per-case file layout of the real data
(``<case>_<channel>.nii.gz``, ``<case>_seg.nii.gz``, ``<case>_slice_labels.csv``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["Phantom", "make_phantom", "write_case", "CONTRASTS"]


@dataclass
class Phantom:
    """A synthetic multi-channel volume with a known tumour mask.

    Attributes
    ----------
    channels : dict of str to numpy.ndarray
        Channel name -> float32 volume of shape ``(Z, Y, X)``. Intensities are >= 0,
        exactly 0 outside the head and > 0 inside it.
    healthy : dict of str to numpy.ndarray
        The same volumes with the tumour replaced by the tissue that would be there
        (same anatomy, texture and noise; only the tumour contribution is removed).
        Identical to ``channels`` outside a thin band (at most 2 voxels in-plane)
        around the tumour mask and in every tumour-free slice.
    mask : numpy.ndarray
        uint8 ``(Z, Y, X)``, 1 = tumour (the exact support of the tumour blobs).
    slice_labels : numpy.ndarray
        uint8 ``(Z,)``, 1 where the slice's mask is non-empty.
    brain_mask : numpy.ndarray or None
        uint8 ``(Z, Y, X)``, 1 inside the brain (excluding CSF gap and skull).
    head_mask : numpy.ndarray or None
        uint8 ``(Z, Y, X)``, 1 wherever the intensities are non-zero (brain, gap, skull).
    distractor_mask : numpy.ndarray or None
        uint8 ``(Z, Y, X)``, 1 on the support of the bright distractor blobs.
    """

    channels: dict[str, np.ndarray]
    healthy: dict[str, np.ndarray]
    mask: np.ndarray
    slice_labels: np.ndarray
    brain_mask: np.ndarray | None = None
    head_mask: np.ndarray | None = None
    distractor_mask: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Volume shape ``(Z, Y, X)``."""
        return tuple(int(n) for n in self.mask.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Contrast:
    """Mean intensities of the phantom's tissue classes in one channel."""

    wm: float
    gm: float
    csf: float
    skull: float
    tumour: float  # tumour rim (and whole tumour where there is no core contrast)
    tumour_core: float
    distractor: float


#: Tissue intensities per known channel; other channel names use ``"generic"``.
CONTRASTS: dict[str, _Contrast] = {
    "flair": _Contrast(wm=0.55, gm=0.68, csf=0.08, skull=0.85, tumour=1.00, tumour_core=1.05, distractor=0.72),
    "t1": _Contrast(wm=0.80, gm=0.58, csf=0.12, skull=0.95, tumour=0.50, tumour_core=0.45, distractor=1.30),
    "t1ce": _Contrast(wm=0.78, gm=0.58, csf=0.12, skull=0.90, tumour=1.15, tumour_core=0.42, distractor=1.45),
    "t2": _Contrast(wm=0.45, gm=0.60, csf=1.00, skull=0.55, tumour=0.95, tumour_core=1.00, distractor=0.75),
    "generic": _Contrast(wm=0.70, gm=0.55, csf=0.15, skull=0.90, tumour=0.95, tumour_core=0.95, distractor=1.15),
}

_ALIASES = {
    "flair": "flair", "t2flair": "flair", "t2_flair": "flair", "t2f": "flair",
    "t1": "t1", "t1w": "t1", "t1n": "t1", "t1pre": "t1",
    "t1ce": "t1ce", "t1c": "t1ce", "t1gd": "t1ce", "t1post": "t1ce", "t1_ce": "t1ce",
    "t2": "t2", "t2w": "t2",
}

_NOISE_SIGMA = 0.02  # additive per-voxel noise inside the head
_HEAD_FLOOR = 1e-3  # smallest intensity inside the head, so that head > 0 holds


def _contrast_for(name: str) -> _Contrast:
    return CONTRASTS[_ALIASES.get(name.lower(), "generic")]


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: Sequence[float]) -> np.ndarray:
    """Gaussian-filtered white noise normalised to zero mean and unit std (float32)."""
    field = rng.standard_normal(shape, dtype=np.float32)
    field = ndimage.gaussian_filter(field, sigma=tuple(float(s) for s in sigma), mode="reflect", truncate=3.0)
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def _split_integer(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into non-negative integers proportional to ``weights``."""
    raw = weights * total
    out = np.floor(raw).astype(int)
    remainder = total - int(out.sum())
    if remainder > 0:
        order = np.argsort(-(raw - out), kind="stable")
        out[order[:remainder]] += 1
    return out


class _Head:
    """Geometry of the head: brain ellipsoid tapering in z with a wavy outline."""

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator):
        Z, Y, X = shape
        self.shape = shape
        small = float(min(Y, X))
        self.gap = max(1.5, 0.018 * small)  # CSF-like gap between brain and skull, voxels
        self.thick = max(2.0, 0.03 * small)  # skull/scalp ring thickness, voxels
        ay = rng.uniform(0.35, 0.42) * Y
        ax = rng.uniform(0.35, 0.42) * X
        self.cy = (Y - 1) / 2.0 + rng.uniform(-0.015, 0.015) * Y
        self.cx = (X - 1) / 2.0 + rng.uniform(-0.015, 0.015) * X
        # Outline harmonics (k = 2..5), interpolated linearly along z.
        self.ks = np.arange(2, 6)
        coef0 = rng.normal(0.0, 0.015, size=(2, self.ks.size))
        coef1 = rng.normal(0.0, 0.015, size=(2, self.ks.size))
        u = np.linspace(0.0, 1.0, Z)[:, None, None] if Z > 1 else np.zeros((1, 1, 1))
        self.coef = ((1.0 - u) * coef0 + u * coef1).astype(np.float32)  # (Z, 2, K)
        # Taper: brain cross-section shrinks towards the first/last slices.
        taper = rng.uniform(0.72, 0.85)
        zn = (np.arange(Z) - (Z - 1) / 2.0) / ((Z - 1) / 2.0) if Z > 1 else np.zeros(1)
        zn = zn + rng.uniform(-0.05, 0.05)
        self.s = np.sqrt(np.clip(1.0 - (taper * zn) ** 2, 0.2, 1.0)).astype(np.float32)
        # Keep the whole head inside the field of view.
        thetas = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
        h = self._h(np.arange(Z)[:, None], thetas[None, :])  # (Z, 72)
        self.hmin = h.min(axis=1)
        hmax = float(h.max())
        for axis_len, centre, extent in ((ay, self.cy, Y), (ax, self.cx, X)):
            room = min(centre, extent - 1 - centre) - 1.0 - self.gap - self.thick
            if axis_len * (1.0 + hmax) > room:
                factor = room / (axis_len * (1.0 + hmax))
                ay, ax = ay * factor, ax * factor
        self.ay, self.ax = float(ay), float(ax)
        self.rm = 0.5 * (self.ay + self.ax)

    def _h(self, z: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """Relative outline perturbation at slice(s) ``z`` and polar angle(s) ``theta``."""
        z = np.asarray(z, dtype=int)
        theta = np.asarray(theta, dtype=np.float64)
        c = self.coef[z]  # (..., 2, K)
        kt = theta[..., None] * self.ks
        return (c[..., 0, :] * np.cos(kt) + c[..., 1, :] * np.sin(kt)).sum(axis=-1)

    def rho_point(self, z: int, y: float, x: float) -> float:
        """Normalised brain radius of a point (0 at the centre, 1 at the brain edge)."""
        dy, dx = (y - self.cy) / self.ay, (x - self.cx) / self.ax
        theta = np.arctan2(dy, dx)
        return float(np.hypot(dy, dx) / (self.s[z] * (1.0 + self._h(z, theta))))

    def inner_radius(self, z: int) -> float:
        """Smallest in-plane brain radius (voxels) on slice ``z``."""
        return float(self.s[z] * min(self.ay, self.ax) * (1.0 + self.hmin[z]))

    def fields(self) -> tuple[np.ndarray, np.ndarray]:
        """Normalised brain radius ``rho`` and approximate signed distance ``d`` (voxels)
        to the brain boundary (negative inside), both float32 ``(Z, Y, X)``."""
        Z, Y, X = self.shape
        dy = ((np.arange(Y, dtype=np.float32) - self.cy) / self.ay)[:, None]
        dx = ((np.arange(X, dtype=np.float32) - self.cx) / self.ax)[None, :]
        r2 = np.sqrt(dy * dy + dx * dx).astype(np.float32)
        theta = np.arctan2(dy, dx)
        basis = []
        for k in self.ks:
            basis.append(np.cos(k * theta))
        for k in self.ks:
            basis.append(np.sin(k * theta))
        basis = np.stack(basis).astype(np.float32)  # (2K, Y, X)
        coef = np.concatenate([self.coef[:, 0, :], self.coef[:, 1, :]], axis=1)  # (Z, 2K)
        h = np.tensordot(coef, basis, axes=(1, 0))  # (Z, Y, X)
        scale = (self.s[:, None, None] * (1.0 + h)).astype(np.float32)
        rho = r2[None] / scale
        d = (rho - 1.0) * (self.s[:, None, None] * np.float32(self.rm))
        return rho.astype(np.float32, copy=False), d.astype(np.float32, copy=False)


def _validate(shape, channels, n_tumors, tumor_radius, n_distractors, tumor_slice_fraction):
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (Z, Y, X), got {shape}")
    if min(shape[1:]) < 32:
        raise ValueError(f"in-plane size must be at least 32 voxels, got {shape[1:]}")
    if isinstance(channels, str):
        channels = (channels,)
    names = [str(c) for c in channels]
    if not names or any(not n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"channels must be unique non-empty names, got {names}")
    if n_tumors < 0 or n_distractors < 0:
        raise ValueError("n_tumors and n_distractors must be >= 0")
    if n_tumors > shape[0]:
        raise ValueError(f"n_tumors ({n_tumors}) cannot exceed the number of slices ({shape[0]})")
    radius = np.atleast_1d(np.asarray(tumor_radius, dtype=float))
    lo, hi = (float(radius[0]), float(radius[-1]))
    if radius.size > 2 or not 1.0 <= lo <= hi:
        raise ValueError(f"tumor_radius must be a number or (low, high) with 1 <= low <= high, got {tumor_radius}")
    if not 0.0 <= float(tumor_slice_fraction) <= 1.0:
        raise ValueError(f"tumor_slice_fraction must be in [0, 1], got {tumor_slice_fraction}")
    return shape, names, int(n_tumors), (lo, hi), int(n_distractors), float(tumor_slice_fraction)


def _tumour_slabs(Z: int, n: int, fraction: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Disjoint contiguous slice ranges ``(first, last)`` covering ~``fraction`` of ``Z``."""
    if n == 0:
        return []
    total = int(np.clip(round(fraction * Z), n, Z))
    if n == 1:
        lengths = np.array([total])
    else:
        cuts = np.sort(rng.choice(np.arange(1, total), size=n - 1, replace=False))
        lengths = np.diff(np.concatenate([[0], cuts, [total]]))
    alpha = np.ones(n + 1)
    alpha[0] = alpha[-1] = 3.0  # keep the tumours away from the first/last slices
    gaps = _split_integer(Z - total, rng.dirichlet(alpha))
    slabs, z = [], int(gaps[0])
    for length, gap in zip(lengths, gaps[1:]):
        slabs.append((z, z + int(length) - 1))
        z += int(length) + int(gap)
    return slabs


def _sample_centre(head: _Head, rng, z_lo: int, z_hi: int, extent, avoid=(), tries: int = 300):
    """Random in-plane centre whose blob (radius ``extent(z)`` on slice z) fits in the brain.

    ``avoid`` holds ``(z_lo, z_hi, cy, cx, distance)``: keep the centre at least
    ``distance`` from ``(cy, cx)`` when the slice ranges overlap (or touch). When no
    candidate satisfies everything, the fitting candidate with the most clearance is
    used; when none fits at all, the brain centre. Returns ``(cy, cx, ok)``.
    """
    zm = (z_lo + z_hi) // 2
    best, best_clearance = None, -np.inf
    for _ in range(tries):
        r = 0.75 * np.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * np.pi)
        cy = float(head.cy + r * np.sin(phi) * head.ay * head.s[zm])
        cx = float(head.cx + r * np.cos(phi) * head.ax * head.s[zm])
        fits = True
        for z in range(z_lo, z_hi + 1):
            margin = (extent(z) + 1.5) / max(head.inner_radius(z), 1e-6)
            if head.rho_point(z, cy, cx) > 1.0 - margin:
                fits = False
                break
        if not fits:
            continue
        clearance = np.inf
        for a_lo, a_hi, ay, ax, dist in avoid:
            if a_lo <= z_hi + 1 and z_lo - 1 <= a_hi:
                clearance = min(clearance, np.hypot(cy - ay, cx - ax) / dist)
        if clearance >= 1.0:
            return cy, cx, True
        if clearance > best_clearance:
            best, best_clearance = (cy, cx), clearance
    if best is not None:
        return best[0], best[1], False
    return float(head.cy), float(head.cx), False


# --------------------------------------------------------------------------- phantom


def make_phantom(
    shape: Sequence[int] = (24, 128, 128),
    channels: Sequence[str] = ("flair", "t1", "t1ce"),
    n_tumors: int = 1,
    tumor_radius: float | tuple[float, float] = (8, 16),
    n_distractors: int = 3,
    tumor_slice_fraction: float = 0.5,
    seed: int | None = 0,
) -> Phantom:
    """Make a synthetic brain-like multi-channel phantom with known tumour mask.

    Parameters
    ----------
    shape : sequence of int
        Volume shape ``(Z, Y, X)`` (slices, rows, columns); in-plane size >= 32.
    channels : sequence of str
        Channel names. ``flair``, ``t1``, ``t1ce`` and ``t2`` (and common aliases
        such as ``t1c``, ``t2f``) get MR-like contrasts; other names a generic one.
    n_tumors : int
        Number of tumour blobs (0 for a tumour-free phantom). Each occupies its own
        contiguous slab of slices; the slabs are disjoint.
    tumor_radius : float or (float, float)
        Range of the in-plane semi-axes of the tumours, in voxels.
    n_distractors : int
        Number of small bright blobs (radius 3-6 voxels in-plane) inside the brain,
        bright in T1/T1ce and mildly in FLAIR. When there are tumour-free slices the
        first one is centred in one of them, the second (if any) in a tumour slice.
    tumor_slice_fraction : float
        Fraction of slices that carry tumour, in [0, 1]; the number of tumour slices
        is ``round(fraction * Z)`` clipped to ``[n_tumors, Z]``.
    seed : int or None
        Seed of :func:`numpy.random.default_rng`; the same seed gives the same phantom.

    Returns
    -------
    Phantom
        Float32 channels and their tumour-free counterparts, uint8 tumour mask and
        slice labels, plus brain/head/distractor masks.
    """
    shape, names, n_tumors, (r_lo, r_hi), n_distractors, fraction = _validate(
        shape, channels, n_tumors, tumor_radius, n_distractors, tumor_slice_fraction
    )
    Z, Y, X = shape
    rng = np.random.default_rng(seed)
    scale = min(Y, X) / 128.0
    # Slices per in-plane voxel of the same physical length (thick slices when Z is small).
    az = float(np.clip(2.0 * Z / min(Y, X), 0.2, 1.0))

    # ---- anatomy -------------------------------------------------------------------
    head = _Head(shape, rng)
    rho, d = head.fields()
    m1 = np.clip(0.5 - d, 0.0, 1.0)  # brain
    m2 = np.clip(head.gap + 0.5 - d, 0.0, 1.0)  # brain + gap
    m3 = np.clip(head.gap + head.thick - d, 0.0, 1.0)  # whole head
    brain_w, gap_w, skull_w = m1, m2 - m1, m3 - m2
    head_mask = d < head.gap + head.thick
    brain_mask = d <= 0.0
    del m2, m3

    # Smooth random fields: white-matter outline, sulci, fine texture.
    s_wm = _smooth_noise(rng, shape, (max(0.5, 4.0 * scale * az), 4.0 * scale, 4.0 * scale))
    s_sulci = _smooth_noise(rng, shape, (max(0.5, 2.5 * scale * az), 2.5 * scale, 2.5 * scale))
    fine = _smooth_noise(rng, shape, (0.6, 0.9, 0.9))

    wm_frac = _sigmoid(((0.74 - rho) * 8.0 + 0.7 * s_wm) / 0.12)
    outer = np.clip((rho - 0.62) / 0.2, 0.0, 1.0)
    sulci = 0.8 * outer * np.exp(-((s_sulci / 0.18) ** 2))
    del s_wm, s_sulci, outer

    # Lateral ventricles: two elongated ellipsoids near the centre of the middle slices.
    zz = ((np.arange(Z, dtype=np.float32) - (Z - 1) / 2.0) / max(0.28 * Z, 0.75))[:, None, None]
    yy = np.arange(Y, dtype=np.float32)[None, :, None]
    xx = np.arange(X, dtype=np.float32)[None, None, :]
    vent = np.zeros(shape, np.float32)
    v_ry = rng.uniform(0.28, 0.36) * head.ay
    v_rx = rng.uniform(0.08, 0.11) * head.ax
    v_dy = rng.uniform(-0.05, 0.05) * head.ay
    for side in (-1.0, 1.0):
        v_cx = head.cx + side * rng.uniform(0.10, 0.14) * head.ax
        q2 = ((yy - head.cy - v_dy) / v_ry) ** 2 + ((xx - v_cx) / v_rx) ** 2 + zz**2
        np.maximum(vent, np.clip(3.0 * (1.0 - q2), 0.0, 1.0), out=vent)
    csf_frac = np.maximum(vent, sulci)
    del vent, sulci, q2
    wm = (1.0 - csf_frac) * wm_frac
    gm = (1.0 - csf_frac) - wm
    del wm_frac
    tex = 1.0 + 0.04 * fine
    skull_tex = 1.0 + 0.06 * fine

    # ---- tumours -------------------------------------------------------------------
    slabs = _tumour_slabs(Z, n_tumors, fraction, rng)
    mask = np.zeros(shape, np.uint8)
    t_weight = np.zeros(shape, np.float32)  # blend weight of the tumour (soft edge)
    t_rim = np.zeros(shape, np.float32)  # 0 in the core, 1 at the rim
    t_het = np.zeros(shape, np.float32)  # relative heterogeneity of tumour intensity
    tumour_blobs = []  # (z_lo, z_hi, cy, cx, radius) for distractor placement
    ring2d = ndimage.generate_binary_structure(2, 1)[None]  # in-plane 4-neighbourhood
    for z0, z1 in slabs:
        length = z1 - z0 + 1
        zc, c = (z0 + z1) / 2.0, length / 2.0
        lo, hi = r_lo, r_hi
        for _attempt in range(6):  # shrink the tumour when it does not fit the brain
            ru, rv = rng.uniform(lo, hi, size=2)
            rmin, rmax = min(ru, rv), max(ru, rv)

            def taper(z, zc=zc, c=c, rmin=rmin):
                return max(np.sqrt(max(1.0 - ((z - zc) / c) ** 2, 0.0)), 2.0 / rmin)

            cy, cx, ok = _sample_centre(head, rng, z0, z1, lambda z, rmax=rmax, taper=taper: 1.35 * rmax * taper(z))
            if ok:
                break
            lo, hi = max(1.0, 0.8 * lo), max(1.0, 0.8 * hi)
        phi = rng.uniform(0.0, np.pi)
        box = int(np.ceil(1.35 * rmax + 4))
        y0, y1 = max(0, int(cy) - box), min(Y, int(cy) + box + 2)
        x0, x1 = max(0, int(cx) - box), min(X, int(cx) + box + 2)
        bz = np.arange(z0, z1 + 1, dtype=np.float32)[:, None, None]
        by = np.arange(y0, y1, dtype=np.float32)[None, :, None] - cy
        bx = np.arange(x0, x1, dtype=np.float32)[None, None, :] - cx
        u = by * np.cos(phi) + bx * np.sin(phi)
        v = -by * np.sin(phi) + bx * np.cos(phi)
        rin = np.sqrt((u / ru) ** 2 + (v / rv) ** 2)
        dzn = (bz - zc) / c
        t = np.maximum(np.sqrt(np.clip(1.0 - dzn**2, 0.0, 1.0)), 2.0 / rmin)
        bshape = (length, y1 - y0, x1 - x0)
        pert = np.clip(
            0.15 * _smooth_noise(rng, bshape, (max(0.5, length / 4.0), rmax / 3.0, rmax / 3.0)), -0.3, 0.3
        )
        q = rin / ((1.0 + pert) * t)
        inside = q <= 1.0
        # Every slice of the slab carries tumour (guard for tiny cross-sections).
        iy, ix = int(round(cy)) - y0, int(round(cx)) - x0
        for k in range(length):
            if not inside[k].any():
                inside[k, iy, ix] = True
        dist = (q - 1.0) * (np.sqrt(ru * rv) * (1.0 + pert) * t)  # ~ voxels outside the edge
        w = np.clip((1.5 - dist) / 2.5, 0.0, 1.0)
        w[inside] = np.maximum(w[inside], 0.6)
        w *= ndimage.binary_dilation(inside, structure=ring2d, iterations=2)
        q3 = np.sqrt((rin / (1.0 + pert)) ** 2 + dzn**2)
        rim = np.clip((q3 - 0.45) / 0.3, 0.0, 1.0)
        rim = rim * rim * (3.0 - 2.0 * rim)
        het = 0.07 * _smooth_noise(rng, bshape, (0.7, 1.5, 1.5))
        sl = (slice(z0, z1 + 1), slice(y0, y1), slice(x0, x1))
        take = w > t_weight[sl]
        t_weight[sl][take] = w[take]
        t_rim[sl][take] = rim[take]
        t_het[sl][take] = het[take]
        mask[sl][inside] = 1
        tumour_blobs.append((z0, z1, cy, cx, 1.35 * rmax + 2.0))
    slice_labels = mask.any(axis=(1, 2)).astype(np.uint8)

    # ---- distractors ---------------------------------------------------------------
    d_weight = np.zeros(shape, np.float32)
    free = np.flatnonzero(slice_labels == 0)
    busy = np.flatnonzero(slice_labels == 1)
    placed: list[tuple[int, int, float, float, float]] = []
    for i in range(n_distractors):
        if i == 0 and free.size:
            zc = int(rng.choice(free))
        elif i == 1 and busy.size:
            zc = int(rng.choice(busy))
        else:
            zc = int(rng.integers(Z))
        r = rng.uniform(3.0, 6.0)
        r2 = r * rng.uniform(0.8, 1.2)
        rz = max(1.0, r * az)
        zr = int(np.floor(rz))
        za, zb = max(0, zc - zr), min(Z - 1, zc + zr)
        avoid = [(a, b, py, px, pr + max(r, r2) + 2.0) for a, b, py, px, pr in tumour_blobs + placed]
        cy, cx, _ok = _sample_centre(head, rng, za, zb, lambda z: max(r, r2), avoid=avoid)
        box = int(np.ceil(max(r, r2))) + 2
        y0, y1 = max(0, int(cy) - box), min(Y, int(cy) + box + 2)
        x0, x1 = max(0, int(cx) - box), min(X, int(cx) + box + 2)
        by = (np.arange(y0, y1, dtype=np.float32)[None, :, None] - cy) / r
        bx = (np.arange(x0, x1, dtype=np.float32)[None, None, :] - cx) / r2
        bz = (np.arange(za, zb + 1, dtype=np.float32)[:, None, None] - zc) / rz
        q2 = by**2 + bx**2 + bz**2
        w = np.clip(1.6 * (1.0 - q2), 0.0, 1.0)
        sl = (slice(za, zb + 1), slice(y0, y1), slice(x0, x1))
        np.maximum(d_weight[sl], w, out=d_weight[sl])
        placed.append((za, zb, cy, cx, max(r, r2)))
    d_weight *= brain_mask

    # ---- channels ------------------------------------------------------------------
    out: dict[str, np.ndarray] = {}
    healthy: dict[str, np.ndarray] = {}
    jitter = rng.uniform(0.95, 1.05, size=(len(names), 7))
    t_idx = np.nonzero(t_weight > 0)
    for ci, name in enumerate(names):
        base = _contrast_for(name)
        lv = _Contrast(*(getattr(base, f) * float(j) for f, j in zip(_Contrast.__dataclass_fields__, jitter[ci])))
        brain_val = (wm * lv.wm + gm * lv.gm + csf_frac * lv.csf) * tex
        tissue = brain_w * brain_val + gap_w * lv.csf + skull_w * (lv.skull * skull_tex)
        tissue += d_weight * (lv.distractor * tex - tissue)
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(_NOISE_SIGMA)
        clean = np.where(head_mask, np.maximum(tissue + noise, _HEAD_FLOOR), 0.0).astype(np.float32)
        vol = clean.copy()
        if t_idx[0].size:
            tum = (lv.tumour_core + (lv.tumour - lv.tumour_core) * t_rim[t_idx]) * (1.0 + t_het[t_idx])
            wt = t_weight[t_idx]
            vals = tissue[t_idx] + noise[t_idx] + wt * (tum - tissue[t_idx])
            vol[t_idx] = np.maximum(vals, _HEAD_FLOOR)
        healthy[name] = clean
        out[name] = vol

    return Phantom(
        channels=out,
        healthy=healthy,
        mask=mask,
        slice_labels=slice_labels,
        brain_mask=brain_mask.astype(np.uint8),
        head_mask=head_mask.astype(np.uint8),
        distractor_mask=(d_weight > 0).astype(np.uint8),
    )


# --------------------------------------------------------------------------- writing


def write_case(
    phantom: Phantom,
    folder: str | Path,
    case_id: str,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    direction: Sequence[float] | None = None,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
) -> dict[str, Path]:
    """Write a phantom in the per-case file layout of the real data.

    Writes ``<folder>/<case_id>_<channel>.nii.gz`` for every channel (float32),
    ``<case_id>_seg.nii.gz`` (uint8 tumour mask) and ``<case_id>_slice_labels.csv``
    with header ``slice_index,slice_number,tumor,tumor_pixels`` (``slice_number`` is
    ``slice_index + 1``). The folder is created if needed.

    Parameters
    ----------
    phantom : Phantom
        The phantom to write (only ``channels``, ``mask`` and ``slice_labels``).
    folder : str or Path
        Output folder.
    case_id : str
        Case identifier used as the file-name prefix.
    spacing : sequence of float
        Voxel spacing in SimpleITK (x, y, z) order.
    direction : sequence of float, optional
        Direction cosine matrix as a row-major 9-tuple; identity when omitted.
    origin : sequence of float
        Physical position of the first voxel, (x, y, z).

    Returns
    -------
    dict of str to Path
        Written paths keyed by channel name, ``"seg"`` and ``"slice_labels"``.
    """
    import SimpleITK as sitk

    if not case_id:
        raise ValueError("case_id must be non-empty")
    clash = {"seg", "slice_labels"} & set(phantom.channels)
    if clash:
        raise ValueError(f"channel names {sorted(clash)} clash with the seg/slice_labels files")
    spacing = tuple(float(s) for s in spacing)
    origin = tuple(float(o) for o in origin)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if direction is None else tuple(
        float(v) for v in np.asarray(direction, dtype=float).ravel()
    )
    if len(spacing) != 3 or len(origin) != 3 or len(direction) != 9:
        raise ValueError("spacing and origin need 3 values and direction 9")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def _write(array: np.ndarray, path: Path) -> Path:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        sitk.WriteImage(image, str(path), True)
        return path

    paths: dict[str, Path] = {}
    for name, volume in phantom.channels.items():
        paths[name] = _write(np.asarray(volume, dtype=np.float32), folder / f"{case_id}_{name}.nii.gz")
    mask = np.asarray(phantom.mask, dtype=np.uint8)
    paths["seg"] = _write(mask, folder / f"{case_id}_seg.nii.gz")
    csv_path = folder / f"{case_id}_slice_labels.csv"
    pixels = mask.reshape(mask.shape[0], -1).sum(axis=1)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slice_index", "slice_number", "tumor", "tumor_pixels"])
        for index, (label, count) in enumerate(zip(phantom.slice_labels, pixels)):
            writer.writerow([index, index + 1, int(label), int(count)])
    paths["slice_labels"] = csv_path
    return paths
