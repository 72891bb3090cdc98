"""The standard U-Net of the final segmenter (``final.architecture`` ``unet2d``): it delineates at the
input's resolution, its classification branch leaves the map alone, and a config naming an unknown
architecture (or a bad level count or slice context) is refused before any training."""

from __future__ import annotations

import json

import pytest
import torch

from WeakTumorSegLib.errors import InputError
from WeakTumorSegLib.metrics import per_slice_dice
from WeakTumorSegLib.networks.registry import build
from WeakTumorSegLib.training.final import final_architecture
from WeakTumorSegLib.training.presets import resolve_config


def _thin_lines(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images holding one bright 1-pixel line each (a row or a column), and the line as target."""
    x = 0.2 * torch.rand(n, 1, size, size, generator=gen)
    y = torch.zeros(n, 1, size, size)
    for i in range(n):
        k = int(torch.randint(4, size - 4, (1,), generator=gen))
        if i % 2:
            y[i, 0, k, :] = 1
        else:
            y[i, 0, :, k] = 1
    return x + 0.6 * y, y


def test_unet2d_learns_one_pixel_wide_structures():
    # the DCGAN U-Net decodes from 64-pixel features on a 128 patch and cannot draw a one-pixel line
    # at its place; the standard U-Net keeps full-resolution features and must
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = build("unet2d", {"in_channels": 1, "out_channels": 1, "width": 4, "levels": 2})
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        x, y = _thin_lines(8, 32, gen)
        loss = torch.nn.functional.binary_cross_entropy(net(x), y, weight=1 + 20 * y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = _thin_lines(16, 32, gen)
    with torch.no_grad():
        pred = (net.eval()(x) > 0.5)[:, 0].numpy()
    assert per_slice_dice(pred, y[:, 0].numpy()).mean() > 0.9


def test_classification_branch_reads_the_features_and_leaves_the_map_alone():
    torch.manual_seed(0)
    plain = build("unet2d", {"in_channels": 3, "width": 4, "levels": 4}).eval()
    mixed = build("unet2d_mixed", {"in_channels": 3, "width": 4, "levels": 4, "hidden": 8}).eval()
    missing, _ = mixed.load_state_dict(plain.state_dict(), strict=False)
    assert missing and all(k.startswith(("branch_conv", "fc")) for k in missing)  # only the branch is new
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        prob, logit = mixed(x, with_logit=True)
        torch.testing.assert_close(prob, plain(x))
        torch.testing.assert_close(mixed(x), prob)
    assert prob.shape == (2, 1, 128, 128) and logit.shape == (2,)


def test_final_architecture_follows_the_config(tmp_path):
    config = resolve_config("default")
    assert final_architecture(config, 3)[0] == "unet_mixed"  # the preset's trainer, the DCGAN U-Net
    config["final"].update(architecture="unet2d", trainer="self", levels=3)
    assert final_architecture(config, 1) == ("unet2d", {"in_channels": 1, "out_channels": 1,
                                                        "width": config["final"]["width"], "levels": 3})
    for bad, message in (({"architecture": "resnet"}, "final.architecture must be one of dcgan, unet2d"),
                         ({"levels": 0}, "final.levels must be a whole number from 1 to 7"),
                         ({"context": -1}, "final.context must be a whole number from 0 to 3"),
                         ({"context": True}, "final.context must be a whole number from 0 to 3"),
                         ({"dice": -1}, "final.dice must be a number of at least 0"),
                         ({"trainer": "em", "dice": 1}, "final.dice applies to the self and mixed trainers")):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"final": bad}))
        with pytest.raises(InputError, match=message) as exc:
            resolve_config("default", path)
        assert "bad.json" in str(exc.value)
