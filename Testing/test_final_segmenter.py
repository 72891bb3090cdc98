"""The final segmenter end to end on phantoms: trained as the last stage of ``train``, it segments
patients it never saw; ``segment`` writes its mask and says so; ``train --from-bundle --annotations``
learns from reviewed exports and refuses an export on another voxel grid than its image.

One module-scoped training (the ``tiny`` preset with the final stage, 8 phantoms, about two
minutes on 2 CPU cores) serves every test. The phantoms' tumours are large (radius 16 to 26
pixels on 128): the fused model marks too little of them, the weakness the final segmenter
exists to fix (on TCGA-LGG, large tumours gain most from it; docs/experiments.md).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, stderr_lines
from WeakTumorSegLib.training.presets import final_only_config, resolve_config

N_PATIENTS = 8
CHANNELS = ("flair", "t1", "t1ce")
CONFIG = {
    "data": {"val_fraction": 0.25},
    "final": {"trainer": "mixed", "balanced": False, "epochs": 8, "halve_every": 6, "min_steps": 150, "width": 8,
              "latent": 32, "hidden": 32, "k": 4, "m": 2, "n": 4},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from support.phantoms import make_phantom, write_case

    root = tmp_path_factory.mktemp("final")
    cohort = root / "cohort"
    for i in range(N_PATIENTS):
        ph = make_phantom(shape=(24, 128, 128), n_tumors=1, tumor_radius=(16, 26), tumor_slice_fraction=0.45,
                          seed=400 + i)
        write_case(ph, cohort / f"p{i:02d}", f"p{i:02d}")
    config = root / "final.json"
    config.write_text(json.dumps(CONFIG))
    bundle = root / "bundle"
    proc = run_cli("train", "--data", cohort, "--out", bundle, "--preset", "tiny", "--config", config,
                   "--device", "cpu", "--threads", "2", "--progress", "none", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evaluation = root / "eval"
    proc = run_cli("evaluate", "--bundle", bundle, "--data", cohort, "--no-seeds", "--out", evaluation,
                   "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "cohort": cohort, "bundle": bundle, "config": config,
            "metrics": json.loads((evaluation / "metrics.json").read_text()), "log": proc.stdout}


def test_final_network_beats_the_fused_model_on_unseen_phantoms(trained):
    # trained on the fused pipeline's own filtered masks, the final network marks more of the large
    # tumours, which the fused model covers in part. Measured on the two validation phantoms: 0.971
    # against 0.959 with two threads (10,478 and 12,396 voxels marked against the fused model's 10,018
    # and 11,983; the truth 10,764 and 12,950), 0.948 against 0.833 with one
    seg = trained["metrics"]["segmentation"]
    assert seg["final"]["available"]
    assert seg["final"]["volumes"] == seg["fused"]["volumes"] == 2  # the validation phantoms, never trained on
    assert seg["final"]["per_volume_3d"] >= seg["fused"]["per_volume_3d"] + 0.005, (seg["final"], seg["fused"])
    with open(trained["root"] / "eval" / "per_volume.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:  # on each phantom, the final mask scores higher and its volume is nearer the truth
        assert float(row["dice_3d_final"]) > float(row["dice_3d_fused"]), row
        truth = int(row["truth_voxels"])
        assert abs(int(row["voxels_final"]) - truth) < abs(int(row["voxels_fused"]) - truth), row


def test_bundle_records_the_final_stage_and_its_labels(trained):
    cfg = json.loads((trained["bundle"] / "bundle.json").read_text())
    assert "final" in cfg["models"] and cfg["models"]["final"]["architecture"] == "unet_mixed"
    labels = cfg["final"]["labels"]["round1"]
    # every tumour-free slice is a full empty label; some tumour slices have a mask, others only their label
    assert labels["empty"] > 0 and labels["masked"] > 0
    assert labels["masked"] + labels["weak"] >= labels["tumour_tiles_with_mask"]
    assert cfg["final"]["patients"] == 6  # the training split only
    assert "final" in cfg["training"]["stage_seconds"]


def test_segment_writes_the_final_mask_and_names_its_network(trained, tmp_path):
    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.inference.pipeline import segment_arrays
    from WeakTumorSegLib.io.images import read_channels

    case = trained["cohort"] / "p00"
    channels = {c: case / f"p00_{c}.nii.gz" for c in CHANNELS}
    bundle = Bundle.load(trained["bundle"])
    assert "final" in bundle.models
    volume = read_channels(channels)
    alone, geometry = bundle.settings(final_weight=1.0), volume.geometry  # read as segment reads the files
    result = segment_arrays(bundle, volume.channels, "cpu", alone, extra=["fused"], geometry=geometry)
    assert result.network == "final"
    # the main mask is the final network's; the fused one is still there, and the flags are its own
    assert not np.array_equal(result.mask, result.extra_masks["fused"])
    fused_only = segment_arrays(bundle, volume.channels, "cpu", bundle.settings(final_weight=0.0), geometry=geometry)
    assert fused_only.network == "fused"  # weight 0: the final network is not even run
    assert np.array_equal(fused_only.mask, result.extra_masks["fused"])
    assert np.array_equal(fused_only.flagged, result.flagged)  # the flags are the fused mask's either way
    half = segment_arrays(bundle, volume.channels, "cpu", bundle.settings(final_weight=0.5), geometry=geometry)
    np.testing.assert_allclose(half.probability, 0.5 * (result.probability + fused_only.probability), atol=1e-5)
    proc = run_cli("segment", "--bundle", trained["bundle"], *[f"-c{c}={p}" for c, p in channels.items()],
                   "--out", tmp_path, "--name", "p00", "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "p00_report.json").read_text())
    assert report["network"] == "final"
    assert report["counts"]["tumor_voxels"] == int(result.mask.sum())


def test_extend_mode_grows_the_fused_lesions_only(trained):
    from scipy import ndimage

    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.inference.pipeline import segment_arrays
    from WeakTumorSegLib.io.images import read_channels

    bundle = Bundle.load(trained["bundle"])
    case = trained["cohort"] / "p07"  # a validation phantom
    volume = read_channels({c: case / f"p07_{c}.nii.gz" for c in CHANNELS})
    run = lambda **kw: segment_arrays(bundle, volume.channels, "cpu", bundle.settings(keep_components=0.0, **kw),  # noqa: E731
                                      extra=["fused"], geometry=volume.geometry)
    extended, alone = run(final_mode="extend", final_weight=0.5), run(final_weight=1.0)
    fused, final = extended.extra_masks["fused"] > 0, alone.mask > 0
    mask = extended.mask > 0
    assert extended.network == "final" and fused.any()
    assert (mask >= fused).all() and (mask <= (fused | final)).all()  # final_weight plays no part
    added = mask & ~fused
    labels, n = ndimage.label(mask, np.ones((3, 3, 3), bool))
    assert set(np.unique(labels[added])) <= set(np.unique(labels[fused]))  # every addition joins a fused lesion
    np.testing.assert_array_equal(extended.flagged, alone.flagged)  # the flags stay the fused mask's


def test_final_gate_tissue_finds_the_tumour_on_slices_the_classifier_misses(trained):
    # inference.final_gate tissue: the final network reads every tissue patch, so a tumour whose
    # slices the classifier scores low still gets its mask; with the classifier's gate it gets none
    import torch

    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.inference.pipeline import segment_arrays
    from WeakTumorSegLib.io.cohort import read_mask
    from WeakTumorSegLib.io.images import read_channels
    from WeakTumorSegLib.metrics import dice

    class Blind(torch.nn.Module):  # a classifier that gates nothing
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x))

    bundle = Bundle.load(trained["bundle"])
    case = trained["cohort"] / "p07"  # a validation phantom
    volume = read_channels({c: case / f"p07_{c}.nii.gz" for c in CHANNELS})
    truth = read_mask(case / "p07_seg.nii.gz")
    run = lambda **kw: segment_arrays(bundle, volume.channels, "cpu", bundle.settings(**kw),  # noqa: E731
                                      geometry=volume.geometry)
    seen = run(final_gate="tissue")
    assert seen.settings.final_gate == "tissue" and seen.network == "final"
    assert dice(seen.mask, truth) > 0.8
    bundle.models["classifier"] = Blind()
    missed = run()
    assert missed.mask.sum() == 0  # the classifier's gate: nothing gated, nothing marked, and segment says so
    assert any("may be a miss" in w for w in missed.warnings), missed.warnings
    blind = run(final_gate="tissue")
    assert dice(blind.mask, truth) > 0.8
    assert blind.counts["gated_patches"] == 0 and not any("may be a miss" in w for w in blind.warnings)


def test_pack_keeps_the_final_segmenter_when_it_makes_the_mask(trained, tmp_path):
    assert run_cli("pack", "--bundle", trained["bundle"], "--out", tmp_path / "p1", "--models", "none").returncode == 0
    assert "final" in json.loads((tmp_path / "p1" / "bundle.json").read_text())["models"]
    fused_only = tmp_path / "fused-only"
    shutil.copytree(trained["bundle"], fused_only)
    cfg = json.loads((fused_only / "bundle.json").read_text())
    cfg["inference"]["final_weight"] = 0.0
    (fused_only / "bundle.json").write_text(json.dumps(cfg))
    assert run_cli("pack", "--bundle", fused_only, "--out", tmp_path / "p2", "--models", "none").returncode == 0
    assert "final" in json.loads((tmp_path / "p2" / "bundle.json").read_text())["packed_from"]["models_left_out"]


def _export(cohort: Path, folder: Path, pid: str, statuses: list[str] | None = None, spacing=None) -> None:
    """A reviewed export as the Slicer module writes it: the true mask as ``corrected``."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    mask = sitk.ReadImage(str(cohort / pid / f"{pid}_seg.nii.gz"))
    if spacing is not None:
        mask.SetSpacing(spacing)
    sitk.WriteImage(mask, str(folder / f"{pid}_flair_mask.nii.gz"))
    n = mask.GetSize()[2]
    with open(folder / f"{pid}_flair_manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["volume", "slice", "status", "difference_score", "tumor_pixels"])
        for k, status in enumerate(statuses or ["corrected"] * n):
            w.writerow([f"{pid}_flair", k, status, "", 0])


def test_training_from_reviewed_exports(trained, tmp_path):
    exports = tmp_path / "exports"
    n = 24
    _export(trained["cohort"], exports, "p01", ["corrected"] * (n - 4) + ["excluded"] * 2 + ["flagged"] * 2)
    out, config = tmp_path / "improved", tmp_path / "seed7.json"
    config.write_text(json.dumps({**CONFIG, "seed": 7}))
    proc = run_cli("train", "--from-bundle", trained["bundle"], "--data", trained["cohort"], "--annotations", exports,
                   "--out", out, "--preset", "tiny", "--config", config, "--device", "cpu",
                   "--threads", "2", "--progress", "none", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "bundle.json").read_text())
    assert cfg["final"]["annotated_patients"] == ["p01"]
    # the source bundle is untouched; the copy differs only by its final network and record, which
    # names the seed this run trained it with (the other stages keep their own training's seed)
    src = json.loads((trained["bundle"] / "bundle.json").read_text())
    assert cfg["final"]["seed"] == 7 and cfg["training"]["config"]["seed"] == src["final"]["seed"] == 0
    assert src["models"]["final"]["sha256"] != cfg["models"]["final"]["sha256"]
    assert {k: v["sha256"] for k, v in src["models"].items() if k != "final"} == \
        {k: v["sha256"] for k, v in cfg["models"].items() if k != "final"}


