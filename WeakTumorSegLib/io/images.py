"""Reading MR volumes and writing masks, with their exact geometry.

Volumes are read with SimpleITK (NIfTI, NRRD, MetaImage and every other format it reads).
Arrays use SimpleITK's index order ``(slice, row, column)`` = ``(k, j, i)``; axis 0 is the slice
axis the method works on (Yoo et al., section 3.1, split volumes into axial slices). Every output
keeps the input's exact geometry (size, spacing, origin, direction), oblique directions included.
A file that is not a readable 3D scalar image, a truncated one, or channels on different voxel
grids are refused with an :class:`~WeakTumorSegLib.errors.InputError` naming the file.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .orientation import direction_from_code

#: Geometry tolerance when comparing channels (spacing and origin in mm, direction cosines).
GEOMETRY_TOLERANCE = 1e-4

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd")


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a volume in SimpleITK terms (x, y, z order; LPS physical space)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(tuple(image.GetSize()), tuple(image.GetSpacing()), tuple(image.GetOrigin()),
                   tuple(image.GetDirection()))

    @property
    def inplane_spacing(self) -> tuple[float, float]:
        """(row, column) voxel size of the ``(slice, row, column)`` arrays, i.e. (y, x) spacing."""
        return float(self.spacing[1]), float(self.spacing[0])

    def declared(self, orientation: str | None = None, spacing: tuple[float, float] | None = None) -> "Geometry":
        """This grid with a declared true orientation code (see
        :mod:`~WeakTumorSegLib.io.orientation`) and/or in-plane voxel size in mm
        (``(x, y)``, i.e. column and row) replacing the header's, for files whose header is wrong."""
        direction = self.direction if orientation is None else direction_from_code(orientation)
        sp = self.spacing if spacing is None else (float(spacing[0]), float(spacing[1]), self.spacing[2])
        return Geometry(self.size, sp, self.origin, direction)

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def differences(self, other: "Geometry", tol: float = GEOMETRY_TOLERANCE) -> list[str]:
        """Names of the properties in which ``other`` differs from this geometry."""
        out = []
        if self.size != other.size:
            out.append(f"size {other.size} vs {self.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, rtol=0, atol=tol):
                fmt = lambda v: "(" + ", ".join(f"{x:.4g}" for x in v) + ")"  # noqa: E731
                out.append(f"{name} {fmt(b)} vs {fmt(a)}")
        return out


@dataclass
class Volume:
    """A multi-channel volume: float32 arrays ``(slice, row, column)`` sharing one geometry."""

    channels: dict[str, np.ndarray]
    geometry: Geometry
    paths: dict[str, Path]
    notes: list[str]


def image_stem(path: str | Path) -> str:
    """File name without its image suffix (``TCGA_x_flair.nii.gz`` -> ``TCGA_x_flair``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _itk_problem(error: Exception) -> str:
    """Turn SimpleITK's multi-line exception text into a short reason."""
    text = str(error)
    if "Unable to determine ImageIO reader" in text:
        return "not an image file that SimpleITK can read"
    if "does not exist" in text:
        return "file not found"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "ERROR" in ln or "rror" in ln), lines[-1] if lines else "")
    detail = re.sub(r"^.*?(ITK ERROR|sitk::ERROR):\s*", "", detail)
    return f"cannot be read as an image ({detail[:160]})"


@dataclass(frozen=True)
class _NiftiPayload:
    offset: int  # vox_offset
    available: int  # bytes present after vox_offset
    nonfinite: int  # NaN/Inf voxels in a floating-point payload


_NIFTI_FLOAT = {16: "f4", 64: "f8"}


