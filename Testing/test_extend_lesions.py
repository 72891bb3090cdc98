"""``inference.final_mode`` ``extend`` (not in the paper): the fused mask decides where the lesions
are, the final segmenter how far they reach (``inference.postprocess.extend_lesions``)."""

from __future__ import annotations

import numpy as np
import pytest

from WeakTumorSegLib.bundle.settings import InferenceSettings
from WeakTumorSegLib.errors import BundleError
from WeakTumorSegLib.inference.postprocess import extend_lesions


def test_lesions_grow_by_the_final_components_that_touch_them():
    lesions = np.zeros((4, 20, 20), bool)
    final = np.zeros_like(lesions)
    lesions[1:3, 5:8, 5:8] = True       # a lesion the fused model found, too small
    final[0:4, 4:12, 4:12] = True       # the final segmenter's larger mask of it
    lesions[2, 15:18, 15:18] = True     # a lesion only the fused model marks: kept
    final[0, 0:3, 15:19] = True         # a region only the final segmenter marks: dropped
    final[3, 12, 12] = True             # touches the large component diagonally (26-connected): added
    out = extend_lesions(lesions, final)
    expected = lesions | final
    expected[0, 0:3, 15:19] = False
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == bool and not lesions[0, 10, 10]  # the input is not modified


def test_nothing_to_extend():
    lesions = np.zeros((2, 8, 8), np.uint8)
    assert not extend_lesions(lesions, np.ones_like(lesions)).any()  # no lesion: the final segmenter adds nothing
    lesions[0, 2, 2] = 1
    np.testing.assert_array_equal(extend_lesions(lesions, np.zeros_like(lesions)), lesions > 0)


def test_extend_follows_the_component_filter():
    # the fused mask's component filter decides the lesions first: a small lesion it drops is not
    # brought back, and a large false one the final segmenter grows cannot push the kept lesion out
    from WeakTumorSegLib.inference.postprocess import postprocess

    fused = np.zeros((6, 40, 40), np.float32)
    fused[1:4, 5:15, 5:15] = 0.9        # the tumour: 300 voxels
    fused[2, 30:33, 30:33] = 0.9        # a small spot: 9 voxels, dropped by the filter
    fused[1:3, 25:33, 5:13] = 0.9       # a bright region: 128 voxels, kept (>= 0.3 of 300)
    final = np.zeros_like(fused)
    final[0:6, 22:38, 2:18] = 0.8       # grows the bright region to 1536 voxels
    final[2, 29:34, 29:34] = 0.8        # grows the dropped spot
    settings = InferenceSettings.resolve({"keep_components": 0.3, "final_mode": "extend"})
    flair = np.zeros_like(fused)
    probabilities, masks = postprocess({"fused": fused, "final": final}, flair, (1.0, 1.0), settings)
    mask = masks["final"] > 0
    assert mask[1:4, 5:15, 5:15].all()              # the tumour stays
    assert not mask[2, 29:34, 29:34].any()          # the dropped spot stays dropped
    assert mask[0:6, 22:38, 2:18].all()             # the kept region grew
    assert masks["fused"][1:3, 25:33, 5:13].all() and not masks["fused"][0].any()  # the fused mask itself is kept
    # the map: the final segmenter's where the lesions grew, the fused one elsewhere
    grown = probabilities["final"]
    assert grown[0, 25, 5] == pytest.approx(0.8) and grown[2, 8, 8] == pytest.approx(0.9)


def test_final_mode_is_checked():
    assert InferenceSettings.resolve({"final_mode": "extend"}).final_mode == "extend"
    assert InferenceSettings.resolve({}).final_mode == "average"
    settings = InferenceSettings.resolve({"final_mode": "extend"}, {"final_mode": "average"})
    assert settings.final_mode == "average" and settings.report()["final_mode_source"] == "--final-mode"
    with pytest.raises(BundleError, match="final_mode must be one of average, extend"):
        InferenceSettings.resolve({"final_mode": "grow"}, path="B")


def test_final_gate_is_checked():
    # inference.final_gate: classifier unless the bundle or --final-gate says tissue; anything else is refused
    assert InferenceSettings.resolve({}).final_gate == "classifier"
    settings = InferenceSettings.resolve({"final_gate": "classifier"}, {"final_gate": "tissue"})
    assert settings.final_gate == "tissue" and settings.report()["final_gate_source"] == "--final-gate"
    with pytest.raises(BundleError, match="final_gate must be one of classifier, tissue"):
        InferenceSettings.resolve({"final_gate": "none"}, path="B")