def test_without_pseudo_masks_only_reviewed_patients_give_masks(trained, tmp_path):
    # Mlynarski et al.'s setting (final.pseudo_masks false): the patients without an export are
    # image-labelled only, their tumour slices weak, their tumour-free slices still exact empty labels
    from WeakTumorSegLib.bundle.load import Bundle
    from WeakTumorSegLib.io.annotations import match_annotations, read_annotations
    from WeakTumorSegLib.io.cohort import discover
    from WeakTumorSegLib.stages.final import EMPTY, MASKED, WEAK
    from WeakTumorSegLib.training.final_data import collect_tiles

    exports = tmp_path / "exports"
    _export(trained["cohort"], exports, "p01")
    cases = discover(trained["cohort"], CHANNELS)[:3]
    annotations = match_annotations(read_annotations(exports), [c.id for c in cases], exports)
    bundle = Bundle.load(trained["bundle"])
    import torch

    cpu = torch.device("cpu")
    pseudo = collect_tiles(bundle, cases, cpu, annotations=annotations)
    paper = collect_tiles(bundle, cases, cpu, annotations=annotations, pseudo_masks=False)
    reviewed = paper.patients.index("p01")
    assert ((pseudo.kind == MASKED) & (pseudo.patient != reviewed)).any()  # the pipeline's masks, by default
    masked = paper.kind == MASKED
    assert masked.any() and (paper.patient[masked] == reviewed).all()
    assert (paper.mask[paper.patient != reviewed] == 0).all()
    others = lambda t, kind: int(((t.kind == kind) & (t.patient != reviewed)).sum())  # noqa: E731
    assert others(paper, EMPTY) == others(pseudo, EMPTY) > 0
    assert others(paper, WEAK) > others(pseudo, WEAK)
    np.testing.assert_array_equal(paper.mask[paper.patient == reviewed], pseudo.mask[pseudo.patient == reviewed])


