"""Cohorts: patients, their channel files, masks and slice labels, and the split by patient.

A cohort is given either as a folder laid out like ``../shared/data/lgg``::

    <data>/<id>/<id>_<channel>.nii.gz      one image per channel (.nii, .nrrd, .mha also read)
    <data>/<id>/<id>_seg.nii.gz            optional tumour mask (any value > 0 is tumour)
    <data>/<id>/<id>_slice_labels.csv      optional slice labels: slice_index,slice_number,tumor,...

or as a manifest CSV with a ``patient`` column, one column per channel named like the channel
and optional ``mask`` and ``labels`` columns (paths relative to the manifest's folder or
absolute; an empty cell means "absent"). Every patient needs slice labels: a labels CSV, a
mask, or both (the CSV wins when both exist). Patients are split into training and validation
patients, never slices.

Files whose headers carry no true orientation or voxel size (TCGA-LGG's identity affines) get
them from a declaration file, ``geometry.json`` beside the patient folders or the manifest, or
given with ``--geometry``::

    {"orientation": "PLS", "spacing_mm": [0.9, 0.9],
     "patients": {"<id>": {"spacing_mm": [0.94, 0.94]}}}

``orientation`` is the code of where the stored column, row and slice indices point
(:mod:`~WeakTumorSegLib.io.orientation`), ``spacing_mm`` the in-plane (column, row)
voxel size; ``patients`` overrides either per patient. Undeclared values come from the headers.

Arrays are SimpleITK-ordered ``(slice, row, column)``; axis 0 is the axial slice axis.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError
from .images import Geometry, read_image
from .orientation import check_code

#: Image suffixes recognised in patient folders (matched case-insensitively).
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Name parts of the optional per-patient files: ``<id>_seg.<suffix>``, ``<id>_slice_labels.csv``.
MASK_PART = "seg"
LABELS_PART = "slice_labels"

_LAYOUT = ("expected one sub-folder per patient, <id>/<id>_<channel>.nii.gz (plus <id>_seg.nii.gz "
           "or <id>_slice_labels.csv), or a manifest .csv")


@dataclass
class Case:
    """One patient of a training cohort.

    ``channels`` maps the channel names asked for (as spelled by the caller) to image paths;
    ``mask`` is the tumour mask and ``labels`` the slice-label CSV, each None when absent.
    """

    id: str
    channels: dict[str, Path]
    mask: Path | None = None
    labels: Path | None = None
    declared: dict | None = None  #: declared ``orientation`` and ``spacing_mm`` (see the module docstring)

    def geometry(self, header: Geometry) -> Geometry:
        """The true voxel grid: the header's with the declared values in place."""
        d = self.declared or {}
        return header.declared(d.get("orientation"), d.get("spacing_mm")) if d else header


# --------------------------------------------------------------------------------------------
# Discovery


def discover(data: str | Path, channels: Sequence[str], geometry: str | Path | None = None) -> list[Case]:
    """Find the patients of a cohort folder or manifest CSV, sorted by patient id.

    Channel names are matched case-insensitively (file names and manifest columns). Raises
    :class:`InputError` (one line, naming the offending path) when the path does not exist,
    holds no patient folders, a patient lacks a channel or has neither a mask nor a labels file,
    or a manifest lacks a channel column, repeats a patient or names a file that does not exist.
    """
    names = check_channel_names(channels)
    data = Path(data)
    if not data.exists():
        raise InputError("data path does not exist", data)
    if data.is_dir():
        cases = _discover_folder(data, names)
    elif data.suffix.lower() == ".csv":
        cases = _discover_manifest(data, names)
    else:
        raise InputError("not a cohort folder or a manifest .csv file; " + _LAYOUT, data)
    default = (data if data.is_dir() else data.parent) / GEOMETRY_FILE
    path = Path(geometry) if geometry is not None else (default if default.is_file() else None)
    if path is not None:
        declarations = read_declarations(path)
        for case in cases:
            case.declared = {**{k: v for k, v in declarations.items() if k != "patients"},
                             **declarations.get("patients", {}).get(case.id, {})}
    return cases


