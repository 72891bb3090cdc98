"""Reading MR channels and writing masks, segmentation files and tables.

Volumes are read with SimpleITK (NIfTI, NRRD, MetaImage and every other format it reads).
Arrays use SimpleITK's index order ``(slice, row, column)`` = ``(k, j, i)``; axis 0 is the slice
axis the method works on (000 section 3.1 splits volumes into axial slices). Every output keeps
the input's exact geometry (size, spacing, origin, direction), oblique directions included.

Every file is written to a temporary name in the destination folder and renamed into place,
so an interrupted or failed run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

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


# --------------------------------------------------------------------------------------------
# Atomic writing


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes[-2:]) if final.name.endswith(".gz") else final.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class OutputSet:
    """Write several files that appear together or not at all.

    Each file is first written to a hidden temporary name; :meth:`commit` renames them all into
    place, and :meth:`discard` (or an exception inside the ``with`` block) removes them.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._pending: list[tuple[Path, Path]] = []
        self._created_folder = False

    def path(self, name: str) -> Path:
        """Temporary path to write; it becomes ``folder/name`` on :meth:`commit`."""
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._created_folder = True
        final = self.folder / name
        tmp = self.folder / f".{name}.part-{os.getpid()}{_write_suffix(name)}"
        self._pending.append((tmp, final))
        return tmp

    def commit(self) -> list[Path]:
        for tmp, final in self._pending:
            os.replace(tmp, final)
        done = [final for _, final in self._pending]
        self._pending = []
        return done

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending = []
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()

    def __enter__(self) -> "OutputSet":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


def _write_suffix(name: str) -> str:
    """Suffix that keeps writers choosing the right format for a temporary name."""
    for suffix in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".csv", ".json", ".png"):
        if name.endswith(suffix):
            return suffix
    return ""


# --------------------------------------------------------------------------------------------
# Writers


def write_mask(mask: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a binary uint8 mask ``(slice, row, column)`` with the given geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    geometry.apply(image)
    sitk.WriteImage(image, str(path), useCompression=True)


@dataclass(frozen=True)
class Segment:
    """One segment of a Slicer segmentation: a binary mask with a name, colour and terminology."""

    name: str
    mask: np.ndarray
    color: tuple[float, float, float]
    terminology: str


#: Slicer terminology entries (``TerminologyEntry`` tag) for the segments this project writes.
TUMOR_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^~"
    "Anatomic codes - DICOM master list~SCT^12738006^Brain~^^"
)
SEED_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^85756007^Tissue~SCT^85756007^Tissue~^^~"
    "Anatomic codes - DICOM master list~SCT^12738006^Brain~^^"
)
TUMOR_COLOR = (0.85, 0.26, 0.20)
POSITIVE_SEED_COLOR = (0.20, 0.80, 0.30)
NEGATIVE_SEED_COLOR = (0.80, 0.25, 0.80)


def _extent(mask: np.ndarray) -> str:
    """Slicer's ``Segment<i>_Extent`` (i0 i1 j0 j1 k0 k1, inclusive); ``0 -1 ...`` if empty."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    k, j, i = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    return f"{i[0]} {i[-1]} {j[0]} {j[-1]} {k[0]} {k[-1]}"


def write_segmentation(segments: Sequence[Segment], geometry: Geometry, path: str | Path) -> None:
    """Write a Slicer segmentation file (``.seg.nrrd``) with named, coloured segments.

    Each segment is stored in its own layer with label value 1, so segments may overlap
    (seeds overlap the tumour). One segment gives a 3D file; several give a 4D file whose
    first axis is the layer list, as Slicer writes it.
    """
    import nrrd  # pynrrd

    if not segments:
        raise ValueError("a segmentation file needs at least one segment")
    size = geometry.size
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    dirs = (d * np.asarray(geometry.spacing)[None, :]).T  # row a = physical step along axis a
    # (k, j, i) arrays -> (i, j, k) for pynrrd's Fortran index order
    layers = [np.ascontiguousarray(s.mask.astype(np.uint8).transpose(2, 1, 0)) for s in segments]
    for s, layer in zip(segments, layers):
        if layer.shape != size:
            raise ValueError(f"segment {s.name!r} has shape {layer.shape[::-1]}, grid is {size[::-1]}")
    header: dict = {
        "type": "unsigned char",
        "space": "left-posterior-superior",
        "space origin": np.asarray(geometry.origin, dtype=float),
        "encoding": "gzip",
    }
    if len(layers) == 1:
        data = layers[0]
        header["kinds"] = ["domain", "domain", "domain"]
        header["space directions"] = dirs
    else:
        data = np.stack(layers, axis=0)
        header["kinds"] = ["list", "domain", "domain", "domain"]
        header["space directions"] = np.vstack([np.full((1, 3), np.nan), dirs])
    header["Segmentation_MasterRepresentation"] = "Binary labelmap"
    header["Segmentation_ContainedRepresentationNames"] = "Binary labelmap|"
    header["Segmentation_ConversionParameters"] = ""
    header["Segmentation_ReferenceImageExtentOffset"] = "0 0 0"
    for idx, s in enumerate(segments):
        p = f"Segment{idx}_"
        header[p + "ID"] = re.sub(r"\W+", "_", s.name).strip("_") or f"Segment_{idx + 1}"
        header[p + "Name"] = s.name
        header[p + "NameAutoGenerated"] = "0"
        header[p + "Color"] = " ".join(f"{c:.6g}" for c in s.color)
        header[p + "ColorAutoGenerated"] = "0"
        header[p + "LabelValue"] = "1"
        header[p + "Layer"] = str(idx if len(layers) > 1 else 0)
        header[p + "Extent"] = _extent(s.mask)
        header[p + "Tags"] = f"Segmentation.Status:inprogress|TerminologyEntry:{s.terminology}|"
    nrrd.write(str(path), data, header, index_order="F")


def read_segmentation(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.seg.nrrd`` back into ``{segment name: uint8 mask (slice, row, column)}``."""
    import nrrd

    data, header = nrrd.read(str(path), index_order="F")
    if data.ndim == 3:
        data = data[None]
    out = {}
    idx = 0
    while f"Segment{idx}_Name" in header:
        layer = int(header.get(f"Segment{idx}_Layer", 0))
        value = int(header.get(f"Segment{idx}_LabelValue", 1))
        out[header[f"Segment{idx}_Name"]] = (data[layer] == value).astype(np.uint8).transpose(2, 1, 0)
        idx += 1
    return out


def write_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str], path: str | Path) -> None:
    """Write ``rows`` (dicts) as CSV with the given column order."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row[c] for c in columns})
