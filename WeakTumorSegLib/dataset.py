"""Training cohorts: discovery, slice labels, patient split and training slices (000 section 3.1).

A cohort is given either as a folder laid out like ``../shared/data/lgg``::

    <data>/<id>/<id>_<channel>.nii.gz      one image per channel (.nii, .nrrd, .mha also read)
    <data>/<id>/<id>_seg.nii.gz            optional tumour mask (any value > 0 is tumour)
    <data>/<id>/<id>_slice_labels.csv      optional slice labels: slice_index,slice_number,tumor,...

or as a manifest CSV with a ``patient`` column, one column per channel named like the channel
and optional ``mask`` and ``labels`` columns (paths relative to the manifest's folder or
absolute; an empty cell means "absent"). Every patient needs slice labels: a labels CSV, a
mask, or both (the CSV wins when both exist).

Training slices follow 000 section 3.1 and share inference's preprocessing
(:mod:`.preprocess`): per-channel percentile clipping and min-max scaling, crop to the brain
bounding box, in-plane resampling by the bundle's ``inplane_scale``, then one random crop/pad
per volume to the network's patch size ("randomly cropping and padding ... to fixed patches of
size 128"). Slices more than half zero in every channel are dropped, as in the paper. The
paper's further rule for BraTS (drop the first and last 30 slices of 155) is specific to that
geometry and is not applied here.

Arrays are SimpleITK-ordered ``(slice, row, column)``; axis 0 is the axial slice axis.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .errors import InputError
from .io import Geometry, read_channels, read_image
from .preprocess import PreprocessConfig, brain_bbox, normalize_channels, plan_crop, to_working, zero_fraction

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


# --------------------------------------------------------------------------------------------
# Discovery


def discover(data: str | Path, channels: Sequence[str]) -> list[Case]:
    """Find the patients of a cohort folder or manifest CSV, sorted by patient id.

    Channel names are matched case-insensitively (file names and manifest columns). Raises
    :class:`InputError` (one line, naming the offending path) when the path does not exist,
    holds no patient folders, a patient lacks a channel or has neither a mask nor a labels file,
    or a manifest lacks a channel column, repeats a patient or names a file that does not exist.
    """
    names = _check_channel_names(channels)
    data = Path(data)
    if not data.exists():
        raise InputError("data path does not exist", data)
    if data.is_dir():
        return _discover_folder(data, names)
    if data.suffix.lower() == ".csv":
        return _discover_manifest(data, names)
    raise InputError("not a cohort folder or a manifest .csv file; " + _LAYOUT, data)


def _check_channel_names(channels: Sequence[str]) -> list[str]:
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
    (``generate_binary_structure(2, 1)``; 000 erodes to remove tiny labels without naming the
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
                         _case_folder(case))
    mask = read_mask(Path(case.mask))
    if mask.shape[0] != n_slices:
        raise InputError(f"mask has {mask.shape[0]} slices, the volume {n_slices}", case.mask)
    return labels_from_mask(mask, erosion)


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


def _case_folder(case: Case) -> Path:
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


# --------------------------------------------------------------------------------------------
# Training slices


@dataclass
class SliceSet:
    """Training slices at the network's patch size.

    ``x`` float32 ``(N, C, P, P)`` preprocessed like inference; ``label`` uint8 ``(N,)``;
    ``mask`` uint8 ``(N, P, P)`` ground truth, for evaluation only, when every case has a mask
    (else None); ``patient`` int32 ``(N,)`` index into ``patients``; ``slice_index`` int32
    ``(N,)`` the slice's index in its source volume.
    """

    x: np.ndarray
    label: np.ndarray
    mask: np.ndarray | None
    patient: np.ndarray
    slice_index: np.ndarray
    patients: list[str]
    channels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, idx) -> "SliceSet":
        """The slices at ``idx`` (integer indices or a boolean mask); same patient list."""
        idx = np.asarray(idx)
        if idx.dtype != bool:
            idx = idx.astype(np.int64).reshape(-1)
        return SliceSet(self.x[idx], self.label[idx], None if self.mask is None else self.mask[idx],
                        self.patient[idx], self.slice_index[idx], list(self.patients), list(self.channels))

    def select_patients(self, ids: Sequence[str]) -> "SliceSet":
        """The slices of the given patients (ids must be in ``patients``)."""
        ids = [ids] if isinstance(ids, str) else list(ids)
        unknown = [i for i in ids if i not in self.patients]
        if unknown:
            raise ValueError(f"patients not in this slice set: {', '.join(map(str, unknown))}")
        wanted = np.asarray([self.patients.index(i) for i in ids], dtype=np.int32)
        return self.subset(np.isin(self.patient, wanted))

    def summary(self) -> dict:
        """Counts for logs and the bundle's training-data section."""
        return {"patients": len(set(self.patient.tolist())), "slices": len(self),
                "tumor_slices": int(self.label.sum()), "channels": list(self.channels),
                "patch_size": int(self.x.shape[-1]) if self.x.ndim == 4 else 0}


ProgressFn = Callable[[int, int], None]


def _channel_path(case: Case, name: str) -> Path:
    if name in case.channels:
        return Path(case.channels[name])
    for key, path in case.channels.items():
        if key.lower() == name.lower():
            return Path(path)
    raise InputError(f"patient '{case.id}' has no '{name}' channel (it has: {', '.join(case.channels)})",
                     _case_folder(case))