def test_export_on_another_grid_is_refused_before_training(trained, tmp_path):
    exports = tmp_path / "exports"
    _export(trained["cohort"], exports, "p02", spacing=(0.5, 0.5, 1.0))
    out = tmp_path / "improved"
    proc = run_cli("train", "--from-bundle", trained["bundle"], "--data", trained["cohort"], "--annotations", exports,
                   "--out", out, "--preset", "tiny", "--config", trained["config"], "--device", "cpu",
                   "--progress", "none")
    assert proc.returncode != 0
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "p02_flair_mask.nii.gz" in lines[0] and "voxel grid" in lines[0]
    assert not out.exists()
    shutil.rmtree(tmp_path / "improved.run", ignore_errors=True)


def test_segmenter_ensemble_averages_its_members():
    import torch

    from WeakTumorSegLib.networks.ensemble import SegmenterEnsemble
    from WeakTumorSegLib.networks.registry import build

    torch.manual_seed(0)
    ens = build("segmenter_ensemble", {"architecture": "unet_mixed", "members": 3,
                                       "kwargs": {"in_channels": 2, "out_channels": 1, "width": 4, "latent": 8,
                                                  "hidden": 8}}).eval()
    x = torch.rand(2, 2, 128, 128)
    with torch.no_grad():
        outs = [m(x, with_logit=True) for m in ens.members]
        prob, logit = ens(x, with_logit=True)
        torch.testing.assert_close(ens(x), torch.stack([o[0] for o in outs]).mean(0))
    torch.testing.assert_close(prob, torch.stack([o[0] for o in outs]).mean(0))
    torch.testing.assert_close(logit, torch.stack([o[1] for o in outs]).mean(0))
    assert not torch.allclose(outs[0][0], outs[1][0])  # the members start from different weights
    with pytest.raises(ValueError, match="at least one member"):
        SegmenterEnsemble("unet", {}, 0)
    with pytest.raises(ValueError, match="must be one of"):
        SegmenterEnsemble("vgg16_bn", {}, 2)