def _nifti_payload(path: Path) -> _NiftiPayload | None:
    """Check a NIfTI file's payload, or return None if the file is not NIfTI.

    SimpleITK zero-fills a truncated NIfTI file, and silently turns NaN/Inf into 0, so both are
    checked here on the raw bytes. A truncated gzip stream raises :class:`InputError`.
    """
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    try:
        if name.endswith(".gz"):
            data = bytearray()
            decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    data += decomp.decompress(chunk)
                    while decomp.eof and decomp.unused_data:  # concatenated gzip members
                        rest = decomp.unused_data
                        decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                        data += decomp.decompress(rest)
            if not decomp.eof:
                raise InputError("truncated gzip stream (the file ended before its end marker)", path)
        else:
            data = path.read_bytes()
    except (zlib.error, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"corrupt compressed data ({exc})", path) from None
    if len(data) < 348:
        raise InputError("truncated NIfTI header", path)
    for endian in "<>":
        (hdr_size,) = struct.unpack_from(endian + "i", data, 0)
        if hdr_size == 348:
            (datatype,) = struct.unpack_from(endian + "h", data, 70)
            offset = int(struct.unpack_from(endian + "f", data, 108)[0])
        elif hdr_size == 540 and len(data) >= 540:
            (datatype,) = struct.unpack_from(endian + "h", data, 12)
            offset = int(struct.unpack_from(endian + "q", data, 168)[0])
        else:
            continue
        nonfinite = 0
        if datatype in _NIFTI_FLOAT:
            dtype = np.dtype(endian + _NIFTI_FLOAT[datatype])
            n = max(0, len(data) - offset) // dtype.itemsize
            values = np.frombuffer(data, dtype=dtype, count=n, offset=min(offset, len(data)))
            nonfinite = int(n - np.isfinite(values).sum())
        return _NiftiPayload(offset, len(data) - offset, nonfinite)
    return None


def read_image(path: str | Path) -> tuple[sitk.Image, int]:
    """Read one 3D scalar image, refusing anything that is not one with an :class:`InputError`.

    Returns the image and the number of NaN/Inf voxels the file holds that the reader has
    already replaced (SimpleITK's NIfTI reader does so silently); other formats keep them.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not an image file", path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(_itk_problem(exc), path) from None
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim != 3 or (dim == 3 and min(size) < 1):
        kind = f"{dim}D" if dim != 3 else "empty"
        raise InputError(f"is a {kind} image of size {tuple(size)}; a 3D volume is needed", path)
    if reader.GetNumberOfComponents() != 1:
        raise InputError(
            f"has {reader.GetNumberOfComponents()} components per voxel; one scalar channel per file is needed", path)
    nifti = _nifti_payload(path)
    if nifti is not None:
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
        need = int(np.prod(size)) * itemsize
        if nifti.available < need:
            raise InputError(f"truncated: {max(nifti.available, 0)} of {need} voxel bytes present", path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(_itk_problem(exc), path) from None
    return image, (nifti.nonfinite if nifti is not None else 0)


def read_channels(paths: Mapping[str, str | Path]) -> Volume:
    """Read named channels that must share one voxel grid.

    Non-finite voxels (NaN, +-Inf) are replaced by 0 and reported in ``Volume.notes``.
    Raises :class:`InputError` naming the offending file when a channel cannot be read or its
    geometry differs from the first channel's.
    """
    if not paths:
        raise InputError("no input channel given")
    channels: dict[str, np.ndarray] = {}
    notes: list[str] = []
    ref_name, ref_geom = None, None
    for name, p in paths.items():
        image, repaired = read_image(p)
        geom = Geometry.of(image)
        if ref_geom is None:
            ref_name, ref_geom = name, geom
        else:
            diff = ref_geom.differences(geom)
            if diff:
                raise InputError(
                    f"channel '{name}' does not share the voxel grid of channel '{ref_name}' "
                    f"({paths[ref_name]}): " + "; ".join(diff), p)
        arr = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
        bad = ~np.isfinite(arr)
        if bad.any():
            arr = np.where(bad, np.float32(0), arr)
        if bad.any() or repaired:
            notes.append(f"{p}: {max(int(bad.sum()), repaired)} NaN/Inf voxels were set to 0")
        channels[name] = arr
    return Volume(channels, ref_geom, {k: Path(v) for k, v in paths.items()}, notes)

def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a binary uint8 mask ``(slice, row, column)`` with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    geometry.apply(image)
    sitk.WriteImage(image, str(path), useCompression=True)