#: The declaration file looked for beside the patient folders or the manifest.
GEOMETRY_FILE = "geometry.json"


def _check_declaration(d: object, path: Path, where: str) -> dict:
    if not isinstance(d, dict):
        raise InputError(f"{where} must be a JSON object", path)
    unknown = sorted(set(d) - {"orientation", "spacing_mm", "patients"})
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (known: orientation, spacing_mm, patients)",
                         path)
    out = {}
    if d.get("orientation") is not None:
        try:
            out["orientation"] = check_code(d["orientation"])
        except ValueError as exc:
            raise InputError(f"{where}: {exc}", path) from None
    if d.get("spacing_mm") is not None:
        sp = d["spacing_mm"]
        if not (isinstance(sp, list) and len(sp) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in sp)):
            raise InputError(f"{where}: spacing_mm must be two positive numbers [column, row] in mm", path)
        out["spacing_mm"] = (float(sp[0]), float(sp[1]))
    return out


def read_declarations(path: str | Path) -> dict:
    """A cohort's geometry declarations (see the module docstring), checked."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot be read as a geometry declaration ({exc})", path) from None
    out = _check_declaration(raw, path, "the declaration")
    patients = raw.get("patients") or {}
    if not isinstance(patients, dict):
        raise InputError("'patients' must map patient ids to declarations", path)
    out["patients"] = {str(k): _check_declaration(v, path, f"patient '{k}'") for k, v in patients.items()}
    return out


def check_channel_names(channels: Sequence[str]) -> list[str]:
    if isinstance(channels, str):
        channels = [channels]
    names = [str(c).strip() for c in channels]
    if not names or any(not n for n in names):
        raise ValueError("at least one non-empty channel name is needed")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f"channel names repeat (case-insensitively): {names}")
    return names


def _match_image(files: dict[str, Path], stem: str, where: Path, what: str) -> Path | None:
    """The one file named ``<stem><suffix>`` (case-insensitive) among ``files`` (lowercase
    name -> path), None if there is none; two candidates are an error."""
    found = [files[stem.lower() + s] for s in FOLDER_SUFFIXES if stem.lower() + s in files]
    if len(found) > 1:
        raise InputError(f"two files for {what}: " + ", ".join(p.name for p in found) + "; keep one", where)
    return found[0] if found else None


def _discover_folder(root: Path, names: list[str]) -> list[Case]:
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    folders = [p for p in entries if p.is_dir() and not p.name.startswith((".", "__"))]
    if not folders:
        if not entries:
            problem = "empty folder; "
        elif any(p.is_file() and p.name.lower().endswith(FOLDER_SUFFIXES) for p in entries):
            problem = "holds image files but no patient folders (give the folder that contains them); "
        else:
            problem = "no patient folders; "
        raise InputError(problem + _LAYOUT, root)
    cases = []
    for folder in folders:
        pid = folder.name
        files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
        chans: dict[str, Path] = {}
        for name in names:
            path = _match_image(files, f"{pid}_{name}", folder, f"channel '{name}'")
            if path is None:
                raise InputError(f"patient folder has no '{name}' channel: expected {pid}_{name}.nii.gz "
                                 f"(or .nii, .nrrd, .mha)", folder)
            chans[name] = path
        mask = _match_image(files, f"{pid}_{MASK_PART}", folder, "the mask")
        labels = files.get(f"{pid}_{LABELS_PART}.csv".lower())
        if mask is None and labels is None:
            raise InputError(f"slice labels needed: {pid}_{LABELS_PART}.csv or {pid}_{MASK_PART}.nii.gz", folder)
        cases.append(Case(pid, chans, mask, labels))
    return cases


def _discover_manifest(manifest: Path, names: list[str]) -> list[Case]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot be read as a manifest CSV ({exc})", manifest) from None
    columns = {(h or "").strip().lower(): h for h in header}
    if "patient" not in columns:
        raise InputError("manifest has no 'patient' column (columns: " + ", ".join(header) + ")", manifest)
    missing = [n for n in names if n.lower() not in columns]
    if missing:
        raise InputError("manifest has no column for channel " + ", ".join(f"'{m}'" for m in missing)
                         + " (columns: " + ", ".join(header) + ")", manifest)
    if not rows:
        raise InputError("manifest lists no patients", manifest)
    base = manifest.resolve().parent

    def cell(row: dict, key: str) -> str:
        column = columns.get(key)
        value = row.get(column) if column is not None else None
        return (value or "").strip()

    def resolve(value: str, pid: str, what: str, line: int) -> Path:
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise InputError(f"file not found ({what} of patient '{pid}', line {line} of {manifest})", path)
        return path

    cases, seen = [], {}
    for line, row in enumerate(rows, start=2):
        pid = cell(row, "patient")
        if not pid:
            raise InputError(f"line {line}: empty 'patient' cell", manifest)
        if pid in seen:
            raise InputError(f"patient '{pid}' appears twice (lines {seen[pid]} and {line}); "
                             f"patient ids must be unique", manifest)
        seen[pid] = line
        chans = {}
        for name in names:
            value = cell(row, name.lower())
            if not value:
                raise InputError(f"patient '{pid}' (line {line}) has no '{name}' channel: "
                                 f"its '{columns[name.lower()]}' cell is empty", manifest)
            chans[name] = resolve(value, pid, f"channel '{name}'", line)
        mask = cell(row, "mask")
        labels = cell(row, "labels")
        if not mask and not labels:
            raise InputError(f"patient '{pid}' (line {line}): slice labels needed: a 'labels' CSV "
                             f"({pid}_{LABELS_PART}.csv) or a 'mask' ({pid}_{MASK_PART}.nii.gz)", manifest)
        cases.append(Case(pid, chans, resolve(mask, pid, "mask", line) if mask else None,
                          resolve(labels, pid, "labels", line) if labels else None))
    return sorted(cases, key=lambda c: c.id)


# --------------------------------------------------------------------------------------------
# Slice labels


def slice_labels(case: Case, n_slices: int, erosion: int = 0) -> np.ndarray:
    """Slice-level tumour labels of one patient, uint8 ``(n_slices,)``.

    From the labels CSV when the case has one (its ``tumor`` column, indexed by
    ``slice_index``; ``erosion`` does not apply). Otherwise from the mask: binarised (> 0),
    each axial slice eroded in-plane ``erosion`` times with the 4-connected cross
    (``generate_binary_structure(2, 1)``; the paper erodes to remove tiny labels without naming the
    structuring element), label 1 if anything remains. Raises :class:`InputError` naming the
    file when the CSV disagrees with the volume's slice count or is malformed, or when the mask's
    slice count differs.
    """
    if erosion < 0:
        raise ValueError("erosion must be >= 0")
    if case.labels is not None:
        return _labels_from_csv(Path(case.labels), n_slices)
    if case.mask is None:
        raise InputError(f"slice labels needed: {case.id}_{LABELS_PART}.csv or {case.id}_{MASK_PART}.nii.gz",
                         case_folder(case))
    mask = read_mask(Path(case.mask))
    if mask.shape[0] != n_slices:
        raise InputError(f"mask has {mask.shape[0]} slices, the volume {n_slices}", case.mask)
    return labels_from_mask(mask, erosion)


def canonical_slice_labels(labels: np.ndarray, code: str, path: Path | None = None) -> np.ndarray:
    """Slice labels in stored order -> the axial slices of the canonical layout (inferior first).
    The stored slices must be axial (an orientation ``code`` ending in S or I); otherwise the CSV's
    labels cannot describe the canonical slices and an :class:`InputError` naming ``path`` is raised."""
    if code[2] == "S":
        return labels
    if code[2] == "I":
        return labels[::-1].copy()
    raise InputError(f"slice labels from a CSV need axial slices along the volume's third axis, but its "
                     f"orientation is {code}; give a mask instead", path)


def labels_from_mask(mask: np.ndarray, erosion: int = 0) -> np.ndarray:
    """Slice labels of a ``(slice, row, column)`` mask: 1 where the binarised mask, eroded
    in-plane ``erosion`` times with the 4-connected cross, keeps any pixel."""
    binary = np.asarray(mask) > 0
    if erosion > 0:
        structure = np.zeros((3, 3, 3), dtype=bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)  # in-plane only: slices erode independently
        binary = ndimage.binary_erosion(binary, structure=structure, iterations=int(erosion))
    return binary.any(axis=(1, 2)).astype(np.uint8)


def _labels_from_csv(path: Path, n_slices: int) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items() if k is not None}
                    for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot be read as a slice-label CSV ({exc})", path) from None
    for column in ("slice_index", "tumor"):
        if column not in header:
            raise InputError(f"slice-label CSV has no '{column}' column (expected "
                             f"slice_index,slice_number,tumor,...)", path)
    if len(rows) != n_slices:
        raise InputError(f"slice-label CSV has {len(rows)} rows but the volume has {n_slices} slices", path)
    index, tumor = np.empty(n_slices, dtype=np.int64), np.empty(n_slices, dtype=np.uint8)
    for i, row in enumerate(rows):
        try:
            index[i] = int(row["slice_index"])
        except ValueError:
            raise InputError(f"line {i + 2}: slice_index {row['slice_index']!r} is not an integer", path) from None
        value = row["tumor"]
        if value not in ("0", "1"):
            raise InputError(f"line {i + 2}: tumor is {value!r}; it must be 0 or 1", path)
        tumor[i] = int(value)
    if not np.array_equal(np.sort(index), np.arange(n_slices)):
        raise InputError(f"slice_index values must be 0..{n_slices - 1}, each once", path)
    out = np.zeros(n_slices, dtype=np.uint8)
    out[index] = tumor
    return out


def read_mask(path: Path, geometry: Geometry | None = None, reference: str = "") -> np.ndarray:
    """Read a mask as a boolean ``(slice, row, column)`` array, checking its voxel grid."""
    import SimpleITK as sitk

    image, _ = read_image(path)
    if geometry is not None:
        diff = geometry.differences(Geometry.of(image))
        if diff:
            raise InputError(f"mask does not share the voxel grid of {reference}: " + "; ".join(diff), path)
    return sitk.GetArrayViewFromImage(image) > 0


def case_folder(case: Case) -> Path:
    first = next(iter(case.channels.values()), None)
    return Path(first).parent if first is not None else Path(case.id)


# --------------------------------------------------------------------------------------------
# Patient split


def split_patients(ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0,
                   val_ids: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Split patients (never slices) into sorted ``(train, validation)`` id lists.

    Deterministic for a seed: the ids are sorted, then shuffled with
    ``np.random.default_rng(seed)`` and the first ``round(val_fraction * n)`` go to validation,
    clamped so that at least one patient trains and, when there are two or more patients and
    ``val_fraction > 0``, at least one validates. ``val_ids`` chooses the validation patients
    explicitly (``val_fraction`` and ``seed`` are then ignored).
    """
    ids = sorted(str(i) for i in ids)
    if not ids:
        raise ValueError("no patients to split")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"patient ids repeat: {', '.join(dup)}")
    if val_ids is not None:
        val = sorted({str(i) for i in val_ids})
        unknown = [i for i in val if i not in ids]
        if unknown:
            raise ValueError(f"validation patients not in the cohort: {', '.join(unknown)}")
        train = [i for i in ids if i not in set(val)]
        if not train:
            raise ValueError("every patient is in the validation set; at least one must train")
        return train, val
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    n = len(ids)
    n_val = int(round(val_fraction * n))
    if n >= 2 and val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(ids[k] for k in order[:n_val])
    train = sorted(ids[k] for k in order[n_val:])
    return train, val
