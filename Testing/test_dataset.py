"""Training cohorts: discovery, slice labels, patient split and training slices."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.io.cohort import Case, discover, labels_from_mask, slice_labels, split_patients
from WeakTumorSegLib.training.slices import load_slices, validate_cohort
from WeakTumorSegLib.errors import InputError
from support.phantoms import make_phantom, write_case
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig, normalize_channel, zero_fraction

CHANNELS = ["flair", "t1", "t1ce"]
SHAPE = (10, 96, 110)
IDS = ["P1", "P2", "P3", "P4"]
PP = PreprocessConfig(inplane_scale=1.0)
REAL_LGG = Path(__file__).resolve().parents[2] / "shared" / "data" / "lgg"


def _one_line(exc: pytest.ExceptionInfo, *parts: object) -> str:
    text = str(exc.value)
    assert "\n" not in text
    for part in parts:
        assert str(part) in text, (part, text)
    return text


@pytest.fixture(scope="module")
def phantoms() -> dict:
    return {pid: make_phantom(shape=SHAPE, channels=CHANNELS, seed=10 + i) for i, pid in enumerate(IDS)}


@pytest.fixture(scope="module")
def master(tmp_path_factory, phantoms) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "lgg"
    for pid, ph in phantoms.items():
        write_case(ph, root / pid, pid)
    (root / "patients.csv").write_text("patient,n_slices\n" + "".join(f"{p},10\n" for p in IDS))
    return root


@pytest.fixture
def cohort(master, tmp_path) -> Path:
    """A private, modifiable copy of the four-patient cohort."""
    return Path(shutil.copytree(master, tmp_path / "lgg"))


def _write_labels(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["slice_index", "slice_number", "tumor", "tumor_pixels"])
        w.writerows(rows)


# --------------------------------------------------------------------------------------------
# discover


def test_discover_folder(master):
    cases = discover(master, CHANNELS)
    assert [c.id for c in cases] == IDS
    for c in cases:
        assert list(c.channels) == CHANNELS
        assert all(p == master / c.id / f"{c.id}_{n}.nii.gz" for n, p in c.channels.items())
        assert c.mask == master / c.id / f"{c.id}_seg.nii.gz"
        assert c.labels == master / c.id / f"{c.id}_slice_labels.csv"


def test_discover_case_insensitive_and_other_suffixes(cohort):
    p1 = cohort / "P1"
    (p1 / "P1_flair.nii.gz").rename(p1 / "P1_FLAIR.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(p1 / "P1_t1.nii.gz")), str(p1 / "P1_t1.nrrd"))
    (p1 / "P1_t1.nii.gz").unlink()
    cases = discover(cohort, ["Flair", "T1", "t1ce"])
    assert cases[0].channels == {"Flair": p1 / "P1_FLAIR.nii.gz", "T1": p1 / "P1_t1.nrrd",
                                 "t1ce": p1 / "P1_t1ce.nii.gz"}
    ss = load_slices(cases[:1], ["flair", "t1", "t1ce"], PP, patch=64)
    assert ss.x.shape[1:] == (3, 64, 64)


def test_discover_missing_path(tmp_path):
    with pytest.raises(InputError) as exc:
        discover(tmp_path / "nowhere", CHANNELS)
    _one_line(exc, tmp_path / "nowhere", "does not exist")


def test_discover_empty_and_no_patient_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as exc:
        discover(empty, CHANNELS)
    _one_line(exc, empty, "empty folder", "<id>/<id>_<channel>.nii.gz")
    (empty / "patients.csv").write_text("patient\n")
    with pytest.raises(InputError) as exc:
        discover(empty, CHANNELS)
    _one_line(exc, empty, "no patient folders", "<id>/<id>_<channel>.nii.gz")


def test_discover_missing_channel(cohort):
    (cohort / "P2" / "P2_t1ce.nii.gz").unlink()
    with pytest.raises(InputError) as exc:
        discover(cohort, CHANNELS)
    _one_line(exc, cohort / "P2", "'t1ce'", "P2_t1ce.nii.gz")


def test_discover_needs_labels_or_mask(cohort):
    (cohort / "P3" / "P3_seg.nii.gz").unlink()
    (cohort / "P3" / "P3_slice_labels.csv").unlink()
    with pytest.raises(InputError) as exc:
        discover(cohort, CHANNELS)
    _one_line(exc, cohort / "P3", "slice labels needed: P3_slice_labels.csv or P3_seg.nii.gz")


def _manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_manifest_relative_paths(cohort):
    rows = [[pid, f"lgg/{pid}/{pid}_flair.nii.gz", f"lgg/{pid}/{pid}_t1.nii.gz", f"lgg/{pid}/{pid}_t1ce.nii.gz",
             f"lgg/{pid}/{pid}_seg.nii.gz" if pid != "P2" else "",
             f"lgg/{pid}/{pid}_slice_labels.csv" if pid != "P1" else ""] for pid in reversed(IDS)]
    rows[0][1] = str(cohort / "P4" / "P4_flair.nii.gz")  # absolute paths work as well
    manifest = _manifest(cohort.parent / "cohort.csv", ["patient", "FLAIR", "t1", "t1ce", "mask", "labels"], rows)
    cases = discover(manifest, CHANNELS)
    assert [c.id for c in cases] == IDS
    by_id = {c.id: c for c in cases}
    assert by_id["P1"].labels is None and by_id["P1"].mask == cohort / "P1" / "P1_seg.nii.gz"
    assert by_id["P2"].mask is None and by_id["P2"].labels == cohort / "P2" / "P2_slice_labels.csv"
    assert by_id["P4"].channels["flair"] == cohort / "P4" / "P4_flair.nii.gz"
    assert by_id["P3"].channels["t1ce"] == cohort / "P3" / "P3_t1ce.nii.gz"
    folder_cases = discover(cohort, CHANNELS)
    for a, b in zip(cases, folder_cases):
        assert {k: v.resolve() for k, v in a.channels.items()} == {k: v.resolve() for k, v in b.channels.items()}


def test_manifest_errors(cohort):
    base = [["P1", "lgg/P1/P1_flair.nii.gz", "lgg/P1/P1_t1.nii.gz", "lgg/P1/P1_seg.nii.gz"]]
    m = _manifest(cohort.parent / "m1.csv", ["patient", "flair", "t1", "mask"], base)
    with pytest.raises(InputError) as exc:
        discover(m, CHANNELS)
    _one_line(exc, m, "no column for channel 't1ce'")

    m = _manifest(cohort.parent / "m2.csv", ["patient", "flair", "t1", "mask"], base + base)
    with pytest.raises(InputError) as exc:
        discover(m, ["flair", "t1"])
    _one_line(exc, m, "'P1' appears twice")

    m = _manifest(cohort.parent / "m3.csv", ["patient", "flair", "t1", "mask", "labels"],
                  [["P1", "lgg/P1/P1_flair.nii.gz", "lgg/P1/P1_t1.nii.gz", "", ""]])
    with pytest.raises(InputError) as exc:
        discover(m, ["flair", "t1"])
    _one_line(exc, m, "slice labels needed")

    m = _manifest(cohort.parent / "m4.csv", ["patient", "flair", "t1", "mask"],
                  [["P1", "lgg/P1/P1_flair.nii.gz", "", "lgg/P1/P1_seg.nii.gz"]])
    with pytest.raises(InputError) as exc:
        discover(m, ["flair", "t1"])
    _one_line(exc, m, "'t1'")

    m = _manifest(cohort.parent / "m5.csv", ["patient", "flair", "mask"],
                  [["P1", "lgg/P1/P1_nothere.nii.gz", "lgg/P1/P1_seg.nii.gz"]])
    with pytest.raises(InputError) as exc:
        discover(m, ["flair"])
    _one_line(exc, cohort / "P1" / "P1_nothere.nii.gz", "file not found")


# --------------------------------------------------------------------------------------------
# slice labels


def test_csv_labels_equal_mask_labels(master, phantoms):
    for case in discover(master, CHANNELS):
        from_csv = slice_labels(case, SHAPE[0])
        from_mask = slice_labels(Case(case.id, case.channels, case.mask, None), SHAPE[0])
        assert from_csv.dtype == np.uint8 and from_csv.shape == (SHAPE[0],)
        np.testing.assert_array_equal(from_csv, from_mask)
        np.testing.assert_array_equal(from_csv, phantoms[case.id].slice_labels)
        assert 0 < from_csv.sum() < SHAPE[0]


def test_erosion_removes_one_pixel_label(tmp_path, phantoms):
    ph = phantoms["P1"]
    free = int(np.flatnonzero(ph.slice_labels == 0)[0])
    mask = ph.mask.copy()
    mask[free, 48, 55] = 1
    path = tmp_path / "m_seg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(path))
    case = Case("m", {}, path, None)
    plain, eroded = slice_labels(case, SHAPE[0]), slice_labels(case, SHAPE[0], erosion=1)
    assert plain[free] == 1 and eroded[free] == 0
    big = ph.slice_labels == 1
    assert eroded[big].sum() >= big.sum() - 2  # the tumour blob's slices survive one erosion
    # in-plane only: a column of single pixels through all slices vanishes
    col = np.zeros(SHAPE, np.uint8)
    col[:, 10, 10] = 1
    assert labels_from_mask(col, 1).sum() == 0 and labels_from_mask(col, 0).sum() == SHAPE[0]


def test_label_csv_errors(cohort):
    case = discover(cohort, CHANNELS)[0]
    good = [(i, i + 1, 0, 0) for i in range(SHAPE[0])]
    _write_labels(case.labels, good[:-1])
    with pytest.raises(InputError) as exc:
        slice_labels(case, SHAPE[0])
    _one_line(exc, case.labels, "9 rows", "10 slices")
    _write_labels(case.labels, [(i + 1, i + 1, 0, 0) for i in range(SHAPE[0])])
    with pytest.raises(InputError) as exc:
        slice_labels(case, SHAPE[0])
    _one_line(exc, case.labels, "slice_index")
    _write_labels(case.labels, good[:3] + [(3, 4, 2, 0)] + good[4:])
    with pytest.raises(InputError) as exc:
        slice_labels(case, SHAPE[0])
    _one_line(exc, case.labels, "0 or 1")
    # a row-count mismatch also stops load_slices, naming the CSV
    _write_labels(case.labels, good + [(10, 11, 0, 0)])
    with pytest.raises(InputError) as exc:
        load_slices([case], CHANNELS, PP, patch=64)
    _one_line(exc, case.labels)
    # slice_index order does not matter; values land at their index
    _write_labels(case.labels, [(i, i + 1, int(i == 7), 0) for i in reversed(range(SHAPE[0]))])
    assert slice_labels(case, SHAPE[0]).tolist() == [0] * 7 + [1] + [0] * 2


# --------------------------------------------------------------------------------------------
# split


def test_split_deterministic_and_disjoint():
    ids = [f"id{i:02d}" for i in range(23)]
    train, val = split_patients(ids, 0.2, seed=5)
    assert (train, val) == split_patients(list(reversed(ids)), 0.2, seed=5)
    assert not set(train) & set(val) and sorted(train + val) == sorted(ids)
    assert len(val) == 5 and train == sorted(train) and val == sorted(val)
    assert any(split_patients(ids, 0.2, seed=s)[1] != val for s in range(6, 12))
    assert split_patients(["a"], 0.2) == (["a"], [])
    two = split_patients(["b", "a"], 0.1)
    assert len(two[0]) == len(two[1]) == 1 and sorted(two[0] + two[1]) == ["a", "b"]
    assert split_patients(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert split_patients(ids, 0.2, val_ids=["id03", "id01"]) == ([i for i in ids if i not in ("id01", "id03")],
                                                                  ["id01", "id03"])
    with pytest.raises(ValueError):
        split_patients(ids, val_ids=["nobody"])
    with pytest.raises(ValueError):
        split_patients(["a", "a", "b"])


def test_split_never_splits_a_patient(master):
    ss = load_slices(discover(master, CHANNELS), CHANNELS, PP, patch=64)
    train, val = split_patients(ss.patients, 0.25, seed=1)
    tr, va = ss.select_patients(train), ss.select_patients(val)
    assert len(tr) + len(va) == len(ss)
    assert not set(np.asarray(ss.patients)[tr.patient]) & set(np.asarray(ss.patients)[va.patient])


# --------------------------------------------------------------------------------------------
# load_slices


def test_load_slices_shapes_and_dtypes(master):
    calls = []
    cases = discover(master, CHANNELS)
    ss = load_slices(cases, CHANNELS, PP, patch=64, progress=lambda d, t: calls.append((d, t)))
    n = len(ss)
    assert n > 20
    assert ss.x.shape == (n, 3, 64, 64) and ss.x.dtype == np.float32
    assert ss.label.shape == (n,) and ss.label.dtype == np.uint8
    assert ss.mask.shape == (n, 64, 64) and ss.mask.dtype == np.uint8
    assert ss.patient.dtype == np.int32 and ss.slice_index.dtype == np.int32
    assert ss.patients == IDS and ss.channels == CHANNELS
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert set(np.unique(ss.label)) == {0, 1}
    validate_cohort(ss, master)
    again = load_slices(cases, CHANNELS, PP, patch=64)
    np.testing.assert_array_equal(ss.x, again.x)
    other = load_slices(cases, CHANNELS, PP, patch=64, seed=1)
    assert not np.array_equal(ss.x, other.x) or not np.array_equal(ss.slice_index, other.slice_index)
    sub = ss.subset(ss.label == 1)
    assert len(sub) == int(ss.label.sum()) and sub.mask.shape[0] == len(sub) and sub.patients == IDS


def test_labels_consistent_with_cropped_masks(master, phantoms):
    cases = discover(master, CHANNELS)
    source = np.concatenate([phantoms[pid].slice_labels for pid in IDS])
    cut = 0
    for seed in range(3):
        ss = load_slices(cases, CHANNELS, PP, patch=32, max_zero_fraction=1.0, seed=seed)
        assert len(ss) == 4 * SHAPE[0]  # nothing dropped: every slice is here
        np.testing.assert_array_equal(ss.label, ss.mask.any(axis=(1, 2)).astype(np.uint8))
        assert np.all(ss.label <= source)
        cut += int((ss.label < source).sum())
    assert cut > 0  # small crops cut some tumour away: those slices are labelled 0
    # with padding only (working size <= patch), labels are exactly the source labels
    big = load_slices(cases, CHANNELS, PP, patch=128, max_zero_fraction=1.0)
    np.testing.assert_array_equal(big.label, source)
    np.testing.assert_array_equal(big.mask.sum(axis=(1, 2)),
                                  np.concatenate([phantoms[p].mask.sum(axis=(1, 2)) for p in IDS]))


def test_padding_offset_is_shared_by_a_volume(master, phantoms):
    case = discover(master, CHANNELS)[0]
    ss = load_slices([case], CHANNELS, PP, patch=128, max_zero_fraction=1.0)
    occupied = ss.x.any(axis=(0, 1))
    rows, cols = np.flatnonzero(occupied.any(axis=1)), np.flatnonzero(occupied.any(axis=0))
    head = phantoms["P1"].head_mask.any(axis=0)
    head_rows, head_cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    assert rows[-1] - rows[0] + 1 == head_rows.size
    assert cols[-1] - cols[0] + 1 == head_cols.size
    np.testing.assert_array_equal(ss.mask.any(axis=(1, 2)), phantoms["P1"].slice_labels.astype(bool))
    # inside the head's box each slice is the channel as inference normalises it, moved but unchanged
    for k, name in enumerate(CHANNELS):
        box = normalize_channel(phantoms["P1"].channels[name])[:, head_rows[0]:head_rows[-1] + 1,
                                                               head_cols[0]:head_cols[-1] + 1]
        np.testing.assert_array_equal(ss.x[:, k, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], box)


def test_mostly_zero_slices_dropped(cohort, phantoms):
    ph = phantoms["P1"]
    channels = {n: v.copy() for n, v in ph.channels.items()}
    for v in channels.values():
        v[0, :, :] = 0
        v[1, :, :80] = 0  # most of the head gone
    mod = type(ph)(channels, ph.healthy, ph.mask, ph.slice_labels)
    write_case(mod, cohort / "P1", "P1")
    case = discover(cohort, CHANNELS)[0]
    ss = load_slices([case], CHANNELS, PP, patch=96)
    assert 0 not in ss.slice_index and 1 not in ss.slice_index
    assert {3, 4, 5, 6} <= set(ss.slice_index.tolist())
    everything = load_slices([case], CHANNELS, PP, patch=96, max_zero_fraction=1.0)
    assert len(everything) == SHAPE[0]
    zf = zero_fraction(everything.x)
    assert zf[0] == 1.0 and zf[1] > 0.5
    np.testing.assert_array_equal(ss.slice_index, np.flatnonzero(zf <= 0.5))
    np.testing.assert_array_equal(ss.x, everything.x[zf <= 0.5])


def test_labels_only_cohort_has_no_masks(cohort, phantoms):
    for pid in IDS:
        (cohort / pid / f"{pid}_seg.nii.gz").unlink()
    cases = discover(cohort, CHANNELS)
    assert all(c.mask is None and c.labels is not None for c in cases)
    ss = load_slices(cases, CHANNELS, PP, patch=128, max_zero_fraction=1.0)
    assert ss.mask is None
    np.testing.assert_array_equal(ss.label, np.concatenate([phantoms[p].slice_labels for p in IDS]))
    assert ss.subset([0, 1]).mask is None


def test_mixed_cohort_mask_none(cohort):
    (cohort / "P2" / "P2_seg.nii.gz").unlink()
    cases = discover(cohort, CHANNELS)
    assert cases[1].mask is None and cases[0].mask is not None
    assert load_slices(cases, CHANNELS, PP, patch=64).mask is None


def test_mask_geometry_checked(cohort):
    case = discover(cohort, CHANNELS)[0]
    seg = sitk.ReadImage(str(case.mask))
    seg.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(seg, str(case.mask))
    with pytest.raises(InputError) as exc:
        load_slices([case], CHANNELS, PP, patch=64)
    _one_line(exc, case.mask, "voxel grid")


def test_validate_cohort(master, tmp_path):
    ss = load_slices(discover(master, CHANNELS)[:2], CHANNELS, PP, patch=64)
    with pytest.raises(InputError) as exc:
        validate_cohort(ss.subset(ss.label == 1), master)
    _one_line(exc, master, "the cohort has no tumour-free slices; the classifier and generator need both kinds")
    with pytest.raises(InputError) as exc:
        validate_cohort(ss.subset(ss.label == 0), master)
    _one_line(exc, master, "no tumour slices")
    with pytest.raises(InputError):
        validate_cohort(ss.subset(np.zeros(len(ss), bool)), master)
    empty = load_slices([], CHANNELS, PP, patch=64)
    assert empty.x.shape == (0, 3, 64, 64) and len(empty) == 0


# --------------------------------------------------------------------------------------------
# real data


@pytest.mark.data
def test_real_lgg():
    if not REAL_LGG.is_dir():
        pytest.skip(f"real data not found at {REAL_LGG}")
    cases = discover(REAL_LGG, ["flair", "t1", "t1ce"])
    assert len(cases) == 50
    assert all(len(c.channels) == 3 and c.mask is not None and c.labels is not None for c in cases)
    for case in cases[:3]:
        n = sitk.ReadImage(str(case.channels["flair"])).GetSize()[2]
        from_csv = slice_labels(case, n)
        from_mask = slice_labels(Case(case.id, case.channels, case.mask, None), n, erosion=0)
        np.testing.assert_array_equal(from_csv, from_mask)
    ss = load_slices(cases[:2], ["flair", "t1", "t1ce"], PreprocessConfig(inplane_scale=0.5), patch=128)
    assert ss.x.shape[1:] == (3, 128, 128) and ss.x.dtype == np.float32
    assert ss.mask is not None and ss.mask.shape == (len(ss), 128, 128)
    # the labels describe the resampled patches: a slice is tumour exactly when its patch mask is
    np.testing.assert_array_equal(ss.label, ss.mask.any(axis=(1, 2)))
    assert 0 < ss.label.sum() < len(ss)
    assert set(ss.patient.tolist()) <= {0, 1}
