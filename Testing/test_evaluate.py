"""``weaktumorseg evaluate`` and :mod:`WeakTumorSegLib.evaluation` (Yoo et al., Tables 2-6, C.1).

The command runs on a small phantom cohort with the shipped stand-in bundle (real masks on
phantoms), extended in a copy with the optional models ``segmenter0`` / ``baseline_seed_only``
(re-using S_US / S_OS weights, so their Dice must equal those models'), a residual threshold and
a recorded training split. Every reported number is recomputed by hand from the per-slice CSV
or from the masks.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from WeakTumorSegLib.bundle.info import BUNDLE_FILE, MODELS_DIR
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.io.cohort import Case
from WeakTumorSegLib.evaluation.summary import FILTER_THRESHOLDS, filter_curve, pearson
from WeakTumorSegLib.evaluation.report import OUTPUTS
from WeakTumorSegLib.baselines import choose_residual_threshold, residual_baseline, residual_threshold_curve
from WeakTumorSegLib.evaluation.cases import select_cases
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.metrics import dice, voxels_away
from WeakTumorSegLib.preprocessing.intensity import normalize_channel
from support.phantoms import make_phantom, write_case

from conftest import files_in, run_cli, stderr_lines

STANDIN = MODELS_DIR / "phantom-standin"
SHAPE = (10, 140, 150)
#: (patient, seed, tumours): P2 is tumour-free, so per-volume Dice must skip it.
PATIENTS = (("P0", 11, 1), ("P1", 12, 1), ("P2", 13, 0))
RESIDUAL_T = 0.1


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def fnum(text: str) -> float:
    return float(text) if text != "" else float("nan")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_cohort") / "cohort"
    for pid, seed, n in PATIENTS:
        write_case(make_phantom(shape=SHAPE, n_tumors=n, seed=seed), root / pid, pid)
    return root


@pytest.fixture(scope="module")
def full_bundle(tmp_path_factory, cohort) -> Path:
    """The stand-in plus segmenter0 (= S_US weights), baseline_seed_only (= S_OS weights), a
    residual threshold and a training split (train P0, validation P1 and P2)."""
    path = tmp_path_factory.mktemp("eval_bundle") / "standin-plus"
    shutil.copytree(STANDIN, path)
    cfg = json.loads((path / BUNDLE_FILE).read_text())
    cfg["models"]["segmenter0"] = dict(cfg["models"]["segmenter_us"])
    cfg["models"]["baseline_seed_only"] = dict(cfg["models"]["segmenter_os"])
    cfg["baselines"] = {"residual": {"threshold": RESIDUAL_T, "median": 5}}
    cfg["training"] = {**cfg.get("training", {}), "data": str(cohort),
                       "split": {"seed": 0, "train": ["P0"], "val": ["P1", "P2"]}}
    (path / BUNDLE_FILE).write_text(json.dumps(cfg, indent=2))
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, full_bundle, cohort) -> Path:
    """One evaluate run on all three patients, with seeds (few RISE masks, to stay fast)."""
    out = tmp_path_factory.mktemp("eval_out") / "out"
    proc = run_cli("evaluate", "--bundle", full_bundle, "--data", cohort, "--out", out, "--patients", "all",
                   "--seed-masks", 8, "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert str(out / "metrics.json") in proc.stdout
    # all three patients were evaluated although P0 trained the bundle: that is said, not hidden
    assert any("training split" in ln and "P0" in ln for ln in stderr_lines(proc))
    return out


# --------------------------------------------------------------------------------------------
# The command's outputs, recomputed by hand


def test_writes_every_output(evaluated):
    assert files_in(evaluated) == sorted(OUTPUTS.values())
    png = (evaluated / "filter_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    tables = (evaluated / "tables.md").read_text()
    for title in ("Table 2", "Table 3", "Table 4", "Table 5", "Table 6", "Table C.1"):
        assert title in tables
    assert "empty prediction vs empty truth = 1" in tables  # conventions are always labelled
    assert "95 % interval of the mean (bootstrap over the 2 tumour-bearing volumes" in tables


def test_dice_equals_hand_computation(evaluated, cohort):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    rows = read_csv(evaluated / "per_slice.csv")
    volumes = {r["patient"]: r for r in read_csv(evaluated / "per_volume.csv")}
    assert [r["patient"] for r in rows] == [p for p, _, _ in PATIENTS for _ in range(SHAPE[0])]
    for key in ("s0", "s_os", "s_us", "fused", "seed_only", "residual"):
        entry = metrics["segmentation"][key]
        assert entry["available"], key
        per_volume = []
        for pid, _, _ in PATIENTS:
            mine = [r for r in rows if r["patient"] == pid]
            inter = sum(int(r[f"overlap_{key}"]) for r in mine)
            pred = sum(int(r[f"pixels_{key}"]) for r in mine)
            truth = sum(int(r["truth_pixels"]) for r in mine)
            d3 = 1.0 if pred + truth == 0 else 2 * inter / (pred + truth)
            assert float(volumes[pid][f"dice_3d_{key}"]) == pytest.approx(d3, abs=1e-6)
            if truth > 0:
                per_volume.append(d3)
        assert len(per_volume) == 2 and entry["volumes"] == 2  # the tumour-free P2 is not averaged
        assert entry["per_volume_3d"] == pytest.approx(np.mean(per_volume), abs=1e-9)
        low, high = entry["per_volume_3d_interval"]
        assert low - 1e-9 <= min(per_volume) and max(per_volume) <= high + 1e-9  # two volumes: the range
        slice_d = np.array([float(r[f"dice_{key}"]) for r in rows])
        tumour = np.array([int(r["truth_pixels"]) > 0 for r in rows])
        assert entry["per_slice_paper"] == pytest.approx(slice_d.mean(), abs=1e-6)
        assert entry["per_slice_tumour"] == pytest.approx(slice_d[tumour].mean(), abs=1e-6)
        for r in rows:  # per-slice Dice from the counts, empty vs empty = 1
            p, o, t = int(r[f"pixels_{key}"]), int(r[f"overlap_{key}"]), int(r["truth_pixels"])
            assert float(r[f"dice_{key}"]) == pytest.approx(1.0 if p + t == 0 else 2 * o / (p + t), abs=1e-6)
    seg = metrics["segmentation"]
    # the optional models re-use S_US / S_OS weights: identical scores prove they ran gated alike
    assert seg["s0"]["per_volume_3d"] == seg["s_us"]["per_volume_3d"]
    assert seg["seed_only"]["per_slice_paper"] == seg["s_os"]["per_slice_paper"]
    assert seg["fused"]["per_volume_3d"] > 0.6  # the stand-in finds the phantom tumours


def test_counts_match_an_independent_segmentation(evaluated, cohort):
    """The fused mask's 3D Dice of P1 equals segment_arrays + metrics.dice against the mask file,
    and its residual baseline is the one of the bundle's recorded threshold."""
    pid = "P1"
    folder = cohort / pid
    channels = {c: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{pid}_{c}.nii.gz")))
                for c in ("flair", "t1", "t1ce")}
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{pid}_seg.nii.gz"))) > 0
    result = segment_arrays(Bundle.load(STANDIN), channels, "cpu", extra=["healthy"])
    row = {r["patient"]: r for r in read_csv(evaluated / "per_volume.csv")}[pid]
    assert float(row["dice_3d_fused"]) == pytest.approx(dice(result.mask, truth), abs=1e-6)
    assert int(row["voxels_fused"]) == int(result.mask.sum())
    assert int(row["voxels_away_fused"]) == voxels_away(result.mask, truth)
    assert int(row["truth_voxels"]) == int(truth.sum())
    residual = residual_baseline(result.flair, result.healthy, RESIDUAL_T, median=5)
    assert int(row["voxels_residual"]) == int(residual.sum())
    assert residual_baseline(result.flair, result.healthy, 2 * RESIDUAL_T, median=5).sum() < residual.sum()


