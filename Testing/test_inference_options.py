"""The inference options that are not in the paper (scalp margin, slice smoothing, FLAIR trim, component
filter, final weight): a bad value stops the command with one line, and ``evaluate`` segments with the value it was
given and records it with where it came from. What each option does is tested in its own file."""

from __future__ import annotations

import csv
import json

import pytest

from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.inference.pipeline import segment_arrays
from support.phantoms import make_phantom, write_case

from conftest import STANDIN_BUNDLE, run_cli
from test_scalp_margin import SAMPLE


@pytest.mark.parametrize("option, value", [
    ("--scalp-margin", "-1"), ("--scalp-margin", "abc"), ("--scalp-margin", "5000"),
    ("--slice-smoothing", "-0.1"), ("--slice-smoothing", "0.5"), ("--slice-smoothing", "abc"),
    ("--flair-trim", "-0.1"), ("--flair-trim", "1.5"), ("--flair-trim", "abc"),
    ("--keep-components", "-0.1"), ("--keep-components", "1.5"), ("--keep-components", "abc"),
    ("--final-weight", "-0.1"), ("--final-weight", "1.5"), ("--final-mode", "grow"), ("--gate-low", "abc"),
])
def test_bad_value_is_refused(tmp_path, option, value):
    case = SAMPLE.name
    proc = run_cli("segment", f"-cflair={SAMPLE / f'{case}_flair.nii.gz'}", "--out", tmp_path / "o",
                   option, value, "--progress", "none")
    assert proc.returncode == 2
    assert option in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def two_tumours(tmp_path_factory):
    """A patient with two tumours of unequal size in a cohort folder, the stand-in bundle, and its
    mask of that patient without any option: each option below removes voxels from that mask."""
    phantom = make_phantom(shape=(12, 140, 150), n_tumors=2, seed=0)
    data = tmp_path_factory.mktemp("options") / "cohort"
    write_case(phantom, data / "P0", "P0")
    bundle = Bundle.load(STANDIN_BUNDLE)
    return data, phantom.channels, bundle, segment_arrays(bundle, phantom.channels, "cpu").mask


@pytest.mark.parametrize("option, value, key, recorded, table", [
    ("--scalp-margin", "30", "scalp_margin_mm", 30.0, "Scalp margin 30 mm (--scalp-margin)"),  # the tumours lie deep
    ("--slice-smoothing", "0.2", "slice_smoothing", 0.2, "Slice smoothing 0.2 (--slice-smoothing)"),
    ("--flair-trim", "0.8", "flair_trim", 0.8, "FLAIR trim 0.8 (--flair-trim)"),
    ("--keep-components", "0.3", "keep_components", 0.3, "Components 0.3 (--keep-components)"),
])
def test_evaluate_applies_and_records_the_option(tmp_path, two_tumours, option, value, key, recorded, table):
    data, channels, bundle, plain = two_tumours
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--bundle", STANDIN_BUNDLE, "--data", data, "--patients", "P0", "--no-seeds",
                   option, value, "--out", out, "--device", "cpu", "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "metrics.json").read_text())["configuration"]
    assert cfg[key] == recorded and cfg[f"{key.removesuffix('_mm')}_source"] == option
    assert table in (out / "tables.md").read_text()
    # applied: the fused mask is segment_arrays' with that setting, which is the plain mask less some voxels
    expected = segment_arrays(bundle, channels, "cpu", bundle.settings(**{key: recorded})).mask
    with open(out / "per_slice.csv", newline="") as fh:
        assert [int(r["pixels_fused"]) for r in csv.DictReader(fh)] == expected.sum(axis=(1, 2)).tolist()
    assert not (expected & ~plain).any() and expected.sum() < plain.sum()
