"""Brain extraction with deepbet's networks (``preprocessing.brain_extraction`` ``deepbet``)."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.errors import BundleError, InputError
from WeakTumorSegLib.preprocessing import deepbet_brain
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig
from WeakTumorSegLib.preprocessing.standardise import standardise
from WeakTumorSegLib.training.presets import resolve_config

from conftest import REPO_ROOT, save_tiny_bundle

DATA = REPO_ROOT.parent / "shared" / "data"
#: A training patient whose vertex and skull-base slices hold bright scalp next to a 7 ml tumour.
PATIENT = "TCGA_CS_6668_20011025"


def test_a_missing_deepbet_package_is_named_with_the_command_that_installs_it(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    deepbet_brain._network.cache_clear()
    monkeypatch.setattr(deepbet_brain.metadata, "distribution", absent)
    try:
        with pytest.raises(deepbet_brain.DeepbetMissing, match=r"pip install deepbet==1\.0\.2"):
            deepbet_brain.deepbet_mask(np.ones((8, 32, 32), dtype=np.float32))
    finally:
        deepbet_brain._network.cache_clear()


def test_an_unknown_brain_extraction_is_refused_in_a_config_and_in_a_bundle(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preprocessing": {"brain_extraction": "bet2"}}))
    with pytest.raises(InputError, match="brain_extraction must be one of own, deepbet"):
        resolve_config("default", config)
    bundle = save_tiny_bundle(tmp_path / "bundle")
    spec = json.loads((bundle / "bundle.json").read_text())
    spec.setdefault("preprocessing", {})["brain_extraction"] = "bet2"
    (bundle / "bundle.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="bundle.json: unknown preprocessing.brain_extraction 'bet2'"):
        Bundle.load(bundle)


def _deepbet_installed() -> bool:
    try:
        return metadata.distribution("deepbet") is not None
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "lgg" / PATIENT).is_dir(), reason=f"real patient {PATIENT} is absent")
@pytest.mark.skipif(not _deepbet_installed(), reason="the deepbet package (extra 'deepbet') is not installed")
def test_deepbet_keeps_the_tumour_and_leaves_out_the_scalp_the_own_method_keeps():
    case = DATA / "lgg" / PATIENT
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{PATIENT}_flair.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{PATIENT}_seg.nii.gz"))) > 0
    # the cohort's declared geometry (Resources/Cohorts/tcga-lgg.geometry.json): PLS at 0.9 mm
    views = {m: standardise({"flair": flair}, ["flair"], PreprocessConfig(spacing_mm=1.8, brain_extraction=m),
                            "flair", (0.9, 0.9, 1.0), "PLS") for m in ("own", "deepbet")}
    for m, st in views.items():
        brain = st.to_input(st.brain.astype(np.float32)) > 0.5
        assert (brain & seg).sum() >= 0.99 * seg.sum(), m
    own, db = views["own"], views["deepbet"]
    assert db.stripped is False and own.stripped is False
    # the vertex: the top slices keep scalp with the own method; deepbet's brain ends below them
    top = slice(-2, None)
    assert db.brain[top].sum() == 0 < own.brain[top].sum()
    # the skull base: the lowest tumour-free slices, where the own method keeps the neck and scalp
    assert db.brain[:4].sum() < 0.5 * own.brain[:4].sum()