def _place(size: int, patch: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """``(source start, target start, length)`` of one axis's random crop (size > patch) or
    random zero-pad offset (size <= patch)."""
    if size > patch:
        return int(rng.integers(0, size - patch + 1)), 0, patch
    return 0, int(rng.integers(0, patch - size + 1)), size


def _crop_pad(a: np.ndarray, py: tuple[int, int, int], px: tuple[int, int, int], patch: int) -> np.ndarray:
    out = np.zeros(a.shape[:-2] + (patch, patch), dtype=a.dtype)
    (sy, ty, ly), (sx, tx, lx) = py, px
    out[..., ty:ty + ly, tx:tx + lx] = a[..., sy:sy + ly, sx:sx + lx]
    return out


def load_slices(cases: Sequence[Case], channels: Sequence[str], pp: PreprocessConfig, patch: int = 128,
                erosion: int = 0, max_zero_fraction: float = 0.5, seed: int = 0,
                progress: ProgressFn | None = None) -> SliceSet:
    """Read, preprocess and cut every case into axial training slices of ``patch x patch``.

    Per case: :func:`.io.read_channels` (geometry checked), :func:`.preprocess.normalize_channels`,
    brain bounding box, :func:`.preprocess.plan_crop` and :func:`.preprocess.to_working` at
    ``pp.inplane_scale`` (exactly inference's preprocessing), then one random crop/pad of the
    working slices to ``patch x patch`` per volume (the same offset for all its slices;
    ``np.random.default_rng([seed, case index])``): zero padding at a random offset along an
    axis no longer than ``patch``, a random crop along a longer one.

    Labels come from :func:`slice_labels` (one per source slice). When the case has a mask it
    goes through the same crop and resampling (``to_working`` of the float mask, > 0.5); a
    slice whose source mask has tumour but whose patch mask has none (the crop cut it away, or
    it is too small to survive the in-plane resampling) gets label 0, so labels describe the
    patch the networks see. Without a mask the labels stay as given; a crop that cuts tumour
    away cannot be detected then (none happens while the working size fits in ``patch``).

    Slices where the fraction of pixels zero in every channel exceeds ``max_zero_fraction`` are
    dropped (000). ``progress(done, total)`` is called after each case.
    """
    names = _check_channel_names(channels)
    if patch < 1:
        raise ValueError("patch must be >= 1")
    cases = list(cases)
    ids = [c.id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("patient ids repeat in the case list")
    with_masks = bool(cases) and all(c.mask is not None for c in cases)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "label", "mask", "patient", "slice_index")}
    for ci, case in enumerate(cases):
        paths = {n: _channel_path(case, n) for n in names}
        volume = read_channels(paths)
        stack = normalize_channels(volume.channels, names, pp.clip_percentiles)
        z = stack.shape[0]
        labels = slice_labels(case, z, erosion) if case.labels is not None else None
        mask = None
        if case.mask is not None:
            mask = read_mask(Path(case.mask), volume.geometry, f"channel '{names[0]}' ({paths[names[0]]})")
            if labels is None:
                labels = labels_from_mask(mask, erosion)
        bbox = brain_bbox(stack, pp.brain_threshold)
        if bbox is not None:  # an all-background volume contributes no slices
            crop = plan_crop(bbox, pp.inplane_scale)
            work = to_working(stack, crop)
            rng = np.random.default_rng([seed, ci])
            py, px = _place(crop.height, patch, rng), _place(crop.width, patch, rng)
            x = _crop_pad(work, py, px, patch)
            lab = labels.copy()
            m = None
            if mask is not None:
                wm = to_working(mask[:, None].astype(np.float32), crop)[:, 0]
                m = _crop_pad(wm, py, px, patch) > 0.5
                lost = mask.any(axis=(1, 2)) & ~m.any(axis=(1, 2))
                lab[lost] = 0
            keep = np.flatnonzero(zero_fraction(x) <= max_zero_fraction)
            parts["x"].append(x[keep].astype(np.float32, copy=False))
            parts["label"].append(lab[keep].astype(np.uint8))
            if with_masks:
                parts["mask"].append(m[keep].astype(np.uint8))
            parts["patient"].append(np.full(keep.size, ci, dtype=np.int32))
            parts["slice_index"].append(keep.astype(np.int32))
        if progress is not None:
            progress(ci + 1, len(cases))

    def cat(key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.concatenate(parts[key]) if parts[key] else np.zeros(shape, dtype=dtype)

    return SliceSet(
        x=cat("x", (0, len(names), patch, patch), np.float32),
        label=cat("label", (0,), np.uint8),
        mask=cat("mask", (0, patch, patch), np.uint8) if with_masks else None,
        patient=cat("patient", (0,), np.int32),
        slice_index=cat("slice_index", (0,), np.int32),
        patients=ids,
        channels=names,
    )


def validate_cohort(slices: SliceSet, data_path: str | Path) -> None:
    """Refuse a cohort the method cannot train on: it needs tumour and tumour-free slices."""
    if len(slices) == 0:
        raise InputError("the cohort has no usable slices (all were dropped as mostly background)", data_path)
    if not (slices.label == 0).any():
        raise InputError("the cohort has no tumour-free slices; the classifier and generator need both kinds",
                         data_path)
    if not (slices.label == 1).any():
        raise InputError("the cohort has no tumour slices; the classifier and generator need both kinds",
                         data_path)
