"""The FLAIR seed gates' scope and their limit by the explanation map (``rise.flair_gate_scope``,
``rise.negative_flair_map``): a large tumour must not turn into negative seeds because it fills its
slice, and the dark tissue that joins S- stays away from where the classifier looks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import save_tiny_bundle
from WeakTumorSegLib.bundle.load import Bundle
from WeakTumorSegLib.errors import InputError
from WeakTumorSegLib.inference.pipeline import segment_arrays
from WeakTumorSegLib.stages.seeds import (RiseConfig, extend_negative_seeds, flair_above_quantile,
                                          gate_positive_seeds, scoped_levels, seeds_from_maps, volume_levels)
from WeakTumorSegLib.training.presets import resolve_config
from WeakTumorSegLib.training.segmenters import segmenter_negative_seeds


def _patient(n: int = 9, big: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """FLAIR slices of one brain (healthy tissue 0.3-0.5) with a dim tumour (0.6) that fills about
    60 % of slice ``big``'s tissue, and its mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    brain = ((yy - 32) ** 2 / 28 ** 2 + (xx - 32) ** 2 / 24 ** 2) < 1
    flair = np.where(brain, rng.uniform(0.3, 0.5, (n, 64, 64)), 0.0).astype(np.float32)
    tumour = np.zeros((n, 64, 64), bool)
    tumour[big] = brain & (((yy - 32) ** 2 + (xx - 32) ** 2) < 21 ** 2)
    flair[tumour] = rng.uniform(0.58, 0.62, int(tumour.sum()))
    return torch.from_numpy(flair), torch.from_numpy(tumour)


def test_a_slice_filling_tumour_stays_out_of_negative_seeds_with_the_volume_scope():
    flair, tumour = _patient()
    share = tumour[4].sum() / (flair[4] > 0).sum()
    assert share > 0.5  # the tumour fills most of its slice's tissue
    nothing = torch.zeros_like(tumour)
    # per slice, the 0.7 quantile of the slice's tissue falls inside the tumour: a third of it turns negative
    per_slice = extend_negative_seeds(nothing, flair, 0.7)
    assert (per_slice & tumour).sum() / tumour.sum() > 0.3
    # over the patient's volume the level stays at healthy tissue: no tumour pixel is negative
    levels = volume_levels(flair, torch.zeros(len(flair), dtype=torch.long), 0.7)
    per_volume = extend_negative_seeds(nothing, flair, 0.7, levels)
    assert not (per_volume & tumour).any()
    assert per_volume[0][flair[0] > 0].float().mean() > 0.5  # healthy slices still get their dark tissue
    # the positive gate: the slice's top tenth covers at most a sixth of the tumour, the volume's all of it
    everywhere = torch.ones_like(tumour)
    assert (gate_positive_seeds(everywhere, flair, 0.9) & tumour).sum() / tumour.sum() < 0.2
    gated = gate_positive_seeds(everywhere, flair, 0.9, volume_levels(flair, torch.zeros(9, dtype=torch.long), 0.9))
    assert torch.equal(gated & tumour, tumour)


def test_volume_levels_are_taken_per_patient():
    a, _ = _patient(seed=1)
    flair = torch.cat([a, 2 * a, torch.zeros(2, 64, 64)])
    groups = torch.tensor([0] * 9 + [1] * 9 + [2] * 2)
    levels = volume_levels(flair, groups, 0.5)
    assert torch.allclose(levels[9:18], 2 * levels[:9]) and len(set(levels[:9].tolist())) == 1
    assert torch.isinf(levels[18:]).all()  # a patient without tissue: nothing is bright
    assert not gate_positive_seeds(torch.ones(2, 64, 64, dtype=torch.bool), flair[18:], 0.5, levels[18:]).any()
    with pytest.raises(ValueError):
        volume_levels(flair, groups, 1.0)


def test_the_lower_scope_is_bright_above_either_level_and_dark_below_both():
    flair, _ = _patient(seed=2)
    flair[0] *= 1.3  # one bright slice raises the volume's level above most slices' own
    for q in (0.7, 0.9):
        volume = volume_levels(flair, torch.zeros(len(flair), dtype=torch.long), q)
        by_slice = flair_above_quantile(flair, q)[0]
        by_volume = flair_above_quantile(flair, q, scoped_levels(flair, q, "volume", volume))[0]
        lower = flair_above_quantile(flair, q, scoped_levels(flair, q, "lower", volume))[0]
        assert torch.equal(lower, by_slice | by_volume)
        assert not torch.equal(lower, by_slice) and not torch.equal(lower, by_volume)
    assert scoped_levels(flair, 0.7, "slice", volume) is None
    with pytest.raises(ValueError, match="flair_gate_scope"):
        scoped_levels(flair, 0.7, "patient", volume)


def test_the_map_limits_where_dark_tissue_joins_the_segmenters_negative_seeds():
    """``segmenter_negative_seeds``: without ``low`` every dark pixel joins S-; with it only the dark
    pixels where the map was low; the method's own S- always stays."""
    flair, tumour = _patient()
    maps = torch.zeros(len(flair), 64, 64)
    maps[:, :, :32] = 1.0  # the classifier looks at the left half
    _, neg = seeds_from_maps(maps)
    neg = neg.to(torch.uint8)
    run = SimpleNamespace(config={"rise": {"negative_flair_quantile": 0.7, "flair_gate_scope": "slice"}},
                          x=flair[:, None], flair=0, y=torch.ones(len(flair)),
                          train=SimpleNamespace(mask=None, patient=np.zeros(len(flair), np.int32)))
    every = segmenter_negative_seeds(run, {"neg": neg}).bool()
    low = (maps < 0.4).to(torch.uint8)
    limited = segmenter_negative_seeds(run, {"neg": neg, "low": low}).bool()
    assert every[:, :, :32].any() and not limited[:, :, :32].any()  # no dark tissue where C looks
    assert torch.equal(limited[:, :, 32:], every[:, :, 32:])
    assert torch.equal(limited | neg.bool(), limited)


def test_gate_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="flair_gate_scope"):
        RiseConfig(flair_gate_scope="patient")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rise": {"flair_gate_scope": "patient"}}))
    with pytest.raises(InputError, match="flair_gate_scope") as err:
        resolve_config("default", bad)
    assert str(bad) in str(err.value)


def test_segment_seeds_follow_the_bundles_gate_scope_and_map_limit(tmp_path, phantom):
    """A bundle trained with the volume scope and the map limit gives ``segment --seeds`` the same
    rules: S- with the limit is a subset of S- without it, and the segmentation does not change."""
    rise = {**RiseConfig(n_masks=16, batch=8).to_dict(), "positive_flair_quantile": 0.5,
            "negative_flair_quantile": 0.5}
    plain = save_tiny_bundle(tmp_path / "plain", inference={"gate_threshold": 0.0}, rise=rise)
    scoped = save_tiny_bundle(tmp_path / "scoped", inference={"gate_threshold": 0.0},
                              rise={**rise, "flair_gate_scope": "volume", "negative_flair_map": 0.3})
    a = segment_arrays(Bundle.load(plain), phantom.channels, "cpu", seeds=Bundle.load(plain).rise())
    b = segment_arrays(Bundle.load(scoped), phantom.channels, "cpu", seeds=Bundle.load(scoped).rise())
    assert b.negative_seeds.sum() < a.negative_seeds.sum() and b.positive_seeds.any()
    flair = phantom.channels["flair"]
    assert np.median(flair[b.positive_seeds.astype(bool)]) > np.median(flair[flair > 0])  # bright tissue only
    np.testing.assert_array_equal(a.mask, b.mask)
