"""The bright scalp that the own brain extraction keeps, removed with ``preprocessing.scalp_fat``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.errors import BundleError, InputError
from WeakTumorSegLib.preprocessing.brain import brain_mask
from WeakTumorSegLib.preprocessing.intensity import PreprocessConfig
from WeakTumorSegLib.preprocessing.scalp import scalp_fat
from WeakTumorSegLib.preprocessing.standardise import standardise
from WeakTumorSegLib.training.presets import resolve_config

from conftest import REPO_ROOT, save_tiny_bundle

DATA = REPO_ROOT.parent / "shared" / "data"
#: A training patient whose posterior scalp, brightened by the coil's bias field, the own method keeps.
PATIENT = "TCGA_CS_4942_19970222"


def blurred_skull_head(z: int = 10, size: int = 120, spacing: float = 2.0, seed: int = 0):
    """FLAIR of a head whose skull is blurred on one side, so that brain-grey tissue joins the
    bright scalp fat to the brain there, with a bright lesion at the cortex on the other side; in
    one slice a thin bright streak joins the lesion to the scalp across the skull. Returns
    ``(flair, scalp, lesion)``."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] - size / 2) * spacing
    r = np.hypot(yy, xx)
    radius = 0.42 * size * spacing
    sl = rng.uniform(0, 8, (size, size)).astype(np.float32)
    scalp = (r < radius) & (r >= radius - 6)
    sl[r < radius] = 180
    sl[r < radius - 6] = 12  # skull
    sl[r < radius - 13] = 30  # CSF
    sl[r < radius - 17] = 100  # brain
    sl[(r < radius - 6) & (xx > 0.55 * radius) & (np.abs(yy) < 0.5 * radius)] = 100  # the blurred skull
    lesion = (r < radius - 17) & (np.hypot(yy + 0.3 * radius, xx + 0.45 * radius) < 0.2 * radius)
    sl[lesion] = 175
    flair = np.stack([sl + rng.normal(0, 3, sl.shape).astype(np.float32) for _ in range(z)])
    streak = (np.abs(yy - xx * (0.3 / 0.45)) < 0.6 * spacing) & (xx < 0) & (r < radius) & (r > 0.4 * radius)
    flair[z // 2][streak & (sl < 150)] = 175
    return np.clip(flair, 0, None), np.repeat(scalp[None], z, 0), np.repeat(lesion[None], z, 0)


def test_the_scalp_behind_a_blurred_skull_is_removed_and_a_lesion_at_the_cortex_kept():
    flair, scalp, lesion = blurred_skull_head()
    own = brain_mask(flair, 2.0)
    assert (own & scalp).sum(axis=(1, 2)).min() > 100  # the own method keeps the scalp behind the blur
    fat = scalp_fat(flair, 2.0)
    assert (own & ~fat & scalp).sum() == 0
    assert (own & ~fat & lesion).sum() == lesion.sum()  # also where a bright streak joins it to the scalp


def test_a_volume_without_three_intensity_classes_has_no_scalp():
    assert not scalp_fat(np.zeros((3, 40, 40), np.float32), 2.0).any()
    flat = np.zeros((3, 40, 40), np.float32)
    flat[:, 10:30, 10:30] = 5.0
    assert not scalp_fat(flat, 2.0).any()


def test_a_skull_stripped_input_keeps_its_lesion_at_the_brain_edge():
    flair, scalp, lesion = blurred_skull_head()
    brain = np.repeat((brain_mask(flair, 2.0) & ~scalp_fat(flair, 2.0))[:1], len(flair), 0)
    stripped = flair * (brain | lesion)
    pp = PreprocessConfig(spacing_mm=2.0, scalp_fat=True)
    st = standardise({"flair": stripped}, ["flair"], pp, "flair", (2.0, 2.0, 5.0))
    assert st.stripped is True
    back = st.to_input(st.brain.astype(np.float32)) > 0.5
    assert (back & lesion).sum() >= 0.99 * lesion.sum()


def test_bundles_without_the_key_keep_the_scalp_as_they_were_trained():
    assert PreprocessConfig.from_dict({"spacing_mm": 1.8}).scalp_fat is False
    assert PreprocessConfig.from_dict({"spacing_mm": 1.8, "scalp_fat": True}).to_dict()["scalp_fat"] is True
    # the shipped recipe trains with it; the paper's preprocessing does not know it
    assert resolve_config("default")["preprocessing"]["scalp_fat"] is True
    assert resolve_config("paper")["preprocessing"]["scalp_fat"] is False
    assert resolve_config("default", '{"preprocessing": {"scalp_fat": false}}')["preprocessing"]["scalp_fat"] is False


def test_a_scalp_fat_that_is_not_true_or_false_is_refused_in_a_config_and_in_a_bundle(tmp_path):
    with pytest.raises(InputError, match="preprocessing.scalp_fat must be true or false, got 'no'"):
        resolve_config("default", '{"preprocessing": {"scalp_fat": "no"}}')
    bundle = save_tiny_bundle(tmp_path / "bundle", preprocessing={"inplane_scale": 1.0, "scalp_fat": "no"})
    with pytest.raises(BundleError, match="bundle.json: preprocessing.scalp_fat must be true or false"):
        Bundle.load(bundle)


@pytest.mark.data
@pytest.mark.skipif(not (DATA / "lgg" / PATIENT).is_dir(), reason=f"real patient {PATIENT} is absent")
def test_the_bright_posterior_scalp_of_a_real_patient_leaves_the_brain_and_the_tumour_stays():
    case = DATA / "lgg" / PATIENT
    flair = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{PATIENT}_flair.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{PATIENT}_seg.nii.gz"))) > 0
    # the cohort's declared geometry (Resources/Cohorts/tcga-lgg.geometry.json): PLS at 0.9 mm
    views = {on: standardise({"flair": flair}, ["flair"], PreprocessConfig(spacing_mm=1.8, scalp_fat=on),
                             "flair", (0.9, 0.9, 1.0), "PLS") for on in (False, True)}
    brains = {on: st.to_input(st.brain.astype(np.float32)) > 0.5 for on, st in views.items()}
    assert (brains[True] & seg).sum() == (brains[False] & seg).sum() >= 0.99 * seg.sum()
    # the brightest voxels the own method keeps are scalp: behind the tumour (slices 11-13) and above
    # it (14-16) they leave; the two slices at the vertex, where the scalp is cut en face, keep them
    bright = flair > np.percentile(flair[brains[False]], 99)
    kept = {on: (bright & b).sum(axis=(1, 2)) for on, b in brains.items()}
    assert kept[False][11:17].sum() > 1000 and kept[True][11:17].sum() == 0
    assert kept[True][-3:].sum() > 0.9 * kept[False][-3:].sum()
