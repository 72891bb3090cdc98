"""Classifier ensembles (``classifier.members``): several classifiers whose probabilities are
averaged stand in for C everywhere C is used (the gate, the fusion weight, RISE seeds), load from
a bundle like any other network (a bad member count is refused before training: test_train.py)."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import build_tiny_models, tiny_bundle_config
from WeakTumorSegLib.bundle.info import BUNDLE_FILE
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.bundle.save import save_bundle
from WeakTumorSegLib.networks.classifiers import ClassifierEnsemble, inference_copy
from WeakTumorSegLib.stages.classifier import classifier_architecture
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.networks.registry import build
from WeakTumorSegLib.training.presets import resolve_config

TINY_CLASSIFIER = {"width": 4, "blocks": 3}


def test_ensemble_probability_is_the_mean_of_its_members():
    torch.manual_seed(0)
    model = build("classifier_ensemble", {"architecture": "compact_classifier", "kwargs": TINY_CLASSIFIER,
                                          "members": 3, "in_channels": 3}).eval()
    x = torch.rand(5, 3, 128, 128)
    with torch.no_grad():
        singles = torch.stack([member(x) for member in model.members])
        mean = model(x)
        fast = inference_copy(model).forward_upsampled(model.upsample_input(x))  # the path RISE takes
    assert singles.shape == (3, 5) and mean.shape == (5,)
    torch.testing.assert_close(mean, singles.mean(dim=0))
    torch.testing.assert_close(fast, mean, atol=1e-5, rtol=0)
    assert not torch.allclose(singles[0], singles[1])  # members start from different weights


def test_preset_members_become_an_ensemble_architecture():
    arch, kwargs = classifier_architecture(resolve_config("default")["classifier"])
    assert arch == "classifier_ensemble" and kwargs["members"] == 3
    assert kwargs["architecture"] == "compact_classifier"
    assert classifier_architecture(resolve_config("paper")["classifier"])[0] == "vgg16_bn"  # one, as in the paper


def test_bundle_with_an_ensemble_of_copies_segments_like_its_member(tmp_path, phantom):
    """An ensemble whose members are copies of one classifier must give that classifier's
    segmentation, gate and RISE seeds exactly: the bundle stores, verifies and rebuilds every
    member, and nothing downstream sees more than one probability per patch."""
    inference = {"filter_threshold": 0.2, "gate_threshold": 0.0}  # every patch gated: p weighs the fusion
    models, architectures = build_tiny_models(seed=0)
    single = save_bundle(tmp_path / "single", tiny_bundle_config(inference=inference), models, architectures)

    ensemble = ClassifierEnsemble("compact_classifier", TINY_CLASSIFIER, members=2, in_channels=3)
    for member in ensemble.members:
        member.load_state_dict(models["classifier"].state_dict())
    models["classifier"] = ensemble.eval()
    architectures["classifier"] = ("classifier_ensemble", {"architecture": "compact_classifier",
                                                           "kwargs": TINY_CLASSIFIER, "members": 2,
                                                           "in_channels": 3})
    double = save_bundle(tmp_path / "double", tiny_bundle_config(inference=inference), models, architectures)
    assert json.loads((double / BUNDLE_FILE).read_text())["models"]["classifier"]["architecture"] \
        == "classifier_ensemble"

    a = segment_arrays(Bundle.load(single), phantom.channels, "cpu", seeds=Bundle.load(single).rise(40))
    loaded = Bundle.load(double)
    assert isinstance(loaded.models["classifier"], ClassifierEnsemble)
    b = segment_arrays(loaded, phantom.channels, "cpu", seeds=loaded.rise(40))
    assert a.counts["gated_patches"] > 0
    np.testing.assert_allclose(b.p_tumor, a.p_tumor, atol=1e-6)
    np.testing.assert_allclose(b.probability, a.probability, atol=1e-5)
    np.testing.assert_array_equal(b.mask, a.mask)
    np.testing.assert_array_equal(b.positive_seeds, a.positive_seeds)
    np.testing.assert_array_equal(b.negative_seeds, a.negative_seeds)
