"""Command line behaviour on bad and unusual input (``python -m WeakTumorSegLib segment``).

Every bad input must end with a non-zero exit, exactly one non-empty line on stderr naming the
offending file and the problem, no traceback, and nothing written to the output folder.

Each CLI call is a separate Python process whose start-up (``import torch``) dominates its run
time, so the module fixture ``runs`` prepares every case up front and runs all the commands side
by side; each test then checks one case's result.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import channel_args, files_in, run_cli_many, stderr_lines

COMMON = ["--device", "cpu"]
#: Default output stem of runs whose first channel is the phantom's FLAIR file.
STEM = "phantom_flair"
OUTPUTS = (f"{STEM}.seg.nrrd", f"{STEM}_mask.nii.gz", f"{STEM}_slices.csv", f"{STEM}_report.json")
PRECIOUS = b"an earlier result that must survive\n"


@dataclass
class Case:
    """One CLI run: its arguments, output folder, the file at fault and the finished process."""

    args: list
    out: Path
    culprit: Path | None = None
    extra: dict = field(default_factory=dict)
    proc: object = None


def _write(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0), compress: bool = True) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), compress)
    return path


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bundle, phantom_case) -> dict[str, Case]:
    tmp = tmp_path_factory.mktemp("cli_errors")
    src = tmp / "inputs"
    src.mkdir()
    good = {c: Path(phantom_case[c]) for c in ("flair", "t1", "t1ce")}
    flair = _read(good["flair"])
    t1 = _read(good["t1"])

    def case(name: str, paths: dict, *more, culprit=None, names=None, **extra) -> Case:
        out = tmp / f"out_{name}"
        args = ["segment", *channel_args(paths, names), "--bundle", tiny_bundle, "--out", out, *COMMON, *more]
        return Case(args, out, culprit, extra)

    cases: dict[str, Case] = {}

    # -- inputs that cannot be read --------------------------------------------------------------
    missing = src / "missing_t1ce.nii.gz"
    cases["missing"] = case("missing", {**good, "t1ce": missing}, "--progress", "none", culprit=missing)

    not_image = src / "x.nii.gz"
    not_image.write_text("this is a text file, not an image\n" * 20)
    cases["not_image"] = case("not_image", {**good, "t1": not_image}, "--progress", "none", culprit=not_image)

    trunc_gz = src / "truncated_flair.nii.gz"
    data = good["flair"].read_bytes()
    trunc_gz.write_bytes(data[: len(data) // 2])
    cases["truncated_gz"] = case("truncated_gz", {**good, "flair": trunc_gz}, "--progress", "none",
                                 culprit=trunc_gz)

    full_nii = _write(t1, src / "full_t1.nii", compress=False)
    trunc_nii = src / "truncated_t1.nii"
    data = full_nii.read_bytes()
    trunc_nii.write_bytes(data[: len(data) // 2])
    cases["truncated_nii"] = case("truncated_nii", {**good, "t1": trunc_nii}, "--progress", "none",
                                  culprit=trunc_nii)

    flat = _write(flair[flair.shape[0] // 2].copy(), src / "flat_t1ce.nii.gz", spacing=(1.0, 1.0))
    cases["image_2d"] = case("image_2d", {**good, "t1ce": flat}, "--progress", "none", culprit=flat)

    # -- channels that do not fit together --------------------------------------------------------
    other_size = _write(np.ascontiguousarray(t1[:, :, :140]), src / "small_t1.nii.gz")
    cases["shape"] = case("shape", {**good, "t1": other_size}, "--progress", "none", culprit=other_size)

    other_spacing = _write(t1, src / "thick_t1.nii.gz", spacing=(1.0, 1.0, 2.0))
    cases["spacing"] = case("spacing", {**good, "t1": other_spacing}, "--progress", "none",
                            culprit=other_spacing)

    cases["missing_channel"] = case("missing_channel", good, "--progress", "none", names=["flair", "t1"],
                                    culprit=Path(tiny_bundle))

    # -- existing outputs ------------------------------------------------------------------------
    for name, more in (("exists", []), ("exists_overwrite", ["--overwrite"])):
        c = case(name, good, "--progress", "none", *more)
        c.out.mkdir()
        (c.out / f"{STEM}_mask.nii.gz").write_bytes(PRECIOUS)
        c.culprit = c.out / f"{STEM}_mask.nii.gz"
        cases[name] = c

    # -- malformed argument ----------------------------------------------------------------------
    c = case("malformed", good, "--progress", "none", names=["t1", "t1ce"])
    c.args += ["-c", f"flair{good['flair']}"]  # no '='
    c.culprit = Path(f"flair{good['flair']}")
    cases["malformed"] = c

    # -- unusual input that must work ------------------------------------------------------------
    bad = flair.copy()
    bad[2, 60, 60:70] = np.nan
    bad[3, 70, 70] = np.inf
    bad[4, 80, 80] = -np.inf
    # NRRD keeps non-finite floats as they are
    nan_flair = _write(bad, src / "nan_flair.nrrd")
    cases["nan"] = case("nan", {**good, "flair": nan_flair}, "--progress", "none", "--name", STEM,
                        culprit=nan_flair, n_bad=12)
    # NIfTI: ITK's NIfTI reader (niftilib) already turns them into 0 while reading, silently
    nan_nifti = _write(bad, src / "nan_flair.nii.gz")
    cases["nan_nifti"] = case("nan_nifti", {**good, "flair": nan_nifti}, "--progress", "none", "--name", STEM,
                              culprit=nan_nifti, n_bad=12)

    zeros = {c: _write(np.zeros((6, 64, 72), np.float32), src / f"zero_{c}.nii.gz") for c in good}
    cases["all_zero"] = case("all_zero", zeros, "--progress", "none", "--name", STEM)

    t2 = src / "phantom_t2.nii.gz"
    shutil.copyfile(good["t1"], t2)
    cases["extra_channel"] = case("extra_channel", {**good, "t2": t2}, "--progress", "none",
                                  names=["flair", "t1", "t1ce", "t2"], culprit=t2)

    cases["progress_json"] = case("progress_json", good, "--progress", "json")
    cases["quiet"] = case("quiet", good, "--quiet")

    names = list(cases)
    for name, proc in zip(names, run_cli_many([cases[n].args for n in names])):
        cases[name].proc = proc
    return cases


def _describe(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def assert_one_line_error(case: Case, *keywords: str) -> str:
    """Non-zero exit, one stderr line naming ``case.culprit`` and containing ``keywords``
    (case-insensitive, outside the path), no traceback, no output. Returns the line."""
    proc = case.proc
    assert proc.returncode != 0, _describe(proc)
    assert "Traceback" not in proc.stderr, _describe(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, _describe(proc)
    line = lines[0]
    assert str(case.culprit) in line, f"stderr does not name {case.culprit}: {line!r}"
    problem = line.replace(str(case.culprit), "").lower()
    for word in keywords:
        assert word.lower() in problem, f"{word!r} not in {line!r}"
    return line


def assert_no_output(case: Case, allowed: tuple[str, ...] = ()) -> None:
    left = [f for f in files_in(case.out) if f not in allowed]
    assert left == [], f"files left in {case.out}: {left}"


def assert_success(case: Case) -> None:
    proc = case.proc
    assert proc.returncode == 0, _describe(proc)
    assert "Traceback" not in proc.stderr, _describe(proc)
    assert files_in(case.out) == sorted(OUTPUTS), _describe(proc)


# --------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing written


def test_missing_file(runs):
    assert_one_line_error(runs["missing"], "not found")
    assert_no_output(runs["missing"])


def test_not_an_image(runs):
    assert_one_line_error(runs["not_image"], "image")
    assert_no_output(runs["not_image"])


def test_truncated_gzip_nifti(runs):
    assert_one_line_error(runs["truncated_gz"], "truncated")
    assert_no_output(runs["truncated_gz"])


def test_truncated_uncompressed_nifti(runs):
    assert_one_line_error(runs["truncated_nii"], "truncated")
    assert_no_output(runs["truncated_nii"])


def test_2d_image(runs):
    assert_one_line_error(runs["image_2d"], "2D", "3D")
    assert_no_output(runs["image_2d"])


def test_channels_with_different_shapes(runs):
    assert_one_line_error(runs["shape"], "size", "t1")
    assert_no_output(runs["shape"])


def test_channel_with_different_spacing(runs):
    assert_one_line_error(runs["spacing"], "spacing", "t1")
    assert_no_output(runs["spacing"])


def test_missing_channel_lists_needed_channels(runs):
    line = assert_one_line_error(runs["missing_channel"], "flair, t1, t1ce", "t1ce", "--channel")
    assert "not given: t1ce" in line
    assert_no_output(runs["missing_channel"])


def test_existing_output_is_not_replaced(runs):
    case = runs["exists"]
    assert_one_line_error(case, "exists", "--overwrite")
    assert case.culprit.read_bytes() == PRECIOUS
    assert_no_output(case, allowed=(case.culprit.name,))


def test_existing_output_is_replaced_with_overwrite(runs):
    case = runs["exists_overwrite"]
    assert_success(case)
    assert case.culprit.read_bytes() != PRECIOUS
    assert _read(case.culprit).shape == (12, 140, 150)


def test_malformed_channel_argument(runs):
    assert_one_line_error(runs["malformed"], "NAME=PATH")
    assert_no_output(runs["malformed"])


# --------------------------------------------------------------------------------------------
# unusual input that is handled


@pytest.mark.parametrize("name", ["nan", "nan_nifti"], ids=["nrrd", "nifti"])
def test_nan_and_inf_voxels_are_repaired_with_a_note(runs, name):
    case = runs[name]
    assert_success(case)
    notes = [ln for ln in stderr_lines(case.proc) if "NaN" in ln]
    assert len(notes) == 1, _describe(case.proc)
    assert str(case.culprit) in notes[0] and str(case.extra["n_bad"]) in notes[0]
    report = json.loads((case.out / f"{STEM}_report.json").read_text())
    assert any("NaN" in n for n in report["notes"])


def test_all_zero_volume_gives_empty_mask(runs):
    case = runs["all_zero"]
    assert_success(case)
    mask = _read(case.out / f"{STEM}_mask.nii.gz")
    assert mask.shape == (6, 64, 72)
    assert not mask.any()
    rows = (case.out / f"{STEM}_slices.csv").read_text().splitlines()
    assert len(rows) == 1 + 6


def test_extra_channel_is_ignored_with_a_note(runs):
    case = runs["extra_channel"]
    assert_success(case)
    notes = [ln for ln in stderr_lines(case.proc) if "t2" in ln and "ignored" in ln]
    assert len(notes) == 1, _describe(case.proc)
    report = json.loads((case.out / f"{STEM}_report.json").read_text())
    assert set(report["inputs"]) == {"flair", "t1", "t1ce"}
    # ignored indeed: the mask is the one of the same run without t2
    plain = runs["exists_overwrite"]
    np.testing.assert_array_equal(_read(case.out / f"{STEM}_mask.nii.gz"), _read(plain.out / f"{STEM}_mask.nii.gz"))


def test_progress_json_prints_only_json_objects(runs):
    case = runs["progress_json"]
    assert_success(case)
    lines = case.proc.stdout.splitlines()
    assert lines, _describe(case.proc)
    events = []
    for ln in lines:
        obj = json.loads(ln)  # every stdout line is one JSON object
        assert isinstance(obj, dict), ln
        events.append(obj)
    *steps, final = events
    for ev in steps:
        assert set(ev) == {"stage", "done", "total"}, ev
    # each stage in one run of events, in pipeline order, and every stage's count fills up to its total
    stages = [ev["stage"] for ev in steps]
    order = list(dict.fromkeys(stages))
    assert order == ["read", "preprocess", "classify", "segment", "convert", "postprocess", "write"], order
    assert stages == sorted(stages, key=order.index)
    for stage in order:
        done = [ev["done"] for ev in steps if ev["stage"] == stage]
        totals = {ev["total"] for ev in steps if ev["stage"] == stage}
        assert done == sorted(done) and totals == {done[-1]}, (stage, done, totals)
    assert final["stage"] == "done"
    assert Path(final["outputs"]["mask"]) == case.out / f"{STEM}_mask.nii.gz"


def test_quiet_prints_nothing(runs):
    case = runs["quiet"]
    assert_success(case)
    assert case.proc.stdout == ""
    assert case.proc.stderr == ""


def test_closed_stdout_pipe_stops_quietly(tmp_path, tiny_bundle, phantom_case):
    """``segment ... | head -1``: the reader goes away before the summary; the outputs are already
    written, and the command stops without a traceback or an "unexpected error" line, with the
    exit status of a SIGPIPE (141)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT, cli_env

    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "WeakTumorSegLib", "segment", *channel_args(phantom_case), "--bundle",
           str(tiny_bundle), "--out", str(out), "--progress", "none"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    proc.stdout.close()  # nobody reads the summary
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, stderr
    assert stderr == ""
    assert (out / f"{STEM}_mask.nii.gz").is_file() and (out / f"{STEM}_report.json").is_file()


def test_bundle_from_a_failed_training_is_pointed_out(tmp_path, phantom_case):
    """A bundle whose training run recorded warnings (training.warnings in bundle.json) still
    segments, and segment says once, on stderr, that it may not work and why."""
    from conftest import run_cli, save_tiny_bundle

    warning = "seeds: only 5% of the positive seeds lie inside the tumour masks"
    bundle = save_tiny_bundle(tmp_path / "failed", training={"warnings": [warning]})
    out = tmp_path / "o"
    proc = run_cli("segment", *channel_args(phantom_case), "--bundle", bundle, "--out", out, "--progress", "none")
    assert proc.returncode == 0, _describe(proc)
    said = [ln for ln in stderr_lines(proc) if "may not work" in ln]
    assert len(said) == 1 and warning in said[0] and "tiny-test" in said[0], _describe(proc)
    assert (out / f"{STEM}_mask.nii.gz").is_file()