def test_classifier_metrics(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    rows = read_csv(evaluated / "per_slice.csv")
    truth = np.array([int(r["truth_pixels"]) > 0 for r in rows])
    p = np.array([float(r["p_tumor"]) for r in rows])
    c = metrics["classifier"]["from_masks"]
    assert c["slices"] == len(rows) and c["tumour_slices"] == int(truth.sum())
    assert c["sensitivity"] == pytest.approx(((p > 0.5) & truth).sum() / truth.sum())
    assert c["specificity"] == pytest.approx(((p <= 0.5) & ~truth).sum() / (~truth).sum())
    # AUC: the share of (tumour, tumour-free) slice pairs ranked right, ties half (the CSV rounds p_tumor)
    pairs = p[truth][:, None] - p[~truth][None, :]
    assert c["auc"] == pytest.approx((pairs > 0).mean() + 0.5 * (pairs == 0).mean(), abs=1e-3)
    assert c["auc"] > 0.9
    labels = metrics["classifier"]["from_labels"]  # the phantoms ship slice-label CSVs too
    assert labels["patients"] == 3 and labels["tumour_slices"] == int(truth.sum())


def test_seed_overlap_is_pooled_from_per_volume_counts(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    seeds = metrics["seeds"]
    assert seeds["computed"] and metrics["configuration"]["rise"]["n_masks"] == 8
    vols = read_csv(evaluated / "per_volume.csv")
    assert seeds["positive_voxels"] == sum(int(v["positive_seed_voxels"]) for v in vols) > 0
    for kind in ("positive", "negative"):  # pooled: every voxel weighs the same, not every patient
        voxels = np.array([int(v[f"{kind}_seed_voxels"]) for v in vols])
        overlap = np.array([fnum(v[f"{kind}_seed_overlap"]) for v in vols])
        assert seeds[f"{kind}_voxels"] == voxels.sum()
        assert seeds[f"{kind}_overlap"] == pytest.approx(np.nansum(voxels * overlap) / voxels.sum(), abs=1e-5)
    assert seeds["negative_overlap"] > 0.95  # negative seeds are reliable (Yoo et al., Tables 3)


def test_filter_curve_and_correlation(evaluated):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    curve = read_csv(evaluated / "filter_curve.csv")
    assert [float(r["threshold"]) for r in curve] == list(FILTER_THRESHOLDS)
    removed = [float(r["percent_removed"]) for r in curve]
    assert removed[0] == 0.0 and bool(np.all(np.diff(removed) >= 0))  # monotone
    fused = metrics["segmentation"]["fused"]
    assert float(curve[0]["dice_kept_per_slice_paper"]) == pytest.approx(fused["per_slice_paper"], abs=1e-6)
    rows = read_csv(evaluated / "per_slice.csv")
    score = np.array([float(r["difference_score"]) for r in rows])
    pix = np.array([int(r["pixels_fused"]) for r in rows])
    d = np.array([float(r["dice_fused"]) for r in rows])
    for r in curve:
        gone = (pix > 0) & (score < float(r["threshold"]))
        assert int(r["slices_removed"]) == int(gone.sum())
        assert float(r["percent_removed"]) == pytest.approx(100 * gone.mean(), abs=1e-4)
        if (~gone).any():
            assert float(r["dice_kept_per_slice_paper"]) == pytest.approx(d[~gone].mean(), abs=1e-5)
    nonempty = pix > 0
    cor = metrics["correlation"]
    assert cor["slices"] == int(nonempty.sum())
    assert cor["pearson_difference_score_vs_dice"] == pytest.approx(
        np.corrcoef(score[nonempty], d[nonempty])[0, 1], abs=1e-4)


def test_configuration_is_saved(evaluated, full_bundle):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    cfg = metrics["configuration"]
    assert cfg["patients"] == ["P0", "P1", "P2"] and "--patients all" in cfg["patients_source"]
    assert cfg["residual"]["threshold"] == RESIDUAL_T and "training split" in cfg["residual"]["threshold_source"]
    assert cfg["seeds"] is True and cfg["torch_seed"] == 0
    assert metrics["bundle"]["name"] == "phantom-standin" and metrics["bundle"]["path"] == str(full_bundle.resolve())
    assert "per_volume_3d" in metrics["conventions"] and "per_slice_paper" in metrics["conventions"]


# --------------------------------------------------------------------------------------------
# Patient selection, missing models, errors


def test_default_is_the_bundles_validation_split(tmp_path, full_bundle, cohort):
    out = tmp_path / "out"
    proc = run_cli("evaluate", "-b", full_bundle, "--data", cohort, "--out", out, "--no-seeds",
                   "--device", "cpu", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [e["patient"] for e in events if e.get("stage") == "patient"] == ["P1", "P2"]
    assert events[-1]["stage"] == "done" and set(events[-1]["outputs"]) == set(OUTPUTS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["configuration"]["patients"] == ["P1", "P2"]
    assert "validation split" in metrics["configuration"]["patients_source"]
    assert metrics["seeds"] == {"computed": False, "reason": "--no-seeds"}
    assert "positive_seed_voxels" not in read_csv(out / "per_volume.csv")[0]


def test_bundle_without_optional_models_reports_them_unavailable(tmp_path, cohort):
    out = tmp_path / "out"
    proc = run_cli("evaluate", "-b", STANDIN, "--data", cohort, "--out", out, "--patients", "P1",
                   "--no-seeds", "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    seg = json.loads((out / "metrics.json").read_text())["segmentation"]
    for key in ("s0", "seed_only", "residual"):
        assert seg[key]["available"] is False and seg[key]["reason"]
    assert seg["fused"]["available"] and seg["fused"]["volumes"] == 1
    assert "dice_s0" not in read_csv(out / "per_slice.csv")[0]
    assert "not available" in (out / "tables.md").read_text()


def test_cohort_without_masks_is_refused(tmp_path):
    data = tmp_path / "labels_only"
    paths = write_case(make_phantom(shape=(6, 64, 64), seed=5), data / "Q1", "Q1")
    paths["seg"].unlink()
    out = tmp_path / "out"
    proc = run_cli("evaluate", "-b", STANDIN, "--data", data, "--out", out, "--device", "cpu")
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1 and str(data) in lines[0] and "mask" in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_unknown_patient_is_refused(tmp_path, cohort):
    proc = run_cli("evaluate", "-b", STANDIN, "--data", cohort, "--out", tmp_path / "o", "--patients", "P0,NOPE")
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "NOPE" in lines[0] and str(cohort) in lines[0]


def test_split_without_recorded_split_is_refused(tmp_path, cohort):
    proc = run_cli("evaluate", "-b", STANDIN, "--data", cohort, "--out", tmp_path / "o", "--split", "val")
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "split" in lines[0] and BUNDLE_FILE in lines[0]


def test_existing_output_is_refused_without_overwrite(tmp_path, cohort):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tables.md").write_text("keep me")
    args = ["evaluate", "-b", STANDIN, "--data", cohort, "--out", out, "--patients", "P2", "--no-seeds",
            "--device", "cpu", "--progress", "none"]
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "--overwrite" in lines[0] and "tables.md" in lines[0]
    assert files_in(out) == ["tables.md"] and (out / "tables.md").read_text() == "keep me"
    proc = run_cli(*args, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert files_in(out) == sorted(OUTPUTS.values())
    assert (out / "tables.md").read_text() != "keep me"


# --------------------------------------------------------------------------------------------
# Pure functions


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[-2], :shape[-1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)


def test_residual_baseline_recovers_a_known_lesion():
    rng = np.random.default_rng(0)
    z, h, w = 6, 96, 96
    healthy = np.clip(0.4 + 0.05 * rng.standard_normal((z, h, w)), 0, 1).astype(np.float32)
    lesion = np.zeros((z, h, w), bool)
    lesion[2:5] = _disc((h, w), 40, 55, 12)
    flair = healthy.copy()
    flair[lesion] += 0.35
    # the converter is imperfect: salt noise everywhere (removed by the median) and a darker
    # region (a negative residual, ignored by the positive part)
    salt = rng.random((z, h, w)) < 0.01
    flair[salt] += 0.5
    flair[:, 70:90, 10:30] -= 0.3
    mask = residual_baseline(flair, healthy, 0.15)
    assert mask.dtype == np.uint8 and mask.shape == flair.shape
    assert dice(mask, lesion) > 0.95
    assert mask[[0, 1, 5]].sum() == 0  # lesion-free slices stay empty
    # without the median filter the salt noise is segmented too
    assert dice(residual_baseline(flair, healthy, 0.15, median=1), lesion) < dice(mask, lesion) - 0.05
    # the filter is in-plane only: a lesion on one slice is not smeared onto its neighbours
    one = np.zeros((3, 40, 40), np.float32)
    one[1, 10:30, 10:30] = 0.5
    assert residual_baseline(one, np.zeros_like(one), 0.1)[[0, 2]].sum() == 0
    # 2D images work as well
    assert residual_baseline(flair[3], healthy[3], 0.15).shape == (h, w)


def test_choose_residual_threshold_picks_the_separating_band():
    """A lesion (residual 0.26) next to a halo (residual 0.14): thresholds in [0.14, 0.26)
    segment the lesion exactly, lower ones add the halo, higher ones lose the lesion; the
    choice is the middle of the best band."""
    h = w = 80
    flairs, healthies, masks = [], [], []
    for cy, cx, r in ((30, 30, 10), (45, 40, 14)):
        lesion = np.stack([_disc((h, w), cy, cx, r)] * 3)
        halo = np.stack([_disc((h, w), cy, cx, r + 8)] * 3) & ~lesion
        flair = np.where(lesion, 0.26, np.where(halo, 0.14, 0.0))
        flairs.append(flair)
        healthies.append(np.zeros_like(flair))
        masks.append(lesion)
    # a tumour-free volume with residual everywhere must not influence the choice
    flairs.append(np.full((3, h, w), 0.2))
    healthies.append(np.zeros((3, h, w)))
    masks.append(np.zeros((3, h, w), bool))
    curve = dict(residual_threshold_curve(flairs, healthies, masks))
    assert curve[0.2] > 0.99  # the 5x5 median only rounds the disc edges
    assert curve[0.1] < 0.9 and curve[0.3] == 0.0
    t = choose_residual_threshold(flairs, healthies, masks)
    assert 0.14 <= t < 0.26 and t == pytest.approx(0.2, abs=0.021)
    with pytest.raises(ValueError, match="tumour-bearing"):
        choose_residual_threshold(flairs[2:], healthies[2:], masks[2:])


def test_filter_curve_semantics():
    # slices: empty mask with low score (never removed), two non-empty ones with scores 0.15 / 0.35
    d = np.array([1.0, 0.2, 0.9, 0.5])
    pix = np.array([0, 10, 10, 10])
    score = np.array([0.0, 0.15, 0.35, 0.25])
    truth = np.array([0, 5, 5, 5])
    rows = {r["threshold"]: r for r in filter_curve(d, pix, score, truth)}
    assert rows[0.0]["slices_removed"] == 0 and rows[0.0]["dice_kept_per_slice_paper"] == pytest.approx(d.mean())
    assert math.isnan(rows[0.0]["dice_removed_per_slice_paper"])
    assert rows[0.2]["slices_removed"] == 1 and rows[0.2]["dice_removed_per_slice_paper"] == pytest.approx(0.2)
    assert rows[0.3]["slices_removed"] == 2 and rows[0.3]["percent_removed"] == pytest.approx(50.0)
    assert rows[0.3]["percent_removed_of_nonempty"] == pytest.approx(200 / 3)
    assert rows[0.9]["slices_removed"] == 3 and rows[0.9]["dice_kept_per_slice_paper"] == 1.0
    assert math.isnan(rows[0.9]["dice_kept_per_slice_tumour"])


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6.5]) == pytest.approx(np.corrcoef([1, 2, 3], [2, 4, 6.5])[0, 1])
    assert math.isnan(pearson([1.0], [2.0])) and math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_select_cases():
    cases = [Case(i, {}, Path(f"{i}_seg.nii.gz")) for i in ("A", "B", "C")]
    cfg = {"training": {"data": "/elsewhere", "split": {"train": ["A", "B"], "val": ["C"]}}}
    chosen, source, notes = select_cases(cases, cfg, "/data")  # same patients: the training data
    assert [c.id for c in chosen] == ["C"] and "validation" in source and not notes
    chosen, _, notes = select_cases(cases, cfg, "/data", patients="all")
    assert len(chosen) == 3 and "A, B" in notes[0]
    assert [c.id for c in select_cases(cases, cfg, "/data", split="train")[0]] == ["A", "B"]
    assert [c.id for c in select_cases(cases, {}, "/data")[0]] == ["A", "B", "C"]  # no split recorded
    assert [c.id for c in select_cases(cases[:2], cfg, "/other")[0]] == ["A", "B"]  # another cohort


# --------------------------------------------------------------------------------------------
# segment_arrays(extra=...)


@pytest.fixture(scope="module")
def standin():
    return Bundle.load(STANDIN)


@pytest.fixture(scope="module")
def tumour_phantom():
    return make_phantom(shape=(8, 140, 150), n_tumors=1, seed=21)


def test_extra_outputs_leave_the_default_outputs_unchanged(standin, tumour_phantom):
    plain = segment_arrays(standin, tumour_phantom.channels)
    more = segment_arrays(standin, tumour_phantom.channels, extra=["segmenter_us", "segmenter_os", "healthy"])
    assert plain.extra_masks == {} and plain.healthy is None
    np.testing.assert_array_equal(plain.mask, more.mask)
    np.testing.assert_array_equal(plain.probability, more.probability)
    np.testing.assert_array_equal(plain.difference_score, more.difference_score)
    np.testing.assert_array_equal(plain.p_tumor, more.p_tumor)
    assert set(more.extra_masks) == {"segmenter_us", "segmenter_os"}
    for m in more.extra_masks.values():
        assert m.shape == plain.mask.shape and m.dtype == np.uint8
    # S_US under-segments, S_OS over-segments the stand-in's phantoms
    assert more.extra_masks["segmenter_us"].sum() <= more.extra_masks["segmenter_os"].sum()
    assert more.healthy.shape == plain.mask.shape and more.flair.shape == plain.mask.shape


def test_extra_masks_are_gated_and_stitched_like_the_fused_mask(standin, tumour_phantom):
    """With S_OS := S_US the fused map equals S_US's map, so the extra map must equal it too;
    an extra ``segmenter0`` with the same network must give the same mask."""
    models = dict(standin.models)
    models["segmenter_os"] = models["segmenter_us"]
    models["segmenter0"] = models["segmenter_us"]
    same = Bundle(standin.path, standin.config, models)
    r = segment_arrays(same, tumour_phantom.channels, extra=["segmenter_us", "segmenter0"])
    assert r.mask.sum() > 0
    np.testing.assert_allclose(r.extra_probabilities["segmenter_us"], r.probability, atol=1e-5)
    np.testing.assert_array_equal(r.extra_masks["segmenter0"], r.extra_masks["segmenter_us"])
    # gated: slices the classifier calls tumour-free have empty extra masks
    assert r.extra_masks["segmenter0"][r.p_tumor <= 0.5].sum() == 0
    with pytest.raises(Exception, match="no loaded segmenter 'nope'"):
        segment_arrays(same, tumour_phantom.channels, extra=["nope"])


class _Const(nn.Module):
    def __init__(self, value: float | None):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone() if self.value is None else torch.full_like(x, self.value)


def test_healthy_is_the_converter_output_on_every_tissue_patch(standin, tumour_phantom):
    models = dict(standin.models)
    models["converter"] = _Const(None)  # identity: healthy == FLAIR, zero residual
    r = segment_arrays(Bundle(standin.path, standin.config, models), tumour_phantom.channels, extra=["healthy"])
    np.testing.assert_allclose(r.healthy, r.flair, atol=1e-6)
    np.testing.assert_array_equal(r.flair, normalize_channel(tumour_phantom.channels["flair"]))  # the [0, 1] FLAIR
    models["converter"] = _Const(0.0)  # all-black healthy image: the residual is the FLAIR itself
    r = segment_arrays(Bundle(standin.path, standin.config, models), tumour_phantom.channels, extra=["healthy"])
    head = tumour_phantom.head_mask.astype(bool)
    # ungated: the converter ran on tumour-free slices too (Baur et al. use no classifier)
    assert np.abs(r.healthy[head]).max() < 1e-5
    tumour_free = r.p_tumor <= 0.5
    assert tumour_free.any() and np.abs(r.healthy[tumour_free][head[tumour_free]]).max() < 1e-5
