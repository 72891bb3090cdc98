"""The inference options that are not in the paper (scalp margin, slice smoothing, FLAIR trim, component
filter): a bad value stops the command with one line, and ``evaluate`` records the value it used
and where it came from. What each option does is tested in its own file."""

from __future__ import annotations

import json

import pytest

from conftest import STANDIN_BUNDLE, run_cli
from test_scalp_margin import SAMPLE


@pytest.mark.parametrize("option, value", [
    ("--scalp-margin", "-1"), ("--scalp-margin", "abc"), ("--scalp-margin", "5000"),
    ("--slice-smoothing", "-0.1"), ("--slice-smoothing", "0.5"), ("--slice-smoothing", "abc"),
    ("--flair-trim", "-0.1"), ("--flair-trim", "1.5"), ("--flair-trim", "abc"),
    ("--keep-components", "-0.1"), ("--keep-components", "1.5"), ("--keep-components", "abc"),
])
def test_bad_value_is_refused(tmp_path, option, value):
    case = SAMPLE.name
    proc = run_cli("segment", f"-cflair={SAMPLE / f'{case}_flair.nii.gz'}", "--out", tmp_path / "o",
                   option, value, "--progress", "none")
    assert proc.returncode == 2
    assert option in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option, value, key, recorded, table", [
    ("--scalp-margin", "3", "scalp_margin_mm", 3.0, "Scalp margin 3 mm (--scalp-margin)"),
    ("--slice-smoothing", "0.2", "slice_smoothing", 0.2, "Slice smoothing 0.2 (--slice-smoothing)"),
    ("--flair-trim", "0.8", "flair_trim", 0.8, "FLAIR trim 0.8 (--flair-trim)"),
    ("--keep-components", "0.3", "keep_components", 0.3, "Components 0.3 (--keep-components)"),
])
def test_evaluate_records_the_option_it_used(tmp_path, option, value, key, recorded, table):
    out = tmp_path / "eval"
    proc = run_cli("evaluate", "--bundle", STANDIN_BUNDLE, "--data", SAMPLE.parent, "--patients", "PHANTOM_0001",
                   "--no-seeds", option, value, "--out", out, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "metrics.json").read_text())["configuration"]
    assert cfg[key] == recorded and cfg[f"{key.removesuffix('_mm')}_source"] == option
    assert table in (out / "tables.md").read_text()
