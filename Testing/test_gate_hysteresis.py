"""Hysteresis at the classifier gate (``inference.gate_low``, not in the paper): a patch below the
gate is still segmented, by S_US alone, when consecutive slices above ``gate_low`` join it to a
patch above the gate; a tumour's less certain end slices then keep their mask."""

from __future__ import annotations

import numpy as np
import pytest

from WeakTumorSegLib.bundle.settings import InferenceSettings
from WeakTumorSegLib.errors import BundleError
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.stages.fusion import hysteresis_gate

from test_core import ConstSegmenter
from test_slice_smoothing import lookup_bundle, stack_volume


def test_hysteresis_by_hand():
    p = np.array([[0.1, 0.6], [0.3, 0.2], [0.6, 0.1], [0.35, 0.4], [0.2, 0.45], [0.4, 0.9], [0.9, 0.0]])
    np.testing.assert_array_equal(hysteresis_gate(p, 0.5, 0.0), p > 0.5)
    expected = np.array([[0, 1], [1, 0], [1, 0], [1, 1], [0, 1], [1, 1], [1, 0]], bool)
    # left tile: slices 1 and 3 join slice 2, slice 5 joins slice 6, slice 4 (0.2) breaks the run;
    # right tile: slices 3 and 4 join slice 5 through each other, slice 1 (0.2) is too low
    np.testing.assert_array_equal(hysteresis_gate(p, 0.5, 0.25), expected)
    np.testing.assert_array_equal(hysteresis_gate(p, 0.5, 0.5), p > 0.5)  # no band: plain gate


def test_segment_keeps_the_joined_slices_with_the_under_segmenting_model():
    vol = {"flair": stack_volume()}  # classifier outputs per slice 0.9, 0.4, 0.9, 0.1, 0.6, 0.1, empty
    bundle = lookup_bundle()
    bundle.models["segmenter_os"] = ConstSegmenter(0.6)  # S_US 0.9: a slice above the gate fuses to less
    plain = segment_arrays(bundle, vol, "cpu")
    assert plain.tumor_pixels.astype(bool).tolist() == [True, False, True, False, True, False, False]
    joined = segment_arrays(bundle, vol, "cpu", bundle.settings(gate_low=0.3))
    assert joined.tumor_pixels.astype(bool).tolist() == [True, True, True, False, True, False, False]
    top = joined.probability.max(axis=(1, 2))
    assert top[1] == pytest.approx(0.9, abs=1e-4)  # S_US alone (w = 0)
    assert top[0] == pytest.approx(0.8 * 0.6 + 0.2 * 0.9, abs=1e-4)  # w = 2 (0.9 - 0.5) as before
    low = segment_arrays(bundle, vol, "cpu", bundle.settings(gate_low=0.05))
    assert low.tumor_pixels.astype(bool).tolist() == [True] * 6 + [False]  # the empty slice never
    assert joined.settings.report()["gate_low_source"] == "--gate-low"


def test_gate_low_must_lie_below_the_gate():
    with pytest.raises(BundleError, match="gate_low must lie below gate_threshold"):
        InferenceSettings.resolve({"gate_low": 0.5}, path="B")
    assert InferenceSettings.resolve({}).gate_low == 0.0