def _retrain_final(trained: dict, folder: Path, **final) -> tuple[Path, dict, dict]:
    """``train --from-bundle`` with the fixture's final settings changed by ``final``, then
    ``evaluate`` of the new bundle's final mask: ``(bundle, bundle.json, final metrics)``."""
    config = folder / "final.json"
    config.write_text(json.dumps({**CONFIG, "final": {**CONFIG["final"], **final}}))
    out = folder / "retrained"
    proc = run_cli("train", "--from-bundle", trained["bundle"], "--data", trained["cohort"], "--out", out,
                   "--preset", "tiny", "--config", config, "--device", "cpu", "--threads", "2", "--progress", "none",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluation = folder / "eval"
    proc = run_cli("evaluate", "--bundle", out, "--data", trained["cohort"], "--no-seeds", "--final-weight", "1",
                   "--out", evaluation, "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (out, json.loads((out / "bundle.json").read_text()),
            json.loads((evaluation / "metrics.json").read_text())["segmentation"]["final"])


def test_final_ensemble_trains_on_top_of_a_bundle_and_segments_unseen_phantoms(trained, tmp_path):
    out, spec, final = _retrain_final(trained, tmp_path, members=2)
    assert spec["models"]["final"]["architecture"] == "segmenter_ensemble"
    assert spec["models"]["final"]["kwargs"]["members"] == 2
    assert not list((Path(str(out) + ".run") / "stages" / "final").glob("checkpoint*"))  # cleaned up when done
    # measured 0.965 against the single network's 0.971 (on TCGA-LGG averaging members that disagree
    # shrinks the mask, docs/experiments.md); the ensemble lands on the unseen tumours
    assert final["volumes"] == 2 and final["per_volume_3d"] >= 0.8, final


def test_final_network_with_slice_context_reads_its_neighbours_in_training_and_inference(trained, tmp_path):
    # final.context 1: a 2.5D network on each slice's channels and its two neighbours'; segment and
    # evaluate give it the same input (a network on the wrong channel count would fail to run)
    _, spec, final = _retrain_final(trained, tmp_path, context=1)
    assert spec["final"]["context"] == 1 and spec["models"]["final"]["kwargs"]["in_channels"] == 3 * len(CHANNELS)
    # measured 0.875 against 0.971 without the context: it lands on the unseen tumours
    assert final["volumes"] == 2 and final["per_volume_3d"] >= 0.7, final


def test_a_final_only_run_takes_its_cohort_inputs_from_its_own_command_line(tmp_path):
    """The bundle's geometry declaration and exports describe its training cohort; applied to the
    user's cohort they would reorient it wrongly, or fail on a machine without those files."""
    bundle_config = {"training": {"config": resolve_config("default", overrides={"data": {
        "geometry": str(tmp_path / "tcga.geometry.json"), "annotations": str(tmp_path / "exports")}})}}
    config = final_only_config(bundle_config)
    assert config["data"]["geometry"] is None and config["data"]["annotations"] is None
    assert config["data"]["split_seed"] == bundle_config["training"]["config"]["data"]["split_seed"]
