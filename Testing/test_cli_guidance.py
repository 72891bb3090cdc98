"""What the command line tells a new user: a misspelt channel gets a suggestion, the help names the
default bundle's channels and explains the presets, a bundle from a failed training is a WARNING,
a one-slice volume gets a note, an interrupted training prints the command that continues it, and
the filter curve leaves a gap where the filter keeps no mask."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, channel_args, cli_env, files_in, run_cli, save_tiny_bundle, stderr_lines


def test_misspelt_channel_is_named_with_a_suggestion(tiny_bundle, phantom_case, tmp_path):
    given = {"flar": phantom_case["flair"], "t1": phantom_case["t1"], "t1ce": phantom_case["t1ce"]}
    out = tmp_path / "out"
    proc = run_cli("segment", *channel_args(given, list(given)), "--bundle", tiny_bundle, "--out", out)
    lines = stderr_lines(proc)
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "'flar' is not a channel of the bundle; did you mean 'flair'?" in lines[0]
    assert "not given: flair" in lines[0] and str(tiny_bundle) in lines[0]
    assert files_in(out) == []


def test_help_names_the_default_bundle_and_the_presets():
    segment = run_cli("segment", "--help")
    train = run_cli("train", "--help")
    assert segment.returncode == 0 and train.returncode == 0
    text = " ".join(segment.stdout.split())  # argparse wraps lines
    bundle = json.loads((REPO_ROOT / "Resources" / "Models" / "tcga-lgg-default" / "bundle.json").read_text())
    assert f"the default bundle 'tcga-lgg-default' needs {', '.join(bundle['channels'])}" in text
    presets = " ".join(train.stdout.split())
    assert "paper: the settings of Yoo et al." in presets and "tiny: a smoke test" in presets
    for command in ("segment", "train", "evaluate"):  # the paper by its authors' name
        assert "Yoo et al." in " ".join(run_cli(command, "--help").stdout.split())


def test_failed_training_is_a_warning_even_when_quiet(phantom_case, tmp_path):
    bundle = save_tiny_bundle(tmp_path / "failed", training={"warnings": ["seeds: only 5% inside the tumours"]})
    proc = run_cli("segment", *channel_args(phantom_case), "--bundle", bundle, "--out", tmp_path / "o", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert stderr_lines(proc) == ["weaktumorseg: WARNING: bundle 'tiny-test' may not work: its training warned: "
                                  "seeds: only 5% inside the tumours"]
    report = json.loads(next((tmp_path / "o").glob("*_report.json")).read_text())
    assert report["bundle"]["training_warnings"] == ["seeds: only 5% inside the tumours"]


def test_single_slice_volume_gets_a_note(tiny_bundle, tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    paths = {}
    for name in ("flair", "t1", "t1ce"):
        paths[name] = tmp_path / f"one_{name}.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((1, 64, 64)).astype(np.float32)), str(paths[name]))
    out = tmp_path / "out"
    proc = run_cli("segment", *channel_args(paths), "--bundle", tiny_bundle, "--out", out, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    notes = [ln for ln in stderr_lines(proc) if "single axial slice" in ln]
    assert len(notes) == 1 and str(paths["flair"]) in notes[0], proc.stderr
    report = json.loads((out / "one_flair_report.json").read_text())
    assert any("single axial slice" in n for n in report["notes"]) and report["counts"]["slices"] == 1


def test_interrupted_training_prints_the_resume_command(tmp_path):
    from support.phantoms import make_phantom, write_case

    cohort = tmp_path / "cohort"
    for i in range(3):
        write_case(make_phantom(shape=(12, 96, 96), tumor_slice_fraction=0.45, seed=300 + i), cohort / f"p{i}", f"p{i}")
    config = tmp_path / "fast.json"
    config.write_text(json.dumps({"preprocessing": {"inplane_scale": 1.0}, "data": {"max_zero_fraction": 0.9},
                                  "classifier": {"epochs": 50, "batch": 2}}))
    args = ["train", "--data", str(cohort), "--out", str(tmp_path / "bundle"), "--preset", "tiny", "--config",
            str(config), "--device", "cpu", "--progress", "json"]
    # Ctrl-C's default action in the child, whatever the test runner inherited (a shell's background
    # job ignores SIGINT, and a child keeps an ignored signal ignored)
    proc = subprocess.Popen([sys.executable, "-m", "WeakTumorSegLib", *args], cwd=REPO_ROOT, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:  # interrupt (as Ctrl-C does) once the classifier is training
            if line.startswith("{") and json.loads(line).get("stage", "").startswith("classifier 1/"):
                os.kill(proc.pid, signal.SIGINT)
                break
        proc.stdout.read()
        stderr = proc.stderr.read()
        assert proc.wait(timeout=120) == 130, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = stderr.splitlines()
    said = lines.index(next(ln for ln in lines if "training interrupted" in ln))
    command = shlex.split(lines[said + 1])
    assert command == ["weaktumorseg", *args, "--resume"]
    assert (tmp_path / "bundle.run" / "config.json").is_file() and not (tmp_path / "bundle").exists()


def test_filter_curve_leaves_a_gap_where_no_mask_is_kept():
    from WeakTumorSegLib.evaluation.report import curve_series
    from WeakTumorSegLib.evaluation.summary import filter_curve

    # three slices: a good mask (score 0.5), a poor one (score 0.15), and a tumour slice left empty
    dice, pixels = np.array([0.9, 0.2, 0.0]), np.array([50, 40, 0])
    scores, truth = np.array([0.5, 0.15, 1.0]), np.array([60, 30, 20])
    series = curve_series(filter_curve(dice, pixels, scores, truth, thresholds=(0.1, 0.2, 0.6)))
    assert series["kept_tumour"][0] == pytest.approx((0.9 + 0.2 + 0.0) / 3)
    assert series["kept_tumour"][1] == pytest.approx((0.9 + 0.0) / 2)  # the poor mask is removed
    assert math.isnan(series["kept_tumour"][2])  # both masks removed: only the empty slice is left
    assert series["removed"] == pytest.approx([0.0, 100 / 3, 200 / 3])
